"""Admission: a submitted task is accepted at once, or once the store has answered for it.

A task whose dependencies (or inputs) finished before -- so long ago that only
the task store knows how, or with a result no longer kept in memory -- waits
for the store's answer before it is accepted (``known``).  Meanwhile it is in
no table: a task submitted right after it that depends on it (a chain sent in
one go) would find it nowhere and be refused as an unknown dependency.  So the
tasks being admitted are remembered (:attr:`Admission.pending`), and a task
that depends on one of them is admitted only after it (accepted or refused).
"""
from __future__ import annotations

from typing import Callable

from twisted.internet import defer

from ipcluster import errors
from ipcluster.interfaces import ITaskStore
from ipcluster.scheduler.dependencies import Dependencies
from ipcluster.scheduler.inputs import InputValues
from ipcluster.scheduler.task import Task

#: ``accept(task, after, outcomes)``: queue an admitted task; its id.
Accept = Callable[[Task, list, dict], str]


class Admission:
    """Admits tasks in an order that respects their dependencies on tasks not yet admitted."""

    def __init__(self, tasks: dict, dependencies: Dependencies, inputs: InputValues,
                 store_of: Callable[[], ITaskStore], accept: Accept) -> None:
        self.tasks = tasks  # unfinished (accepted) tasks by id
        self.dependencies = dependencies
        self.inputs = inputs
        self.store_of = store_of
        self.accept = accept
        #: id -> a Deferred that fires (with None) once that task's admission ended, either way.
        self.pending: dict[str, defer.Deferred] = {}

    def admit(self, task: Task, after: list) -> defer.Deferred:
        """Accept ``task`` (after those of ``after`` still being admitted); fires with its id."""
        earlier = [self.pending[dep] for dep in after if dep in self.pending]
        if earlier:
            d = defer.DeferredList(earlier).addCallback(lambda _: self._now(task, after))
        else:
            d = self._now(task, after)
        if d.called:
            return d
        ended = self.pending[task.id] = defer.Deferred()

        def end(result: object) -> object:
            if self.pending.get(task.id) is ended:
                del self.pending[task.id]
            ended.callback(None)
            return result

        return d.addBoth(end)

    def _now(self, task: Task, after: list) -> defer.Deferred:
        store = self.store_of()
        unknown, loading = self.dependencies.unknown(after), self.inputs.load(task, store)
        if not unknown and loading is None:
            try:
                return defer.succeed(self.accept(task, after, {}))
            except errors.ClusterError:
                return defer.fail()

        def known(outcomes: dict) -> str:
            # The store answered later: the same id may have been submitted meanwhile.
            if task.id in self.tasks:
                raise errors.BadRequest(f"task id {task.id!r} is already in flight")
            return self.accept(task, after, outcomes)

        # Dependencies (or inputs) finished before: ask the store (the task waits for the answer).
        outcomes = self.dependencies.look_up(store, unknown) if unknown else defer.succeed({})
        return (loading or defer.succeed(None)).addCallback(lambda _: outcomes).addCallback(known)
