"""Replay windows: each signed message's sequence number is accepted once.

Every envelope carries its sender's session (``s``) and a sequence number
(``n``) inside the signed header.  A receiver keeps, per session and socket,
a :class:`ReplayWindow`: the highest number seen and a bitmap of the
:data:`WINDOW` numbers below it.  A number above the highest is new; one within
the window is new unless its bit is set; anything older is refused, because it
can no longer be told from a replay.  Senders number their messages from one
counter, so a receiver sees increasing numbers with gaps (the messages that went
to other peers or sockets) and, at most, a little reordering between the
threads of one sender -- far less than the window.

This is the anti-replay window of IPsec (RFC 4303, 3.4.3) with a 1,024-message
bitmap held in one Python int.
"""
from __future__ import annotations

#: How far below the highest number a late message is still accepted.
WINDOW = 1024
_MASK = (1 << WINDOW) - 1


class ReplayWindow:
    """Accepts each sequence number at most once; refuses those older than the window."""

    __slots__ = ("highest", "_seen")

    def __init__(self) -> None:
        #: The highest number accepted so far (0: none yet).
        self.highest = 0
        # Bit i set: number ``highest - i`` was accepted.
        self._seen = 0

    def accept(self, n: int) -> bool:
        """Whether ``n`` (>= 1) is new; if so it is recorded and will not be accepted again."""
        if n > self.highest:
            jump = n - self.highest
            # (A jump past the window clears it: shifting by a huge jump would cost huge memory.)
            self._seen = ((self._seen << jump) | 1) & _MASK if jump < WINDOW else 1
            self.highest = n
            return True
        age = self.highest - n
        if age >= WINDOW or n < 1:
            return False
        bit = 1 << age
        if self._seen & bit:
            return False
        self._seen |= bit
        return True

    def __repr__(self) -> str:
        return f"<ReplayWindow highest={self.highest}>"

