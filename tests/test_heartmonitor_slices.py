"""The HeartMonitor at scale, on task.Clock: a period cut into slices, each engine
judged exactly once a period, late slices judging nobody, the detection bound,
registering engines pinged at once, control pings only when needed."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.controller.heartmonitor import JOIN_RETRY, JOIN_RETRY_MAX, MAX_SLICES, HeartMonitor
from ipcluster.controller.registry import ALIVE, DEAD, REGISTERING, Registry
from ipcluster.transport.wire import PingCodec

KEY = b"k" * 32
PERIOD = 0.5
ENGINES = 1000


class SlicedMonitorTests(SynchronousTestCase):
    misses = 3

    def setUp(self):
        self.clock = Clock()
        self.registry = Registry()
        self.pings = PingCodec(KEY)
        self.sent = []  # (time, identity, ping)
        self.connected = None  # identities whose heart is connected (None: all)
        self.control_pings = []  # (time, engine id, beat)
        self.control_unanswered = []
        self.deaths = {}  # engine id -> time reported dead
        self.registry.subscribe(self._event)
        self.monitor = HeartMonitor(
            self.clock, self.registry, self.pings, self.send_heart,
            self.send_control_ping,
            period=PERIOD, misses=self.misses,
        )
        self.addCleanup(self.monitor.stop)

    def _event(self, event, record, reason):
        if event == "dead":
            self.deaths[record.id] = self.clock.seconds()

    def send_control_ping(self, record, beat):
        self.control_pings.append((self.clock.seconds(), record.id, beat))
        self.control_unanswered.append(record)

    def send_heart(self, identity, ping):
        if self.connected is not None and identity not in self.connected:
            return False
        self.sent.append((self.clock.seconds(), identity, ping))
        return True

    def engines(self, n):
        records = [
            self.registry.register(f"e{i}", "i", "host", 1, self.clock.seconds(), identity=f"e{i}".encode())
            for i in range(n)
        ]
        self.monitor.start()
        self.answer()
        self.assertTrue(all(r.state == ALIVE for r in records))
        return records

    def answer(self, silent=()):
        """Every heart echoes what it was sent, except the ``silent`` ones; control channels speak."""
        sent, self.sent = self.sent, []
        for _, identity, ping in sent:
            if identity not in silent:
                self.monitor.pong_received(identity, ping)
        asked, self.control_unanswered = self.control_unanswered, []
        for record in asked:  # control pongs
            if record.identity not in silent:
                self.monitor.control_seen(record)

    def step(self, seconds, silent=(), dt=0.01):
        """Advance in small steps; hearts answer at once after each."""
        for _ in range(int(round(seconds / dt))):
            self.clock.advance(dt)
            self.answer(silent)

    def test_a_period_is_cut_into_slices(self):
        self.engines(ENGINES)
        self.sent = []
        self.clock.advance(PERIOD)  # the next period begins: its first slice only
        first = {t for t, _, _ in self.sent}
        self.assertEqual((len(self.sent), first), (100, {PERIOD}))
        for _ in range(9):
            self.clock.advance(PERIOD / 10)
        times = sorted({t for t, _, _ in self.sent})
        self.assertEqual(len(times), 10)
        self.assertEqual(len(self.sent), ENGINES)
        self.assertEqual(len({i for _, i, _ in self.sent}), ENGINES, "each engine pinged once a period")
        for a, b in zip(times, times[1:]):
            self.assertAlmostEqual(b - a, PERIOD / 10)

    def test_slices_are_bounded(self):
        self.engines(ENGINES)  # 1,000 engines: 10 slices of 100; 10,000 would be 100
        self.assertEqual(self.monitor._slices, 10)
        self.monitor.slice_size = 1
        self.step(PERIOD)
        self.assertEqual(self.monitor._slices, MAX_SLICES)

    def test_each_engine_is_judged_exactly_once_a_period(self):
        records = self.engines(ENGINES)
        self.monitor.misses = 100  # nobody dies: count the misses
        everyone = {r.identity for r in records}
        self.step(2 * PERIOD + PERIOD / 20)  # the windows below end between slices, not at one
        self.assertEqual({r.misses for r in records}, {0})
        self.step(PERIOD, silent=everyone)  # each engine's first unanswered ping is judged a period later
        before = [r.misses for r in records]
        self.assertLessEqual(set(before), {0, 1})
        for period in range(2, 7):
            self.step(PERIOD, silent=everyone)
            after = [r.misses for r in records]
            self.assertEqual({a - b for a, b in zip(after, before)}, {1}, f"period {period}: one judgment each")
            before = after

    def test_a_late_slice_judges_nobody_in_it(self):
        records = self.engines(ENGINES)
        self.monitor.misses = 100
        self.step(2 * PERIOD)
        everyone = {r.identity for r in records}
        self.clock.advance(3 * PERIOD)  # the reactor was blocked: the slice that runs now is late
        self.answer(everyone)
        self.assertEqual(self.monitor.late_ticks, 1)
        self.assertEqual({r.misses for r in records}, {0})
        # the rest of the period runs on time from there: silent engines are judged again
        self.step(2 * PERIOD, silent=everyone)
        self.assertEqual(self.monitor.late_ticks, 1)
        self.assertGreater(min(r.misses for r in records), 0)
        self.assertNotIn(DEAD, {r.state for r in records})

    def test_a_hung_engine_is_reported_within_the_bound(self):
        records = self.engines(ENGINES)
        self.step(PERIOD)
        hung = {r.identity: self.clock.seconds() for r in records[::97]}  # in every slice
        self.step(5 * PERIOD, silent=hung)
        self.assertEqual(set(self.deaths), {i.decode() for i in hung})
        for identity, since in hung.items():
            delay = self.deaths[identity.decode()] - since
            self.assertLessEqual(delay, (self.misses + 1) * PERIOD + 0.02, identity)
            self.assertGreater(delay, (self.misses - 1) * PERIOD, identity)
        self.assertEqual(sum(r.state == DEAD for r in records), len(hung), "no false death")

    def test_churn_makes_no_false_death(self):
        records = self.engines(ENGINES)
        self.step(PERIOD)
        for r in records[:500]:  # half leave: the rest move to earlier slices
            self.registry.remove(r, "bye", self.clock.seconds())
        self.step(4 * PERIOD)
        self.assertEqual(self.deaths, {})
        self.assertEqual({r.state for r in records[500:]}, {ALIVE})

    def test_registering_engine_is_pinged_once_its_heart_connects(self):
        self.engines(2)
        self.clock.advance(0.1)
        self.connected = set()
        record = self.registry.register("late", "i", "host", 1, self.clock.seconds(), identity=b"late")
        self.assertEqual(self.sent, [], "not connected yet")
        self.clock.advance(0)  # first attempt: refused
        self.clock.advance(JOIN_RETRY)  # second: refused (the retries back off)
        self.assertEqual(self.sent, [])
        self.connected = {b"late"}
        self.clock.advance(2 * JOIN_RETRY)
        self.assertEqual([i for _, i, _ in self.sent], [b"late"], "pinged within a retry, not a period")
        self.assertEqual(record.state, REGISTERING)
        self.answer()
        self.assertEqual(record.state, ALIVE)
        self.assertAlmostEqual(record.joined_at, 0.1 + 3 * JOIN_RETRY)

    def test_join_retries_back_off(self):
        self.engines(2)
        self.connected = set()
        for i in range(100):
            self.registry.register(f"s{i}", "i", "host", 1, self.clock.seconds(), identity=f"s{i}".encode())
        rounds = []
        real = self.monitor._ping_joining

        def counted():
            rounds.append(self.clock.seconds())
            real()

        self.monitor._ping_joining = counted
        self.monitor._join_call.func = counted
        self.step(1.0)
        self.assertLess(len(rounds), 25, "a second of unconnected hearts: a few rounds, not 500")
        self.assertLessEqual(max(b - a for a, b in zip(rounds, rounds[1:])), JOIN_RETRY_MAX + 0.01, "steps of 10 ms")

    def test_control_ping_only_when_quiet(self):
        records = self.engines(10)
        self.control_pings = []
        self.step(10 * PERIOD)  # every control pong counts as traffic
        per_engine = {}
        for _, engine_id, _ in self.control_pings:
            per_engine[engine_id] = per_engine.get(engine_id, 0) + 1
        self.assertLessEqual(set(per_engine.values()), {4, 5}, "every other beat (10 beats)")
        self.assertEqual({r.state for r in records}, {ALIVE}, "never busy")

    def test_an_engine_whose_heart_disconnected_dies(self):
        """The ROUTER refuses pings to a heart that is gone (SIGKILL): they count as unanswered."""
        records = self.engines(ENGINES)
        self.step(PERIOD)
        self.connected = {r.identity for r in records[1:]}
        self.step((self.misses + 2) * PERIOD)
        self.assertEqual(records[0].state, DEAD)
        self.assertEqual(set(self.deaths), {"e0"})
