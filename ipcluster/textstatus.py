"""Engines as text: the one table ``ipcluster status`` and the manhole's ``status()`` print."""
from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping, Optional, Sequence

#: The order states are summed up in.
STATE_ORDER = ("alive", "busy", "registering", "dead", "left")
LIVE = ("alive", "busy")
COLUMNS = ("ID", "HOST", "PID", "STATE", "RTT(ms)", "TASK", "RUNNING", "BUSY-FOR", "QUEUED")


def natural_key(text: str) -> list:
    """A sort key that puts e2 before e10: digit runs compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(text))]


def by_id(engines: Iterable[Mapping]) -> list:
    """Engine descriptions in natural id order."""
    return sorted(engines, key=lambda e: natural_key(e.get("id", "")))


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _secs(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _row(e: Mapping, rtt: Callable[[Optional[float]], str]) -> tuple:
    return (
        str(e.get("id", "?")),
        str(e.get("host", "?")),
        str(e.get("pid", "?")),
        str(e.get("state", "?")),
        rtt(e.get("rtt")),
        e.get("running_task") or "-",
        _secs(e.get("task_running_for")),
        _secs(e.get("busy_for")),
        str(e.get("queued", "-")),
    )


def engines_table(
    engines: Iterable[Mapping], header: Sequence[str] = COLUMNS, rtt: Callable[[Optional[float]], str] = _ms
) -> list:
    """Lines of an aligned table of engines (id, host, pid, state, rtt, task, ...); ``[]`` for none.

    ``header`` (the column titles) and ``rtt`` (how a round trip in seconds is
    shown) let the manhole's console keep its own spelling of the same table.
    """
    rows = [tuple(header)] + [_row(e, rtt) for e in engines]
    if len(rows) == 1:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def state_summary(engines: Iterable[Mapping]) -> str:
    """``"3 engine(s): 2 alive, 1 dead"``."""
    engines = list(engines)
    counts: dict = {}
    for e in engines:
        counts[e.get("state", "?")] = counts.get(e.get("state", "?"), 0) + 1
    states = sorted(counts, key=lambda s: (STATE_ORDER.index(s) if s in STATE_ORDER else len(STATE_ORDER), s))
    summary = f"{len(engines)} engine(s)"
    if counts:
        summary += ": " + ", ".join(f"{counts[s]} {s}" for s in states)
    return summary


def task_summary(engines: Iterable[Mapping], tasks: Optional[Mapping] = None) -> str:
    """What runs and waits: running on engines, queued on engines, and (with the controller's
    task counters) queued in the controller."""
    live = [e for e in engines if e.get("state") in LIVE]
    queued = sum(int(e.get("queued") or 0) for e in live)
    running = sum(1 for e in live if e.get("running_task"))
    line = f"tasks: {running} running, {queued} queued on engines"
    if tasks:
        line += f", {tasks.get('ready', 0)} ready and {tasks.get('waiting', 0)} waiting in the controller"
    return line


def queued_lines(listing: Optional[Mapping]) -> list:
    """Lines naming the tasks queued in the controller (a ``tasks`` reply): ``[]`` for none."""
    if not listing or not listing.get("queued_total"):
        return []
    queued = listing.get("queued") or []
    lines = [f"queued in the controller ({listing['queued_total']}):"]
    width = max(len(str(t.get("task", ""))) for t in queued) if queued else 0
    for t in queued:
        where = ", ".join(t["engines"]) if t.get("engines") else "any engine"
        lines.append(f"  {str(t.get('task', '?')).ljust(width)}  {t.get('state', '?'):<7}  {t.get('name') or '-'}  ({where})")
    if listing["queued_total"] > len(queued):
        lines.append(f"  ... and {listing['queued_total'] - len(queued)} more")
    return lines
