"""The Scheduler on task.Clock with fake engines: engine traffic, balancing,
restrictions, stealing, dependencies, retries, timeouts, cancel, fetch, memory,
and the client front end's task requests.

Fake engines are live Registry records; what the scheduler sends them is
decoded and recorded; their control channels are FakeControls whose replies
the tests fire by hand.
"""
import signal

import msgpack
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ipcluster import errors
from ipcluster.controller.control import ControlChannel
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.frontend import ClientFrontEnd
from ipcluster.controller.sessions import ClientSessions
from ipcluster.controller.heartmonitor import HeartMonitor
from ipcluster.controller.registry import Registry
from ipcluster.interfaces import IEngineControl, ITaskStore
from ipcluster.scheduler.scheduler import Scheduler
from ipcluster.scheduler.task import ASSIGNED, DEFAULT_RETRIES, READY, RUNNING, WAITING
from ipcluster.store.memory import MemoryTaskStore
from ipcluster.store.sqlite import SQLiteTaskStore
from ipcluster.transport import wire
from ipcluster.transport.wire import Codec, PingCodec

KEY = b"k" * 32


class SendLoop(Exception):
    """The scheduler kept re-sending to an unreachable engine (it would spin forever)."""


def fake_control_for(registry, controls: dict, engine_id: str):
    """The scheduler's ``control_for`` over fakes: the engine's FakeControl while it is active."""
    record = registry.get(engine_id)
    if record is None:
        raise errors.UnknownEngine(engine_id)
    if record.state not in ("registering", "alive", "busy"):
        raise errors.EngineDead(engine_id)
    return controls.setdefault(engine_id, FakeControl(engine_id))


@implementer(IEngineControl)
class FakeControl:
    """An engine's control channel: records the commands; the test fires their Deferreds."""

    def __init__(self, engine_id):
        self.engine_id = engine_id
        self.aborts = []  # [task_id, timeout, release, deferred]
        self.signals = []  # [signum, task_id, timeout, deferred]
        self.others = []  # [verb, timeout, deferred] (beat, exit, reset: the scheduler sends none)

    def _other(self, verb, timeout):
        d = defer.Deferred()
        self.others.append([verb, timeout, d])
        return d

    def beat(self, timeout=None):
        return self._other("beat", timeout)

    def exit(self, timeout=5.0):
        return self._other("exit", timeout)

    def reset(self, timeout=None):
        return self._other("reset", timeout)

    def abort(self, task_id, timeout=None, release=False):
        d = defer.Deferred()
        self.aborts.append([task_id, timeout, release, d])
        return d

    def signal(self, signum, task_id=None, timeout=None):
        d = defer.Deferred()
        self.signals.append([signum, task_id, timeout, d])
        return d


class Fixture(SynchronousTestCase):
    """A Scheduler with recorded, decoded sends, fake control channels and a MemoryTaskStore."""

    prefetch = 1
    remember = 100_000

    def setUp(self):
        self.clock = Clock()
        self.codec = Codec(KEY)
        self.registry = Registry()
        self.events = []
        self.registry.subscribe(lambda event, record, reason: self.events.append((event, record.id)))
        self.drops = DropLog(self.clock)
        self.addCleanup(self.drops.stop)
        self.store = MemoryTaskStore(clock=self.clock)
        self.to_engines = []  # (engine id, Message)
        self.to_clients = []  # (client identity, Message)
        self.unreachable = set()
        self.failed_sends = 0
        self.controls = {}
        self.scheduler = Scheduler(
            self.registry, self.codec, self.clock, self.send_engine, self.send_client, self.drops, self.store,
            control_for=self.control_for, prefetch=self.prefetch, remember=self.remember,
        )
        self.addCleanup(self.scheduler.stop)

    # -- fakes -----------------------------------------------------------------------

    def send_engine(self, frames):
        engine_id = frames[0].decode()
        if engine_id in self.unreachable:
            self.failed_sends += 1
            if self.failed_sends > 1000:
                raise SendLoop(f"{self.failed_sends} failed sends to {engine_id}")
            return False
        self.to_engines.append((engine_id, self.codec.decode(frames[1:])))
        return True

    def send_client(self, frames):
        self.to_clients.append((frames[0], self.codec.decode(frames[1:])))
        return True

    def control_for(self, engine_id):
        return fake_control_for(self.registry, self.controls, engine_id)

    def engine(self, engine_id, alive=True):
        # The engine id as its routing token and session, so that the tests can name engines by id.
        record = self.registry.register(engine_id, engine_id + "-i", "host", 1, self.clock.seconds(),
                                        identity=engine_id.encode())
        if alive:
            self.registry.mark_alive(record, self.clock.seconds())
        return record

    # -- what engines say --------------------------------------------------------------

    def from_engine(self, engine_id, mtype, fields, payloads=()):
        self.scheduler.message_received(
            [engine_id.encode(), *self.codec.encode(mtype, fields, list(payloads), session=engine_id)]
        )

    def started(self, engine_id, task):
        self.from_engine(engine_id, "started", {"task": task, "instance": engine_id + "-i"})

    def result(self, engine_id, task, ok=True, payloads=None, **fields):
        if payloads is None:
            payloads = (b"value-" + task.encode(), b"out", b"err") if ok else (b"", b"", b"")
        self.from_engine(engine_id, "result", dict(fields, task=task, ok=ok), payloads)

    def die(self, record, reason="heart silent"):
        self.registry.mark_dead(record, reason, self.clock.seconds())

    # -- what the scheduler did --------------------------------------------------------

    def submit(self, task_id, client=b"c1", payload=None, **kw):
        d = self.scheduler.submit(client, task_id, payload or b"payload-" + task_id.encode(), **kw)
        self.assertEqual(self.successResultOf(d), task_id)
        return task_id

    def refused(self, task_id, error, client=b"c1", **kw):
        """Submit must fail with ``error`` and leave nothing behind."""
        tasks, records, sent = dict(self.scheduler.tasks), dict(self.store.records), len(self.to_engines)
        f = self.failureResultOf(self.scheduler.submit(client, task_id, b"p", **kw), error)
        self.assertEqual(self.scheduler.tasks, tasks)
        self.assertEqual(self.store.records, records)
        self.assertEqual(len(self.to_engines), sent)
        return f.value

    def sent(self, engine_id=None):
        """Task ids sent to an engine (or to each engine: {engine: [ids]})."""
        if engine_id is None:
            out = {}
            for to, msg in self.to_engines:
                out.setdefault(to, []).append(msg["task"])
            return out
        return [msg["task"] for to, msg in self.to_engines if to == engine_id]

    def held(self, engine_id):
        return list(self.scheduler.assigned.get(engine_id, {}))

    def results(self, task=None, client=None):
        return [
            (to, msg) for to, msg in self.to_clients
            if msg.type == "result" and (task is None or msg["task"] == task) and (client is None or to == client)
        ]

    def result_of(self, task, client=None):
        """The one result sent for ``task`` (fails if none or several)."""
        found = self.results(task, client)
        self.assertEqual(len(found), 1, f"expected exactly one result for {task}, got {found}")
        return found[0][1]

    def error_of(self, task, error_type, client=None):
        msg = self.result_of(task, client)
        self.assertIs(msg["ok"], False)
        self.assertEqual(msg["error"]["type"], error_type, msg["error"])
        self.assertEqual(msg.payloads, (b"", b"", b""))
        return msg["error"]["message"]

    def state(self, task):
        t = self.scheduler.tasks.get(task)
        return t.state if t is not None else None


# =====================================================================================
# Engine traffic (ported from the TaskRouter's tests)
# =====================================================================================


