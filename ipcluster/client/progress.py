"""Progress bars for the client: ``tqdm.auto``, so a notebook shows a widget and a terminal text."""
from __future__ import annotations

from typing import Iterable, Iterator, Optional


def progress_bar(iterable: Iterable, total: Optional[int], unit: str = "task") -> Iterator:
    """``iterable`` with a tqdm bar of ``total`` steps (the plain iterable if tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iter(iterable)
    return iter(tqdm(iterable, total=total, unit=unit))
