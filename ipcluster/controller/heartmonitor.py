"""The HeartMonitor: pings every engine's heart and judges liveness.

Each period (beat ``b``) every active engine gets a signed ping to its native
heart (an echo that answers even while the engine's interpreter is held) and,
when its control channel has been quiet long enough to need one, a ``ping`` on
that Python channel.  The period is cut into *slices*: the engines of the
period are split into at most :data:`MAX_SLICES` groups of about
``slice_size``, and each slice runs at its own moment, ``period / slices``
apart, so that no single reactor turn pings them all (1,000 engines are 10
slices of 100).  In its slice, each engine is first judged on the ping it got
a period ago, then pinged again:

* no heart pong for that ping is a *miss*; ``misses`` in a row mean **dead**;
* a heart that answers while the control channel has been silent for
  ``busy_after`` seconds means **busy** (the interpreter is held: a long
  GIL-holding C call) -- never dead;
* a registering engine is pinged as soon as its heart is connected (retried
  every :data:`JOIN_RETRY` s until a ping goes out), counts (joins) at its
  first pong, and is purged if none comes within ``registration_timeout``.

A slice first reads what waits on the heartbeat and control sockets
(``drain``), a bounded amount (:data:`DRAIN_BATCH` messages a socket): if what
arrived before the slice was due may still wait (no read has found the socket
empty since then), it judges nobody yet and runs again a turn later
(:data:`DRAIN_YIELD`), so one turn never reads thousands of pongs, and nobody is
judged while a pong that could prove them alive sits unread.  (Messages that
arrive after the slice was due need not be read: on an idle reactor they
would be too late as well.)  A slice that runs late (the reactor
was blocked, or the drain did not empty the sockets, for more than half a
period) judges nobody in it: the pongs that prove them alive may still sit
unread.  An engine whose last ping went out less than half a period ago is not
judged either (the slices moved when engines came and went).  Every engine is
thus judged at most once per period, and exactly once when nothing runs late.

Control pings are paced by the number of engines: a quiet channel is pinged
once it has been quiet for ``busy_after - 1.5 periods``, or for
``engines / control_ping_rate`` seconds if that is longer, but never more than
:data:`CONTROL_QUIET_MAX`, and the busy threshold grows twice as much
(:attr:`HeartMonitor.busy_after_now`: 1.5 s up to 375 engines at the default
period, 4 s at 1,000, 8 s from 2,000), so that at scale the controller sends
about ``control_ping_rate`` signed control pings a second instead of one per
engine per second.  (Engines take their heart's pings as word from the
controller too, so a quiet control channel does not trip their silence limit.)
A control ping the socket refuses (the engine's control channel is not
connected) holds the next one off for :data:`CONTROL_QUIET_MAX`, once the
engine has been joined that long.  Time comes only from the injected
clock, so all of this is tested with ``twisted.internet.task.Clock``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ipcluster.controller.registry import (
    ACTIVE_STATES, ALIVE, BUSY, REGISTERING, EngineEvent, EngineRecord, Registry,
)
from ipcluster.transport.wire import BadMessage, PingCodec

DEFAULT_PERIOD = 0.5
DEFAULT_MISSES = 3
#: Engines one slice of a period pings, about (fewer slices when there are fewer engines).
DEFAULT_SLICE_SIZE = 100
#: Most slices a period is cut into.
MAX_SLICES = 128
#: Messages a slice's drain reads from each socket before it yields to the reactor.
DRAIN_BATCH = 200
#: Seconds a slice whose drain left messages waiting yields before it reads on: the reactor's
#: other work runs meanwhile, and a socket that keeps saying it has more cannot spin the loop.
DRAIN_YIELD = 0.001
#: Control pings a second the monitor aims at, all engines together (fewer engines: fewer pings):
#: beyond 375 engines at the defaults their quiet grows (2 s at 1,000 engines, 4 s, the most, from 2,000).  Each
#: is a signed message each way, on top of two heart messages per engine per period: at 4,000 a
#: second, 1,000 engines cost the controller 15% of a core where a bare ping loop costs 7%.
CONTROL_PING_RATE = 500.0
#: Longest quiet before a control ping, whatever the pacing or ``busy_after``: a busy engine is
#: seen within about twice this.  (The engines' own silence limit, 5 s, does not depend on it:
#: they also count the pings their heart echoes as word from the controller.)
CONTROL_QUIET_MAX = 4.0
#: Seconds between attempts to ping registering engines whose heart is not connected yet
#: (doubled after each round in which none connected, up to JOIN_RETRY_MAX).
JOIN_RETRY = 0.002
JOIN_RETRY_MAX = 0.064


class HeartMonitor:
    """Liveness of every engine from heart pongs and control-channel traffic."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        registry: Registry,
        pings: PingCodec,
        send_heart: Callable[[bytes, bytes], bool],
        send_control_ping: Callable[[EngineRecord, int], Optional[bool]],
        period: float = DEFAULT_PERIOD,
        misses: int = DEFAULT_MISSES,
        busy_after: Optional[float] = None,
        registration_timeout: float = 10.0,
        drain: Optional[Callable[[float], Optional[bool]]] = None,
        slice_size: int = DEFAULT_SLICE_SIZE,
        control_ping_rate: float = CONTROL_PING_RATE,
        sending: Callable[[], ContextManager] = contextlib.nullcontext,
    ) -> None:
        if period <= 0:
            raise ValueError("heartbeat period must be positive")
        if misses < 1:
            raise ValueError("heartbeat misses must be at least 1")
        if slice_size < 1:
            raise ValueError("heartbeat slice size must be at least 1")
        if control_ping_rate <= 0:
            raise ValueError("control ping rate must be positive")
        self.clock = clock
        self.registry = registry
        self.pings = pings
        self.send_heart = send_heart
        self.send_control_ping = send_control_ping
        self.period = period
        self.misses = misses
        self.busy_after = busy_after if busy_after is not None else max(1.0, 3 * period)
        # A control ping is skipped while the channel spoke this recently: the next slice,
        # a period on, still judges it quiet for less than busy_after (with half a period spare).
        self._base_quiet = self.busy_after - 1.5 * period
        self._control_quiet = min(self._base_quiet, CONTROL_QUIET_MAX)
        #: The busy threshold in force: ``busy_after``, or more when control pings are paced out.
        self.busy_after_now = self.busy_after
        self.control_ping_rate = control_ping_rate
        self.registration_timeout = registration_timeout
        #: ``drain(since)`` reads (a bounded amount of) what waits; False if messages that arrived
        #: before ``since`` (the slice's due time) may still wait unread.
        self.drain = drain
        #: ``with sending():`` brackets a slice's pings (the sockets look for waiting messages
        #: once at its end, not after each send).
        self.sending = sending
        #: Slices put off to the next reactor turn because pongs still waited unread.
        self.drain_waits = 0
        self.slice_size = slice_size
        self.beat = 0
        #: Slices that ran late (and judged nobody); a period's worth counts once in the log.
        self.late_ticks = 0
        self._period_start = 0.0
        self._engines: list[EngineRecord] = []  # this period's engines, in slice order
        self._slices = 1
        self._next_slice = 0
        self._call: Optional[IDelayedCall] = None
        self._joining: dict[bytes, EngineRecord] = {}  # registering engines not yet pinged
        self._join_call: Optional[IDelayedCall] = None
        self._join_delay = JOIN_RETRY
        self._late = False

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self.registry.subscribe(self._registry_event)
        for record in self.registry.active():
            if record.state == REGISTERING:
                self._joining[record.identity] = record
        self._period_start = self.clock.seconds() - self.period  # so that the first period begins now
        self._slices = self._next_slice = 1
        self._run_slice()
        self._ping_joining()

    def stop(self) -> None:
        self.registry.unsubscribe(self._registry_event)
        for call in (self._call, self._join_call):
            if call is not None and call.active():
                call.cancel()
        self._call = self._join_call = None
        self._joining.clear()

    # -- the slices of a period ----------------------------------------------

    def _begin_period(self, start: float) -> None:
        self.beat += 1
        self._period_start = start
        self._engines = self.registry.active()
        n = len(self._engines)
        self._slices = min(MAX_SLICES, max(1, -(-n // self.slice_size)))
        self._next_slice = 0
        self._pace_control(n)

    def _pace_control(self, n: int) -> None:
        """Space control pings so that ``n`` quiet engines get about ``control_ping_rate`` a second."""
        # Never quieter than CONTROL_QUIET_MAX, whatever busy_after says.
        quiet = min(max(self._base_quiet, n / self.control_ping_rate), CONTROL_QUIET_MAX)
        if quiet != self._control_quiet:
            self._control_quiet = quiet
            # The control round trip gets more room too (as much again as the pings were spaced out):
            # at scale a late control pong is the controller's or the engines' load, and every false
            # busy costs an alive-again event (the scheduler's refill) when the pong comes.
            self.busy_after_now = self.busy_after + 2 * max(0.0, quiet - self._base_quiet)
            self.log.info(
                "{n} engines: control pings after {quiet:.2f} s of quiet, busy after {busy:.2f} s",
                n=n, quiet=quiet, busy=self.busy_after_now,
            )

    def _run_slice(self) -> None:
        self._call = None
        if self._next_slice >= self._slices:
            self._begin_period(self._period_start + self.period)
        k = self._next_slice
        try:
            ran = self.tick()
        except Exception:
            # Never let one bad slice end liveness checking for good.
            self.log.failure("heart monitor slice failed")
            ran, self._next_slice = True, max(self._next_slice, k + 1)
        if not ran:
            # Pongs still wait unread: read on at the next turn, after the reactor's other work.
            self.drain_waits += 1
            self._call = self.clock.callLater(DRAIN_YIELD, self._run_slice)
            return
        now = self.clock.seconds()
        if self._late:
            # The slice ran late: the rest of the period is scheduled from now.
            self._period_start = now - (self._next_slice - 1) * self.period / self._slices
        due = self._due(self._next_slice)
        self._call = self.clock.callLater(max(0.0, due - now), self._run_slice)

    def _due(self, k: int) -> float:
        return self._period_start + k * self.period / self._slices

    def tick(self) -> bool:
        """Run the period's next slice now: read what waits, judge its engines, then ping them.

        False if the bounded read left messages waiting and the slice is not late: it
        judged nobody and is to run again soon (after the reactor's other work)."""
        now = self.clock.seconds()
        k = self._next_slice
        late = now - self._due(k) > self.period / 2
        # Read pongs and control traffic that arrived while we were busy before judging anyone.
        if self.drain is not None and self.drain(self._due(k)) is False and not late:
            return False
        self._next_slice += 1
        self._note_late(late, now - self._due(k))
        n = len(self._engines)
        lo, hi = k * n // self._slices, (k + 1) * n // self._slices
        with self.sending():
            self._ping_slice(self._engines[lo:hi], now, late)
        return True

    def _ping_slice(self, records: list, now: float, late: bool) -> None:
        ping = self.pings.ping
        send_heart = self.send_heart
        beat = self.beat
        for record in records:
            if record.state not in ACTIVE_STATES or self.registry.by_identity(record.identity) is not record:
                continue  # gone since the period began
            if not late and not self._judge(record, now):
                continue  # judged dead or purged
            data = ping(record.identity, beat, now)
            # A ping the ROUTER refuses (the heart disconnected) counts as sent: it goes unanswered.
            record.ping_beat, record.pinged_at, record.ping = beat, now, data
            if send_heart(record.identity, data) and self._joining:
                self._joining.pop(record.identity, None)
            if record.state != REGISTERING and (
                record.last_control_at is None or now - record.last_control_at >= self._control_quiet
            ):
                self._control_ping(record, beat, now)

    def _note_late(self, late: bool, lag: float) -> None:
        if late:
            self.late_ticks += 1
            if not self._late:
                self.log.warn(
                    "heart monitor ran {lag:.2f} s late (reactor busy); not counting misses this period", lag=lag
                )
        self._late = late

    def _control_ping(self, record: EngineRecord, beat: int, now: float) -> None:
        if now < record.control_ping_due:
            return  # its last one was refused: its control channel is not connected
        asked, last = record.control_asked_at, record.last_control_at
        if asked is None or (last is not None and asked <= last):
            record.control_asked_at = now  # the first question since it last spoke
        refused = self.send_control_ping(record, beat) is False
        if refused and record.joined_at is not None and now - record.joined_at > CONTROL_QUIET_MAX:
            # (A newly joined engine's control channel may still be connecting: it is asked every beat.)
            record.control_ping_due = now + CONTROL_QUIET_MAX

    def _judge(self, record: EngineRecord, now: float) -> bool:
        """Judge one engine on its last ping; False if it is gone (dead or purged)."""
        if record.state == REGISTERING:
            if now - record.registered_at > self.registration_timeout:
                self.registry.remove(
                    record,
                    f"no heartbeat within {self.registration_timeout:g} s of registering",
                    now,
                    event=EngineEvent.PURGED,
                )
                return False
            return True
        if record.pinged_at is None or now - record.pinged_at < self.period / 2:
            return True  # not pinged, or too recently to tell
        if record.last_pong_beat < record.ping_beat:
            record.misses += 1
            if record.misses >= self.misses:
                self.registry.mark_dead(
                    record,
                    f"heart silent for {record.misses} beats "
                    f"({self.period * record.misses:.1f} s at {self.period:g} s a beat)",
                    now,
                )
                return False
        else:
            record.misses = 0
        last = record.last_control_at if record.last_control_at is not None else record.joined_at
        if record.state == ALIVE and last is not None and now - last > self.busy_after_now and self._unanswered(
            record, last, now
        ):
            task = f" running task {record.running_task}" if record.running_task else ""
            self.registry.mark_busy(record, last, f"heart answers, control silent for {now - last:.1f} s{task}")
        return True

    def _unanswered(self, record: EngineRecord, last: float, now: float) -> bool:
        """Whether a control ping has gone unanswered long enough to call the engine busy.

        On time, the first ping since it spoke goes out ``busy_after - 1.5 periods`` (or its paced
        quiet) after, so this adds nothing; when slices ran late and the ping went out late, the
        engine is not blamed for the controller's delay."""
        asked = record.control_asked_at
        room = self.busy_after_now - self._control_quiet - self.period
        return asked is not None and asked > last and now - asked > room

    # -- registering engines are pinged at once ------------------------------

    def _registry_event(self, event: EngineEvent, record: EngineRecord, reason: str) -> None:
        if event == EngineEvent.REGISTERING:
            self._joining[record.identity] = record
            if self._join_call is None:  # else the retry already due will ping it
                self._join_delay = JOIN_RETRY
                self._join_call = self.clock.callLater(0, self._ping_joining)

    def _ping_joining(self) -> None:
        """Ping each registering engine not pinged yet; retry soon those whose heart is not connected."""
        self._join_call = None
        now = self.clock.seconds()
        sent = False
        for identity, record in list(self._joining.items()):
            if record.state != REGISTERING or now - record.registered_at > self.registration_timeout:
                del self._joining[identity]  # joined, gone, or left to the slices to purge
                continue
            data = self.pings.ping(identity, self.beat, now)
            if self.send_heart(identity, data):
                record.ping_beat, record.pinged_at, record.ping = self.beat, now, data
                del self._joining[identity]
                sent = True
        # Back off while no heart connects (a registration storm must not spin the reactor).
        self._join_delay = JOIN_RETRY if sent else min(2 * self._join_delay, JOIN_RETRY_MAX)
        if self._joining and self._join_call is None:
            self._join_call = self.clock.callLater(self._join_delay, self._ping_joining)

    # -- input ---------------------------------------------------------------

    def pong_received(self, identity: bytes, data: bytes) -> None:
        """An echoed ping came back from routing token ``identity``; raises BadMessage if it is not valid."""
        record = self.registry.by_identity(identity)
        if record is None or record.state not in (REGISTERING, ALIVE, BUSY):
            raise BadMessage("pong from unknown engine")
        if data == record.ping:  # the last ping sent to it: no need to check its signature again
            beat, sent = record.ping_beat, record.pinged_at
        else:
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
