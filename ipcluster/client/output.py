"""Live output on the client: the controller's ``output`` messages, to the futures that watch them.

The client's I/O thread calls :meth:`OutputWatch.received` for each ``output``;
the future of the task (``TaskFuture._output``) keeps the chunk and hands it to
its output callbacks on the client's callback thread.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

from ipcluster.transport.wire import Message

#: ``watcher(stream, text, engine)``.
Watcher = Callable[[str, str, str], None]


class OutputWatch:
    """The watcher of each task's live output, by task id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, Watcher] = {}
        #: ``find(task_id)``: the watcher of a task not :meth:`watch`-ed, or None (the blocking
        #: client finds its pending future: nothing to register at each submit).
        self.find: Callable[[str], Optional[Watcher]] = lambda task_id: None
        #: ``output`` messages for a task nobody watches (finished, or not ours): ignored.
        self.unwatched = 0

    def watch(self, task_id: str, watcher: Watcher) -> None:
        with self._lock:
            self._watchers[task_id] = watcher

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._watchers.pop(task_id, None)

    def received(self, msg: Message) -> None:
        with self._lock:
            watcher = self._watchers.get(msg["task"])
        if watcher is None:
            watcher = self.find(msg["task"])
        if watcher is None:
            self.unwatched += 1
            return
        text = bytes(msg.payloads[0]).decode("utf-8", "replace")
        watcher(str(msg["stream"]), text, str(msg.get("engine") or ""))
