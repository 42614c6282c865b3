"""What becomes of the tasks an engine held when it dies or leaves.

An engine runs its tasks one at a time in the order it got them, so the oldest
task it still held is the one it was running (or about to run) when it went:
the only one that may have killed it.  That task counts an attempt against its
``retries`` (retried elsewhere, or failed with ``EngineDied`` "... while running
task T: <why>" once they are used up), so a *poison pill* -- a task that kills
every engine it runs on -- costs ``retries + 1`` engines, not the pool.  The
tasks queued behind it go back to the front of the ready queue, in their
order, without losing a retry; they fail only when they may run nowhere else
(pinned to the engine that went).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import attr

from ipcluster import errors
from ipcluster.scheduler.task import DONE, RUNNING, Task

RETRY, PUT_BACK, FAIL = "retry", "put back", "fail"


@attr.s(frozen=True, slots=True)
class Rescue:
    """What to do with one task of a gone engine: ``action`` is RETRY, PUT_BACK or FAIL (with ``error``)."""

    task: Task = attr.ib()
    action: str = attr.ib()
    ran: bool = attr.ib()
    error: Optional[errors.EngineDied] = attr.ib(default=None)


def rescues(
    held: Sequence[Task], engine_id: str, event: str, reason: str, may_run_elsewhere: Callable[[Task], bool]
) -> list[Rescue]:
    """The fate of each unfinished task ``engine_id`` held (``held``: in the order it got them).

    Returned newest first: each one that goes back goes to the front of its
    queue, so together they keep their order.  ``event`` is ``dead`` or
    ``left``, ``reason`` why.
    """
    plan = []
    for n, task in reversed(list(enumerate(held))):
        if task.state == DONE:  # it timed out, and its late result never came
            continue
        ran = n == 0 or task.state == RUNNING
        elsewhere = may_run_elsewhere(task)
        if ran and task.retries > 0 and elsewhere:
            plan.append(Rescue(task, RETRY, ran))
        elif not ran and elsewhere:
            plan.append(Rescue(task, PUT_BACK, ran))
        else:
            where = "while running" if ran else "before running"
            error = errors.EngineDied(f"engine {engine_id} {event} {where} task {task.id}: {reason}")
            plan.append(Rescue(task, FAIL, ran, error))
    return plan


def stranded_error(task: Task) -> errors.EngineDied:
    """The error of a task restricted to engines none of which is left."""
    return errors.EngineDied(f"no engine task {task.id} may run on is alive ({', '.join(sorted(task.engines or ()))})")
