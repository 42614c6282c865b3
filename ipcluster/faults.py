"""Fatal errors of engines: ``faulthandler`` on the engine, its dump kept with the death.

An engine enables :mod:`faulthandler` (:func:`enable`) on its stderr, which is
its log (the controller's log for ``--engines N``, the engine's log file for
``ipcluster engines``): a task that segfaults, aborts or dies of SIGBUS leaves
the Python traceback of every thread there.  A launcher that reads an engine's
stderr feeds it to a :class:`FaultTrail`; when the process dies, the dump is
added to the reason it died (:func:`with_fault`), which is what the engine's
task fails with (``EngineDied: ... while running task T: process killed by
signal 11; Fatal Python error: Segmentation fault ...``).
"""
from __future__ import annotations

import faulthandler
import sys
from collections import deque
from typing import Optional

#: The first line faulthandler writes for a fatal signal.
MARK = "Fatal Python error"
#: At most this many lines of one dump are kept (the stack of a deep recursion is long).
MAX_LINES = 40
#: How many lines of stderr a trail holds while a dump comes in.
KEEP_LINES = 400
#: At most this many characters of one line.
MAX_LINE = 300


def enable() -> None:
    """Dump every thread's Python traceback to stderr on SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL."""
    try:
        faulthandler.enable(file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError):  # no usable stderr (closed, or not a file)
        faulthandler.enable(file=sys.__stderr__, all_threads=True) if sys.__stderr__ else None


class FaultTrail:
    """The last faulthandler dump in a stream of an engine's stderr lines (bounded).

    faulthandler lists the other threads before the one that crashed; the dump
    kept puts the crashed thread's stack (the task's) first, then the others,
    in at most :data:`MAX_LINES` lines.
    """

    def __init__(self) -> None:
        self._lines: deque = deque(maxlen=KEEP_LINES)
        self._in_dump = False

    def feed(self, line: str) -> None:
        if line.startswith(MARK):
            self._lines.clear()
            self._in_dump = True
        if self._in_dump:
            self._lines.append(line[:MAX_LINE])

    @property
    def dump(self) -> Optional[str]:
        """The dump's lines, the crashed thread first, or None if none was seen."""
        if not self._lines:
            return None
        head, blocks = [], []
        for line in list(self._lines):
            if line.startswith(("Thread 0x", "Current thread 0x")):
                blocks.append([line])
            elif blocks:
                blocks[-1].append(line)
            else:
                head.append(line)
        blocks.sort(key=lambda block: not block[0].startswith("Current thread"))
        lines = [line for line in head if line.strip()] + [line for block in blocks for line in block if line.strip()]
        return "\n".join(lines[:MAX_LINES])


def with_fault(why: str, trail: FaultTrail) -> str:
    """``why`` a process ended, with the faulthandler dump it left, if any."""
    dump = trail.dump
    return f"{why}; {dump}" if dump else why
