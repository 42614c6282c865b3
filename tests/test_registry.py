"""The Registry: engine states, their transitions and the events announcing them."""
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.controller.registry import (
    ALIVE, BUSY, DEAD, MAX_CONDEMNED, MAX_PENDING, REGISTERING, Condemned, DuplicateEngine, Registry,
)


class RegistryTests(SynchronousTestCase):
    def setUp(self):
        self.registry = Registry()
        self.events = []
        self.registry.subscribe(lambda event, record, reason: self.events.append((event, record.id, reason)))

    def register(self, engine_id="e1", instance="i1", now=0.0):
        return self.registry.register(engine_id, instance, "host", 100, now)

    def names(self):
        return [event for event, _, _ in self.events]

    def test_full_life(self):
        r = self.register()
        self.assertEqual(r.state, REGISTERING)
        self.assertEqual(self.registry.active(), [r])
        self.assertEqual(self.registry.live(), [])

        self.registry.mark_alive(r, 1.0)
        self.assertEqual((r.state, r.joined_at), (ALIVE, 1.0))
        self.assertEqual(self.registry.live(), [r])

        self.registry.mark_busy(r, 2.0, "control silent")
        self.assertEqual((r.state, r.busy_since), (BUSY, 2.0))
        self.assertEqual(r.describe(5.0)["busy_for"], 3.0)

        self.registry.mark_alive(r, 7.0)
        self.assertEqual(r.state, ALIVE)
        self.assertIsNone(r.busy_since)

        self.registry.mark_dead(r, "heart silent", 9.0)
        self.assertEqual((r.state, r.reason, r.ended_at), (DEAD, "heart silent", 9.0))
        self.assertIs(self.registry.get("e1"), r, "a dead record stays until replaced")
        self.assertEqual(self.registry.active(), [])

        self.assertEqual(self.names(), ["registering", "joined", "busy", "alive", "dead"])
        self.assertEqual(self.events[2][2], "control silent")
        self.assertEqual(self.events[3][2], "after busy 5.0 s")
        self.assertEqual(self.events[4][2], "heart silent")

    def test_transitions_that_do_not_apply_are_silent(self):
        r = self.register()
        self.registry.mark_busy(r, 1.0, "registering engines are not busy")
        self.assertEqual(r.state, REGISTERING)
        self.registry.mark_alive(r, 1.0)
        self.registry.mark_alive(r, 2.0)  # already alive
        self.assertEqual(r.joined_at, 1.0)
        self.registry.mark_dead(r, "first", 3.0)
        self.registry.mark_dead(r, "second", 4.0)
        self.registry.mark_alive(r, 5.0)  # the dead stay dead
        self.assertEqual((r.state, r.reason), (DEAD, "first"))
        self.assertEqual(self.names(), ["registering", "joined", "dead"])

    def test_busy_engine_can_die(self):
        r = self.register()
        self.registry.mark_alive(r, 1.0)
        self.registry.mark_busy(r, 1.0, "held")
        self.registry.mark_dead(r, "gone", 3.0)
        self.assertEqual(r.state, DEAD)
        self.assertIsNone(r.busy_since)
        self.assertEqual(self.names()[-1], "dead")

    def test_left(self):
        r = self.register()
        self.registry.mark_alive(r, 1.0)
        self.registry.remove(r, "exited: stopped", 2.0)
        self.assertIsNone(self.registry.get("e1"))
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(r.state, "left")
        self.assertEqual(self.events[-1], ("left", "e1", "exited: stopped"))

    def test_purged(self):
        r = self.register()
        self.registry.remove(r, "no heartbeat", 10.0, event="purged")
        self.assertIsNone(self.registry.get("e1"))
        self.assertEqual(self.names(), ["registering", "purged"])

    def test_removing_a_dead_record_is_silent(self):
        r = self.register()
        self.registry.mark_dead(r, "gone", 1.0)
        self.registry.remove(r, "bye after death", 2.0)
        self.assertIsNone(self.registry.get("e1"))
        self.assertEqual(self.names(), ["registering", "dead"])

    def test_duplicate_while_registering(self):
        r = self.register()
        self.assertRaises(DuplicateEngine, self.register, instance="i2")
        self.assertIs(self.registry.get("e1"), r)
        self.assertEqual(r.state, REGISTERING)

    def test_duplicate_while_alive(self):
        r = self.register()
        self.registry.mark_alive(r, 1.0)
        self.assertRaises(DuplicateEngine, self.register, instance="i2")
        self.assertIs(self.registry.get("e1"), r)
        self.assertEqual(r.state, ALIVE)
        self.assertEqual(self.names(), ["registering", "joined"])

    def test_duplicate_while_busy(self):
        r = self.register()
        self.registry.mark_alive(r, 1.0)
        self.registry.mark_busy(r, 1.0, "held")
        self.assertRaises(DuplicateEngine, self.register, instance="i2")
        self.assertEqual(r.state, BUSY)

    def test_same_instance_reregisters_once_the_new_registration_pongs(self):
        old = self.register()
        self.registry.mark_alive(old, 1.0)
        new = self.register(now=5.0)
        self.assertIsNot(new, old)
        self.assertNotEqual(new.identity, old.identity)
        # Pending: the live record is untouched, the new one is pinged (active) but not listed.
        self.assertIs(self.registry.get("e1"), old)
        self.assertEqual(old.state, ALIVE)
        self.assertEqual(new.state, REGISTERING)
        self.assertEqual(self.registry.active(), [old, new])
        self.assertEqual(list(self.registry), [old])
        self.assertIs(self.registry.by_identity(new.identity), new)
        self.assertEqual(self.names(), ["registering", "joined"])
        # Its first pong: the old record leaves, the new one takes its place.
        self.registry.mark_alive(new, 6.0)
        self.assertIs(self.registry.get("e1"), new)
        self.assertEqual(old.state, "left")
        self.assertIsNone(self.registry.by_identity(old.identity))
        self.assertEqual(len(self.registry), 1)
        self.assertEqual(self.names(), ["registering", "joined", "left", "joined"])
        self.assertEqual(self.events[2][2], "re-registered by the same process")
        # Late judgements of the old record change nothing.
        self.registry.mark_dead(old, "stale", 7.0)
        self.assertEqual(new.state, ALIVE)
        self.assertEqual(self.names()[-1], "joined")

    def test_pending_registration_that_never_pongs_leaves_the_live_record_alone(self):
        """What a replayed ``register`` comes to: nothing, once it is purged."""
        old = self.register()
        self.registry.mark_alive(old, 1.0)
        replayed = self.register(now=2.0)
        self.registry.remove(replayed, "no heartbeat within 10 s of registering", 12.0, event="purged")
        self.assertIs(self.registry.get("e1"), old)
        self.assertEqual(old.state, ALIVE)
        self.assertIsNone(self.registry.by_identity(replayed.identity))
        self.assertIs(self.registry.by_identity(old.identity), old)
        self.assertEqual(self.registry.active(), [old])
        self.assertEqual(self.names(), ["registering", "joined"], "listeners never hear of it")
        self.registry.mark_alive(replayed, 13.0)  # a pong after the purge: nothing
        self.assertIs(self.registry.get("e1"), old)

    def test_pending_registrations_are_bounded(self):
        old = self.register()
        self.registry.mark_alive(old, 1.0)
        pending = [self.register(now=2.0 + i) for i in range(MAX_PENDING + 3)]
        waiting = [r for r in pending if self.registry.by_identity(r.identity) is r]
        self.assertEqual(waiting, pending[-MAX_PENDING:])
        self.assertEqual(self.registry.active(), [old, *waiting])
        # The latest to pong wins; the others are dropped.
        self.registry.mark_alive(waiting[1], 20.0)
        self.assertIs(self.registry.get("e1"), waiting[1])
        self.assertEqual(self.registry.active(), [waiting[1]])

    def test_tokens_are_random_unless_given(self):
        a, b = self.register("a"), self.register("b")
        self.assertNotEqual(a.identity, b.identity)
        self.assertNotIn(b"a", (a.identity, b.identity))
        given = self.registry.register("c", "i", "h", 1, 0.0, identity=b"token-c")
        self.assertEqual((given.identity, given.session), (b"token-c", "token-c"))
        self.assertIs(self.registry.by_identity(b"token-c"), given)
        self.assertNotIn("token", repr(given))

    def test_gone_records_are_not_found_by_identity(self):
        dead, left = self.register("a"), self.register("b")
        self.registry.mark_dead(dead, "gone", 1.0)
        self.registry.remove(left, "bye", 1.0)
        self.assertIsNone(self.registry.by_identity(dead.identity))
        self.assertIsNone(self.registry.by_identity(left.identity))

    def test_dead_record_replaced(self):
        old = self.register()
        self.registry.mark_dead(old, "gone", 1.0)
        new = self.register(instance="i2", now=2.0)
        self.assertIs(self.registry.get("e1"), new)
        self.assertEqual(new.instance, "i2")
        self.assertEqual(old.state, DEAD)
        self.assertEqual(self.names(), ["registering", "dead", "registering"])

    def test_a_thawed_engine_declared_dead_for_silence_may_come_back(self):
        r = self.register()
        self.registry.mark_dead(r, "heart silent", 1.0)
        self.assertEqual(self.register(now=2.0).state, REGISTERING)

    def test_a_condemned_process_may_not_register_again(self):
        # A recycled engine's link may re-register in the moment before its SIGTERM lands:
        # that would make a second record and a second death when the process ends.
        r = self.register()
        self.registry.mark_alive(r, 1.0)
        self.registry.condemn(r, "exceeded its memory limit", 2.0)
        self.assertEqual((r.state, r.reason), (DEAD, "exceeded its memory limit"))
        with self.assertRaises(Condemned) as caught:
            self.register(now=3.0)
        self.assertIsInstance(caught.exception, DuplicateEngine, "the registrar refuses it as it refuses duplicates")
        self.assertIn("exceeded its memory limit", str(caught.exception))
        self.assertIs(self.registry.get("e1"), r)
        self.assertEqual(self.names(), ["registering", "joined", "dead"], "one death, no second registration")
        self.assertEqual(self.register(instance="i2", now=4.0).state, REGISTERING, "its replacement is welcome")

    def test_condemned_instances_are_remembered_within_a_bound(self):
        for n in range(MAX_CONDEMNED + 1):
            self.registry.condemn(self.register(f"e{n}", f"i{n}"), "recycled", 0.0)
        self.register("e0", "i0")  # the oldest was forgotten
        self.assertRaises(Condemned, self.register, "e1", "i1")

    def test_max_dead_trims_oldest(self):
        self.registry = Registry(max_dead=2)
        records = [self.register("e%d" % i) for i in range(4)]
        for i, r in enumerate(records):
            self.registry.mark_dead(r, "gone", float(i))
        self.assertEqual([r.id for r in self.registry], ["e2", "e3"])

    def test_max_dead_keeps_the_living(self):
        self.registry = Registry(max_dead=0)
        alive, doomed = self.register("a"), self.register("b")
        self.registry.mark_alive(alive, 1.0)
        self.registry.mark_dead(doomed, "gone", 2.0)
        self.assertEqual([r.id for r in self.registry], ["a"])

    def test_unsubscribe(self):
        seen = []
        listener = lambda *args: seen.append(args)
        self.registry.subscribe(listener)
        self.registry.unsubscribe(listener)
        self.registry.unsubscribe(listener)  # harmless twice
        self.register()
        self.assertEqual(seen, [])
        self.assertEqual(self.names(), ["registering"])


