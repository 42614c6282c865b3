"""The engine's local task queue, shared by its control and main threads.

A task and the controller's request to give it back (``abort`` with
``release``, for a steal or a client's cancel) travel on different sockets, so
the request can arrive first.  :meth:`TaskQueue.withdraw` decides under the
queue's lock: a queued task is removed, a task already handed to the main
thread is kept, and a task not seen yet is *withdrawn before it arrived* -- a
tombstone makes :meth:`TaskQueue.put` discard it when it comes.  So "released"
always means the task will not run here.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Optional

import attr


@attr.s(slots=True, frozen=True)
class QueuedTask:
    id: str = attr.ib()
    payload: bytes = attr.ib(repr=False)
    #: With ``task_in``: a msgpack map of task id to the result the task takes (futures as inputs).
    inputs: Optional[bytes] = attr.ib(default=None, repr=False)
    #: The payload's out-of-band buffers (``transport.buffers``), views of the received frames.
    buffers: tuple = attr.ib(default=(), repr=False)


#: How many ids of tasks handed to the main thread, and of tombstones, are remembered.
REMEMBER = 10_000
#: Seconds a tombstone waits for its task (a task message lost with its connection never comes).
TOMBSTONE_SECONDS = 60.0

#: What :meth:`TaskQueue.withdraw` found.
QUEUED, TAKEN, NOT_SEEN = "queued", "taken", "not seen"


class TaskQueue:
    """FIFO of tasks with removal by id; ``get`` returns None once closed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._items: "OrderedDict[str, QueuedTask]" = OrderedDict()
        self._closed = False
        self._clock = clock
        self._taken: "OrderedDict[str, None]" = OrderedDict()  # handed to the main thread, newest last
        self._tombstones: "OrderedDict[str, float]" = OrderedDict()  # withdrawn before arrival: when
        self.discarded = 0  # tasks that arrived after they were withdrawn

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, task: QueuedTask) -> bool:
        """Queue ``task``; False once closed.  A task withdrawn before it arrived is discarded."""
        with self._cond:
            if self._closed:
                return False
            withdrawn_at = self._tombstones.pop(task.id, None)
            if withdrawn_at is not None and self._clock() - withdrawn_at <= TOMBSTONE_SECONDS:
                self.discarded += 1
                return True
            self._items[task.id] = task
            self._cond.notify()
            return True

    def get(self, timeout: Optional[float] = None) -> Optional[QueuedTask]:
        """The next task; None when the queue is closed (or on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if self._closed:
                return None
            task = self._items.popitem(last=False)[1]
            _remember(self._taken, task.id, None)
            return task

    def remove(self, task_id: str) -> bool:
        with self._cond:
            return self._items.pop(task_id, None) is not None

    def withdraw(self, task_id: str) -> str:
        """Make sure ``task_id`` does not run here, if it has not been taken to run.

        ``QUEUED``: it was queued and is removed.  ``TAKEN``: the main thread has
        it (running or finished); nothing changes.  ``NOT_SEEN``: it has not
        arrived; it will be discarded when it does.
        """
        with self._cond:
            if self._items.pop(task_id, None) is not None:
                return QUEUED
            if task_id in self._taken:
                return TAKEN
            _remember(self._tombstones, task_id, self._clock())
            return NOT_SEEN

    def clear(self) -> list[QueuedTask]:
        with self._cond:
            dropped = list(self._items.values())
            self._items.clear()
            return dropped

    def close(self) -> list[QueuedTask]:
        """Refuse new tasks, drop the queued ones and wake ``get``."""
        with self._cond:
            self._closed = True
            dropped = list(self._items.values())
            self._items.clear()
            self._cond.notify_all()
            return dropped


def _remember(memory: "OrderedDict", key: str, value) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > REMEMBER:
        memory.popitem(last=False)
