"""How a thread wakes a sleeping I/O thread: an eventfd (a pipe where there is none).

An I/O thread that shares its ZeroMQ sockets with other threads under a lock
sleeps in ``select.poll`` on the sockets' descriptors and this one, the lock
released (the engine's control thread, ``engine/control.py``; the blocking
client's, ``client/iothread.py``).  Another thread sets it to hand the I/O
thread work, and when its own send left a message readable: that send took the
edge-triggered signal the I/O thread sleeps on.  Setting it costs one
``write``; :meth:`Wake.clear` reads it empty, however often it was set.

The write keeps the GIL (libc's ``write`` through ``ctypes.PyDLL``, where there is
one): ``os.write`` releases it, and the I/O thread, woken by that very write,
would take it at once, only to find the sockets' lock taken and hand it back.
"""
from __future__ import annotations

import os
import select
from typing import Callable, Optional

_ONE = (1).to_bytes(8, "little")  # (an eventfd takes 8 bytes: the number to add)
_write_keeping_gil: Optional[Callable] = None


def _writer() -> Callable:
    """A ``write(fd, data, size)`` that keeps the GIL; ``os.write`` where ctypes is missing.
    (Looked up with the first result, not at start-up: ctypes takes milliseconds to import.)"""
    global _write_keeping_gil
    if _write_keeping_gil is None:
        try:
            import ctypes

            _write_keeping_gil = ctypes.PyDLL(None).write
        except (ImportError, OSError, AttributeError):  # pragma: no cover
            _write_keeping_gil = lambda fd, data, size: os.write(fd, data)  # noqa: E731
    return _write_keeping_gil


class Wake:
    """A file descriptor that is readable once :meth:`set`, until :meth:`clear`."""

    def __init__(self) -> None:
        self._write: Optional[int]
        if hasattr(os, "eventfd"):
            self._read = self._write = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover (no eventfd outside Linux)
            self._read, self._write = os.pipe()
            os.set_blocking(self._read, False)
            os.set_blocking(self._write, False)
        self.closed = False

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        """Wake the poll (never blocks; a no-op once closed)."""
        if self.closed:
            return
        try:
            (_write_keeping_gil or _writer())(self._write, _ONE, 8)  # (full -- a pipe that is readable already -- is fine)
        except OSError:
            pass

    def clear(self) -> None:
        """Read what was set (the next poll sleeps again)."""
        try:
            os.read(self._read, 4096)
        except OSError:
            pass  # nothing was set

    def wait(self, timeout: float) -> bool:
        """Whether it was set within ``timeout`` seconds."""
        readable, _, _ = select.select([self._read], [], [], max(0.0, timeout))
        return bool(readable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        os.close(self._read)
        if self._write != self._read:
            os.close(self._write)
