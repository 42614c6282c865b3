"""Waiting in a command: bounded polls, and dots on the terminal while they last.

The commands are plain blocking programs (no reactor), so they wait by
polling; :class:`Deadline` bounds every such wait and :class:`Progress` shows
that something is happening.  Both take their clock (and ``Deadline`` its
sleep) as arguments so that tests drive them with ``task.Clock``.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, TextIO, TypeVar

T = TypeVar("T")


class Progress:
    """``MESSAGE....... done`` on a stream: a dot a second while something slow happens.

    As a context manager it ends the line with `` done``, or with `` failed``
    when the block raises.
    """

    def __init__(self, stream: TextIO, message: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.last = clock()
        stream.write(message)
        stream.flush()

    def tick(self) -> None:
        """A dot, if a second has passed since the last one."""
        now = self.clock()
        if now - self.last >= 1.0:
            self.last = now
            self.stream.write(".")
            self.stream.flush()

    def done(self, message: str = " done") -> None:
        """End the line with ``message``."""
        self.stream.write(message + "\n")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.done(" done" if exc_type is None else " failed")
        return False


class Deadline:
    """A point ``seconds`` from now on ``clock``, and polls bounded by it."""

    def __init__(
        self,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self.sleep = sleep
        self.at = clock() + seconds

    def left(self) -> float:
        """Seconds until the deadline (negative once passed)."""
        return self.at - self.clock()

    def passed(self) -> bool:
        return self.clock() > self.at

    def wait_until(
        self,
        ready: Callable[[], Optional[T]],
        expired: Callable[[], BaseException],
        progress: Optional[Progress] = None,
        interval: float = 0.1,
    ) -> T:
        """Call ``ready`` every ``interval`` seconds until it returns something other than None; return that.

        Past the deadline, raise ``expired()``.  ``ready`` raises itself when
        waiting longer is pointless (the process it waits for has died).
        """
        while True:
            value = ready()
            if value is not None:
                return value
            if self.passed():
                raise expired()
            if progress is not None:
                progress.tick()
            self.sleep(interval)