class EngineTrafficTests(Fixture):
    def setUp(self):
        super().setUp()
        self.e1 = self.engine("e1")

    def test_task_sent_to_the_engine(self):
        self.submit("t1", client=b"client-1", payload=b"payload")
        [(to, msg)] = self.to_engines
        self.assertEqual(to, "e1")
        self.assertEqual((msg.type, msg["task"], msg.payloads), ("task", "t1", (b"payload",)))
        self.assertEqual(self.scheduler.tasks["t1"].clients, [b"client-1"])
        self.assertEqual(self.state("t1"), ASSIGNED)
        self.assertEqual(self.store.records["t1"]["status"], "submitted")

    def test_started_marks_running(self):
        self.submit("t1")
        self.clock.advance(3)
        self.started("e1", "t1")
        self.assertEqual(self.state("t1"), RUNNING)
        self.assertEqual((self.e1.running_task, self.e1.task_started_at), ("t1", 3.0))
        self.assertEqual(
            (self.store.records["t1"]["status"], self.store.records["t1"]["engine"], self.store.records["t1"]["started_at"]),
            ("running", "e1", 3.0),
        )

    def test_result_forwarded_once_to_its_client(self):
        e2 = self.engine("e2")
        self.submit("t1", client=b"client-1")
        self.submit("t2", client=b"client-2")
        self.assertEqual(self.sent(), {"e1": ["t1"], "e2": ["t2"]})
        self.started("e1", "t1")
        [(to, running)] = self.to_clients
        self.assertEqual((to, running.type, running["task"], running["engine"]), (b"client-1", "running", "t1", "e1"))
        del self.to_clients[:]
        self.result("e1", "t1", started=1.0, finished=2.0)
        [(to, msg)] = self.to_clients
        self.assertEqual(to, b"client-1")
        self.assertEqual(msg.type, "result")
        self.assertEqual((msg["task"], msg["engine"], msg["ok"]), ("t1", "e1", True))
        self.assertEqual((msg["started"], msg["finished"]), (1.0, 2.0))
        self.assertEqual(msg.payloads, (b"value-t1", b"out", b"err"))
        self.assertIsNone(self.e1.running_task)
        self.assertEqual(self.scheduler.completed, 1)
        self.assertNotIn("t1", self.scheduler.tasks)
        stored = self.store.records["t1"]
        self.assertEqual((stored["status"], stored["result"], stored["stdout"], stored["stderr"]), ("ok", b"value-t1", "out", "err"))
        # Again: dropped.
        self.result("e1", "t1")
        self.assertEqual(len(self.to_clients), 1)
        self.assertEqual(self.drops.totals[("task", "result of a finished task (a resend)")], 1)
        self.assertIn("t2", self.scheduler.tasks)
        self.assertEqual(e2.state, "alive")

    def test_result_from_the_wrong_engine_dropped(self):
        self.engine("e2")
        self.submit("t1")
        self.assertEqual(self.sent("e1"), ["t1"])
        self.result("e2", "t1")
        self.started("e2", "t1")
        self.assertEqual(self.to_clients, [])
        self.assertEqual(self.state("t1"), ASSIGNED)
        self.assertEqual(self.drops.totals[("task", "result for a task not assigned to this engine")], 1)
        self.assertEqual(self.drops.totals[("task", "started for a task not assigned to this engine")], 1)

    def test_failed_result_forwarded_with_error(self):
        self.submit("t1")
        error = {"type": "ZeroDivisionError", "message": "division by zero", "traceback": "tb"}
        self.result("e1", "t1", ok=False, error=error)
        msg = self.result_of("t1")
        self.assertIs(msg["ok"], False)
        self.assertEqual(msg["error"], error)
        self.assertEqual(self.scheduler.failed, 1)
        self.assertEqual((self.store.records["t1"]["status"], self.store.records["t1"]["error"]), ("failed", error))

    def test_engine_death_without_retries_fails_the_task_it_ran(self):
        self.submit("t1", client=b"c1", retries=0)
        self.submit("t2", client=b"c2", retries=0)
        self.assertEqual(self.sent("e1"), ["t1", "t2"])
        self.started("e1", "t1")
        self.die(self.e1, "heart silent for 3 beats")
        message = self.error_of("t1", "EngineDied", client=b"c1")
        self.assertEqual(message, "engine e1 dead while running task t1: heart silent for 3 beats")
        # t2 was queued behind it: it did not run, so it waits for another engine with its retries intact.
        self.assertEqual(self.results("t2"), [])
        self.assertEqual((self.state("t2"), self.scheduler.tasks["t2"].retries), (READY, 0))
        self.assertEqual(list(self.scheduler.tasks), ["t2"])
        # A late result for a failed task is dropped: never two results.
        self.result("e1", "t1")
        self.assertEqual(len(self.results("t1")), 1)
        self.assertEqual(self.drops.totals[("task", "unknown session")], 1, "its registration ended with its death")

    def test_bye_removes_the_engine(self):
        self.submit("t1", retries=0)
        self.from_engine("e1", "bye", {"instance": "e1-i", "reason": "exit command"})
        self.assertIsNone(self.registry.get("e1"))
        self.assertIn(("left", "e1"), self.events)
        self.assertEqual(self.e1.reason, "exited: exit command")
        self.assertIn("left", self.error_of("t1", "EngineDied"))

    def test_bye_from_another_instance_dropped(self):
        self.submit("t1")
        self.from_engine("e1", "bye", {"instance": "i0", "reason": "old process"})
        self.assertIs(self.registry.get("e1"), self.e1)
        self.assertEqual(self.e1.state, "alive")
        self.assertEqual(self.drops.totals[("task", "bye from an unknown engine instance")], 1)
        self.assertEqual(self.to_clients, [])
        self.assertEqual(self.state("t1"), ASSIGNED)

    def test_traffic_proves_engine_runs(self):
        seen = []
        self.scheduler.on_engine_traffic = seen.append
        self.submit("t1")
        self.started("e1", "t1")
        self.result("e1", "t1")
        self.assertEqual(seen, [self.e1, self.e1])
        self.die(self.e1)
        self.result("e1", "t1")
        self.assertEqual(len(seen), 2, "a dead engine's traffic proves nothing")

    def test_garbage_dropped(self):
        self.submit("t1")
        self.scheduler.message_received([b"e1", b"junk"])
        self.scheduler.message_received([b"e1", *self.codec.encode("task", {"task": "t1"}, [b"p"])])
        self.scheduler.message_received([b"e1", *Codec(b"other key").encode("result", {"task": "t1", "ok": True}, [b""] * 3)])
        self.scheduler.message_received([b"e1", *self.codec.encode("result", {"task": "t1", "ok": True}, [b""])])
        self.assertEqual(self.drops.totals[("task", "too few frames")], 1)
        self.assertEqual(self.drops.totals[("task", "unexpected type")], 1)
        self.assertEqual(self.drops.totals[("task", "bad signature")], 1)
        self.assertEqual(self.drops.totals[("task", "wrong frame count")], 1)
        self.assertEqual(self.to_clients, [])
        # Nothing lost: the real result still gets through.
        self.result("e1", "t1")
        self.assertIs(self.result_of("t1")["ok"], True)


# =====================================================================================
# Balancing
# =====================================================================================


class BalancingTests(Fixture):
    def test_idle_engines_first(self):
        for e in ("a", "b", "c"):
            self.engine(e)
        for i in range(3):
            self.submit(f"t{i}")
        self.assertEqual(self.sent(), {"a": ["t0"], "b": ["t1"], "c": ["t2"]})
        for i in range(3, 6):
            self.submit(f"t{i}")
        self.assertEqual(self.sent(), {"a": ["t0", "t3"], "b": ["t1", "t4"], "c": ["t2", "t5"]})

    def test_at_most_one_plus_prefetch(self):
        self.engine("a")
        self.engine("b")
        for i in range(7):
            self.submit(f"t{i}")
        self.assertEqual(self.sent(), {"a": ["t0", "t2"], "b": ["t1", "t3"]})
        self.assertEqual([self.state(f"t{i}") for i in range(4, 7)], [READY] * 3)
        self.assertEqual(list(self.scheduler.ready), ["t4", "t5", "t6"])

    def test_result_frees_a_slot_for_the_next_ready_task(self):
        self.engine("a")
        self.engine("b")
        for i in range(6):
            self.submit(f"t{i}")
        self.result("b", "t1")
        self.assertEqual(self.sent("b"), ["t1", "t3", "t4"])
        self.assertEqual(self.held("b"), ["t3", "t4"])
        self.result("a", "t2")
        self.assertEqual(self.sent("a"), ["t0", "t2", "t5"])
        self.assertEqual(self.held("a"), ["t0", "t5"])
        self.assertEqual(list(self.scheduler.tasks), ["t0", "t3", "t4", "t5"])

    def test_busy_engine_gets_nothing_new(self):
        a = self.engine("a")
        b = self.engine("b")
        self.registry.mark_busy(b, 0.0, "control silent")
        for i in range(3):
            self.submit(f"t{i}")
        self.assertEqual(self.sent(), {"a": ["t0", "t1"]})
        # A busy engine's own result does not refill it either.
        self.registry.mark_alive(b, 1.0)
        self.assertEqual(self.sent("b"), ["t2"])
        self.registry.mark_busy(b, 2.0, "control silent")
        self.submit("t3")
        self.result("b", "t2")
        self.assertEqual(self.sent("b"), ["t2"])
        self.assertEqual(self.state("t3"), READY)
        # Back to alive: filled at once.
        self.registry.mark_alive(b, 3.0)
        self.assertEqual(self.sent("b"), ["t2", "t3"])
        self.assertEqual(a.state, "alive")

    def test_no_engines_tasks_wait_for_one(self):
        for i in range(3):
            self.submit(f"t{i}")
        self.assertEqual(self.to_engines, [])
        late = self.engine("late", alive=False)
        self.assertEqual(self.to_engines, [], "a registering engine gets nothing")
        self.registry.mark_alive(late, 1.0)
        self.assertEqual(self.sent("late"), ["t0", "t1"])

    def test_runs_every_task_once(self):
        for e in ("a", "b"):
            self.engine(e)
        for i in range(20):
            self.submit(f"t{i}")
        done = set()
        for _ in range(100):
            if not self.scheduler.tasks:
                break
            for engine_id in ("a", "b"):
                held = self.held(engine_id)
                if held:
                    self.result(engine_id, held[0])
                    done.add(held[0])
        self.assertEqual(done, {f"t{i}" for i in range(20)})
        self.assertEqual(sorted(msg["task"] for _, msg in self.results()), sorted(done))
        self.assertEqual(sum(len(ids) for ids in self.sent().values()), 20)
        self.assertGreater(len(self.sent("a")), 5)
        self.assertGreater(len(self.sent("b")), 5)


class PrefetchZeroTests(Fixture):
    prefetch = 0

    def test_one_task_per_engine(self):
        self.engine("a")
        self.engine("b")
        for i in range(4):
            self.submit(f"t{i}")
        self.assertEqual(self.sent(), {"a": ["t0"], "b": ["t1"]})
        self.result("a", "t0")
        self.assertEqual(self.sent("a"), ["t0", "t2"])


class PrefetchThreeTests(Fixture):
    prefetch = 3

    def test_four_tasks_per_engine(self):
        self.engine("a")
        self.engine("b")
        for i in range(10):
            self.submit(f"t{i}")
        self.assertEqual(len(self.sent("a")), 4)
        self.assertEqual(len(self.sent("b")), 4)
        self.assertEqual(list(self.scheduler.ready), ["t8", "t9"])


# =====================================================================================
# Restrictions: engine= / engines=[...]
# =====================================================================================


