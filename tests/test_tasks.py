"""Direct tasks (TaskRouter) and the client front end (ClientFrontEnd)."""
import msgpack
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster import errors
from ipcluster.controller.control import ControlChannel
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.frontend import ClientFrontEnd
from ipcluster.controller.heartmonitor import HeartMonitor
from ipcluster.controller.registry import Registry
from ipcluster.controller.tasks import TaskRouter
from ipcluster.wire import Codec, PingCodec

KEY = b"k" * 32


class Fixture(SynchronousTestCase):
    """A registry with live engine e1 and a router whose sends are recorded, decoded."""

    def setUp(self):
        self.clock = Clock()
        self.codec = Codec(KEY)
        self.registry = Registry()
        self.events = []
        self.registry.subscribe(lambda event, record, reason: self.events.append((event, record.id)))
        self.drops = DropLog(self.clock)
        self.addCleanup(self.drops.stop)
        self.to_engines = []
        self.to_clients = []
        self.engine_reachable = True
        self.router = TaskRouter(
            self.registry, self.codec, self.clock,
            self.recorder(self.to_engines, lambda: self.engine_reachable),
            self.recorder(self.to_clients),
            self.drops,
        )
        self.e1 = self.live_engine("e1", "i1")

    def recorder(self, into, reachable=lambda: True):
        def send(frames):
            if not reachable():
                return False
            into.append((frames[0], self.codec.decode(frames[1:])))
            return True
        return send

    def live_engine(self, engine_id, instance):
        record = self.registry.register(engine_id, instance, "host", 1, self.clock.seconds())
        self.registry.mark_alive(record, self.clock.seconds())
        return record

    def from_engine(self, mtype, fields, payloads=(), identity=b"e1"):
        self.router.message_received([identity, *self.codec.encode(mtype, fields, list(payloads))])

    def result(self, task, ok=True, payloads=(b"value", b"out", b"err"), identity=b"e1", **fields):
        self.from_engine("result", dict(fields, task=task, ok=ok), payloads, identity)