class DeadEngineTTL(SynchronousTestCase):
    """Dead records leave the list ``dead_ttl`` seconds after the death (on task.Clock)."""

    def setUp(self):
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.registry = Registry(clock=self.clock, dead_ttl=300.0)

    def dead(self, engine_id="e1", instance="i1"):
        r = self.registry.register(engine_id, instance, "host", 100, self.clock.seconds())
        self.registry.mark_alive(r, self.clock.seconds())
        self.registry.mark_dead(r, "heart silent", self.clock.seconds())
        return r

    def test_a_dead_record_leaves_after_the_ttl(self):
        self.dead()
        self.clock.advance(299.9)
        self.assertEqual(self.registry.get("e1").state, DEAD)
        self.clock.advance(0.1)
        self.assertIsNone(self.registry.get("e1"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_record_replaced_in_time_stays(self):
        self.dead()
        self.clock.advance(100)
        new = self.registry.register("e1", "i2", "host", 101, self.clock.seconds())
        self.assertEqual(self.clock.getDelayedCalls(), [], "the old record's expiry was cancelled")
        self.clock.advance(1000)
        self.assertIs(self.registry.get("e1"), new)

    def test_kept_records_stay(self):
        self.registry.keep_dead = lambda record: record.id == "kept"
        self.dead("kept")
        self.dead("other")
        self.clock.advance(300)
        self.assertEqual([r.id for r in self.registry], ["kept"])

    def test_stop_cancels_the_expiries(self):
        self.dead()
        self.registry.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_a_ttl_dead_records_stay(self):
        from twisted.internet.task import Clock

        clock = Clock()
        registry = Registry(clock=clock)
        r = registry.register("e1", "i1", "host", 1, 0.0)
        registry.mark_dead(r, "gone", 0.0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_ttl_needs_a_clock(self):
        self.assertRaises(ValueError, Registry, dead_ttl=1.0)