class RestrictionTests(Fixture):
    def setUp(self):
        super().setUp()
        self.a = self.engine("a")
        self.b = self.engine("b")

    def test_restricted_task_goes_only_to_its_engine(self):
        self.submit("t1", engines=["b"])
        self.submit("t2", engines=["b"])
        self.submit("t3", engines=["b"])
        self.assertEqual(self.sent(), {"b": ["t1", "t2"]})
        self.assertEqual(self.state("t3"), READY)
        # a is idle but may not take t3.
        self.submit("t4")
        self.assertEqual(self.sent("a"), ["t4"])
        self.result("a", "t4")
        self.assertEqual(self.sent("a"), ["t4"])
        self.result("b", "t1")
        self.assertEqual(self.sent("b"), ["t1", "t2", "t3"])

    def test_several_engines(self):
        c = self.engine("c")
        for i in range(4):
            self.submit(f"t{i}", engines=["b", "c"])
        self.assertEqual(self.sent(), {"b": ["t0", "t2"], "c": ["t1", "t3"]})
        self.submit("t4", engines=["b", "c"])
        self.assertEqual(self.state("t4"), READY)
        self.result("c", "t1")
        self.assertEqual(self.sent("c"), ["t1", "t3", "t4"])
        self.assertEqual(c.state, "alive")

    def test_unknown_engine_rejected(self):
        e = self.refused("t1", errors.UnknownEngine, engines=["nope"])
        self.assertIn("nope", str(e))
        self.refused("t2", errors.UnknownEngine, engines=["nope", "nada"])

    def test_one_unknown_engine_in_a_list_is_refused(self):
        # A typo in engines=[...] is refused as engine="typo" is, even when another name is right.
        e = self.refused("t1", errors.UnknownEngine, engines=["nope", "b"])
        self.assertIn("'nope'", str(e))
        self.assertNotIn("'b'", str(e))
        self.assertEqual(self.sent("b"), [])

    def test_dead_engine_rejected(self):
        self.die(self.b, "heart silent")
        e = self.refused("t1", errors.EngineDead, engines=["b"])
        self.assertIn("b is dead", str(e))

    def test_empty_restriction_rejected(self):
        self.refused("t1", errors.BadRequest, engines=[])

    def test_registering_engine_accepted(self):
        c = self.engine("c", alive=False)
        self.submit("t1", engines=["c"])
        self.assertEqual(self.to_engines, [])
        self.registry.mark_alive(c, 1.0)
        self.assertEqual(self.sent("c"), ["t1"])

    def test_restricted_tasks_fail_when_all_their_engines_die(self):
        for i in range(3):
            self.submit(f"t{i}", engines=["b"])
        self.submit("free")
        self.started("b", "t0")
        self.assertEqual(self.held("b"), ["t0", "t1"])
        self.assertEqual(self.state("t2"), READY)
        self.die(self.b, "heart silent")
        for task in ("t0", "t1", "t2"):
            message = self.error_of(task, "EngineDied")
            self.assertIn(task, message)
            self.assertIn("b", message)
        self.assertIn("while running task t0", self.error_of("t0", "EngineDied"))
        self.assertIn("heart silent", self.error_of("t0", "EngineDied"))
        self.assertEqual(self.scheduler.retried, 0, "nowhere else to run: not retried")
        self.assertEqual(self.results("free"), [])
        self.assertEqual(list(self.scheduler.tasks), ["free"])

    def test_waiting_restricted_task_fails_when_its_engine_dies(self):
        self.submit("dep")
        self.assertEqual(self.sent("a"), ["dep"])
        self.submit("t1", engines=["b"], after=["dep"])
        self.assertEqual(self.state("t1"), WAITING)
        self.die(self.b)
        self.assertIn("t1", self.error_of("t1", "EngineDied"))
        self.assertEqual(self.scheduler.dependents.get("dep", set()), set())
        self.result("a", "dep")
        self.assertEqual(len(self.results("t1")), 1)

    def test_restricted_to_a_registration_that_is_purged(self):
        c = self.engine("c", alive=False)
        self.submit("t1", engines=["c"])
        self.registry.remove(c, "no pong", 10.0, event="purged")
        self.assertIn("t1", self.error_of("t1", "EngineDied"))
        self.assertEqual(self.scheduler.tasks, {})

    def test_restricted_to_several_survives_one_death(self):
        c = self.engine("c")
        self.submit("t1", engines=["b", "c"])
        self.assertEqual(self.sent("b"), ["t1"])
        self.die(self.b)
        self.assertEqual(self.sent("c"), ["t1"])
        self.assertEqual(self.results(), [])
        self.result("c", "t1")
        self.assertEqual(self.result_of("t1")["engine"], "c")
        self.die(c)
        self.refused("t2", errors.EngineDead, engines=["b", "c"])

    def test_restricted_to_dead_engine_does_not_leak_queue_entries(self):
        # engines=[a, b] with b dead: the task is accepted (a is alive) and
        # runs on a; nothing may stay queued for b once the tasks are done.
        self.die(self.b)
        for i in range(50):
            self.submit(f"t{i}", engines=["a", "b"])
            self.result("a", f"t{i}")
        self.assertEqual(len(self.results()), 50)
        self.assertEqual(self.scheduler.tasks, {})
        leftover = {e: len(q) for e, q in self.scheduler.ready_on.items() if q}
        self.assertEqual(leftover, {}, "ready_on keeps ids of finished tasks queued for a dead engine")



# =====================================================================================
# Stealing
# =====================================================================================


class StealingTests(Fixture):
    def setUp(self):
        super().setUp()
        self.a = self.engine("a")
        self.b = self.engine("b")
        for i in range(1, 5):
            self.submit(f"t{i}")
        self.assertEqual(self.sent(), {"a": ["t1", "t3"], "b": ["t2", "t4"]})
        self.started("a", "t1")  # a long task, t3 prefetched behind it

    def aborts(self, engine_id):
        control = self.controls.get(engine_id)
        return [(task, release) for task, _, release, _ in control.aborts] if control else []

    def answer(self, engine_id, outcome, index=0):
        d = self.controls[engine_id].aborts[index][3]
        if isinstance(outcome, Exception):
            d.errback(outcome)
        else:
            d.callback(outcome)

    def test_no_steal_while_thief_has_work(self):
        self.result("b", "t2")
        self.assertEqual(self.aborts("a"), [])

    def test_idle_engine_steals_prefetched_task(self):
        self.result("b", "t2")
        self.result("b", "t4")
        self.assertEqual(self.aborts("a"), [("t3", True)])
        self.assertEqual(self.sent("b"), ["t2", "t4"], "nothing moves before the engine released it")
        self.answer("a", "released")
        self.assertEqual(self.sent("b"), ["t2", "t4", "t3"])
        self.assertEqual(self.held("a"), ["t1"])
        self.assertEqual(self.held("b"), ["t3"])
        self.assertEqual(self.scheduler.stolen, 1)
        self.result("b", "t3")
        self.result("a", "t1")
        self.assertEqual(self.result_of("t3")["engine"], "b")
        self.assertEqual(self.result_of("t1")["engine"], "a")
        self.assertEqual(self.scheduler.tasks, {})

    def test_one_release_at_a_time(self):
        self.result("b", "t2")
        self.result("b", "t4")
        self.registry.mark_busy(self.b, 1.0, "control silent")
        self.registry.mark_alive(self.b, 2.0)  # b asks for work again
        self.assertEqual(self.aborts("a"), [("t3", True)])

    def test_running_answer_moves_nothing(self):
        self.result("b", "t2")
        self.result("b", "t4")
        self.answer("a", "running")
        self.assertEqual(self.sent("b"), ["t2", "t4"])
        self.assertEqual(self.held("a"), ["t1", "t3"])
        self.assertEqual(self.scheduler.stolen, 0)
        self.result("a", "t1")
        self.started("a", "t3")
        self.result("a", "t3")
        self.assertEqual(self.result_of("t3")["engine"], "a")

    def test_failed_release_can_be_retried(self):
        self.result("b", "t2")
        self.result("b", "t4")
        self.answer("a", errors.ControlTimeout("no answer"))
        self.assertEqual(self.held("a"), ["t1", "t3"])
        self.assertFalse(self.scheduler.tasks["t3"].releasing)
        self.registry.mark_busy(self.b, 1.0, "control silent")
        self.registry.mark_alive(self.b, 2.0)
        self.assertEqual(self.aborts("a"), [("t3", True), ("t3", True)])
        self.answer("a", "released", index=1)
        self.assertEqual(self.held("b"), ["t3"])

    def test_third_engine_joining_steals_one_task(self):
        self.engine("c")
        asked = self.aborts("a") + self.aborts("b")
        self.assertEqual(len(asked), 1, "one release at a time")
        self.assertIn(asked[0], [("t3", True), ("t4", True)])
        victim = "a" if self.aborts("a") else "b"
        self.answer(victim, "released")
        self.assertEqual(self.sent("c"), [asked[0][0]])

    def test_victim_dies_while_releasing(self):
        self.result("b", "t2")
        self.result("b", "t4")
        self.die(self.a)
        # Both of a's tasks are retried on b, which has room for both.
        self.assertEqual(sorted(self.held("b")), ["t1", "t3"])
        self.answer("a", "released")  # stale: must not move t3 again
        self.assertEqual(self.sent("b").count("t3"), 1)
        self.assertEqual(sorted(self.held("b")), ["t1", "t3"])
        self.assertEqual(self.scheduler.stolen, 0)


class StealingRestrictionTests(Fixture):
    prefetch = 2

    def test_only_tasks_the_thief_may_run(self):
        self.engine("a")
        self.submit("t1")
        self.submit("t2")
        self.submit("t3", engines=["a"])
        self.assertEqual(self.held("a"), ["t1", "t2", "t3"])
        self.started("a", "t1")
        self.engine("b")  # idle, nothing ready: steals, but not t3
        control = self.controls["a"]
        self.assertEqual([(t, r) for t, _, r, _ in control.aborts], [("t2", True)])
        control.aborts[0][3].callback("released")
        self.assertEqual(self.sent("b"), ["t2"])
        self.assertEqual(self.held("a"), ["t1", "t3"])

    def test_nothing_stolen_when_thief_may_run_nothing(self):
        self.engine("a")
        self.submit("t1", engines=["a"])
        self.submit("t2", engines=["a"])
        self.started("a", "t1")
        self.engine("b")
        self.assertNotIn("a", self.controls)
        self.assertEqual(self.sent("b"), [])


class LateJoinerStealTests(Fixture):
    def test_engine_joining_with_nothing_ready_steals(self):
        self.engine("a")
        self.submit("t1")
        self.submit("t2")
        self.started("a", "t1")
        self.engine("b")
        [(task, _, release, d)] = self.controls["a"].aborts
        self.assertEqual((task, release), ("t2", True))
        d.callback("released")
        self.assertEqual(self.sent("b"), ["t2"])
        self.assertEqual(self.held("a"), ["t1"])


# =====================================================================================
# Dependencies
# =====================================================================================