class TaskRouterTests(Fixture):
    def test_submit_sends_the_task(self):
        self.router.submit(b"client-1", "t1", "e1", b"payload")
        [(to, msg)] = self.to_engines
        self.assertEqual(to, b"e1")
        self.assertEqual((msg.type, msg["task"], msg.payloads), ("task", "t1", (b"payload",)))
        self.assertEqual(self.router.tasks["t1"].client, b"client-1")

    def test_submit_to_unknown_engine(self):
        self.assertRaises(errors.UnknownEngine, self.router.submit, b"c", "t1", "nope", b"p")
        self.assertEqual(self.to_engines, [])
        self.assertEqual(self.router.tasks, {})

    def test_submit_to_dead_engine(self):
        self.registry.mark_dead(self.e1, "heart silent", 1.0)
        e = self.assertRaises(errors.EngineDead, self.router.submit, b"c", "t1", "e1", b"p")
        self.assertIn("heart silent", str(e))
        self.assertEqual(self.to_engines, [])

    def test_submit_to_unreachable_engine(self):
        self.engine_reachable = False
        self.assertRaises(errors.EngineDead, self.router.submit, b"c", "t1", "e1", b"p")
        self.assertEqual(self.router.tasks, {})

    def test_duplicate_task_id(self):
        self.router.submit(b"c", "t1", "e1", b"p")
        self.assertRaises(errors.BadRequest, self.router.submit, b"other", "t1", "e1", b"p")
        self.assertEqual(len(self.to_engines), 1)
        self.assertEqual(self.router.tasks["t1"].client, b"c")

    def test_bad_task_ids(self):
        self.assertRaises(errors.BadRequest, self.router.submit, b"c", "", "e1", b"p")
        self.assertRaises(errors.BadRequest, self.router.submit, b"c", "x" * 201, "e1", b"p")

    def test_result_forwarded_once_to_its_client(self):
        e2 = self.live_engine("e2", "i2")
        self.router.submit(b"client-1", "t1", "e1", b"p")
        self.router.submit(b"client-2", "t2", "e2", b"p")
        self.from_engine("started", {"task": "t1", "instance": "i1"})
        self.assertEqual(self.e1.running_task, "t1")
        self.result("t1", started=1.0, finished=2.0)
        [(to, msg)] = self.to_clients
        self.assertEqual(to, b"client-1")
        self.assertEqual(msg.type, "result")
        self.assertEqual((msg["task"], msg["engine"], msg["ok"]), ("t1", "e1", True))
        self.assertEqual((msg["started"], msg["finished"]), (1.0, 2.0))
        self.assertEqual(msg.payloads, (b"value", b"out", b"err"))
        self.assertIsNone(self.e1.running_task)
        self.assertEqual(self.router.completed, 1)
        # Again: dropped.
        self.result("t1")
        self.assertEqual(len(self.to_clients), 1)
        self.assertEqual(self.drops.total, 1)
        self.assertIn("t2", self.router.tasks)
        self.assertEqual(e2.state, "alive")

    def test_result_from_the_wrong_engine_dropped(self):
        self.live_engine("e2", "i2")
        self.router.submit(b"c", "t1", "e1", b"p")
        self.result("t1", identity=b"e2")
        self.assertEqual(self.to_clients, [])
        self.assertIn("t1", self.router.tasks)

    def test_failed_result_forwarded_with_error(self):
        self.router.submit(b"c", "t1", "e1", b"p")
        error = {"type": "ZeroDivisionError", "message": "division by zero", "traceback": "tb"}
        self.result("t1", ok=False, error=error)
        [(_, msg)] = self.to_clients
        self.assertIs(msg["ok"], False)
        self.assertEqual(msg["error"], error)
        self.assertEqual(self.router.failed, 1)

    def test_engine_death_fails_tasks_in_flight(self):
        self.router.submit(b"c1", "t1", "e1", b"p")
        self.router.submit(b"c2", "t2", "e1", b"p")
        self.from_engine("started", {"task": "t1", "instance": "i1"})
        self.registry.mark_dead(self.e1, "heart silent for 3 beats", 5.0)
        results = {msg["task"]: (to, msg) for to, msg in self.to_clients}
        self.assertEqual(sorted(results), ["t1", "t2"])
        for task, client, where in (("t1", b"c1", "while running it"), ("t2", b"c2", "before running it")):
            to, msg = results[task]
            self.assertEqual(to, client)
            self.assertIs(msg["ok"], False)
            self.assertEqual(msg["error"]["type"], "EngineDied")
            self.assertIn(where, msg["error"]["message"])
            self.assertIn("heart silent", msg["error"]["message"])
            self.assertEqual(msg.payloads, (b"", b"", b""))
        self.assertEqual(self.router.tasks, {})
        # A late result for a failed task is dropped: never two results.
        self.result("t1")
        self.assertEqual(len(self.to_clients), 2)
        self.assertEqual(self.drops.totals[("task", "result for a task not in flight on this engine")], 1)

    def test_bye_removes_the_engine(self):
        self.router.submit(b"c", "t1", "e1", b"p")
        self.from_engine("bye", {"instance": "i1", "reason": "exit command"})
        self.assertIsNone(self.registry.get("e1"))
        self.assertIn(("left", "e1"), self.events)
        self.assertEqual(self.e1.reason, "exited: exit command")
        [(_, msg)] = self.to_clients
        self.assertEqual(msg["error"]["type"], "EngineDied")
        self.assertIn("left", msg["error"]["message"])

    def test_bye_from_another_instance_dropped(self):
        self.from_engine("bye", {"instance": "i0", "reason": "old process"})
        self.assertIs(self.registry.get("e1"), self.e1)
        self.assertEqual(self.e1.state, "alive")
        self.assertEqual(self.drops.totals[("task", "bye from an unknown engine instance")], 1)

    def test_traffic_proves_engine_runs(self):
        seen = []
        self.router.on_engine_traffic = seen.append
        self.router.submit(b"c", "t1", "e1", b"p")
        self.from_engine("started", {"task": "t1", "instance": "i1"})
        self.assertEqual(seen, [self.e1])

    def test_garbage_dropped(self):
        self.router.message_received([b"e1", b"junk"])
        self.router.message_received([b"e1", *self.codec.encode("task", {"task": "t"}, [b"p"])])
        self.assertEqual(self.drops.totals[("task", "too few frames")], 1)
        self.assertEqual(self.drops.totals[("task", "unexpected type")], 1)
        self.assertEqual(self.to_clients, [])


