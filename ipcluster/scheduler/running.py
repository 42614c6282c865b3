"""What each engine runs, as the scheduler writes it on its ``EngineRecord``.

The scheduler is the one writer of ``record.running_task`` and
``record.task_started_at``: from the engines' ``started`` and ``result``
messages, and from what their pongs report.
"""
from __future__ import annotations

from typing import Optional

from ipcluster.controller.registry import EngineRecord

MAX_RUNNING_FOR = 86400.0  # an engine's claim of a longer run is not believed


def note_running(record: EngineRecord, task_id: Optional[str], started_at: Optional[float]) -> None:
    record.running_task = task_id
    record.task_started_at = started_at


def note_report(record: EngineRecord, task_id: object, running_for: object, now: float) -> None:
    """An engine's pong said it runs ``task_id`` (not a string, or empty: nothing) for ``running_for`` s."""
    if not isinstance(task_id, str) or not task_id:
        note_running(record, None, None)
        return
    seconds = reported_seconds(running_for)
    if seconds is not None:
        note_running(record, task_id, now - seconds)
    elif record.running_task != task_id:
        note_running(record, task_id, None)


def reported_seconds(value: object) -> Optional[float]:
    """A duration an engine reported, if believable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < MAX_RUNNING_FOR:
        return float(value)
    return None