class DependencyTests(Fixture):
    remember = 3

    def setUp(self):
        super().setUp()
        self.a = self.engine("a")
        self.b = self.engine("b")

    def test_waits_until_all_succeeded(self):
        self.submit("t1")
        self.submit("t2")
        self.submit("t3", after=["t1", "t2"])
        self.assertEqual(self.state("t3"), WAITING)
        self.result("a", "t1")
        self.assertEqual(self.state("t3"), WAITING)
        self.assertNotIn("t3", self.sent("a") + self.sent("b"))
        self.result("b", "t2")
        self.assertIn(self.state("t3"), (ASSIGNED,))
        self.assertIn("t3", self.sent("a") + self.sent("b"))

    def test_failed_dependency(self):
        self.submit("t1")
        self.submit("t2")
        self.submit("t3", after=["t1", "t2"])
        self.result("b", "t2", ok=False, error={"type": "ValueError", "message": "bad"})
        message = self.error_of("t3", "DependencyError")
        self.assertIn("t2", message)
        self.assertNotIn("t1", message.replace("t3", ""))
        self.assertNotIn("t3", self.sent("a") + self.sent("b"))
        self.assertNotIn("t3", self.scheduler.tasks)
        self.assertEqual(self.store.records["t3"]["status"], "failed")
        # t1's success later changes nothing.
        self.result("a", "t1")
        self.assertEqual(len(self.results("t3")), 1)

    def test_after_failed_run(self):
        self.submit("t1")
        self.submit("t2", after=["t1"], after_failed="run")
        self.result("a", "t1", ok=False, error={"type": "ValueError", "message": "bad"})
        self.assertEqual(self.results("t2"), [])
        self.assertIn("t2", self.sent("a") + self.sent("b"))

    def test_bad_after_failed_rejected(self):
        self.submit("t1")
        self.refused("t2", errors.BadRequest, after=["t1"], after_failed="maybe")

    def test_unknown_dependency_rejected(self):
        self.submit("t1")
        e = self.refused("t2", errors.BadRequest, after=["t1", "ghost"])
        self.assertIn("ghost", str(e))
        self.assertNotIn("t2", self.store.records)

    def test_dependency_already_succeeded(self):
        self.submit("t1")
        self.result("a", "t1")
        self.submit("t2", after=["t1"])
        self.assertIn("t2", self.sent("a") + self.sent("b"))

    def test_dependency_already_failed_fails_at_once(self):
        self.submit("t1")
        self.result("a", "t1", ok=False, error={"type": "ValueError", "message": "bad"})
        self.submit("t2", after=["t1"])
        self.assertIn("t1", self.error_of("t2", "DependencyError"))
        self.assertNotIn("t2", self.scheduler.tasks)
        self.submit("t3", after=["t1"], after_failed="run")
        self.assertIn("t3", self.sent("a") + self.sent("b"))

    def finish_old(self, ok):
        """t-old finishes, then enough tasks that it leaves the recent cache."""
        self.submit("old")
        if ok:
            self.result("a", "old")
        else:
            self.result("a", "old", ok=False, error={"type": "ValueError", "message": "bad"})
        for i in range(self.remember):
            self.submit(f"filler{i}")
            self.result(self.scheduler.tasks[f"filler{i}"].engine, f"filler{i}")
        self.assertNotIn("old", self.scheduler.recent)
        self.assertEqual(len(self.scheduler.recent), self.remember)

    def test_old_dependency_looked_up_in_the_store(self):
        self.finish_old(ok=True)
        looked_up = []
        get = self.store.get
        self.store.get = lambda task_id: (looked_up.append(task_id), get(task_id))[1]
        self.submit("new", after=["old"])
        self.assertEqual(looked_up, ["old"])
        self.assertIn("new", self.sent("a") + self.sent("b"))

    def test_old_failed_dependency_looked_up_in_the_store(self):
        self.finish_old(ok=False)
        self.submit("new", after=["old"])
        self.assertIn("old", self.error_of("new", "DependencyError"))

    def test_old_dependency_purged_from_the_store(self):
        self.finish_old(ok=True)
        self.successResultOf(self.store.purge())
        self.refused("new", errors.BadRequest, after=["old"])

    def test_dependency_in_an_unknown_state_leaves_nothing_behind(self):
        # The store knows the task but it is neither ok nor failed (it was in
        # flight when the controller restarted): refused, and nothing queued.
        self.store.submitted("lost", "", 0.0)
        self.store.started("lost", "a", 1.0)
        self.submit("t1")
        tasks_before = dict(self.scheduler.tasks)
        f = self.failureResultOf(self.scheduler.submit(b"c1", "t2", b"p", after=["t1", "lost"]), errors.BadRequest)
        self.assertIn("lost", str(f.value))
        self.assertEqual(self.scheduler.tasks, tasks_before, "the refused task stays in scheduler.tasks")
        self.assertEqual(self.scheduler.dependents.get("t1", set()), set())
        # ... and its id is free to use again.
        self.submit("t2")


    def test_chain_cascades_failure(self):
        self.submit("t1")
        self.submit("t2", after=["t1"])
        self.submit("t3", after=["t2"])
        self.submit("t4", after=["t3"], after_failed="run")
        self.result("a", "t1", ok=False, error={"type": "ValueError", "message": "bad"})
        self.assertIn("t1", self.error_of("t2", "DependencyError"))
        self.assertIn("t2", self.error_of("t3", "DependencyError"))
        self.assertEqual(self.results("t4"), [])
        self.assertIn("t4", self.sent("a") + self.sent("b"))
        self.assertEqual(list(self.scheduler.tasks), ["t4"])

    def test_chain_runs_in_order(self):
        self.submit("t1")
        self.submit("t2", after=["t1"])
        self.submit("t3", after=["t2"])
        order = []
        for task in ("t1", "t2", "t3"):
            engine_id = self.scheduler.tasks[task].engine
            self.assertIsNotNone(engine_id, f"{task} should be assigned by now")
            for other in ("t2", "t3"):
                if other not in order and other != task and other in self.scheduler.tasks:
                    self.assertEqual(self.state(other), WAITING)
            self.result(engine_id, task)
            order.append(task)
        self.assertEqual([msg["task"] for _, msg in self.results()], ["t1", "t2", "t3"])
        self.assertEqual(self.scheduler.dependents, {})

    def test_duplicate_dependencies(self):
        self.submit("t1")
        self.submit("t2", after=["t1", "t1"])
        self.result("a", "t1")
        self.assertIn("t2", self.sent("a") + self.sent("b"))

    def test_dependency_death_and_retry_keeps_dependents_waiting(self):
        self.submit("t1")
        self.submit("t2", after=["t1"])
        self.started("a", "t1")
        self.die(self.a)
        self.assertEqual(self.state("t2"), WAITING)
        self.assertEqual(self.sent("b"), ["t1"])
        self.result("b", "t1")
        self.assertIn("t2", self.sent("b"))


# =====================================================================================
# Retries
# =====================================================================================


class RetryTests(Fixture):
    def setUp(self):
        super().setUp()
        self.a = self.engine("a")

    def test_tasks_of_a_dead_engine_rerun_elsewhere(self):
        self.submit("t1")
        self.submit("t2")
        self.started("a", "t1")
        b = self.engine("b")
        self.die(self.a)
        self.assertEqual(self.results(), [])
        self.assertEqual(sorted(self.sent("b")), ["t1", "t2"])
        self.assertEqual(self.scheduler.retried, 1, "t2, queued behind t1, went back without a retry")
        self.assertEqual((self.scheduler.tasks["t1"].retries, self.scheduler.tasks["t2"].retries), (0, 1))
        # A late result from the dead engine is dropped: never two results.
        self.result("a", "t1")
        self.assertEqual(self.results(), [])
        self.result("b", "t1")
        self.result("b", "t2")
        self.result("a", "t2")
        self.assertEqual(self.result_of("t1")["engine"], "b")
        self.assertEqual(self.result_of("t2")["engine"], "b")
        self.assertEqual(self.store.records["t1"]["engine"], "b")
        self.assertEqual(b.state, "alive")

    def test_retried_tasks_go_before_later_submissions(self):
        for i in range(1, 6):
            self.submit(f"t{i}")
        self.started("a", "t1")
        self.assertEqual(list(self.scheduler.ready), ["t3", "t4", "t5"])
        self.die(self.a)
        self.engine("b")
        self.assertEqual(sorted(self.sent("b")), ["t1", "t2"])

    def test_waits_for_an_engine_when_none_is_left(self):
        self.submit("t1")
        self.die(self.a)
        self.assertEqual(self.results(), [])
        self.assertEqual(self.state("t1"), READY)
        self.engine("b")
        self.assertEqual(self.sent("b"), ["t1"])

    def test_default_retries_then_engine_died(self):
        self.assertGreaterEqual(DEFAULT_RETRIES, 1)
        self.submit("t1")
        record = self.a
        for n in range(DEFAULT_RETRIES):
            replacement = self.engine(f"r{n}")
            self.started(record.id, "t1")
            self.die(record)
            self.assertEqual(self.results(), [], f"retry {n + 1} of {DEFAULT_RETRIES}")
            self.assertEqual(self.sent(replacement.id), ["t1"])
            record = replacement
        self.engine("last")
        self.started(record.id, "t1")
        self.die(record, "killed")
        message = self.error_of("t1", "EngineDied")
        self.assertIn(record.id, message)
        self.assertIn("t1", message)
        self.assertIn("killed", message)
        self.assertEqual(self.sent("last"), [])

    def test_no_retries(self):
        self.engine("b")
        self.submit("t1", retries=0)
        self.assertEqual(self.sent("a"), ["t1"])
        self.die(self.a, "heart silent")
        message = self.error_of("t1", "EngineDied")
        self.assertIn("engine a", message)
        self.assertIn("t1", message)
        self.assertEqual(self.sent("b"), [])

    def test_retries_counted_per_task(self):
        self.submit("t1", retries=2)
        for n in range(2):
            b = self.engine(f"b{n}")
            self.die(self.registry.get(self.scheduler.tasks["t1"].engine))
            self.assertEqual(self.results(), [])
            self.assertEqual(self.scheduler.tasks["t1"].engine, b.id)
        self.die(self.registry.get("b1"))
        self.assertIn("b1", self.error_of("t1", "EngineDied"))

    def test_engine_leaving_retries_too(self):
        self.submit("t1")
        self.started("a", "t1")
        self.engine("b")
        self.from_engine("a", "bye", {"instance": "a-i", "reason": "exit command"})
        self.assertEqual(self.sent("b"), ["t1"])
        self.assertEqual(self.results(), [])

    def test_bad_retries_rejected(self):
        for retries in (-1, 1.5, True, "2"):
            self.refused("t1", errors.BadRequest, retries=retries)


