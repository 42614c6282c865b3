"""The engine's local task queue, shared by its control and main threads."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

import attr


@attr.s(slots=True, frozen=True)
class QueuedTask:
    id: str = attr.ib()
    payload: bytes = attr.ib(repr=False)


class TaskQueue:
    """FIFO of tasks with removal by id; ``get`` returns None once closed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: "OrderedDict[str, QueuedTask]" = OrderedDict()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, task: QueuedTask) -> bool:
        with self._cond:
            if self._closed:
                return False
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
            return self._items.popitem(last=False)[1]

    def remove(self, task_id: str) -> bool:
        with self._cond:
            return self._items.pop(task_id, None) is not None

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
