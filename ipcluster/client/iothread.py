"""How the blocking client's calling threads hand envelopes to its I/O thread.

The calling threads append whole envelopes to an :class:`Outbox` (a list under
a lock); the first one appended to an empty outbox also sends one empty wake-up
message on an inproc pipe, which the I/O thread polls with its dealer.  So a
burst of submits costs one pipe message, not one per envelope: each ZeroMQ
call releases the GIL and hands it to the other thread, which is what a task's
client CPU went to.  The I/O thread takes what waits at once
(:meth:`Outbox.take`) and sends it to the controller as few messages as fit
(``transport.batch``): many submits made while it was busy go as one batch,
and a lone request goes as it is, at once -- nothing waits to be batched.
"""
from __future__ import annotations

import threading
import zmq

from ipcluster.transport.batch import MAX_ENVELOPES, packed
from ipcluster.transport.zmqfast import send_frames

#: What :meth:`Outbox.close` puts after the last envelope: the I/O thread stops there.
CLOSE = object()


class Closed(Exception):
    """The outbox was closed: nothing more goes to the I/O thread."""


class Outbox:
    """Envelopes waiting for the I/O thread, and the pipe that wakes it for them.

    ``wake`` is the calling threads' end of the pipe (a bound PAIR socket);
    only :meth:`put` and :meth:`close` use it, under the outbox's lock.
    """

    def __init__(self, wake: zmq.Socket) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._waiting: list = []
        self._woken = False  # a wake-up is on the pipe, not yet taken
        self.closed = False

    def put(self, frames: list) -> None:
        """Hand ``frames`` (one envelope) to the I/O thread; :class:`Closed` once closed."""
        with self._lock:
            if self.closed:
                raise Closed()
            self._waiting.append(frames)
            self._wake_up()

    def close(self) -> bool:
        """Let the I/O thread send what waits, then stop; False if closed already."""
        with self._lock:
            if self.closed:
                return False
            self.closed = True
            self._waiting.append(CLOSE)
            self._wake_up()
            return True

    def _wake_up(self) -> None:
        if not self._woken:
            self._woken = True
            self._wake.send(b"")

    def release(self) -> None:
        """Close the calling threads' end of the pipe (once the I/O thread is done)."""
        with self._lock:
            self._wake.close(0)

    def take(self, pipe: zmq.Socket, limit: int) -> tuple[list, bool]:
        """(The I/O thread.)  Up to ``limit`` waiting envelopes, and whether the outbox stays
        open after them (False once :data:`CLOSE` is reached: what came before it is taken)."""
        while True:  # the wake-ups on the pipe (normally one)
            try:
                pipe.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        with self._lock:
            taken = self._waiting[:limit]
            del self._waiting[:limit]
            if self._waiting:
                # More than a turn's worth: wake ourselves again, so the dealer is read in between.
                self._wake.send(b"")
            else:
                self._woken = False
        if taken and taken[-1] is CLOSE:  # (always the last: nothing is put after it)
            return taken[:-1], False
        return taken, True


def forward_waiting(outbox: Outbox, pipe: zmq.Socket, dealer: zmq.Socket, max_size: int,
                    limit: int = 4 * MAX_ENVELOPES) -> bool:
    """Send on ``dealer`` what waits in ``outbox`` (at most ``limit`` envelopes this call), batched.

    Returns False when the outbox was closed (what came before the close is sent first).
    """
    waiting, open_ = outbox.take(pipe, limit)
    for message in packed(waiting, max_size):
        send_frames(dealer, message, 0)
    return open_