# =====================================================================================
# Timeouts
# =====================================================================================


class TimeoutTests(Fixture):
    prefetch = 0

    def setUp(self):
        super().setUp()
        self.a = self.engine("a")

    def test_counts_from_started(self):
        self.submit("t1", timeout=5)
        self.submit("t2")
        self.clock.advance(100)
        self.assertEqual(self.results(), [], "an assigned task that has not started does not time out")
        self.started("a", "t1")
        self.clock.advance(4.5)
        self.assertEqual(self.results(), [])
        self.assertNotIn("a", self.controls)
        self.clock.advance(0.5)
        message = self.error_of("t1", "TaskTimeout")
        self.assertIn("t1", message)
        self.assertIn("5", message)
        [[signum, task, _, _]] = self.controls["a"].signals
        self.assertEqual((signum, task), (signal.SIGINT, "t1"))
        # The engine is still busy with t1: its slot stays taken ...
        self.assertEqual(self.sent("a"), ["t1"])
        # ... until the late result, which is dropped but frees the slot.
        self.result("a", "t1")
        self.assertEqual(len(self.results("t1")), 1)
        self.assertEqual(self.sent("a"), ["t1", "t2"])
        self.assertEqual(self.store.records["t1"]["status"], "failed")
        self.assertEqual(self.store.records["t1"]["error"]["type"], "TaskTimeout")

    def test_result_in_time(self):
        self.submit("t1", timeout=5)
        self.started("a", "t1")
        self.clock.advance(4)
        self.result("a", "t1")
        self.clock.advance(10)
        self.assertIs(self.result_of("t1")["ok"], True)
        self.assertNotIn("a", self.controls)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_signal_is_harmless(self):
        self.submit("t1", timeout=1)
        self.started("a", "t1")
        self.clock.advance(1)
        self.controls["a"].signals[0][3].errback(errors.EngineDead("gone"))
        self.error_of("t1", "TaskTimeout")

    def test_retry_restarts_the_clock(self):
        b = self.engine("b")
        self.submit("t1", timeout=5)
        self.assertEqual(self.sent("a"), ["t1"])
        self.started("a", "t1")
        self.clock.advance(3)
        self.die(self.a)
        self.assertEqual(self.sent("b"), ["t1"])
        self.clock.advance(1)
        self.started("b", "t1")
        self.clock.advance(1)
        self.assertEqual(self.results(), [], "the dead engine's deadline is cancelled")
        self.clock.advance(3.5)
        self.assertEqual(self.results(), [])
        self.clock.advance(0.5)
        self.error_of("t1", "TaskTimeout")
        self.assertEqual(self.controls["b"].signals[0][:2], [signal.SIGINT, "t1"])
        self.assertEqual(b.state, "alive")

    def test_bad_timeouts_rejected(self):
        for timeout in (0, -1, "5", True):
            self.refused("t1", errors.BadRequest, timeout=timeout)


# =====================================================================================
# Cancel
# =====================================================================================


class CancelTests(Fixture):
    def setUp(self):
        super().setUp()
        self.a = self.engine("a")
        for i in range(1, 4):
            self.submit(f"t{i}")
        self.started("a", "t1")
        self.assertEqual(self.held("a"), ["t1", "t2"])
        self.assertEqual(self.state("t3"), READY)

    def test_ready_task(self):
        self.assertIs(self.successResultOf(self.scheduler.cancel("t3")), True)
        self.assertIn("t3", self.error_of("t3", "TaskCancelled"))
        self.assertNotIn("t3", self.scheduler.tasks)
        self.result("a", "t1")
        self.result("a", "t2")
        self.assertNotIn("t3", self.sent("a"))
        self.assertEqual(len(self.results("t3")), 1)

    def test_waiting_task(self):
        self.submit("t4", after=["t1"])
        self.submit("t5", after=["t4"])
        self.assertIs(self.successResultOf(self.scheduler.cancel("t4")), True)
        self.error_of("t4", "TaskCancelled")
        self.assertIn("t4", self.error_of("t5", "DependencyError"))
        self.assertNotIn("t4", self.scheduler.dependents.get("t1", set()), "removed from the dependency graph")
        self.result("a", "t1")
        self.assertNotIn("t4", self.sent("a"))
        self.assertEqual(len(self.results("t4")), 1)

    def test_prefetched_task_released(self):
        d = self.scheduler.cancel("t2")
        self.assertNoResult(d)
        [[task, _, release, answer]] = self.controls["a"].aborts
        self.assertEqual((task, release), ("t2", True))
        answer.callback("released")
        self.assertIs(self.successResultOf(d), True)
        self.error_of("t2", "TaskCancelled")
        # The freed slot takes the next ready task.
        self.assertEqual(self.held("a"), ["t1", "t3"])
        self.assertEqual(self.sent("a"), ["t1", "t2", "t3"])

    def test_prefetched_task_that_started_meanwhile(self):
        d = self.scheduler.cancel("t2")
        self.controls["a"].aborts[0][3].callback("running")
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.results(), [])
        self.assertEqual(self.held("a"), ["t1", "t2"])

    def test_release_fails(self):
        d = self.scheduler.cancel("t2")
        self.controls["a"].aborts[0][3].errback(errors.ControlTimeout("no answer"))
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.results(), [])

    def test_running_task(self):
        self.assertIs(self.successResultOf(self.scheduler.cancel("t1")), False)
        self.assertNotIn("a", self.controls)
        self.assertEqual(self.results(), [])
        self.assertEqual(self.state("t1"), RUNNING)

    def test_unknown_or_finished_task(self):
        self.assertIs(self.successResultOf(self.scheduler.cancel("nope")), False)
        self.result("a", "t1")
        self.assertIs(self.successResultOf(self.scheduler.cancel("t1")), False)
        self.assertEqual(len(self.results("t1")), 1)


# =====================================================================================
# Fetch
# =====================================================================================


class FetchTests(Fixture):
    def setUp(self):
        super().setUp()
        self.a = self.engine("a")

    def test_finished_task_sent_again_from_the_store(self):
        self.submit("t1", client=b"c1")
        self.result("a", "t1")
        self.assertEqual(self.successResultOf(self.scheduler.fetch(b"c2", "t1")), "done")
        first, again = self.result_of("t1", b"c1"), self.result_of("t1", b"c2")
        self.assertEqual((again["ok"], again["engine"]), (True, "a"))
        self.assertEqual(again.payloads, first.payloads)

    def test_failed_task_fetched(self):
        self.submit("t1")
        error = {"type": "ValueError", "message": "bad", "traceback": "tb"}
        self.result("a", "t1", ok=False, error=error)
        self.assertEqual(self.successResultOf(self.scheduler.fetch(b"c2", "t1")), "done")
        msg = self.result_of("t1", b"c2")
        self.assertEqual((msg["ok"], msg["error"]), (False, error))
        self.assertEqual(msg.payloads, (b"", b"", b""))

    def test_pending_task_delivered_to_both(self):
        self.submit("t1", client=b"c1")
        self.assertEqual(self.successResultOf(self.scheduler.fetch(b"c2", "t1")), "pending")
        self.assertEqual(self.successResultOf(self.scheduler.fetch(b"c1", "t1")), "pending")
        self.assertEqual(self.results(), [])
        self.result("a", "t1")
        self.assertEqual(self.result_of("t1", b"c1").payloads, self.result_of("t1", b"c2").payloads)
        self.assertEqual(len(self.results("t1")), 2)

    def test_waiting_task_delivered_to_both(self):
        self.submit("t0")
        self.submit("t1", after=["t0"])
        self.assertEqual(self.successResultOf(self.scheduler.fetch(b"c2", "t1")), "pending")
        self.result("a", "t0", ok=False, error={"type": "ValueError", "message": "bad"})
        self.error_of("t1", "DependencyError", b"c1")
        self.error_of("t1", "DependencyError", b"c2")

    def test_unknown_task(self):
        self.failureResultOf(self.scheduler.fetch(b"c2", "nope"), errors.BadRequest)
        self.assertEqual(self.to_clients, [])

    def test_purged_task(self):
        self.submit("t1")
        self.result("a", "t1")
        self.assertEqual(self.successResultOf(self.store.purge()), 1)
        self.failureResultOf(self.scheduler.fetch(b"c2", "t1"), errors.BadRequest)

    def test_task_lost_in_a_restart(self):
        self.store.submitted("lost", "", 0.0)
        f = self.failureResultOf(self.scheduler.fetch(b"c2", "lost"), errors.ClusterError)
        self.assertNotIsInstance(f.value, errors.BadRequest)
        self.assertIn("restarted", str(f.value))


# =====================================================================================
# Submission, memory, send failures
# =====================================================================================


class SubmitTests(Fixture):
    def setUp(self):
        super().setUp()
        self.engine("a")

    def test_bad_task_ids(self):
        for task_id in ("", "x" * 201, None, 7):
            self.refused(task_id, errors.BadRequest)

    def test_duplicate_in_flight(self):
        self.submit("t1", client=b"c1")
        self.refused("t1", errors.BadRequest, client=b"other")
        self.assertEqual(self.scheduler.tasks["t1"].clients, [b"c1"])
        self.assertEqual(self.sent("a"), ["t1"])

    def test_duplicate_while_a_dependency_is_looked_up(self):
        # The store answers later (as SQLite does): a second submit of the
        # same id in the meantime must not put two tasks under one id.
        self.store.submitted("old", "", 0.0)
        self.store.finished("old", True, 1.0, "a", None, b"v", "", "")
        pending = []
        self.store.get = lambda task_id: pending.append(defer.Deferred()) or pending[-1]
        first = self.scheduler.submit(b"c1", "t1", b"p", after=["old"])
        second = self.scheduler.submit(b"c2", "t1", b"p", after=["old"])
        record = {"task": "old", "status": "ok"}
        for d in pending:
            d.callback(record)
        self.assertEqual(self.successResultOf(first), "t1")
        self.failureResultOf(second, errors.BadRequest)
        self.assertEqual(self.sent("a"), ["t1"])
        self.assertEqual(self.scheduler.tasks["t1"].clients, [b"c1"])

    def test_name_recorded(self):
        self.submit("t1", name="f")
        self.assertEqual(self.store.records["t1"]["name"], "f")


