"""Statistics shared by the benchmark scripts (importable: they run with bench/ on sys.path)."""
from __future__ import annotations


def pct(values, p: float) -> float:
    """The p-th percentile (0-100), linear interpolation between order statistics."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
