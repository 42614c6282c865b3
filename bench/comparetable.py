"""The table of ``bench/compare.py``: rows, cells, ratios (> 1 always means ipcluster does better).

Plain text for the terminal, Markdown (``--markdown PATH``) for ``bench/README.md``.
"""
from __future__ import annotations

from typing import Optional

from benchsys import LABELS, SHORT, SYSTEMS

RATIO_MEANING = ("times and memory: other / ipcluster; throughput and GB/s: ipcluster / other; "
                 "> 1 means ipcluster does better")

# (metric key, label, kind, the phase whose error explains a missing value)
# kind 'time' and 'mem': ratio other/ours; 'rate': ours/other.
ROWS = [
    ("startup_s", "start-up to 2 engines ready", "time", "startup"),
    ("rtt_median_s", "round trip, median", "time", "rtt"),
    ("rtt_p99_s", "round trip, p99", "time", "rtt"),
    ("one_by_one_tps", "{tasks} tasks one by one", "rate", "one_by_one"),
    ("map_tps", "{tasks} via map (defaults)", "rate", "map"),
    ("map_best_tps", "{tasks} via map, best chunksize", "rate", "map_c10"),
    ("bigmap_tps", "{items} via map (defaults)", "rate", "bigmap"),
    ("bigmap_best_tps", "{items} via map, best chunksize", "rate", "bigmap_best"),
    ("payload_gbps", "{mb} MB array there and back", "rate", "payload"),
    ("controller_rss_bytes", "controller RSS (after the {tasks} runs)", "mem", "controller_rss"),
    ("controller_pss_bytes", "controller, all its processes, PSS", "mem", "controller_pss"),
    ("engines_rss_bytes", "engines/workers RSS (sum of 2)", "mem", "engines_rss"),
    ("controller_rss_end_bytes", "controller RSS at the end", "mem", "controller_rss_end"),
]


def fmt(key: str, v: Optional[float]) -> str:
    if v is None:
        return "-"
    if key == "startup_s":
        return f"{v:.3f} s"
    if key.endswith("_s"):
        return f"{v * 1e3:.3f} ms"
    if key.endswith("_tps"):
        return f"{v:,.0f} /s"
    if key.endswith("_gbps"):
        return f"{v:.3f} GB/s"
    if key.endswith("_bytes"):
        return f"{v / 2**20:.1f} MiB"
    return f"{v:g}"


def ratio(kind: str, ours: Optional[float], other: Optional[float]) -> Optional[float]:
    if not ours or not other:
        return None
    return other / ours if kind in ("time", "mem") else ours / other


def cell(res: dict, key: str, err_key: str) -> str:
    """A value, or why there is none: absent, n/a, skipped, timeout, error, ``-``."""
    if res.get("absent"):
        return "absent"
    m = res.get("metrics", {})
    v = m.get(key)
    if v is not None:
        text = fmt(key, v)
        if key in ("map_best_tps", "bigmap_best_tps") and m.get("map_best_chunksize") is not None:
            best = m["map_best_chunksize"]
            text += " (default)" if best == "default" else f" (c={best})"
        return text
    errs = res.get("errors", {})
    err = errs.get(err_key) or (errs.get("controller_rss") if err_key == "controller_pss" else None)
    if key == "startup_s":
        err = err or errs.get("run")
    if not err:
        return "-"
    for prefix in ("n/a", "skipped"):
        if err.startswith(prefix):
            return prefix
    return "timeout" if "did not finish" in err or "timed out" in err else "error"


def _rows(results: dict, params: dict) -> list:
    present = [s for s in SYSTEMS if s in results]
    others = [s for s in present if s != "ipcluster"] if "ipcluster" in present else []
    head = ["metric"] + [LABELS[s] for s in present] + [f"vs {SHORT[s]}" for s in others]
    rows = [head]
    words = {"tasks": f"{params['tasks']:,}", "items": f"{params['map_items']:,}", "mb": f"{params['payload_mb']:g}"}
    for key, label, kind, err_key in ROWS:
        label = label.format(**words)
        if key.startswith("rtt"):
            label = f"{label} ({params['rtt_samples']} seq.)"
        row = [label] + [cell(results[s], key, err_key) for s in present]
        ours = results.get("ipcluster", {}).get("metrics", {}).get(key)
        for s in others:
            r = ratio(kind, ours, results[s].get("metrics", {}).get(key))
            row.append(f"{r:.2f}x" if r is not None else "n/a")
        rows.append(row)
    return rows


def table(results: dict, params: dict) -> str:
    """The plain-text table, columns aligned."""
    rows = _rows(results, params)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(results: dict, params: dict, env: dict, notes: list) -> str:
    """The run as a Markdown section: when, where, versions, the table, the notes."""
    rows = _rows(results, params)
    load = ", ".join(f"{x:.2f}" for x in env.get("loadavg_before") or ())
    load_after = ", ".join(f"{x:.2f}" for x in env.get("loadavg_after") or ())
    vers = ", ".join(f"{k} {v}" for k, v in all_versions(results, env).items() if v)
    out = [
        f"Run of {env.get('date', '?')}: python {env.get('python')}, {env.get('cpus')} CPUs "
        f"({env.get('cpu')}); load average {load} before, {load_after} after.",
        "",
        f"Versions: {vers}.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    out += ["", f"Ratios ({RATIO_MEANING}).", ""]
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def all_versions(results: dict, env: dict) -> dict:
    """The parent's versions, completed by what each child found under its interpreter."""
    out = dict(env.get("versions", {}))
    for res in results.values():
        for k, v in res.get("versions", {}).items():
            out.setdefault(k, v)
            out[k] = out[k] or v
    return out
