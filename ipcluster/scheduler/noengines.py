"""When no engine is left and none is coming back: queued tasks fail instead of hanging.

The pool is *empty* when no engine is registering, alive or busy and none is
coming back (``coming()``: no local engine's supervisor has a process running
or a restart pending).  A ready task that may run anywhere fails with
``NoEngines`` once the pool has been empty for ``timeout`` seconds and it has
been submitted at least as long; a task restricted to engines is not this
watch's business (it fails as soon as its engines are gone).  Any engine that
registers ends the wait.

:meth:`NoEngineWatch.check` is called whenever the answer may change (engine
events, a task queued, a supervisor giving up); it is O(1) while the pool is
not empty or a timer is already armed.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ipcluster import errors
from ipcluster.controller.registry import Registry
from ipcluster.scheduler.task import READY, Task

DEFAULT_NO_ENGINE_TIMEOUT = 60.0


class NoEngineWatch:
    """Fails queued tasks after ``timeout`` seconds of an empty pool (``timeout`` None: never)."""

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        clock: IReactorTime,
        timeout: Optional[float],
        tasks: Callable[[], Iterable[Task]],
        fail: Callable[[Task, errors.NoEngines], None],
        coming: Callable[[], bool] = lambda: False,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.timeout = timeout
        self.tasks = tasks  # every unfinished task
        self.fail = fail
        self.coming = coming
        self.empty_since: Optional[float] = None
        self._timer: Optional[IDelayedCall] = None

    def engines_present(self) -> bool:
        """Whether an engine is registering, alive or busy, or one is coming back."""
        return self.registry.any_active() or self.coming()

    def check(self) -> None:
        """Start or end the wait, as the pool is empty or not."""
        if self.timeout is None:
            return
        if self.engines_present():
            self.empty_since = None
            self._cancel()
            return
        if self.empty_since is None:
            self.empty_since = self.clock.seconds()
        if self._timer is None:
            self._arm()

    def _deadline(self, task: Task) -> float:
        return max(self.empty_since, task.submitted_at) + self.timeout

    def _waiting(self) -> list[Task]:
        return [t for t in self.tasks() if t.state == READY and t.engines is None]

    def _arm(self) -> None:
        waiting = self._waiting()
        if waiting:
            delay = max(0.0, min(self._deadline(t) for t in waiting) - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.engines_present():  # (an engine came without an event reaching us: be sure)
            self.check()
            return
        now = self.clock.seconds()
        due = [t for t in self._waiting() if self._deadline(t) <= now]
        if due:
            self.log.error(
                "no engine is alive and none is coming back: failing {n} queued task(s) after "
                "{timeout:g} s (--no-engine-timeout)", n=len(due), timeout=self.timeout,
            )
        for task in due:
            if task.state == READY:  # (failing one may have failed others: dependents)
                self.fail(task, errors.NoEngines(
                    f"no engine is alive and none is coming back: task {task.id} waited "
                    f"{now - max(self.empty_since, task.submitted_at):.0f} s for one (--no-engine-timeout {self.timeout:g})"
                ))
        self._arm()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def stop(self) -> None:
        self._cancel()
