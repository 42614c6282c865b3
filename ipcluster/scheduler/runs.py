"""Task runs as the task stream shows them: which engine ran a task, from when to when, and how it ended.

The scheduler tells :class:`RunLog` of each task that finishes and of each run
cut short by its engine's death (the task is retried elsewhere); the log turns
that into one plain dict per run and hands it to its listeners (the status
page's history).  Nothing is kept here: with no listener a run costs one check.

Times are the controller's clock.  A task short enough that its engine never
announced its start (``started``) ends at the controller's receipt of its
result and lasts as long as the engine measured (its ``started`` and
``finished`` fields, on the engine's own clock: only their difference is used).
A task that never reached an engine (cancelled while queued in the controller,
a failed dependency) was no run and is not announced; one cancelled in an
engine's queue is a run of no length on that engine.
"""
from __future__ import annotations

from typing import Callable, Optional

from ipcluster.scheduler.running import reported_seconds

#: The outcomes a run ends with (the colours of the task stream).
OK, FAILED, RETRIED, CANCELLED = "ok", "failed", "retried", "cancelled"

Listener = Callable[[dict], None]


def outcome_of(ok: bool, error: object) -> str:
    """``ok``, ``cancelled`` (a ``TaskCancelled`` error) or ``failed``."""
    if ok:
        return OK
    if isinstance(error, dict) and error.get("type") == "TaskCancelled":
        return CANCELLED
    return FAILED


class RunLog:
    """Announces each ended task run as ``{"task", "name", "engine", "start", "end", "outcome"}``."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def finished(self, task, ok: bool, fields: dict, error: object) -> None:
        """``task`` is done (``fields``: what its engine's result said, if it sent one)."""
        if self.listeners:
            self._announce(task, outcome_of(ok, error), fields)

    def retried(self, task) -> None:
        """``task``'s engine died or left while it held it; it will run again elsewhere."""
        if self.listeners:
            self._announce(task, RETRIED, {})

    def _announce(self, task, outcome: str, fields: dict) -> None:
        if task.engine is None:
            return
        end = self.clock.seconds()
        start = _start(task.started_at, fields, end)
        if start is None and outcome == CANCELLED:
            start = end  # cancelled in its engine's queue: a mark on that engine's lane
        if start is None:
            return
        run = {"task": task.id, "name": task.name, "engine": task.engine, "start": start, "end": end,
               "outcome": outcome}  # fmt: skip
        for listener in list(self.listeners):
            listener(run)


def _start(started_at: Optional[float], fields: dict, end: float) -> Optional[float]:
    if started_at is not None:
        return min(started_at, end)
    began, finished = fields.get("started"), fields.get("finished")
    if _number(began) and _number(finished):
        lasted = reported_seconds(finished - began)
        if lasted is not None:
            return end - lasted
    return None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