class MemoryTests(Fixture):
    remember = 10

    def test_finished_tasks_leave_memory(self):
        self.engine("a")
        self.engine("b")
        previous = None
        for i in range(60):
            self.submit(f"t{i}", after=[previous] if previous else ())
            previous = f"t{i}" if i % 3 else None
        for _ in range(200):
            if not self.scheduler.tasks:
                break
            for engine_id in ("a", "b"):
                held = self.held(engine_id)
                if held:
                    self.started(engine_id, held[0])
                    self.result(engine_id, held[0])
        self.assertEqual(len(self.results()), 60)
        self.assertEqual(self.scheduler.tasks, {})
        self.assertEqual(len(self.scheduler.recent), 10)
        self.assertEqual(self.scheduler.dependents, {})
        self.assertEqual({e: len(h) for e, h in self.scheduler.assigned.items()}, {"a": 0, "b": 0})
        self.assertEqual(len(self.scheduler.ready), 0)
        self.assertEqual(sum(len(q) for q in self.scheduler.ready_on.values()), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeouts_and_cancels_leave_memory(self):
        self.engine("a")
        for i in range(20):
            self.submit(f"t{i}", timeout=1)
        for i in range(2, 20, 2):
            self.successResultOf(self.scheduler.cancel(f"t{i}"))
        for _ in range(100):
            if not self.scheduler.tasks:
                break
            [first, *_] = self.held("a")
            self.started("a", first)
            self.clock.advance(1)
            self.result("a", first)
        self.assertEqual(len(self.results()), 20)
        self.assertEqual(self.held("a"), [])
        self.assertEqual(len(self.scheduler.recent), 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SendFailureTests(Fixture):
    prefetch = 0

    def test_unreachable_engine_does_not_spin_the_scheduler(self):
        # The transport's send fails (EHOSTUNREACH / EAGAIN) when an engine has
        # just disconnected and the heart monitor has not yet declared it dead.
        self.engine("a")
        self.submit("t1")
        self.submit("t2")
        self.unreachable.add("a")
        try:
            self.result("a", "t1")
        except SendLoop as e:
            self.fail(f"the scheduler re-sends to an engine it cannot reach, forever: {e}")
        self.assertEqual(self.state("t2"), READY)
        self.engine("b")
        self.assertEqual(self.sent("b"), ["t2"])


    def test_unreachable_engine_at_dispatch(self):
        self.engine("a")
        self.unreachable.add("a")
        self.submit("t1")
        self.assertEqual(self.state("t1"), READY)
        self.engine("b")
        self.assertEqual(self.sent("b"), ["t1"])


# =====================================================================================
# The client front end
# =====================================================================================


class FrontEndFixture(Fixture):
    """ClientFrontEnd with a real ControlChannel; the scheduler's stealing uses it too."""

    def setUp(self):
        super().setUp()
        self.e1 = self.engine("e1")
        self.to_controls = []
        monitor = HeartMonitor(self.clock, self.registry, PingCodec(KEY), lambda i, p: True, lambda r, b: None)
        self.control = ControlChannel(self.registry, monitor, self.codec, self.clock, self.send_control, self.drops, 5.0)
        self.scheduler.control_for = self.control.control_for
        self.client_sessions = ClientSessions()
        self.scheduler.results.session_of = self.client_sessions.session_of
        self.frontend = ClientFrontEnd(
            self.registry, self.control, self.scheduler, self.codec, self.clock, self.send_client, self.drops,
            self.client_sessions,
        )
        self.e1_codec = Codec(KEY, session="e1")  # e1's own messages
        self.sessions = {}  # client identity -> its session

    def send_control(self, frames):
        self.to_controls.append((frames[0], self.codec.decode(frames[1:])))
        return True

    def session(self, client):
        """The client's session, opened by a ``connect`` the first time."""
        if client not in self.sessions:
            self.frontend.message_received([client, *self.codec.encode("connect", session="")])
            to, welcome = self.to_clients.pop()
            self.assertEqual((to, welcome.type), (client, "welcome"))
            self.sessions[client] = welcome.session
        return self.sessions[client]

    def request(self, mtype, fields=None, payloads=(), client=b"client-1"):
        """A client's request; returns the reply sent back to it (or None)."""
        frames = self.codec.encode(mtype, fields, list(payloads), session=self.session(client))
        before = len(self.to_clients)
        self.frontend.message_received([client, *frames])
        replies = [(to, msg) for to, msg in self.to_clients[before:] if msg.type not in ("result", "running")]
        if not replies:
            return None
        [(to, msg)] = replies
        self.assertEqual(to, client)
        self.assertEqual(msg["ref"], msgpack.unpackb(frames[1])["id"])
        return msg

    def control_request(self, verb, args, engine="e1"):
        return self.request("control", {"engine": engine, "verb": verb, "args": args})

    def assertError(self, reply, error_type):
        self.assertIsNotNone(reply, "no reply")
        self.assertEqual(reply.type, "reply")
        self.assertIs(reply["ok"], False)
        self.assertEqual(reply["error"]["type"], error_type, reply["error"])
        return reply["error"]["message"]

    def assertValue(self, reply, value):
        self.assertIsNotNone(reply, "no reply")
        self.assertEqual((reply.type, reply["ok"]), ("reply", True), reply.fields)
        self.assertEqual(reply["value"], value)


    # -- submit: no reply when accepted; a refused task fails with a result ------------

    def submit_request(self, fields, payloads=(b"p",), client=b"client-1"):
        """Send a submit; returns what was sent back to any client."""
        session = self.session(client)
        before = len(self.to_clients)
        self.frontend.message_received([client, *self.codec.encode("submit", fields, list(payloads), session=session)])
        return self.to_clients[before:]

    def assertAccepted(self, fields, payloads=(b"p",), client=b"client-1"):
        self.assertEqual(self.submit_request(fields, payloads, client), [], "an accepted submit gets no reply")
        self.assertIn(fields["task"], self.scheduler.tasks)
        self.assertEqual(self.scheduler.tasks[fields["task"]].clients, [client])

    def assertRefused(self, fields, error_type, payloads=(b"p",), client=b"client-1"):
        """Refused: the client gets one failed result for that task id, and nothing else happens."""
        tasks, records, sent = list(self.scheduler.tasks), dict(self.store.records), len(self.to_engines)
        replies = self.submit_request(fields, payloads, client)
        self.assertEqual(len(replies), 1, replies)
        [(to, msg)] = replies
        self.assertEqual((to, msg.type, msg["task"], msg["ok"]), (client, "result", fields["task"], False))
        self.assertEqual(msg["error"]["type"], error_type, msg["error"])
        self.assertEqual(msg.payloads, (b"", b"", b""))
        self.assertEqual(list(self.scheduler.tasks), tasks)
        self.assertEqual(self.store.records, records)
        self.assertEqual(len(self.to_engines), sent)
        return msg["error"]["message"]


class ClientFrontEndTests(FrontEndFixture):
    # -- control verbs (ported) ----------------------------------------------------------

    def test_bad_verb(self):
        self.assertError(self.control_request("explode", {}), "BadRequest")
        self.assertEqual(self.to_controls, [])

    def test_bad_signum(self):
        for signum in (0, 128, -9, True, "9", 2.0, None):
            self.assertError(self.control_request("signal", {"signum": signum}), "BadRequest")
        self.assertError(self.control_request("signal", {"signum": 2, "task": 7}), "BadRequest")
        self.assertEqual(self.to_controls, [])

    def test_abort_without_task(self):
        self.assertError(self.control_request("abort", {}), "BadRequest")
        self.assertError(self.control_request("abort", {"task": ""}), "BadRequest")
        self.assertEqual(self.to_controls, [])

    def test_bad_timeout(self):
        self.assertError(self.control_request("beat", {"timeout": -1}), "BadRequest")
        self.assertError(self.control_request("beat", {"timeout": "soon"}), "BadRequest")
        self.assertError(self.control_request("exit", {"timeout": True}), "BadRequest")
        self.assertEqual(self.to_controls, [])

    def test_control_of_unknown_or_dead_engine(self):
        self.assertError(self.control_request("beat", {}, engine="nope"), "UnknownEngine")
        self.registry.mark_dead(self.e1, "gone", 1.0)
        self.assertError(self.control_request("beat", {}), "EngineDead")

    def test_control_round_trip(self):
        self.assertIsNone(self.control_request("abort", {"task": "t9"}), "the reply waits for the engine")
        [(to, command)] = self.to_controls
        self.assertEqual((to, command["verb"], command["args"]), (b"e1", "abort", {"task": "t9"}))
        engine_reply = self.e1_codec.encode("reply", {"ref": command.id, "ok": True, "value": "unknown"})
        self.control.message_received([b"e1", *engine_reply])
        [(to, reply)] = self.to_clients
        self.assertEqual((to, reply["ok"], reply["value"]), (b"client-1", True, "unknown"))

    def test_control_timeout_reported(self):
        self.assertIsNone(self.control_request("reset", {"timeout": 2}))
        self.clock.advance(2)
        [(_, reply)] = self.to_clients
        self.assertError(reply, "ControlTimeout")

    def test_connect_and_engines(self):
        welcome = self.request("connect")
        self.assertEqual((welcome.type, welcome["version"]), ("welcome", wire.PROTOCOL_VERSION))
        self.assertEqual(welcome.session, self.session(b"client-1"), "a known session is kept")
        reply = self.request("engines")
        self.assertEqual([(e["id"], e["state"]) for e in reply["value"]], [("e1", "alive")])

    def test_garbage_dropped(self):
        self.frontend.message_received([b"client-1", b"garbage"])
        self.frontend.message_received([b"client-1", b"x" * 32, b"header"])
        self.frontend.message_received([b"client-1", *Codec(b"wrong key").encode("connect")])
        self.assertEqual(self.to_clients, [])
        # Signed, so from a real client, but not a request: dropped and answered.
        self.assertError(self.request("result", {"task": "t", "ok": True}, [b""] * 3), "BadRequest")
        self.assertEqual(self.drops.totals[("client", "too few frames")], 1)
        self.assertEqual(self.drops.totals[("client", "bad signature")], 2)
        self.assertEqual(self.drops.totals[("client", "unexpected type")], 1)

    def test_submit_load_balanced(self):
        e2 = self.engine("e2")
        self.assertAccepted({"task": "t1"}, [b"payload"])
        self.assertAccepted({"task": "t2"}, [b"payload"])
        self.assertEqual(self.sent(), {"e1": ["t1"], "e2": ["t2"]})
        [(_, task), _] = self.to_engines
        self.assertEqual(task.payloads, (b"payload",))
        self.result("e2", "t2")
        msg = self.result_of("t2", b"client-1")
        self.assertEqual((msg["ok"], msg["engine"]), (True, "e2"))
        self.assertEqual(e2.state, "alive")

    def test_submit_to_an_engine(self):
        self.engine("e2")
        self.assertAccepted({"task": "t1", "engine": "e2"})
        self.assertAccepted({"task": "t2", "engines": ["e2"]})
        self.assertEqual(self.sent(), {"e2": ["t1", "t2"]})
        self.assertIn("nope", self.assertRefused({"task": "t3", "engine": "nope"}, "UnknownEngine"))
        self.registry.mark_dead(self.e1, "gone", 1.0)
        self.assertRefused({"task": "t3", "engines": ["e1"]}, "EngineDead")

    def test_submit_with_options(self):
        self.assertAccepted({"task": "t1"})
        self.assertAccepted(
            {"task": "t2", "after": ["t1"], "retries": 0, "timeout": 2.5, "after_failed": "run", "name": "f"}
        )
        task = self.scheduler.tasks["t2"]
        self.assertEqual(
            (task.state, task.unmet, task.retries, task.timeout, task.run_after_failed, task.name),
            (WAITING, {"t1"}, 0, 2.5, True, "f"),
        )

    def test_malformed_submits_refused_and_nothing_lost(self):
        self.assertAccepted({"task": "t1"})
        bad = [
            {"task": ""},
            {"task": "x" * 201},
            {"task": "t2", "engine": 5},
            {"task": "t2", "engines": "e1"},
            {"task": "t2", "engines": ["e1", 3]},
            {"task": "t2", "engines": []},
            {"task": "t2", "after": "t1"},
            {"task": "t2", "after": [1]},
            {"task": "t2", "after": ["ghost"]},
            {"task": "t2", "retries": -1},
            {"task": "t2", "retries": "2"},
            {"task": "t2", "timeout": 0},
            {"task": "t2", "timeout": "soon"},
            {"task": "t2", "after_failed": "maybe"},
        ]
        for fields in bad:
            self.assertRefused(fields, "BadRequest")
        # Another client reusing an id in flight is refused; the task is untouched.
        self.assertIn("t1", self.assertRefused({"task": "t1"}, "BadRequest", client=b"client-2"))
        self.assertEqual(list(self.scheduler.tasks), ["t1"])
        self.assertEqual(self.scheduler.tasks["t1"].clients, [b"client-1"])
        self.assertEqual(self.sent(), {"e1": ["t1"]})
        self.assertEqual(list(self.store.records), ["t1"])
        # Nothing lost: t1 still completes, once, and t2 can still be submitted.
        self.result("e1", "t1")
        self.assertIs(self.result_of("t1", b"client-1")["ok"], True)
        self.assertAccepted({"task": "t2"})

    def test_submit_without_task_field_gets_bad_request(self):
        # Schema-invalid but signed: the client is told at once instead of waiting.
        message = self.assertError(self.request("submit", {"engine": "e1"}, [b"p"]), "BadRequest")
        self.assertIn("submit.task", message)
        self.assertEqual(self.drops.totals[("client", "bad field")], 1)
        self.assertEqual(self.scheduler.tasks, {})

    def test_submit_without_payload_refused(self):
        self.assertRefused({"task": "t1"}, "BadRequest", payloads=())
        self.assertEqual(self.drops.totals[("client", "wrong frame count")], 1)
        self.assertEqual(self.scheduler.tasks, {})

    # -- cancel, fetch, purge ----------------------------------------------------------

    def test_cancel(self):
        for i in range(1, 4):
            self.request("submit", {"task": f"t{i}"}, [b"p"])
        self.assertValue(self.request("cancel", {"task": "t3"}), True)
        self.error_of("t3", "TaskCancelled", b"client-1")
        self.assertValue(self.request("cancel", {"task": "nope"}), False)
        self.assertError(self.request("cancel", {}), "BadRequest")
        # A prefetched task: the scheduler asks the engine (over the real control channel).
        self.assertIsNone(self.request("cancel", {"task": "t2"}))
        [(to, command)] = self.to_controls
        self.assertEqual((to, command["verb"], command["args"]), (b"e1", "abort", {"task": "t2", "release": True}))
        self.control.message_received([b"e1", *self.e1_codec.encode("reply", {"ref": command.id, "ok": True, "value": "released"})])
        replies = [msg for _, msg in self.to_clients if msg.type == "reply"]
        self.assertEqual(replies[-1]["value"], True)
        self.error_of("t2", "TaskCancelled", b"client-1")

    def test_fetch(self):
        self.request("submit", {"task": "t1"}, [b"p"])
        self.assertValue(self.request("fetch", {"task": "t1"}, client=b"client-2"), "pending")
        self.result("e1", "t1")
        self.assertValue(self.request("fetch", {"task": "t1"}, client=b"client-3"), "done")
        for client in (b"client-1", b"client-2", b"client-3"):
            self.assertEqual(self.result_of("t1", client).payloads, (b"value-t1", b"out", b"err"))
        self.assertError(self.request("fetch", {"task": "nope"}), "BadRequest")
        self.assertError(self.request("fetch", {"task": 5}), "BadRequest")

    def test_running_is_told_to_every_client_of_the_task(self):
        self.request("submit", {"task": "t1"}, [b"p"])
        self.request("fetch", {"task": "t1"}, client=b"client-2")
        self.started("e1", "t1")
        running = [(to, msg["task"]) for to, msg in self.to_clients if msg.type == "running"]
        self.assertEqual(running, [(b"client-1", "t1"), (b"client-2", "t1")])
        # A client that asks once it runs hears it at once.
        self.request("fetch", {"task": "t1"}, client=b"client-3")
        self.assertEqual([to for to, msg in self.to_clients if msg.type == "running"][-1], b"client-3")

    def test_purge(self):
        for i in range(3):
            self.request("submit", {"task": f"t{i}"}, [b"p"])
        self.result("e1", "t0")
        self.clock.advance(100)
        self.result("e1", "t1")
        self.assertError(self.request("purge", {"older_than": -1}), "BadRequest")
        self.assertError(self.request("purge", {"older_than": "old"}), "BadRequest")
        self.assertValue(self.request("purge", {"older_than": 50}), 1)
        self.assertEqual(sorted(self.store.records), ["t1", "t2"])
        self.assertValue(self.request("purge"), 1)
        self.assertEqual(sorted(self.store.records), ["t2"], "unfinished tasks are never purged")

    def test_stealing_over_the_real_control_channel(self):
        self.request("submit", {"task": "t1"}, [b"p"])
        self.request("submit", {"task": "t2"}, [b"p"])
        self.started("e1", "t1")
        self.engine("e2")
        [(to, command)] = self.to_controls
        self.assertEqual((to, command["verb"], command["args"]), (b"e1", "abort", {"task": "t2", "release": True}))
        self.control.message_received([b"e1", *self.e1_codec.encode("reply", {"ref": command.id, "ok": True, "value": "released"})])
        self.assertEqual(self.sent("e2"), ["t2"])


# =====================================================================================
# With the SQLite store: a controller restart (real reactor: the store replies
# through reactor.callFromThread)
# =====================================================================================


class ControllerRestartTests(TestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.codec = Codec(KEY)

    def controller(self):
        """A scheduler on a fresh registry with engine 'a' and the store at self.path."""
        clock = Clock()
        registry = Registry()
        drops = DropLog(clock)
        self.addCleanup(drops.stop)
        store = SQLiteTaskStore(self.path, max_age=None, max_tasks=None, batch_seconds=0.001)
        self.addCleanup(store.close)
        to_engines, to_clients = [], []

        def record(into):
            def send(frames):
                into.append((frames[0], self.codec.decode(frames[1:])))
                return True
            return send

        scheduler = Scheduler(registry, self.codec, clock, record(to_engines), record(to_clients), drops, store)
        self.addCleanup(scheduler.stop)
        engine = registry.register("a", "a-i", "host", 1, 0.0, identity=b"a")
        registry.mark_alive(engine, 0.0)
        return scheduler, store, to_engines, to_clients

    def reply(self, scheduler, mtype, fields, payloads=()):
        scheduler.message_received([b"a", *self.codec.encode(mtype, fields, list(payloads), session="a")])

    @defer.inlineCallbacks
    def test_results_survive_a_restart(self):
        scheduler, store, to_engines, to_clients = self.controller()
        for task in ("good", "bad", "lost"):
            yield scheduler.submit(b"c1", task, b"p", name="f")
        self.reply(scheduler, "started", {"task": "good", "instance": "a-i"})
        self.reply(scheduler, "result", {"task": "good", "ok": True}, [b"value", b"out\n", b"err\n"])
        error = {"type": "ValueError", "message": "bad", "traceback": "tb"}
        self.reply(scheduler, "result", {"task": "bad", "ok": False, "error": error}, [b"", b"", b"oops"])
        yield store.committed()  # results reach clients once stored
        self.assertEqual([msg.type for _, msg in to_clients], ["running", "result", "result"])
        yield store.close()  # the controller stops with "lost" still running

        scheduler, store, to_engines, to_clients = self.controller()
        self.assertEqual((yield scheduler.fetch(b"c2", "good")), "done")
        self.assertEqual((yield scheduler.fetch(b"c2", "bad")), "done")
        [(to, good), (_, bad)] = to_clients
        self.assertEqual(to, b"c2")
        self.assertEqual((good["task"], good["ok"], good["engine"]), ("good", True, "a"))
        self.assertEqual(good.payloads, (b"value", b"out\n", b"err\n"))
        self.assertEqual((bad["task"], bad["ok"], bad["error"]), ("bad", False, error))
        self.assertEqual(bad.payloads[2], b"oops")
        # In flight at the restart: not unknown, but not coming back either.
        try:
            yield scheduler.fetch(b"c2", "lost")
        except errors.BadRequest as e:
            self.fail(f"a task lost in the restart is reported as unknown: {e}")
        except errors.ClusterError as e:
            self.assertIn("restarted", str(e))
        else:
            self.fail("fetch of a task lost in the restart succeeded")
        try:
            yield scheduler.fetch(b"c2", "never")
        except errors.BadRequest:
            pass
        else:
            self.fail("fetch of an unknown task succeeded")

    @defer.inlineCallbacks
    def test_dependencies_on_tasks_of_a_previous_run(self):
        scheduler, store, _, _ = self.controller()
        yield scheduler.submit(b"c1", "good", b"p")
        yield scheduler.submit(b"c1", "bad", b"p")
        self.reply(scheduler, "result", {"task": "good", "ok": True}, [b"v", b"", b""])
        self.reply(scheduler, "result", {"task": "bad", "ok": False, "error": {"type": "E", "message": "m"}}, [b"", b"", b""])
        yield store.close()

        scheduler, store, to_engines, to_clients = self.controller()
        d = scheduler.submit(b"c1", "next", b"p", after=["good"])
        self.assertEqual((yield d), "next")
        self.assertEqual([msg["task"] for _, msg in to_engines], ["next"])
        self.assertEqual((yield scheduler.submit(b"c1", "doomed", b"p", after=["bad"])), "doomed")
        yield store.committed()
        [(_, msg)] = to_clients
        self.assertEqual((msg["task"], msg["error"]["type"]), ("doomed", "DependencyError"))
        self.assertIn("bad", msg["error"]["message"])
        try:
            yield scheduler.submit(b"c1", "orphan", b"p", after=["never"])
        except errors.BadRequest as e:
            self.assertIn("never", str(e))
        else:
            self.fail("a dependency on an unknown task was accepted")
        self.assertNotIn("orphan", scheduler.tasks)


# =====================================================================================
# Regressions found in review
# =====================================================================================


class ReviewRegressionTests(Fixture):
    def test_no_stealing_from_a_busy_engine(self):
        """A busy engine answers a release only after it timed out: the task would be lost."""
        a = self.engine("a")
        self.engine("b")
        self.submit("long", engines=["a"])
        self.submit("b1", engines=["b"])
        self.submit("b2", engines=["b"])
        self.submit("short")  # only a has room: prefetched behind "long"
        self.assertIn("short", self.held("a"))
        self.registry.mark_busy(a, self.clock.seconds(), "GIL held")
        self.result("b", "b1")
        self.result("b", "b2")  # b is idle now, nothing ready
        self.assertEqual(self.controls.get("a", FakeControl("a")).aborts, [], "asked a busy engine to release")
        self.assertIn("short", self.held("a"))
        self.assertFalse(self.successResultOf(self.scheduler.cancel("short")), "cancel on a busy engine")

    def test_restricted_task_reaches_an_engine_that_joins_later(self):
        self.engine("e0")
        self.submit("hold", engines=["e0"])
        self.submit("hold2", engines=["e0"])
        e1 = self.engine("e1", alive=False)  # registering: known, not yet joined
        self.submit("t", engines=["e0", "e1"])  # ready, queued for e0 only: e1 has not joined
        self.registry.mark_alive(e1, self.clock.seconds())
        self.assertEqual(self.sent("e1"), ["t"])
        # An engine that does not exist at all is refused (issue 11: unknown engines in every form).
        self.refused("t2", errors.UnknownEngine, engines=["e0", "e2"])

    def test_restricted_task_survives_the_death_of_one_of_its_engines(self):
        e0 = self.engine("e0")
        self.submit("hold", engines=["e0"], retries=0)
        self.submit("hold2", engines=["e0"], retries=0)
        e1 = self.engine("e1", alive=False)  # registering: may run it once it joins
        self.submit("t", engines=["e0", "e1"])
        self.die(e0)
        self.registry.mark_alive(e1, self.clock.seconds())
        self.assertEqual(self.sent("e1"), ["t"])

    def test_infinite_or_nan_timeout_refused(self):
        self.engine("e1")
        for bad in (float("nan"), float("inf")):
            self.refused("t", errors.BadRequest, timeout=bad)


# =====================================================================================
# Seams, the one writer of an engine's running task, impossible inputs, releases, stop
# =====================================================================================


class SeamTests(Fixture):
    def test_fakes_provide_their_interfaces(self):
        self.assertTrue(verifyObject(IEngineControl, FakeControl("e1")))
        self.assertTrue(verifyObject(ITaskStore, self.store))


class RunningTaskTests(Fixture):
    """The scheduler is the one writer of EngineRecord.running_task and task_started_at."""

    def setUp(self):
        super().setUp()
        self.e1 = self.engine("e1")

    def running(self):
        return self.e1.running_task, self.e1.task_started_at

    def test_pong_reports_the_running_task(self):
        self.clock.advance(10)
        self.scheduler.engine_reported(self.e1, "t7", 2.5)
        self.assertEqual(self.running(), ("t7", 7.5))
        self.scheduler.engine_reported(self.e1, None, None)
        self.assertEqual(self.running(), (None, None))
        self.scheduler.engine_reported(self.e1, "", 1.0)
        self.assertEqual(self.running(), (None, None))

    def test_unbelievable_durations_are_ignored(self):
        self.clock.advance(10)
        self.scheduler.engine_reported(self.e1, "t7", 2.0)
        for bad in (None, -1, True, "2", 1e9):
            self.scheduler.engine_reported(self.e1, "t7", bad)
            self.assertEqual(self.running(), ("t7", 8.0), f"running_for={bad!r}")
        self.scheduler.engine_reported(self.e1, "t8", None)
        self.assertEqual(self.running(), ("t8", None), "another task: the old start does not apply")

    def test_result_clears_it(self):
        self.submit("t1")
        self.clock.advance(2)
        self.started("e1", "t1")
        self.assertEqual(self.running(), ("t1", 2.0))
        self.result("e1", "t1")
        self.assertEqual(self.running(), (None, None))

    def test_engine_leaving_clears_it(self):
        self.submit("t1", retries=0)
        self.started("e1", "t1")
        self.from_engine("e1", "bye", {"instance": "e1-i", "reason": "exit command"})
        self.assertEqual(self.running(), (None, None))


class ImpossibleInputTests(Fixture):
    """Engine messages the task's state does not allow are dropped and said, never obeyed."""

    prefetch = 0

    def setUp(self):
        super().setUp()
        self.engine("a")
        self.logged = []
        self.scheduler.log = Logger(observer=self.logged.append)

    def test_second_started_dropped(self):
        self.submit("t1", timeout=5)
        self.started("a", "t1")
        self.clock.advance(3)
        self.started("a", "t1")
        self.assertEqual(self.drops.totals[("task", "started for a task that is running")], 1)
        self.assertEqual(self.store.records["t1"]["started_at"], 0.0)
        self.clock.advance(2)
        self.error_of("t1", "TaskTimeout")

    def test_late_result_after_a_timeout_logged(self):
        self.submit("t1", timeout=1)
        self.started("a", "t1")
        self.clock.advance(1)
        self.result("a", "t1")
        self.error_of("t1", "TaskTimeout")
        [said] = [e for e in self.logged if "dropped the result" in e["log_format"]]
        self.assertEqual((said["task"], said["engine"], said["state"]), ("t1", "a", "done"))
        self.assertEqual([key for key in self.drops.totals if "result" in key[1]], [], "expected, not bad input")


class WithdrawDuringStealTests(Fixture):
    """A cancel that comes while a prefetched task is being stolen rides on that release."""

    def setUp(self):
        super().setUp()
        self.engine("a")
        self.engine("b")
        for i in range(1, 5):
            self.submit(f"t{i}")
        self.started("a", "t1")
        self.result("b", "t2")
        self.result("b", "t4")  # b is idle: asks a to release t3
        self.aborts = self.controls["a"].aborts
        self.assertEqual([(task, release) for task, _, release, _ in self.aborts], [("t3", True)])

    def test_cancel_instead_of_move(self):
        d = self.scheduler.cancel("t3")
        self.assertNoResult(d)
        self.assertEqual(len(self.aborts), 1, "one release request per task")
        self.aborts[0][3].callback("released")
        self.assertIs(self.successResultOf(d), True)
        self.error_of("t3", "TaskCancelled")
        self.assertEqual(self.sent("b"), ["t2", "t4"], "a cancelled task does not move")
        self.assertEqual(self.held("a"), ["t1"])
        self.assertEqual(self.scheduler.stolen, 0)

    def test_engine_keeps_it(self):
        d = self.scheduler.cancel("t3")
        self.aborts[0][3].callback("running")
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.results("t3"), [])
        self.assertEqual(self.held("a"), ["t1", "t3"])
        self.assertFalse(self.scheduler.tasks["t3"].releasing)

    def test_release_fails(self):
        d = self.scheduler.cancel("t3")
        self.aborts[0][3].errback(errors.ControlTimeout("no answer"))
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(self.state("t3"), ASSIGNED)
        self.assertFalse(self.scheduler.tasks["t3"].releasing)

    def test_released_after_it_started_is_an_error(self):
        logged = []
        self.scheduler.dispatcher.log = Logger(observer=logged.append)
        self.started("a", "t3")
        self.aborts[0][3].callback("released")
        [said] = [e for e in logged if "which it had reported started" in e["log_format"]]
        self.assertEqual(said["log_level"].name, "error")
        self.assertEqual((self.state("t3"), self.held("a")), (RUNNING, ["t1", "t3"]))
        self.assertEqual(self.sent("b"), ["t2", "t4"])
        self.assertEqual(self.scheduler.stolen, 0)


class StopTests(Fixture):
    def test_stop_abandons_tasks_and_their_timers(self):
        self.engine("a")
        self.submit("t1", timeout=5)
        self.submit("t2", timeout=5)
        self.submit("t3")
        self.started("a", "t1")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.scheduler.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.scheduler.tasks, {})
        self.assertEqual(self.results(), [])
        self.scheduler.stop()  # twice is harmless
