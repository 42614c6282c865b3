"""The HeartMonitor: pings every engine's heart and judges liveness.

Each period it sends beat ``b`` to every active engine: a signed ping to its
native heart (an echo that answers even while the engine's interpreter is held)
and a ``ping`` on its Python control channel.  At the next tick:

* no heart pong for the previous beat is a *miss*; ``misses`` in a row mean
  **dead**;
* a heart that answers while the control channel has been silent for
  ``busy_after`` seconds means **busy** (the interpreter is held: a long
  GIL-holding C call) -- never dead;
* a registering engine counts (joins) at its first pong, and is purged if
  none comes within ``registration_timeout``.

A tick that runs late (the reactor was blocked for more than half a period)
judges nobody: the pongs that prove engines alive may still sit unread.
Time comes only from the injected clock, so all of this is tested with
``twisted.internet.task.Clock``.
"""
from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ipcluster.controller.registry import ALIVE, BUSY, REGISTERING, EngineEvent, EngineRecord, Registry
from ipcluster.transport.wire import BadMessage, PingCodec

DEFAULT_PERIOD = 0.5
DEFAULT_MISSES = 3


class HeartMonitor:
    """Liveness of every engine from heart pongs and control-channel traffic."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        registry: Registry,
        pings: PingCodec,
        send_heart: Callable[[bytes, bytes], bool],
        send_control_ping: Callable[[EngineRecord, int], None],
        period: float = DEFAULT_PERIOD,
        misses: int = DEFAULT_MISSES,
        busy_after: Optional[float] = None,
        registration_timeout: float = 10.0,
        drain: Optional[Callable[[], None]] = None,
    ) -> None:
        if period <= 0:
            raise ValueError("heartbeat period must be positive")
        if misses < 1:
            raise ValueError("heartbeat misses must be at least 1")
        self.clock = clock
        self.registry = registry
        self.pings = pings
        self.send_heart = send_heart
        self.send_control_ping = send_control_ping
        self.period = period
        self.misses = misses
        self.busy_after = busy_after if busy_after is not None else max(1.0, 3 * period)
        self.registration_timeout = registration_timeout
        self.drain = drain
        self.beat = 0
        self.late_ticks = 0
        self._last_tick: Optional[float] = None
        self._loop: Optional[LoopingCall] = None

    # -- lifecycle -----------------------------------------------------------

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception:
            # Never let one bad tick end liveness checking for good.
            self.log.failure("heart monitor tick failed")

    def start(self) -> None:
        self._loop = LoopingCall(self._safe_tick)
        self._loop.clock = self.clock
        self._loop.start(self.period, now=True).addErrback(
            lambda f: self.log.failure("heart monitor loop stopped", f)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- the tick ------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock.seconds()
        interval = self.period if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        if self.drain is not None:
            # Read pongs and control traffic that arrived while we were busy before judging anyone.
            self.drain()
        if interval > 1.5 * self.period:
            self.late_ticks += 1
            self.log.warn(
                "heart monitor ran {lag:.2f} s late (reactor busy); not counting misses this period",
                lag=interval - self.period,
            )
        elif interval < 0.5 * self.period:
            # LoopingCall snapped back to its schedule right after a late tick:
            # engines had less than half a period to answer the last ping.
            pass
        else:
            self._judge(now)
        self.beat += 1
        for record in self.registry.active():
            # Each ping carries its own send time: at scale a tick takes a while.
            self.send_heart(record.identity, self.pings.ping(record.identity, self.beat, self.clock.seconds()))
            if record.state != REGISTERING:
                self.send_control_ping(record, self.beat)

    def _judge(self, now: float) -> None:
        previous = self.beat
        for record in self.registry.active():
            if record.state == REGISTERING:
                if now - record.registered_at > self.registration_timeout:
                    self.registry.remove(
                        record,
                        f"no heartbeat within {self.registration_timeout:g} s of registering",
                        now,
                        event=EngineEvent.PURGED,
                    )
                continue
            if record.last_pong_beat < previous:
                record.misses += 1
                if record.misses >= self.misses:
                    self.registry.mark_dead(
                        record,
                        f"heart silent for {record.misses} beats "
                        f"({self.period * record.misses:.1f} s at {self.period:g} s a beat)",
                        now,
                    )
                    continue
            else:
                record.misses = 0
            last = record.last_control_at if record.last_control_at is not None else record.joined_at
            if record.state == ALIVE and last is not None and now - last > self.busy_after:
                task = f" running task {record.running_task}" if record.running_task else ""
                self.registry.mark_busy(
                    record, last, f"heart answers, control silent for {now - last:.1f} s{task}"
                )

    # -- input ---------------------------------------------------------------

    def pong_received(self, identity: bytes, data: bytes) -> None:
        """An echoed ping came back from routing token ``identity``; raises BadMessage if it is not valid."""
        record = self.registry.by_identity(identity)
        if record is None or record.state not in (REGISTERING, ALIVE, BUSY):
            raise BadMessage("pong from unknown engine")
        beat, sent = self.pings.pong(identity, data)
        if beat > self.beat:
            raise BadMessage("pong from the future", f"beat {beat} > {self.beat}")
        now = self.clock.seconds()
        if beat > record.last_pong_beat:
            record.last_pong_beat = beat
            record.last_pong_at = now
            record.rtt = max(0.0, now - sent)
        if record.state == REGISTERING:
            record.last_control_at = now
            self.registry.mark_alive(record, now)

    def control_seen(self, record: EngineRecord) -> None:
        """Any message on the engine's control or task channel: its interpreter runs."""
        now = self.clock.seconds()
        record.last_control_at = now
        if record.state == BUSY:
            self.registry.mark_alive(record, now)
