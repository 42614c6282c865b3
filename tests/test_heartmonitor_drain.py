"""The HeartMonitor's bounded drain and its paced control pings, on task.Clock.

A slice reads a bounded amount of what waits; while more waits it judges nobody and runs
again a reactor turn later (``DRAIN_YIELD``), unless it is late, when it judges nobody
anyway.  Control pings are spaced by the number of engines (and the busy threshold with
them); a refused control ping holds the next one off."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.controller.heartmonitor import CONTROL_QUIET_MAX, HeartMonitor
from ipcluster.controller.registry import ALIVE, BUSY, DEAD, Registry
from ipcluster.transport.wire import BadMessage, PingCodec

KEY = b"k" * 32
PERIOD = 0.5


class DrainTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.registry = Registry()
        self.pings = PingCodec(KEY)
        self.waiting = []  # (identity, ping): pongs that sit in the socket until drained
        self.per_drain = None  # pongs one drain call reads (None: all)
        self.drains = []  # clock time of each drain call
        self.control = []  # (time, engine id)
        self.refuse_control = set()  # engine ids whose control channel is not connected
        self.monitor = self.make_monitor()

    def make_monitor(self, **kwargs):
        monitor = HeartMonitor(
            self.clock, self.registry, self.pings, self.send_heart, self.send_control, period=PERIOD,
            drain=self.drain, **kwargs
        )
        self.addCleanup(monitor.stop)
        return monitor

    def send_heart(self, identity, ping):
        self.waiting.append((identity, ping))  # the heart answers at once; the pong waits to be read
        return True

    def send_control(self, record, beat):
        self.control.append((self.clock.seconds(), record.id))
        if record.id in self.refuse_control:
            return False
        self.monitor.control_seen(record)  # its pong comes back at once
        return True

    def drain(self, since=None):
        """Read up to ``per_drain`` waiting pongs; False if some still wait."""
        self.drains.append(self.clock.seconds())
        n = len(self.waiting) if self.per_drain is None else self.per_drain
        read, self.waiting = self.waiting[:n], self.waiting[n:]
        for identity, ping in read:
            try:
                self.monitor.pong_received(identity, ping)
            except BadMessage:  # a dead engine's late pong: the socket's handler drops it
                pass
        return not self.waiting

    def engines(self, n):
        records = [
            self.registry.register(f"e{i}", "i", "host", 1, 0.0, identity=f"e{i}".encode()) for i in range(n)
        ]
        self.monitor.start()
        self.drain()
        self.assertEqual({r.state for r in records}, {ALIVE})
        return records

    def turns(self, seconds, dt=0.01):
        """Advance in small steps, with the reactor turns (``callLater(0)``) of each step."""
        for _ in range(int(round(seconds / dt))):
            self.clock.advance(dt)
            for _ in range(1000):
                if not any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                    break
                self.clock.advance(0)

    # -- bounded drain -----------------------------------------------------------

    def test_a_slice_waits_for_what_the_drain_left(self):
        """Nobody is judged while pongs still wait: the slice runs again on the next turn."""
        records = self.engines(300)  # 3 slices of 100
        self.per_drain = 40
        self.turns(10 * PERIOD)
        self.assertEqual({r.state for r in records}, {ALIVE}, "no false death")
        self.assertEqual({r.misses for r in records}, {0})
        self.assertGreater(self.monitor.drain_waits, 0)
        self.assertEqual(self.monitor.late_ticks, 0)

    def test_without_waiting_the_same_drain_kills(self):
        """The control: judging after one bounded read would count misses on pongs still unread."""
        records = self.engines(300)
        self.per_drain = 40
        self.monitor.drain = lambda since: (self.drain(), None)[1]  # a drain that does not say more waits
        self.turns(10 * PERIOD)
        self.assertIn(DEAD, {r.state for r in records})

    def test_a_drain_that_never_empties_makes_the_slice_late(self):
        """A flood: the slice gives up waiting at half a period and judges nobody, but still pings."""
        records = self.engines(2)
        self.turns(2 * PERIOD)
        self.monitor.drain = lambda since: (self.drains.append(self.clock.seconds()), False)[1]
        self.drains = []
        sent = len(self.waiting)
        self.turns(2 * PERIOD)
        self.assertGreater(self.monitor.late_ticks, 0)
        self.assertEqual({r.misses for r in records}, {0}, "late slices judge nobody")
        self.assertGreater(len(self.waiting), sent, "pings still go out")
        self.assertLessEqual(len(self.drains), 2 * PERIOD / 0.01 + 1, "bounded: one drain a turn, no spin")
        self.monitor.drain = self.drain
        self.turns(4 * PERIOD)
        self.assertEqual({r.state for r in records}, {ALIVE})

    def test_a_hung_engine_is_still_found_while_drains_are_cut(self):
        records = self.engines(300)
        self.per_drain = 50
        self.turns(2 * PERIOD)
        hung = records[150]
        since = self.clock.seconds()
        real = self.send_heart

        def send_heart(identity, ping):
            return True if identity == hung.identity else real(identity, ping)

        self.monitor.send_heart = send_heart
        self.turns(5 * PERIOD)
        self.assertEqual(hung.state, DEAD)
        self.assertLessEqual(hung.ended_at - since, 4 * PERIOD + 0.02)
        self.assertEqual(sum(r.state == DEAD for r in records), 1, "no false death")

    def test_a_failing_slice_still_moves_on(self):
        self.engines(300)
        self.turns(PERIOD)
        self.monitor.drain = lambda since: 1 / 0
        self.turns(PERIOD)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 3, "one failure a slice, no spin")

    # -- paced control pings -------------------------------------------------------

    def control_gaps(self, engine_id):
        times = [t for t, e in self.control if e == engine_id]
        return [round(b - a, 3) for a, b in zip(times, times[1:])]

    def test_control_pings_are_paced_by_the_engine_count(self):
        self.monitor = self.make_monitor(control_ping_rate=2.0)  # 3 engines: 1.5 s between pings
        records = self.engines(3)
        self.turns(12 * PERIOD)
        self.assertEqual(self.monitor.busy_after_now, 1.5 + 2 * (1.5 - 0.75), "the round trip's room grows too")
        self.assertTrue(set(self.control_gaps("e0")[1:]) <= {1.5, 2.0}, self.control_gaps("e0"))
        self.assertEqual({r.state for r in records}, {ALIVE}, "paced pings make nobody busy")

    def test_pacing_is_capped_below_the_engines_silence_limit(self):
        self.monitor = self.make_monitor(control_ping_rate=0.01)
        records = self.engines(3)
        self.turns(4 * CONTROL_QUIET_MAX)
        self.assertEqual(self.monitor.busy_after_now, 1.5 + 2 * (CONTROL_QUIET_MAX - 0.75))
        self.assertLessEqual(max(self.control_gaps("e1")), CONTROL_QUIET_MAX + PERIOD)
        self.assertEqual({r.state for r in records}, {ALIVE})

    def test_a_long_busy_after_still_pings_within_the_engines_silence_limit(self):
        """--busy-after 8: judged busy after 8 s, but a quiet engine still hears from the controller
        every CONTROL_QUIET_MAX (its own silence limit is 5 s)."""
        self.monitor = self.make_monitor(busy_after=8.0)
        records = self.engines(3)
        self.turns(20 * PERIOD)
        gaps = self.control_gaps("e1")
        self.assertTrue(gaps and max(gaps) <= CONTROL_QUIET_MAX + PERIOD, gaps)
        self.assertEqual(self.monitor.busy_after_now, 8.0)
        quiet = records[0]
        self.monitor.send_control_ping = lambda record, beat: record is not quiet and self.send_control(record, beat)
        since = quiet.last_control_at
        self.turns(14 * PERIOD)
        self.assertEqual(quiet.state, ALIVE, "silent for 7 s: not yet busy")
        self.turns(4 * PERIOD)
        self.assertEqual(quiet.state, BUSY)
        self.assertGreater(self.clock.seconds() - since, 8.0)

    def test_few_engines_keep_busy_after(self):
        self.engines(10)
        self.turns(4 * PERIOD)
        self.assertEqual(self.monitor.busy_after_now, self.monitor.busy_after)

    def test_a_silent_control_channel_is_busy_after_the_paced_threshold(self):
        self.monitor = self.make_monitor(control_ping_rate=2.0)
        records = self.engines(3)
        self.turns(4 * PERIOD)
        quiet = records[0]
        self.monitor.send_control_ping = lambda record, beat: record is not quiet and self.send_control(record, beat)
        since = quiet.last_control_at
        self.turns(10 * PERIOD)
        self.assertEqual(quiet.state, BUSY)
        self.assertGreater(quiet.busy_since and self.clock.seconds() - since, self.monitor.busy_after_now)
        self.assertEqual({r.state for r in records[1:]}, {ALIVE})

    def test_a_refused_control_ping_holds_off_the_next(self):
        """A heart without a control connection: busy, never dead, pinged on control seldom."""
        records = self.engines(2)
        self.refuse_control = {"e0"}
        self.control = []
        self.turns(4 * CONTROL_QUIET_MAX)
        self.assertEqual(records[0].state, BUSY)
        self.assertEqual(records[1].state, ALIVE)
        gaps = self.control_gaps("e0")[-2:]  # once joined CONTROL_QUIET_MAX ago (before: every beat)
        self.assertTrue(gaps and min(gaps) >= CONTROL_QUIET_MAX, gaps)
        self.assertLessEqual(max(gaps), CONTROL_QUIET_MAX + PERIOD)
        self.refuse_control = set()  # it connects: it is alive again
        self.turns(CONTROL_QUIET_MAX + 2 * PERIOD)
        self.assertEqual(records[0].state, ALIVE)

    def test_an_engine_is_not_blamed_for_a_control_ping_sent_late(self):
        """Quiet for longer than busy_after because the controller did not ask: not busy; once
        asked and silent for the round trip's room, busy."""
        records = self.engines(2)
        self.turns(4 * PERIOD)
        quiet = records[0]
        asked = []

        def send_control(record, beat):
            if record is quiet:
                asked.append(self.clock.seconds())
                return True  # sent, never answered
            return self.send_control(record, beat)

        quiet.control_ping_due = 1e9  # the controller asks nothing (as when its slices fall behind)
        self.turns(8 * PERIOD)
        self.assertGreater(self.clock.seconds() - quiet.last_control_at, 2 * self.monitor.busy_after)
        self.assertEqual(quiet.state, ALIVE, "never asked since it spoke: not busy")
        self.monitor.send_control_ping = send_control
        quiet.control_ping_due = 0.0
        self.turns(PERIOD)
        self.assertEqual(quiet.state, ALIVE, "asked, but it has not had the room to answer")
        self.turns(2 * PERIOD)
        self.assertEqual(quiet.state, BUSY)
        self.assertGreater(quiet.busy_since, 0)
        self.assertEqual(records[1].state, ALIVE)

    def test_a_newly_joined_engine_is_asked_every_beat_while_its_control_channel_connects(self):
        records = self.engines(2)
        self.refuse_control = {"e0"}
        self.control = []
        self.turns(CONTROL_QUIET_MAX - PERIOD)
        early = [t for t, e in self.control if e == "e0"]
        self.assertTrue(early and max(self.control_gaps("e0")) <= PERIOD + 0.01, self.control_gaps("e0"))
        self.refuse_control = set()  # connected 1.5 s after joining: heard at the next beat
        self.turns(2 * PERIOD)
        self.assertEqual(records[0].state, ALIVE)
        self.assertGreater(records[0].last_control_at, early[-1])
