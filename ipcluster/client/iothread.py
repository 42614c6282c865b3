"""How the blocking client's threads share its dealer: a lone request is sent by its caller,
a burst goes through the I/O thread as batches.

The I/O thread holds :attr:`SharedDealer.lock` except while it sleeps, and it sleeps in
``select.poll`` on the dealer's descriptor and a :class:`~ipcluster.transport.wake.Wake`
(:meth:`SharedDealer.sleep`), never inside ZeroMQ, so another thread may use the dealer
meanwhile (ZeroMQ allows a socket to move between threads behind a full memory barrier,
which the lock is).  The engine's control thread shares its task socket the same way.

:meth:`SharedDealer.send` (any thread) sends a *lone* request itself: when nothing waits
in the outbox, the I/O thread sleeps (the lock is free) and the last request was
:data:`LONE_AFTER` ago or more.  That spares a lone task's round trip the I/O thread's
wake-up -- tens of microseconds on a busy machine -- and a hand-over of the GIL.  If that
send left a message readable on the dealer, it took the edge-triggered signal the I/O
thread sleeps on, so the sender sets the wake.

Anything else goes to the :class:`Outbox` (a list under a lock), and the first envelope
put in an empty outbox sets the wake: a burst of submits costs one wake-up, not one per
envelope.  The I/O thread takes what waits at once and sends it as few messages as fit
(``transport.batch``): many submits made while it was busy go as one batch, which is what
keeps the controller's cost per task down.

Order per thread is kept: a thread's request waits in the outbox behind the ones it put
there before, and a direct send happens only with the outbox empty and the lock held, and
the I/O thread takes from the outbox only under the lock, sending all it took before it
lets go.
"""
from __future__ import annotations

import select
import threading
import time
from typing import Callable

import zmq

from ipcluster.transport.batch import MAX_ENVELOPES, packed
from ipcluster.transport.wake import Wake
from ipcluster.transport.zmqfast import readable, send_frames

#: What :meth:`Outbox.close` puts after the last envelope: the I/O thread stops there.
CLOSE = object()

#: A request is *lone* -- its thread sends it itself -- when the one before it was at
#: least this long ago, in seconds.  Closer requests are a burst, batched by the I/O
#: thread.  Measured on the 2-core VM (10,000 submits in a loop, 40-90 us apart): with
#: 30 us up to 68% of a loaded machine's burst went one by one, with 100 us 1-4%, with
#: 300 us 0.3%; a lone task's round trip is 0.8 ms or more, so every one is lone.
LONE_AFTER = 250e-6

#: How many envelopes the I/O thread forwards in one turn before it reads the dealer again.
TURN_LIMIT = 4 * MAX_ENVELOPES


class Closed(Exception):
    """The outbox was closed: nothing more goes to the I/O thread."""


class Outbox:
    """Envelopes waiting for the I/O thread, and the wake that tells it about them."""

    def __init__(self, wake: Wake) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._waiting: list = []
        self._woken = False  # the wake was set for what waits, and the I/O thread has not taken it
        self.closed = False
        #: Envelopes put so far.
        self.puts = 0

    def put(self, frames: list) -> None:
        """Hand ``frames`` (one envelope) to the I/O thread; :class:`Closed` once closed."""
        with self._lock:
            if self.closed:
                raise Closed()
            self._waiting.append(frames)
            self.puts += 1
            self._wake_up()

    def idle(self) -> bool:
        """Whether nothing waits and the outbox is open (a request may go without it)."""
        return not (self._waiting or self.closed)

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
            self._wake.set()

    def take(self, limit: int) -> tuple[list, bool]:
        """(The I/O thread.)  Up to ``limit`` waiting envelopes, and whether the outbox stays
        open after them (False once :data:`CLOSE` is reached: what came before it is taken)."""
        with self._lock:
            taken = self._waiting[:limit]
            del self._waiting[:limit]
            if self._waiting:
                # More than a turn's worth: wake ourselves again, so the dealer is read in between.
                self._wake.set()
            else:
                self._woken = False
        if taken and taken[-1] is CLOSE:  # (always the last: nothing is put after it)
            return taken[:-1], False
        return taken, True


class SharedDealer:
    """The client's dealer, shared by the I/O thread (which holds :attr:`lock` but while it
    sleeps) and the calling threads (:meth:`send`).

    ``max_size`` bounds a batch (the controller's ``--max-message-size``); ``clock`` and
    ``lone_after`` decide what a lone request is.
    """

    def __init__(self, dealer: zmq.Socket, max_size: int, clock: Callable[[], float] = time.monotonic,
                 lone_after: float = LONE_AFTER) -> None:
        self.dealer = dealer
        self.max_size = max_size
        self.lock = threading.Lock()
        self.wake = Wake()
        self.outbox = Outbox(self.wake)
        self._clock = clock
        self._lone_after = lone_after
        self._last = float("-inf")  # when the last request came (a hint: read and written unlocked)
        self._open = True  # the dealer is open (under the lock)
        #: Requests sent by their own thread (those put in the outbox: ``outbox.puts``).
        self.direct = 0

    def send(self, frames: list) -> None:
        """(Any thread.)  Send one envelope to the controller, itself if it is a lone request,
        through the I/O thread otherwise; :class:`Closed` once the outbox is closed."""
        now = self._clock()
        lone = now - self._last >= self._lone_after
        self._last = now
        if lone and self.lock.acquire(False):
            try:
                if self._open and self.outbox.idle():
                    send_frames(self.dealer, frames, 0)
                    self.direct += 1
                    if readable(self.dealer):
                        self.wake.set()  # (this send took the signal the I/O thread sleeps on)
                    return
            finally:
                self.lock.release()
        self.outbox.put(frames)

    def sleep(self, poller: "select.poll", timeout_ms: float) -> None:
        """(The I/O thread, holding the lock.)  Wait on ``poller`` -- the dealer's descriptor and
        the wake, see :meth:`poller` -- with the lock released; clears the wake."""
        self.lock.release()
        try:
            events = poller.poll(timeout_ms)
        finally:
            self.lock.acquire()
        wake_fd = self.wake.fileno()
        if any(fd == wake_fd for fd, _ in events):
            self.wake.clear()

    def poller(self) -> "select.poll":
        """A poll object on the dealer's descriptor (edge-triggered: it only says "look
        again") and the wake."""
        poller = select.poll()
        for fd in (self.dealer.getsockopt(zmq.FD), self.wake.fileno()):
            poller.register(fd, select.POLLIN)
        return poller

    def forward(self, limit: int = TURN_LIMIT) -> bool:
        """(The I/O thread, holding the lock.)  Send what waits in the outbox (at most ``limit``
        envelopes this call), batched; False once the outbox was closed (what came before the
        close is sent first)."""
        waiting, open_ = self.outbox.take(limit)
        for message in packed(waiting, self.max_size):
            send_frames(self.dealer, message, 0)
        return open_

    def shut(self) -> None:
        """(The I/O thread, holding the lock, on its way out.)  Close the dealer: from now on
        every request goes to the outbox."""
        self._open = False
        self.dealer.close(0)

    def release(self) -> None:
        """Close the wake (once the I/O thread is done)."""
        self.wake.close()
