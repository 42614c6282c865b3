"""What the status source, the manhole and the tests read of the Scheduler (a mixin)."""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Optional

from ipcluster.interfaces import IEngineControl
from ipcluster.scheduler.task import ASSIGNED, READY, RUNNING, WAITING, Task


class SchedulerViews:
    """Read-only views of the scheduler's parts (``dispatcher``, ``dependencies``, ``tasks``)."""

    @property
    def control_for(self) -> Optional[Callable[[str], IEngineControl]]:
        """Each engine's control channel, by engine id (None: no stealing, cancelling or interrupting)."""
        return self.dispatcher.control_for

    @control_for.setter
    def control_for(self, control_for: Optional[Callable[[str], IEngineControl]]) -> None:
        self.dispatcher.control_for = control_for

    @property
    def stolen(self) -> int:
        """Tasks moved from one engine's prefetch slot to an idle engine."""
        return self.dispatcher.stolen

    @property
    def assigned(self) -> dict[str, "OrderedDict[str, Task]"]:
        """Per live engine, the tasks it holds (running and prefetched) by id."""
        return self.dispatcher.assignments.by_engine

    @property
    def ready(self) -> deque:
        """Ids of ready tasks that may run anywhere, in order (stale entries included)."""
        return self.dispatcher.queues.anywhere

    @property
    def ready_on(self) -> dict[str, deque]:
        """Ids of ready restricted tasks, per engine they may run on."""
        return self.dispatcher.queues.on

    @property
    def dependents(self) -> dict[str, set]:
        return self.dependencies.dependents

    @property
    def recent(self) -> "OrderedDict[str, bool]":
        return self.dependencies.recent

    def counts(self) -> dict:
        """Unfinished tasks by state (waiting, ready, assigned, running) and the totals."""
        counts = dict.fromkeys((WAITING, READY, ASSIGNED, RUNNING), 0)
        for task in self.tasks.values():
            if task.state in counts:
                counts[task.state] += 1
        counts.update(completed=self.completed, failed=self.failed, retried=self.retried, stolen=self.stolen)
        return counts

    def assigned_to(self, engine_id: str) -> int:
        """How many tasks the engine holds (running and queued there)."""
        return self.dispatcher.assignments.count(engine_id)
