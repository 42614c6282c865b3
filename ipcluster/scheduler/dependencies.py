"""Dependencies between tasks: who waits on whom, and what recently finished how.

``after=[ids]`` makes a task wait until all of them succeeded.  Ids may name
tasks in flight (the task waits on them here), tasks that finished recently (a
bounded cache of outcomes answers) or long ago (the task store answers).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Iterator, Mapping, Optional

from twisted.internet import defer

from ipcluster import errors
from ipcluster.interfaces import ITaskStore
from ipcluster.scheduler.task import WAITING, Task


class Dependencies:
    """The dependency graph of unfinished tasks, and the outcomes of recent ones."""

    def __init__(self, tasks: Mapping[str, Task], remember: int) -> None:
        self.tasks = tasks  # unfinished tasks by id
        self.dependents: dict[str, set] = {}  # task id -> ids of the tasks waiting on it
        self.recent: "OrderedDict[str, bool]" = OrderedDict()  # task id -> succeeded
        self.remember = remember

    def unknown(self, after: Iterable[str]) -> list[str]:
        """The ids in ``after`` neither in flight nor recently finished (the store must answer)."""
        return [dep for dep in after if dep not in self.tasks and dep not in self.recent]

    def look_up(self, store: ITaskStore, ids: list[str]) -> defer.Deferred:
        """Deferred ``{id: succeeded}`` from the store for the ids that finished; fails with
        BadRequest for an id it does not know, or one that was in flight when the controller
        stopped and was not recovered (it will never finish).  An id in flight by the time the
        store answers (recovered meanwhile: the controller had just started) is left out: ``attach``
        runs as the answer comes (the store answers reads in order, these last), so it still finds
        it in flight."""

        def outcomes(records: list) -> dict:
            found = {}
            for dep, record in zip(ids, records):
                if dep in self.tasks:
                    continue
                if record is None:
                    raise errors.BadRequest(f"unknown dependency {dep!r}: no such task")
                if record["status"] not in ("ok", "failed"):
                    raise errors.BadRequest(
                        f"dependency {dep!r} was {record['status']} when the controller stopped; it will never finish"
                    )
                found[dep] = record["status"] == "ok"
            return found

        lookups = [store.get(dep) for dep in ids]
        return defer.gatherResults(lookups, consumeErrors=True).addCallback(outcomes).addErrback(_first_error)

    def attach(self, task: Task, after: Iterable[str], outcomes: Mapping[str, bool]) -> Optional[str]:
        """Make ``task`` wait on those of ``after`` in flight.

        Returns a finished dependency whose failure fails ``task`` (then it
        waits on nothing), or None.  ``outcomes`` holds what the store said of
        ids that are neither in flight nor recent.
        """
        failed = None
        for dep in after:
            if dep in self.tasks:
                task.unmet.add(dep)
                self.dependents.setdefault(dep, set()).add(task.id)
                continue
            ok = self.recent[dep] if dep in self.recent else outcomes[dep]
            if not ok and not task.run_after_failed:
                failed = dep
        if failed is not None:
            self.detach(task)
        return failed

    def finished(self, task_id: str, ok: bool) -> Iterator[Task]:
        """Remember the outcome; returns (an iterator of) the tasks still waiting on
        ``task_id``, in id order, each with ``task_id`` crossed off its unmet dependencies."""
        self.recent[task_id] = ok
        while len(self.recent) > self.remember:
            self.recent.popitem(last=False)
        return self._waiting_on(sorted(self.dependents.pop(task_id, ())), task_id)

    def _waiting_on(self, dependent_ids: list[str], task_id: str) -> Iterator[Task]:
        for dependent_id in dependent_ids:
            dependent = self.tasks.get(dependent_id)
            # Checked as we go: handling one dependent may fail another (a failure cascades).
            if dependent is not None and dependent.state == WAITING:
                dependent.unmet.discard(task_id)
                yield dependent

    def detach(self, task: Task) -> None:
        """``task`` waits on nothing any more (cancelled, or failed)."""
        for dep in task.unmet:
            waiting = self.dependents.get(dep)
            if waiting is not None:
                waiting.discard(task.id)
                if not waiting:
                    del self.dependents[dep]
        task.unmet.clear()


def _first_error(failure):
    failure.trap(defer.FirstError)
    return failure.value.subFailure