class ClientFrontEndTests(Fixture):
    def setUp(self):
        super().setUp()
        self.to_controls = []
        monitor = HeartMonitor(self.clock, self.registry, PingCodec(KEY), lambda i, p: True, lambda r, b: None)
        self.control = ControlChannel(
            self.registry, monitor, self.codec, self.clock, self.recorder(self.to_controls), self.drops, 5.0
        )
        self.frontend = ClientFrontEnd(
            self.registry, self.control, self.router, self.codec, self.clock, self.recorder(self.to_clients), self.drops
        )

    def request(self, mtype, fields=None, payloads=()):
        """A client's request; returns the reply sent back to it (or None)."""
        frames = self.codec.encode(mtype, fields, list(payloads))
        before = len(self.to_clients)
        self.frontend.message_received([b"client-1", *frames])
        replies = self.to_clients[before:]
        if not replies:
            return None
        [(to, msg)] = replies
        self.assertEqual(to, b"client-1")
        self.assertEqual(msg["ref"], msgpack.unpackb(frames[1])["id"])
        return msg

    def control_request(self, verb, args, engine="e1"):
        return self.request("control", {"engine": engine, "verb": verb, "args": args})

    def assertError(self, reply, error_type):
        self.assertIsNotNone(reply, "no reply")
        self.assertEqual(reply.type, "reply")
        self.assertIs(reply["ok"], False)
        self.assertEqual(reply["error"]["type"], error_type)

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

    def test_control_of_unknown_or_dead_engine(self):
        self.assertError(self.control_request("beat", {}, engine="nope"), "UnknownEngine")
        self.registry.mark_dead(self.e1, "gone", 1.0)
        self.assertError(self.control_request("beat", {}), "EngineDead")

    def test_control_round_trip(self):
        self.assertIsNone(self.control_request("abort", {"task": "t9"}), "the reply waits for the engine")
        [(to, command)] = self.to_controls
        self.assertEqual((to, command["verb"], command["args"]), (b"e1", "abort", {"task": "t9"}))
        engine_reply = self.codec.encode("reply", {"ref": command.id, "ok": True, "value": "unknown"})
        self.control.message_received([b"e1", *engine_reply])
        [(to, reply)] = self.to_clients
        self.assertEqual((to, reply["ok"], reply["value"]), (b"client-1", True, "unknown"))

    def test_control_timeout_reported(self):
        self.control_request("reset", {"timeout": 2})
        self.clock.advance(2)
        [(_, reply)] = self.to_clients
        self.assertError(reply, "ControlTimeout")

    def test_submit(self):
        reply = self.request("submit", {"task": "t1", "engine": "e1"}, [b"payload"])
        self.assertEqual((reply["ok"], reply["value"]), (True, "t1"))
        [(to, task)] = self.to_engines
        self.assertEqual((to, task["task"], task.payloads), (b"e1", "t1", (b"payload",)))
        self.assertError(self.request("submit", {"task": "t1", "engine": "e1"}, [b"p"]), "BadRequest")
        self.assertError(self.request("submit", {"task": "t2", "engine": "nope"}, [b"p"]), "UnknownEngine")

    def test_connect_and_engines(self):
        welcome = self.request("connect")
        self.assertEqual((welcome.type, welcome["version"]), ("welcome", 1))
        reply = self.request("engines")
        self.assertEqual([(e["id"], e["state"]) for e in reply["value"]], [("e1", "alive")])

    def test_garbage_dropped(self):
        self.frontend.message_received([b"client-1", b"garbage"])
        self.frontend.message_received([b"client-1", b"x" * 32, b"header"])
        self.frontend.message_received([b"client-1", *Codec(b"wrong key").encode("connect")])
        self.assertEqual(self.to_clients, [])
        # Signed, so from a real client, but not a request: dropped and answered.
        reply = self.request("result", {"task": "t", "ok": True}, [b""] * 3)
        self.assertFalse(reply["ok"])
        self.assertEqual(reply["error"]["type"], "BadRequest")
        self.assertEqual(self.drops.totals[("client", "too few frames")], 1)
        self.assertEqual(self.drops.totals[("client", "bad signature")], 2)
        self.assertEqual(self.drops.totals[("client", "unexpected type")], 1)

    def test_submit_without_task_field_gets_bad_request(self):
        # Schema-invalid but signed: the client is told at once instead of waiting.
        reply = self.request("submit", {"engine": "e1"}, [b"p"])
        self.assertFalse(reply["ok"])
        self.assertEqual(reply["error"]["type"], "BadRequest")
        self.assertIn("submit.task", reply["error"]["message"])
        self.assertEqual(self.drops.totals[("client", "bad field")], 1)
        self.assertEqual(self.router.tasks, {})
