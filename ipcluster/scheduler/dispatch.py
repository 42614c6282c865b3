"""Putting ready tasks on engines: balancing with prefetch, and releases (stealing, withdrawing).

Each live engine holds at most ``capacity`` tasks (one running, the rest
prefetched).  Idle engines are filled before partly loaded ones; busy engines
get nothing.  An engine with room and nothing ready for it steals: the engine
holding a prefetched task it has not started is asked to release it
(``abort(release=True)``), and the task moves when it says ``released``.  A
client's cancel of a prefetched task goes the same way (a *withdrawal*).  One
release at a time per task; a cancel that comes while a task is being moved
rides on that release.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional, Sequence

import attr
from twisted.internet import defer
from twisted.logger import Logger

from ipcluster import errors
from ipcluster.controller.registry import ACTIVE_STATES, ALIVE, LIVE_STATES, Registry
from ipcluster.interfaces import IEngineControl
from ipcluster.scheduler.inputs import task_frames
from ipcluster.scheduler.queues import Assignments, ReadyQueues
from ipcluster.scheduler.task import ASSIGNED, DONE, READY, RECOVERING, WAITING, Task
from ipcluster.transport.wire import Codec

RELEASE_TIMEOUT = 5.0  # seconds an engine gets to give a prefetched task back


@attr.s(slots=True, eq=False)
class _Release:
    """A request out to ``victim`` to give ``task`` back unstarted."""

    task: Task = attr.ib()
    victim: str = attr.ib()
    attempt: int = attr.ib()  # the task's assignment the request is about
    thief: Optional[str] = attr.ib()  # where it moves; None: withdrawn for a cancel
    cancels: list = attr.ib(factory=list)  # Deferreds of the cancels this release answers

    def current(self) -> bool:
        """Whether the task is still where the request found it (not finished, not moved)."""
        return self.task.state != DONE and self.task.attempts == self.attempt

    def answer_cancels(self, cancelled: bool) -> None:
        waiting, self.cancels = self.cancels, []
        for d in waiting:
            d.callback(cancelled)


class Dispatcher:
    """Sends ready tasks to the engines that should run them."""

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        codec: Codec,
        send_engine: Callable[[Sequence[bytes]], bool],
        tasks: Mapping[str, Task],
        capacity: int,
        on_withdrawn: Callable[[Task], None],
        control_for: Optional[Callable[[str], IEngineControl]] = None,
    ) -> None:
        self.registry = registry
        self.codec = codec
        self.send_engine = send_engine
        self.on_withdrawn = on_withdrawn  # a withdrawn task, given back: the caller cancels it
        self.control_for = control_for  # None: no stealing, no withdrawing
        self.queues = ReadyQueues(registry, tasks)
        self.assignments = Assignments(registry, capacity)
        self.stolen = 0
        self._releases: dict[str, _Release] = {}  # by task id

    def push(self, task: Task, front: bool = False) -> None:
        """Queue a ready task (``front``: before the others)."""
        self.queues.push(task, front)

    def dispatch(self) -> None:
        """Fill free engine slots: idle engines first, then partly loaded ones."""
        if not self.queues:
            return
        engines = self.assignments.alive()
        held = self.assignments.by_engine  # (alive() made an entry for each)
        for depth in range(self.assignments.capacity):
            for engine_id in list(engines):
                if len(held[engine_id]) == depth:
                    task = self.queues.next_for(engine_id)
                    if task is not None and not self.assign(task, engine_id):
                        engines.remove(engine_id)  # unreachable right now

    def fill(self, engine_id: str) -> None:
        """Give ``engine_id`` work up to its capacity; steal some if it is idle and nothing is ready."""
        while self.assignments.has_room(engine_id):
            task = self.queues.next_for(engine_id)
            if task is None:
                if not self.assignments.count(engine_id):
                    self._steal_for(engine_id)
                return
            if not self.assign(task, engine_id):
                return

    def assign(self, task: Task, engine_id: str) -> bool:
        """Send ``task`` to the engine; False (task queued again, first) if it is unreachable."""
        record = self.registry.get(engine_id)
        if record is None or not self.send_engine(
            [record.identity, *task_frames(self.codec, task, record.session)]
        ):
            # Gone without a word yet (its death will be noticed): keep the task for others.
            self.queues.push(task, front=True)
            return False
        task.lifecycle.assign(engine_id)
        self.assignments.add(engine_id, task)
        return True

    def engine_up(self, engine_id: str, ready: Iterable[Task] = ()) -> None:
        """``engine_id`` joined or is alive again: fill it.  ``ready``: tasks made ready before
        it joined (those restricted to engines that include it may run there too)."""
        self.queues.engine_joined(engine_id, ready)
        self.assignments.engine_up(engine_id)
        self.fill(engine_id)
        self.dispatch()

    def engine_gone(self, engine_id: str) -> list[Task]:
        """Forget ``engine_id``; returns the tasks it held, in the order it got them."""
        self.queues.engine_gone(engine_id)
        return self.assignments.engine_gone(engine_id)

    def may_run_elsewhere(self, task: Task, gone: str) -> bool:
        """Whether ``task`` may run on a live engine other than ``gone`` (or on any engine)."""
        return task.engines is None or any(
            e != gone and (r := self.registry.get(e)) is not None and r.state in LIVE_STATES for e in task.engines
        )

    def stranded(self) -> list[Task]:
        """Unstarted restricted tasks none of whose engines is registering, alive or busy any more."""
        return [
            t for t in self.queues.tasks.values()
            if t.state in (READY, WAITING) and t.engines is not None and RECOVERING not in t.unmet
            and not any((r := self.registry.get(e)) is not None and r.state in ACTIVE_STATES for e in t.engines)
        ]

    # -- releases -----------------------------------------------------------------------

    def answers(self, engine_id: Optional[str]) -> bool:
        """Whether the engine's control thread answers now: a busy one would answer late, after
        the release had timed out, and the released task would be lost between the two."""
        record = self.registry.get(engine_id) if engine_id is not None else None
        return record is not None and record.state == ALIVE

    def withdraw(self, task: Task) -> defer.Deferred:
        """Ask the engine holding ``task`` (assigned, not started) to give it back, to cancel it.

        Fires with True once it did (``on_withdrawn`` has cancelled it then),
        False if it could not be withdrawn (it started, its engine is busy or
        gone, the request failed).
        """
        cancelled = defer.Deferred()
        if task.releasing:  # being moved: withdraw it instead when its engine gives it back
            self._releases[task.id].cancels.append(cancelled)
        elif task.state != ASSIGNED or self.control_for is None or not self.answers(task.engine):
            return defer.succeed(False)
        elif not self._ask(_Release(task, task.engine, task.attempts, None, [cancelled])):
            return defer.succeed(False)
        return cancelled

    def _steal_for(self, thief: str) -> None:
        """``thief`` is idle with nothing ready: move a prefetched task to it."""
        if self.control_for is None:
            return
        found = self.assignments.to_steal(thief, self.answers)
        if found is not None:
            task, victim = found
            self._ask(_Release(task, victim, task.attempts, thief))

    def _ask(self, release: _Release) -> bool:
        """Send the release request; False if the victim's control channel is gone."""
        task = release.task
        try:
            control = self.control_for(release.victim)
        except errors.ClusterError:
            return False
        task.lifecycle.release()
        self._releases[task.id] = release
        d = defer.maybeDeferred(control.abort, task.id, timeout=RELEASE_TIMEOUT, release=True)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(release,), errbackArgs=(release,))
        d.addErrback(self._bug, release)
        return True

    def _answered(self, outcome: object, release: _Release) -> None:
        self._forget(release)
        task = release.task
        if not (release.current() and task.releasing):
            # Overtaken: the task finished, started, or moved when its engine died.
            if outcome == "released" and release.current():
                self.log.error(
                    "engine {engine} released task {task}, which it had reported started",
                    engine=release.victim, task=task.id,
                )
            release.answer_cancels(False)
            return
        if outcome != "released":  # "running" or "unknown": the engine keeps it
            task.lifecycle.kept()
            release.answer_cancels(False)
            return
        self.assignments.remove(release.victim, task.id)
        if release.cancels:
            self.on_withdrawn(task)
            release.answer_cancels(True)
        else:
            self._move(task, release.thief)
        self.fill(release.victim)

    def _move(self, task: Task, thief: str) -> None:
        """A stolen task, given back: to the thief if it still has room, else first in line."""
        task.lifecycle.released()
        self.stolen += 1
        if not (self.assignments.has_room(thief) and task.may_run_on(thief)):
            self.queues.push(task, front=True)
            self.dispatch()
        elif not self.assign(task, thief):
            self.dispatch()

    def _failed(self, failure, release: _Release) -> None:
        self._forget(release)
        if release.current() and release.task.releasing:
            release.task.lifecycle.kept()
        release.answer_cancels(False)
        doing = "cancelling task" if release.thief is None else "releasing task"
        log_control_failure(failure, self.log, doing, release.task.id, release.victim)

    def _forget(self, release: _Release) -> None:
        if self._releases.get(release.task.id) is release:
            del self._releases[release.task.id]

    def _bug(self, failure, release: _Release) -> None:
        self.log.failure(
            "handling the answer to the release of task {task} by engine {engine}", failure,
            task=release.task.id, engine=release.victim,
        )


def log_control_failure(failure, log: Logger, doing: str, task_id: str, engine_id: Optional[str]) -> None:
    """A control command the scheduler sent failed: expected errors warn, anything else is a bug."""
    if failure.check(errors.ClusterError):
        log.warn("{doing} {task} on engine {engine}: {why}", doing=doing, task=task_id, engine=engine_id, why=failure.value)
    else:
        log.failure("{doing} {task} on engine {engine}", failure, doing=doing, task=task_id, engine=engine_id)
