"""Work for the end of the reactor's turn, all of it in one pass.

``reactor.callLater(0, f)`` runs ``f`` on the reactor's next turn; a ``callLater(0)``
made by that ``f`` waits for the turn after it, with a poll in between.  The
controller chains two such steps for every result -- the task store commits the
turn's writes, then the client outbox sends what those commits released -- so
each result waited a whole extra turn.  A :class:`Soon` is one ``callLater(0)``
for all the jobs given to it before it runs, and a job added while it runs
(the outbox flush that a commit asks for) runs in the same pass, after the jobs
before it.  At most :data:`MOST_A_PASS` jobs run a pass; the rest wait for the
next turn, so that a job that keeps adding jobs cannot hold the reactor.

:meth:`Soon.now` runs the pass at once, if one is due: the controller's
sockets call it when a read found its socket empty (``after_read``), so the
commit and the replies that message asked for go out before the reactor goes
back to its loop -- a lone result does not wait for the reactor's timer pass.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

MOST_A_PASS = 10_000


class Soon:
    """``soon(job)``: run ``job()`` at the end of this reactor turn (see the module docstring)."""

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._jobs: deque = deque()
        self._call = None
        self._running = False  # (a job added during a pass is run by that pass)

    def __call__(self, job: Callable[[], object]) -> None:
        self._jobs.append(job)
        if self._call is None and not self._running:
            self._call = self.clock.callLater(0, self._run)

    def _run(self) -> None:
        self._call = None
        jobs = self._jobs
        self._running = True
        try:
            for _ in range(MOST_A_PASS):
                if not jobs:
                    break
                job = jobs.popleft()
                try:
                    job()
                except Exception:
                    self.log.failure("end-of-turn job {job!r} failed", job=job)
        finally:
            self._running = False
        if jobs and self._call is None:
            self._call = self.clock.callLater(0, self._run)

    def now(self) -> None:
        """Run the pass now if one is due (not from inside a pass: that one goes on by itself)."""
        if self._call is not None and not self._running:
            if self._call.active():
                self._call.cancel()
            self._run()

    def cancel(self) -> None:
        """Forget every job not run yet (the reactor is stopping)."""
        self._jobs.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
