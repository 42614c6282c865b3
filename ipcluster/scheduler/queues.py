"""Where tasks wait for an engine, what each engine holds, and what may be stolen.

* :class:`ReadyQueues`: ready tasks in order, one queue for tasks that may run
  anywhere and one per engine for restricted tasks (a task restricted to
  several engines stands in each of their queues; the first to take it wins,
  the other entries go stale and are skipped).
* :class:`Assignments`: the tasks each live engine holds (one running plus up
  to ``prefetch`` queued there), whether it has room, and which prefetched
  task an idle engine may steal.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Optional

from ipcluster.controller.registry import ACTIVE_STATES, ALIVE, Registry
from ipcluster.scheduler.task import ASSIGNED, READY, Task

_NOTHING: Mapping[str, Task] = MappingProxyType({})


class ReadyQueues:
    """Ready task ids, in the order they should run."""

    def __init__(self, registry: Registry, tasks: Mapping[str, Task]) -> None:
        self.registry = registry
        self.tasks = tasks  # unfinished tasks by id, to tell stale entries
        self.anywhere: deque[str] = deque()  # tasks that may run on any engine
        self.on: dict[str, deque] = {}  # restricted tasks, per eligible engine

    def __bool__(self) -> bool:
        return bool(self.anywhere) or any(self.on.values())

    def push(self, task: Task, front: bool = False) -> None:
        """Queue a ready task (``front``: before the others, as a retried task goes)."""
        if task.engines is None:
            (self.anywhere.appendleft if front else self.anywhere.append)(task.id)
            return
        for engine_id in task.engines:
            record = self.registry.get(engine_id)
            if record is None or record.state not in ACTIVE_STATES:
                continue  # its queue would never be read
            q = self.on.setdefault(engine_id, deque())
            (q.appendleft if front else q.append)(task.id)

    def next_for(self, engine_id: str) -> Optional[Task]:
        """Take the next ready task that may run on ``engine_id`` (its own queue first)."""
        for q in (self.on.get(engine_id), self.anywhere):
            while q:
                task = self.tasks.get(q.popleft())
                if task is not None and task.state == READY:
                    return task
                # else a stale entry: assigned elsewhere, cancelled, ...
        return None

    def engine_joined(self, engine_id: str, ready: Iterable[Task]) -> None:
        """Restricted tasks made ready before ``engine_id`` existed may run there too."""
        mine = [t.id for t in ready if t.engines and engine_id in t.engines]
        if mine:
            self.on.setdefault(engine_id, deque()).extend(mine)

    def engine_gone(self, engine_id: str) -> None:
        self.on.pop(engine_id, None)


class Assignments:
    """The tasks each live engine holds, in the order they were sent to it."""

    def __init__(self, registry: Registry, capacity: int) -> None:
        self.registry = registry
        self.capacity = capacity  # 1 running + prefetch
        self.by_engine: dict[str, "OrderedDict[str, Task]"] = {}
        #: Engines holding more than one task: the only ones a thief may take from (so that
        #: looking for a task to steal costs nothing when none holds a spare one).
        self._spare: set[str] = set()

    def held(self, engine_id: str) -> Mapping[str, Task]:
        """What ``engine_id`` holds, by task id (read only)."""
        return self.by_engine.get(engine_id, _NOTHING)

    def count(self, engine_id: str) -> int:
        return len(self.by_engine.get(engine_id, ()))

    def add(self, engine_id: str, task: Task) -> None:
        held = self.by_engine.setdefault(engine_id, OrderedDict())
        held[task.id] = task
        if len(held) > 1:
            self._spare.add(engine_id)

    def remove(self, engine_id: str, task_id: str) -> None:
        held = self.by_engine.get(engine_id)
        if held is not None:
            held.pop(task_id, None)
            if len(held) < 2:
                self._spare.discard(engine_id)

    def has_room(self, engine_id: str) -> bool:
        """Whether the engine is alive (not busy) and holds fewer than ``capacity`` tasks."""
        record = self.registry.get(engine_id)
        return record is not None and record.state == ALIVE and self.count(engine_id) < self.capacity

    def alive(self) -> list[str]:
        """The engines that may take tasks now (alive, not busy), in registry order."""
        alive = [r.id for r in self.registry.live() if r.state == ALIVE]
        for engine_id in alive:
            self.by_engine.setdefault(engine_id, OrderedDict())
        return alive

    def engine_up(self, engine_id: str) -> None:
        """``engine_id`` joined, or is alive again: it may hold tasks."""
        self.by_engine.setdefault(engine_id, OrderedDict())

    def engine_gone(self, engine_id: str) -> list[Task]:
        """Forget what ``engine_id`` held; returns those tasks, in the order it got them."""
        self._spare.discard(engine_id)
        return list(self.by_engine.pop(engine_id, OrderedDict()).values())

    def to_steal(self, thief: str, answers: Callable[[str], bool]) -> Optional[tuple[Task, str]]:
        """A prefetched task ``thief`` may run, and the engine holding it; None if there is none.

        Only from an engine that holds more than one task (the first one runs)
        and whose control channel ``answers`` now; the newest prefetched task first.
        """
        if not self._spare:
            return None
        for victim, held in self.by_engine.items():  # (in order: the registry's)
            if victim == thief or victim not in self._spare or not answers(victim):
                continue
            for task in reversed(held.values()):
                if task.state == ASSIGNED and not task.releasing and task.may_run_on(thief):
                    return task, victim
        return None
