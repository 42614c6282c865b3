"""Logging of dropped bad input that cannot flood the log.

A flood of garbage must cost a few log lines, not one per message: each
``window`` seconds the first ``burst`` drops are logged one by one, the rest
are counted and summed up in one line when the window closes.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ipcluster.transport.wire import BadMessage


class DropLog:
    """Counts and logs dropped messages with a per-window rate limit."""

    log = Logger()

    def __init__(self, clock: IReactorTime, burst: int = 10, window: float = 10.0) -> None:
        self.clock = clock
        self.burst = burst
        self.window = window
        self.totals: Counter = Counter()
        self._logged = 0
        self._suppressed: Counter = Counter()
        self._flush_call: Optional[IDelayedCall] = None

    def drop(self, channel: str, reason: str, peer: bytes = b"", detail: str = "") -> None:
        """Record one dropped message (and log it, unless this window is full)."""
        self.totals[(channel, reason)] += 1
        if self._flush_call is None:
            self._logged = 0
            self._flush_call = self.clock.callLater(self.window, self.flush)
        if self._logged < self.burst:
            self._logged += 1
            self.log.warn(
                "dropped message on {channel} socket from {peer}: {reason}{detail}",
                channel=channel,
                peer=peer[:40],
                reason=reason,
                detail=f" ({detail})" if detail else "",
            )
        else:
            self._suppressed[(channel, reason)] += 1

    def decode(self, codec, channel: str, frames: list, accept: frozenset):
        """``(identity, message)`` from a ROUTER's frames, or None (the message dropped and logged)."""
        identity = frames[0]
        try:
            return identity, codec.decode(frames[1:], accept)
        except BadMessage as e:
            self.drop(channel, e.reason, identity, e.detail)
            return None

    def flush(self) -> None:
        """Close the window: one summary line for what was not logged one by one."""
        self._flush_call = None
        if self._suppressed:
            summary = ", ".join(f"{n} on {ch} ({why})" for (ch, why), n in sorted(self._suppressed.items()))
            self.log.warn(
                "dropped {count} more bad messages in the last {window:g} s: {summary}",
                count=sum(self._suppressed.values()),
                window=self.window,
                summary=summary,
            )
            self._suppressed.clear()

    def stop(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self.flush()

    @property
    def total(self) -> int:
        return sum(self.totals.values())
