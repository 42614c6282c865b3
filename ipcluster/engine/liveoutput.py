"""A running task's output, streamed while it runs: what the main thread prints, the control
thread sends as ``output`` messages.

The main thread's ``sys.stdout``/``sys.stderr`` are :class:`LiveStream` s while a task
runs: each write goes to the task's full capture (sent with its result, as
always) and to its :class:`LiveOutput`, which the control thread empties
(:meth:`LiveOutput.take`) at most every :data:`INTERVAL` seconds.  Bounds:

* a task that ends within :data:`INTERVAL` streams nothing (its result has it all):
  small tasks cost no extra message;
* one ``output`` message carries at most :data:`MAX_CHUNK` characters;
* a task streams at most :data:`MAX_STREAMED` characters; past that, one notice,
  and the rest only with the result (memory held here is bounded the same way).
"""
from __future__ import annotations

import io
import threading
import time
from typing import Callable, Optional

#: Seconds between two sends of a task's output (and before its first).
INTERVAL = 0.1
#: Characters in one ``output`` message, at most (UTF-8: 4 bytes each at worst).
MAX_CHUNK = 16 * 1024
#: Characters one task streams, at most.
MAX_STREAMED = 1024 * 1024
TRUNCATED = (
    f"\n[ipcluster: live output stopped after {MAX_STREAMED} characters; the whole output comes with the result]\n"
)


class LiveOutput:
    """What a running task printed and has not streamed yet (main thread writes, control thread takes)."""

    def __init__(self, task_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.task_id = task_id
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list = []  # [stream, text] pairs, adjacent writes of one stream merged
        self._held = 0  # characters streamed or pending
        self._truncated = False
        self._next = clock() + INTERVAL
        #: Whether anything of this task was streamed (then its last output is flushed before its result).
        self.streaming = False

    def restart(self) -> None:
        """The task's function starts now: the first :data:`INTERVAL` counts from here, not from
        the unpickling (the first task of an engine imports cloudpickle, which may take longer)."""
        self._next = self._clock() + INTERVAL

    def add(self, stream: str, text: str) -> None:
        with self._lock:
            room = MAX_STREAMED - self._held
            if room <= 0:
                if not self._truncated:
                    self._truncated = True
                    self._pending.append([stream, TRUNCATED])
                return
            text = text[:room]
            self._held += len(text)
            if self._pending and self._pending[-1][0] == stream:
                self._pending[-1][1] += text
            else:
                self._pending.append([stream, text])

    def take(self, final: bool = False) -> list:
        """``(stream, text)`` chunks to send now: none before :data:`INTERVAL` has passed since
        the last send (or the start); ``final`` (the task ended) flushes a task that streamed."""
        now = self._clock()
        if final and not self.streaming or not final and now < self._next:
            return []
        self._next = now + INTERVAL
        with self._lock:
            pending, self._pending = self._pending, []
        chunks = [(stream, text[i:i + MAX_CHUNK]) for stream, text in pending for i in range(0, len(text), MAX_CHUNK)]
        if chunks:
            self.streaming = True
        return chunks


class LiveStream(io.TextIOBase):
    """A task's ``sys.stdout`` or ``sys.stderr``: the full capture, and the live copy."""

    def __init__(self, name: str, capture: io.StringIO, live: Optional[LiveOutput]) -> None:
        super().__init__()
        self.name = name
        self._capture = capture
        self._live = live

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._capture.write(text)
        if self._live is not None and text:
            self._live.add(self.name, text)
        return len(text)
