"""The HeartMonitor, driven by task.Clock: no sleeps, no real reactor."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.controller.heartmonitor import HeartMonitor
from ipcluster.controller.registry import ALIVE, BUSY, DEAD, REGISTERING, Registry
from ipcluster.transport.wire import BadMessage, PingCodec

KEY = b"k" * 32
PERIOD = 0.5
MISSES = 3


class HeartMonitorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.registry = Registry()
        self.events = []  # (event, engine id, clock time)
        self.registry.subscribe(
            lambda event, record, reason: self.events.append((event, record.id, self.clock.seconds()))
        )
        self.pings = PingCodec(KEY)
        self.unanswered = {}  # identity -> pings sent and not yet answered
        self.control_pings = []
        self.drain = None
        self.monitor = self.make_monitor()

    def make_monitor(self, **kwargs):
        kwargs.setdefault("period", PERIOD)
        kwargs.setdefault("misses", MISSES)
        return HeartMonitor(
            self.clock, self.registry, self.pings, self.send_heart,
            lambda record, beat: self.control_pings.append((record.id, beat)),
            drain=lambda since: self.drain and self.drain(),
            **kwargs
        )

    def send_heart(self, identity, ping):
        self.unanswered.setdefault(identity, []).append(ping)
        return True

    def answer(self, engine_id):
        """The engine's heart echoes every ping sent to it so far."""
        for ping in self.unanswered.pop(engine_id.encode(), []):
            self.monitor.pong_received(engine_id.encode(), ping)

    def register(self, engine_id, instance="i", identity=None):
        # The engine id as its routing token, so that the tests can name hearts by id.
        return self.registry.register(
            engine_id, instance, "host", 1, self.clock.seconds(), identity=identity or engine_id.encode()
        )

    def join(self, *engine_ids):
        """Register engines and start the monitor; each joins at its first pong."""
        records = [self.register(e) for e in engine_ids]
        self.monitor.start()
        self.addCleanup(self.monitor.stop)
        for e in engine_ids:
            self.answer(e)
        return records

    def run_for(self, seconds, answering=(), controlled=()):
        """Advance one period at a time; after each tick the listed engines answer."""
        for _ in range(int(round(seconds / PERIOD))):
            self.clock.advance(PERIOD)
            for e in answering:
                self.answer(e)
            for e in controlled:
                self.monitor.control_seen(self.registry.get(e))

    def events_of(self, engine_id):
        return [event for event, e, _ in self.events if e == engine_id]

    # -- joining and dying -----------------------------------------------------

    def test_first_pong_joins(self):
        r = self.register("e1")
        self.monitor.start()
        self.addCleanup(self.monitor.stop)
        self.assertEqual(r.state, REGISTERING)
        self.assertEqual(len(self.unanswered[b"e1"]), 1, "a registering engine's heart is pinged")
        self.assertEqual(self.control_pings, [], "but not its control channel")
        self.clock.advance(0.25)
        self.answer("e1")
        self.assertEqual(r.state, ALIVE)
        self.assertEqual(r.joined_at, 0.25)
        self.assertEqual(self.events_of("e1"), ["registering", "joined"])
        self.clock.advance(0.25)
        self.assertEqual(self.control_pings, [], "it joined 0.25 s ago: no control ping needed yet")
        self.clock.advance(PERIOD)
        self.assertEqual(self.control_pings, [("e1", 3)], "quiet for 0.75 s: pinged")

    def test_silent_engine_dies_after_exactly_misses_beats(self):
        a, b = self.join("a", "b")
        self.run_for(2.0, answering=("a", "b"), controlled=("a", "b"))
        last_answered_at = self.clock.seconds()  # the tick that sent a's last answered ping
        self.assertEqual(a.last_pong_beat, self.monitor.beat)

        # "a" stops answering; "b" goes on.
        misses_seen = []
        while a.state != DEAD and self.clock.seconds() < last_answered_at + 10:
            self.run_for(PERIOD, answering=("b",), controlled=("b",))
            misses_seen.append(a.misses)
        died_at = [t for event, e, t in self.events if event == "dead" and e == "a"]
        self.assertEqual(len(died_at), 1)
        delay = died_at[0] - last_answered_at
        self.assertTrue(1.5 < delay <= 2.0, "declared dead %.2f s after its last answered ping" % delay)
        self.assertEqual(misses_seen, [0, 1, 2, 3])
        self.assertIn("3 beats", a.reason)
        self.assertEqual(b.state, ALIVE)
        self.assertEqual(b.misses, 0)
        self.assertEqual(self.events_of("b"), ["registering", "joined"])

        # The dead are not pinged any more.
        self.unanswered.clear()
        self.run_for(1.0, answering=("b",), controlled=("b",))
        self.assertNotIn(b"a", self.unanswered)

    def test_one_missed_beat_is_forgiven(self):
        a, = self.join("a")
        self.run_for(1.0, answering=("a",), controlled=("a",))
        self.unanswered.clear()  # one ping lost
        self.run_for(PERIOD, controlled=("a",))
        self.run_for(PERIOD, answering=("a",), controlled=("a",))
        self.assertEqual(a.misses, 1)
        self.run_for(PERIOD, answering=("a",), controlled=("a",))
        self.assertEqual(a.misses, 0)
        self.run_for(10.0, answering=("a",), controlled=("a",))
        self.assertEqual(a.state, ALIVE)

    def test_late_tick_counts_no_misses(self):
        a, b = self.join("a", "b")
        self.run_for(1.0, answering=("a", "b"), controlled=("a", "b"))
        beat = self.monitor.beat
        # The reactor is blocked for five periods: nothing is read, then one late tick runs.
        self.clock.advance(5 * PERIOD)
        self.assertEqual(self.monitor.late_ticks, 1)
        self.assertEqual(self.monitor.beat, beat + 1, "one tick ran, late")
        self.assertEqual((a.misses, b.misses), (0, 0))
        self.assertEqual((a.state, b.state), (ALIVE, ALIVE))
        # The reactor reads the waiting heart and control pongs; the next on-time tick judges them.
        for e in ("a", "b"):
            self.answer(e)
            self.monitor.control_seen(self.registry.get(e))
        self.run_for(PERIOD)
        self.assertEqual(self.monitor.late_ticks, 1)
        self.assertEqual((a.misses, b.misses), (0, 0))
        self.assertEqual(self.events_of("a"), ["registering", "joined"])

    def test_repeated_lag_kills_nobody(self):
        a, = self.join("a")
        self.run_for(1.0, answering=("a",), controlled=("a",))
        for _ in range(MISSES + 2):
            self.clock.advance(3 * PERIOD)
        self.assertEqual(self.monitor.late_ticks, MISSES + 2)
        self.assertEqual(a.state, ALIVE)

    def test_tick_a_little_late_still_judges(self):
        a, = self.join("a")
        self.run_for(1.0, answering=("a",), controlled=("a",))
        self.clock.advance(PERIOD)  # tick sends a ping nobody answers
        self.clock.advance(PERIOD * 1.25)  # next tick 0.25 period late: judged, a miss
        self.assertEqual(self.monitor.late_ticks, 0)
        self.assertEqual(a.misses, 1)

    def test_drain_runs_before_judging(self):
        a, b = self.join("a", "b")
        calls = []

        def drain():
            calls.append((self.clock.seconds(), self.monitor.beat, a.misses))
            self.answer("a")  # a's pongs only ever come in through the drain

        self.drain = drain
        self.run_for(10.0, answering=("b",), controlled=("a", "b"))
        self.assertEqual(len(calls), 20)
        self.assertEqual(a.state, ALIVE)
        self.assertEqual(a.misses, 0)
        self.assertEqual(self.events_of("a"), ["registering", "joined"])
        # Without the drain, a dies.
        self.drain = None
        self.run_for(2.0, answering=("b",), controlled=("a", "b"))
        self.assertEqual(a.state, DEAD)
        self.assertEqual(b.state, ALIVE)

    def test_drain_is_called_on_late_ticks_too(self):
        self.join("a")
        calls = []
        self.drain = lambda: calls.append(self.clock.seconds())
        self.clock.advance(4 * PERIOD)
        self.assertEqual(calls, [4 * PERIOD])

    # -- busy ----------------------------------------------------------------

    def test_busy_then_alive(self):
        a, b = self.join("a", "b")
        self.assertEqual(self.monitor.busy_after, 1.5)
        self.run_for(1.5, answering=("a", "b"), controlled=("b",))
        self.assertEqual(a.state, ALIVE, "silent for 1.5 s is not yet busy")
        self.run_for(PERIOD, answering=("a", "b"), controlled=("b",))
        self.assertEqual(a.state, BUSY)
        self.assertEqual(a.busy_since, 0.0)
        self.assertEqual(b.state, ALIVE)
        self.monitor.control_seen(a)
        self.assertEqual(a.state, ALIVE)
        self.assertEqual(self.events_of("a"), ["registering", "joined", "busy", "alive"])

    def test_busy_reason_names_running_task(self):
        a, = self.join("a")
        a.running_task = "t42"
        busy = []
        self.registry.subscribe(lambda event, record, reason: busy.append(reason) if event == "busy" else None)
        self.run_for(2.0, answering=("a",))
        self.assertEqual(len(busy), 1)
        self.assertIn("t42", busy[0])

    def test_busy_engine_is_never_declared_dead_while_its_heart_answers(self):
        a, = self.join("a")
        self.run_for(60.0, answering=("a",))
        self.assertEqual(a.state, BUSY)
        self.assertEqual(a.misses, 0)
        self.assertEqual(self.events_of("a"), ["registering", "joined", "busy"])
        self.assertEqual(self.registry.get("a").describe(self.clock.seconds())["busy_for"], 60.0)

    def test_busy_engine_whose_heart_stops_dies(self):
        a, = self.join("a")
        self.run_for(3.0, answering=("a",))
        self.assertEqual(a.state, BUSY)
        self.run_for(2.0)
        self.assertEqual(a.state, DEAD)

    # -- registration ----------------------------------------------------------

    def test_silent_registration_is_purged(self):
        self.monitor = self.make_monitor(registration_timeout=10.0)
        r = self.register("e1")
        self.monitor.start()
        self.addCleanup(self.monitor.stop)
        self.run_for(10.0)
        self.assertEqual(r.state, REGISTERING)
        self.assertIs(self.registry.get("e1"), r)
        self.run_for(PERIOD)
        self.assertIsNone(self.registry.get("e1"))
        self.assertEqual(self.events_of("e1"), ["registering", "purged"])
        self.assertEqual(self.events[-1][2], 10.5)
        self.assertRaises(BadMessage, self.answer, "e1")

    def test_registering_engine_does_not_collect_misses(self):
        r = self.register("e1")
        self.monitor.start()
        self.addCleanup(self.monitor.stop)
        self.run_for(5.0)
        self.assertEqual((r.state, r.misses), (REGISTERING, 0))
        self.answer("e1")  # late pongs still count: it joins
        self.assertEqual(r.state, ALIVE)

    # -- routing tokens ----------------------------------------------------------

    def test_an_echo_under_the_engine_id_counts_for_nothing(self):
        """The heart is known by its token: a keyless echo that names the engine id is no one."""
        a = self.registry.register("e0", "i", "host", 1, self.clock.seconds(), identity=b"T" * 32)
        self.monitor.start()
        self.addCleanup(self.monitor.stop)
        [ping] = self.unanswered[b"T" * 32]
        for guess in (b"e0", b"T" * 31, b"t" * 32):
            e = self.assertRaises(BadMessage, self.monitor.pong_received, guess, ping)
            self.assertIn(e.reason, ("pong from unknown engine", "bad pong"))
        self.assertEqual(a.state, REGISTERING)
        self.monitor.pong_received(b"T" * 32, ping)
        self.assertEqual(a.state, ALIVE)

    def test_a_pending_registration_joins_at_its_first_pong_and_replaces_the_record(self):
        old, = self.join("e1")
        self.run_for(PERIOD, answering=["e1"])
        new = self.register("e1", identity=b"new-token")
        self.assertIs(self.registry.get("e1"), old)
        self.run_for(PERIOD, answering=["e1"])
        self.assertIn(b"new-token", self.unanswered, "the pending registration's heart is pinged")
        self.assertEqual(old.state, ALIVE)
        for ping in self.unanswered.pop(b"new-token"):
            self.monitor.pong_received(b"new-token", ping)
        self.assertIs(self.registry.get("e1"), new)
        self.assertEqual((old.state, new.state), ("left", ALIVE))
        self.assertEqual(self.events_of("e1"), ["registering", "joined", "left", "joined"])

    def test_a_pending_registration_that_never_pongs_is_purged_quietly(self):
        old, = self.join("e1")
        pending = self.register("e1", identity=b"replayed")
        self.run_for(12.0, answering=["e1"], controlled=["e1"])
        self.assertIsNone(self.registry.by_identity(b"replayed"))
        self.assertEqual(pending.state, DEAD)
        self.assertIs(self.registry.get("e1"), old)
        self.assertEqual(old.state, ALIVE)
        self.assertEqual(self.events_of("e1"), ["registering", "joined"])

    # -- bad pongs and RTT -----------------------------------------------------

    def test_pong_from_unknown_engine(self):
        self.join("a")
        ping = self.pings.ping(b"ghost", 1, 0.0)
        e = self.assertRaises(BadMessage, self.monitor.pong_received, b"ghost", ping)
        self.assertEqual(e.reason, "pong from unknown engine")

    def test_pong_from_dead_engine(self):
        a, = self.join("a")
        self.registry.mark_dead(a, "gone", 0.0)
        ping = self.pings.ping(b"a", 1, 0.0)
        e = self.assertRaises(BadMessage, self.monitor.pong_received, b"a", ping)
        self.assertEqual(e.reason, "pong from unknown engine")

    def test_bad_pong(self):
        a, b = self.join("a", "b")
        self.clock.advance(PERIOD)
        ping_for_b = self.unanswered[b"b"][0]
        for data in (ping_for_b, b"short", ping_for_b[:-1] + bytes([ping_for_b[-1] ^ 1])):
            e = self.assertRaises(BadMessage, self.monitor.pong_received, b"a", data)
            self.assertEqual(e.reason, "bad pong")
        self.assertEqual(a.last_pong_beat, 1)

    def test_pong_from_the_future(self):
        a, = self.join("a")
        forged = self.pings.ping(b"a", self.monitor.beat + 1, 0.0)
        e = self.assertRaises(BadMessage, self.monitor.pong_received, b"a", forged)
        self.assertEqual(e.reason, "pong from the future")
        self.assertEqual(a.last_pong_beat, 1)

    def test_rtt_recorded(self):
        a, = self.join("a")
        self.assertEqual(a.rtt, 0.0)
        self.clock.advance(PERIOD)
        self.clock.advance(0.125)
        self.answer("a")
        self.assertEqual(a.rtt, 0.125)
        self.assertEqual(a.last_pong_at, PERIOD + 0.125)
        self.assertEqual(a.last_pong_beat, 2)

    def test_old_pong_does_not_overwrite_newer(self):
        a, = self.join("a")
        self.clock.advance(PERIOD)
        old = self.unanswered.pop(b"a")
        self.clock.advance(PERIOD)
        self.answer("a")
        self.monitor.pong_received(b"a", old[0])
        self.assertEqual(a.last_pong_beat, 3)
        self.assertEqual(a.rtt, 0.0)

    # -- settings and lifecycle ------------------------------------------------

    def test_bad_settings(self):
        self.assertRaises(ValueError, self.make_monitor, period=0)
        self.assertRaises(ValueError, self.make_monitor, misses=0)

    def test_stop(self):
        self.join("a")
        self.monitor.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        beat = self.monitor.beat
        self.clock.advance(10)
        self.assertEqual(self.monitor.beat, beat)
