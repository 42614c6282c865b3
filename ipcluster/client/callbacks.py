"""The client's callback thread: done-callbacks run here, in order, off the I/O thread.

The I/O thread completes futures as results arrive; if it ran the futures'
done-callbacks itself, a callback that calls the client (``cancel``,
``submit``, ``result`` of another future) would wait for that very thread to
answer, and deadlock.  So each client has one callback thread: callbacks run
one at a time, in the order their futures completed (and, for one future, in
the order they were added), and a callback that raises is logged, not fatal.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Optional

log = logging.getLogger("ipcluster.client")

_STOP = object()


def call_logged(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn(*args)``; an exception is logged (with its traceback) and goes no further."""
    try:
        fn(*args)
    except Exception:
        log.exception("exception calling callback %r", fn)


class CallbackThread:
    """Runs posted calls one at a time on a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the callback thread (in the caller's, once stopped)."""
        with self._lock:
            if not self._stopped:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
                    self._thread.start()
                self._queue.put((fn, args))
                return
        call_logged(fn, *args)

    def is_current(self) -> bool:
        """Whether the caller is the callback thread (a callback)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def stop(self, wait: bool) -> None:
        """Run what was posted, then end; with ``wait``, return once it has (unless called from a callback)."""
        with self._lock:
            thread = self._thread
            if not self._stopped and thread is not None:
                self._queue.put(_STOP)
            self._stopped = True
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            call_logged(fn, *args)
