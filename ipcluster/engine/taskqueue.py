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


class QueuedTask:
    """A task as the control thread received it (a plain slotted class: one is built per task)."""

    __slots__ = ("id", "payload", "inputs", "buffers")

    def __init__(self, id: str, payload: bytes, inputs: Optional[bytes] = None, buffers: tuple = ()) -> None:
        self.id = id
        self.payload = payload
        #: With ``task_in``: a msgpack map of task id to the result the task takes (futures as inputs).
        self.inputs = inputs
        #: The payload's out-of-band buffers (``transport.buffers``), views of the received frames.
        self.buffers = buffers

    def __repr__(self) -> str:
        return f"QueuedTask(id={self.id!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QueuedTask):
            return NotImplemented
        return (self.id, self.payload, self.inputs, self.buffers) == (other.id, other.payload, other.inputs, other.buffers)

    __hash__ = None  # type: ignore[assignment]


#: How many ids of tasks handed to the main thread, and of tombstones, are remembered.
REMEMBER = 10_000
#: Seconds a tombstone waits for its task (a task message lost with its connection never comes).
TOMBSTONE_SECONDS = 60.0

#: What :meth:`TaskQueue.withdraw` found.
QUEUED, TAKEN, NOT_SEEN = "queued", "taken", "not seen"


class TaskQueue:
    """FIFO of tasks with removal by id; ``get`` returns None once closed.

    One thread gets (the main thread); any may put.  The getter sleeps on a
    gate -- a lock it holds, released to wake it -- rather than a
    ``threading.Condition``, whose every wait builds a lock and runs a page of
    Python: this wait happens once a task.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Lock()  # guards the state below
        self._gate = threading.Lock()
        self._gate.acquire()  # released (by _wake) only to wake the getter
        self._items: "OrderedDict[str, QueuedTask]" = OrderedDict()
        self._closed = False
        self._clock = clock
        self._taken: "OrderedDict[str, None]" = OrderedDict()  # handed to the main thread, newest last
        self._tombstones: "OrderedDict[str, float]" = OrderedDict()  # withdrawn before arrival: when
        self.discarded = 0  # tasks that arrived after they were withdrawn
        self._waiting = False  # the main thread waits in get()

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
            self._wake()
            return True

    def _wake(self) -> None:
        """Wake the getter if it sleeps (with ``_cond`` held)."""
        if self._waiting:
            self._waiting = False
            if self._gate.locked():  # (unlocked: a release from before is still unused; one is enough)
                self._gate.release()

    def get(self, timeout: Optional[float] = None) -> Optional[QueuedTask]:
        """The next task; None when the queue is closed (or on timeout)."""
        until = None if timeout is None else time.monotonic() + timeout  # (real waits: not the tombstones' clock)
        while True:
            with self._cond:
                if self._closed:
                    return None
                if self._items:
                    task = self._items.popitem(last=False)[1]
                    _remember(self._taken, task.id, None)
                    return task
                left = None if until is None else until - time.monotonic()
                if left is not None and left <= 0:
                    return None  # timed out
                self._waiting = True
            # Woken by _wake, by the timeout, or at once by a release meant for an earlier wait
            # (it timed out first): each time, the state decides again.
            self._gate.acquire(timeout=-1 if left is None else left)

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
            self._wake()
            return dropped


def _remember(memory: "OrderedDict", key: str, value) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > REMEMBER:
        memory.popitem(last=False)
