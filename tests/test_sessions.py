"""Sessions end to end without sockets: the front end's, the client core's and the registrar's side
of replays, unknown sessions, size limits and absurd field values."""
import math

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster import errors, limits
from ipcluster.client.core import ClientCore, submit_options
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registrar import Registrar
from ipcluster.controller.registry import Registry
from ipcluster.transport.security import engine_token
from ipcluster.transport.wire import Codec
from tests.test_client_core import connected
from tests.test_scheduler import KEY, FrontEndFixture


class FrontEndSessions(FrontEndFixture):
    """What a key holder's replays and stale sessions come to at the client socket."""

    def test_a_replayed_submit_is_dropped_and_never_runs_twice(self):
        frames = self.codec.encode("submit", {"task": "t1"}, [b"p"], session=self.session(b"client-1"))
        self.frontend.message_received([b"client-1", *frames])
        self.result("e1", "t1")
        for replayer in (b"client-1", b"a-replaying-socket"):
            self.frontend.message_received([replayer, *frames])
        self.assertEqual(self.sent("e1"), ["t1"])
        self.assertEqual(len(self.results("t1")), 1)
        self.assertEqual([to for to, _ in self.to_clients], [b"client-1"], "nothing for the replayer")
        self.assertEqual(self.drops.totals[("client", "replayed message")], 2)

    def test_a_replayed_control_request_is_answered_once(self):
        frames = self.codec.encode("control", {"engine": "e1", "verb": "beat", "args": {}}, session=self.session(b"client-1"))
        self.frontend.message_received([b"client-1", *frames])
        self.frontend.message_received([b"replayer", *frames])
        self.assertEqual(len(self.to_controls), 1, "one beat reached the engine")
        self.assertEqual(self.drops.totals[("client", "replayed message")], 1)

    def test_malformed_requests_are_answered_once(self):
        frames = self.codec.encode("cancel", {}, session=self.session(b"client-1"))
        for _ in range(2):
            self.frontend.message_received([b"client-1", *frames])
        self.assertEqual([msg.type for _, msg in self.to_clients], ["reply"])

    def test_an_unknown_session_is_told_and_nothing_runs(self):
        self.frontend.message_received([b"c9", *self.codec.encode("submit", {"task": "t1"}, [b"p"], session="forgotten")])
        self.frontend.message_received([b"c9", *self.codec.encode("engines", session="")])
        self.assertEqual(self.scheduler.tasks, {})
        told = [msg for to, msg in self.to_clients if to == b"c9"]
        self.assertEqual([m.type for m in told], ["unknown", "unknown"])
        self.assertEqual((told[0]["task"], told[0].session), ("t1", "forgotten"))
        self.assertNotIn("task", told[1].fields)
        self.assertEqual(self.drops.totals[("client", "unknown session")], 2)

    def test_connect_keeps_a_known_session_and_replaces_an_unknown_one(self):
        mine = self.session(b"client-1")
        self.frontend.message_received([b"client-1", *self.codec.encode("connect", session=mine)])
        self.frontend.message_received([b"client-2", *self.codec.encode("connect", session="forgotten")])
        (_, kept), (_, fresh) = self.to_clients[-2:]
        self.assertEqual(kept.session, mine)
        self.assertNotIn(fresh.session, (mine, "forgotten", ""))
        replay = self.codec.encode("connect", session=mine)
        self.frontend.message_received([b"client-1", *replay])
        self.frontend.message_received([b"client-1", *replay])
        self.assertEqual(self.drops.totals[("client", "replayed message")], 1)

    def test_results_carry_the_session_of_their_client(self):
        self.request("submit", {"task": "t1"}, [b"p"])
        self.request("fetch", {"task": "t1"}, client=b"client-2")
        self.result("e1", "t1")
        for client in (b"client-1", b"client-2"):
            self.assertEqual(self.result_of("t1", client).session, self.session(client))

    def test_absurd_fields_are_refused(self):
        for fields in (
            {"task": "t\x00"},
            {"task": "t\n1"},
            {"task": "t\u202e1"},  # a right-to-left override
            {"task": "t1", "retries": 2**63},
            {"task": "t1", "retries": limits.MAX_RETRIES + 1},
            {"task": "t1", "timeout": 1e308},
            {"task": "t1", "timeout": limits.MAX_SECONDS * 2},
            {"task": "t1", "name": "f\x07"},
            {"task": "t1", "name": "x" * (limits.MAX_NAME + 1)},
            {"task": "t1", "name": 5},
            {"task": "t1", "engines": ["e1\x1b[2J"]},
            {"task": "t1", "after": ["t\x00"]},
        ):
            self.assertRefused(fields, "BadRequest")
        for args in ({"timeout": 1e308}, {"timeout": math.inf}):
            self.assertError(self.control_request("beat", args), "BadRequest")
        self.assertError(self.control_request("abort", {"task": "t\x00"}), "BadRequest")
        self.assertAccepted({"task": "t1", "retries": limits.MAX_RETRIES, "timeout": limits.MAX_SECONDS, "name": "ok"})


class ClientCoreSessions(SynchronousTestCase):
    def setUp(self):
        self.core = ClientCore(KEY, max_message_size=10_000)
        self.sent = []
        self.core.send_back = self.sent.append
        self.controller = connected(self.core)

    def test_controller_messages_are_taken_once(self):
        results = []
        task_id, _ = self.core.submit(abs, (-1,), {}, {}, results.append)
        self.core.expect(task_id, results.append)  # (two waiters: a replay would reach the second)
        frames = self.controller.encode("result", {"task": task_id, "ok": True}, [b"\x80\x04K\x01.", b"", b""])
        self.core.received(frames)
        self.core.received(frames)
        self.assertEqual(len(results), 2)
        self.assertEqual(self.core.refused, 1)

    def test_messages_of_sessions_it_was_not_given_are_refused(self):
        replies = []
        msg_id, _ = self.core.request("engines", {}, lambda ok, value: replies.append(value))
        self.core.received(Codec(KEY, session="someone else's").encode("reply", {"ref": msg_id, "ok": True, "value": 1}))
        self.assertEqual((replies, self.core.refused), ([], 1))

    def test_a_welcome_that_is_not_for_us_changes_nothing(self):
        before = self.core.session
        self.core.received(Codec(KEY, session="x" * 32).encode("welcome", {"ref": "not ours", "version": 2}))
        self.assertEqual(self.core.session, before)

    def test_unknown_session_fails_the_request_and_opens_a_new_one(self):
        self.core.keep_bytes = 0  # (no payload kept: the submit fails too; see the next test)
        outcomes, results = [], []
        msg_id, _ = self.core.request("engines", {}, lambda ok, value: outcomes.append(value))
        task_id, _ = self.core.submit(abs, (-1,), {}, {}, results.append)
        self.core.received(self.controller.encode("unknown", {"reason": "r", "ref": msg_id}))
        self.core.received(self.controller.encode("unknown", {"reason": "r", "ref": "x.1", "task": task_id}))
        self.assertIsInstance(outcomes[0], errors.UnknownSession)
        self.assertIsInstance(results[0].value, errors.UnknownSession)
        [connect] = self.sent  # one reconnect, not one per refusal
        request = Codec(KEY).decode(connect)
        self.assertEqual((request.type, request.session), ("connect", ""))
        new = Codec(KEY, session="n" * 32)
        self.core.received(new.encode("welcome", {"ref": request.id, "version": 2}))
        self.assertEqual(self.core.session, "n" * 32)
        # Late messages of the old session are still taken (results sent before it was forgotten).
        replies = []
        old_id, _ = self.core.request("engines", {}, lambda ok, value: replies.append(value))
        self.core.received(self.controller.encode("reply", {"ref": old_id, "ok": True, "value": 7}))
        self.assertEqual(replies, [7])

    def test_a_kept_task_is_announced_again_and_resubmitted(self):
        results = []
        task_id, _ = self.core.submit(abs, (-1,), {}, {"retries": 2}, results.append)
        other_id, _ = self.core.submit(abs, (-2,), {}, {}, results.append)
        self.core.received(self.controller.encode("unknown", {"reason": "r", "ref": "x.1", "task": task_id}))
        self.assertEqual(results, [], "a kept task waits for the new session")
        [connect] = self.sent
        new = Codec(KEY, session="n" * 32)
        self.core.received(new.encode("welcome", {"ref": Codec(KEY).decode(connect).id, "version": 2}))
        fetches = [Codec(KEY).decode(f) for f in self.sent[1:]]
        self.assertEqual(sorted((m.type, m["task"], m.session) for m in fetches),
                         sorted([("fetch", task_id, "n" * 32), ("fetch", other_id, "n" * 32)]))
        by_task = {m["task"]: m for m in fetches}
        unknown = errors.to_wire(errors.BadRequest("unknown task"))
        self.core.received(new.encode("reply", {"ref": by_task[task_id].id, "ok": False, "error": unknown}))
        self.core.received(new.encode("reply", {"ref": by_task[other_id].id, "ok": True, "value": "pending"}))
        [resubmit] = [Codec(KEY).decode(f) for f in self.sent[3:]]
        self.assertEqual((resubmit.type, resubmit["task"], resubmit["retries"], resubmit.session),
                         ("submit", task_id, 2, "n" * 32))
        self.assertEqual((self.core.resumed, self.core.resubmitted), (1, 1))
        # Its result is delivered once.
        frames = new.encode("result", {"task": task_id, "ok": True}, [b"\x80\x04K\x01.", b"", b""])
        self.core.received(frames)
        self.assertEqual([r.value for r in results], [1])

    def test_a_task_neither_known_nor_kept_is_lost(self):
        results = []
        task_id, _ = self.core.submit(abs, (-1,), {}, {}, results.append)
        self.core._kept.clear()  # (let go: over the client's bound)
        connect_id, frames = self.core.request("connect", {}, lambda ok, value: None)
        new = Codec(KEY, session="n" * 32)
        self.core.received(new.encode("welcome", {"ref": connect_id, "version": 2}))
        [fetch] = [Codec(KEY).decode(f) for f in self.sent]
        unknown = errors.to_wire(errors.BadRequest("unknown task"))
        self.core.received(new.encode("reply", {"ref": fetch.id, "ok": False, "error": unknown}))
        [result] = results
        self.assertIsInstance(result.value, errors.TaskLost)
        self.assertFalse(self.core.waiting())

    def test_kept_payloads_are_bounded(self):
        self.core.keep_bytes = 300
        for n in range(10):
            self.core.submit(len, (b"x" * 100,), {}, {}, lambda r: None)
        self.assertLessEqual(self.core._kept_size, 300)
        self.assertGreater(len(self.core._kept), 0)

    def test_payload_too_large_is_refused_at_submit(self):
        results = []
        e = self.assertRaises(errors.PayloadTooLarge, self.core.submit, len, (b"x" * 20_000,), {}, {}, results.append)
        self.assertIn("10000", str(e))
        self.assertIn("20", str(e))
        self.assertFalse(self.core.waiting(), "nothing waits for a task that was never sent")
        task_id, frames = self.core.submit(len, (b"x" * 1000,), {}, {}, results.append)
        self.assertLessEqual(sum(map(len, frames)), 10_000)

    def test_absurd_options_are_refused_at_submit(self):
        for options in ({"retries": 2**63}, {"retries": -1}, {"timeout": 1e308}, {"timeout": 0}, {"timeout": math.nan}):
            self.assertRaises(ValueError, submit_options, **options)
        self.assertEqual(submit_options(retries=3, timeout=2), {"retries": 3, "timeout": 2.0})


class RegistrarTokens(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.registry = Registry()
        self.drops = DropLog(self.clock)
        self.addCleanup(self.drops.stop)
        self.codec = Codec(KEY)
        self.sent = []
        self.registrar = Registrar(self.registry, self.codec, self.clock, self.sent.append, self.drops, 0.5, key=KEY)

    def register(self, **fields):
        about = dict({"engine": "e0", "instance": "i" * 32, "host": "h", "pid": 1}, **fields)
        self.registrar.message_received([b"reg", *self.codec.encode("register", about, session="")])
        return self.codec.decode(self.sent[-1][1:])

    def test_the_reply_carries_a_nonce_the_token_is_derived_from(self):
        reply = self.register()
        self.assertEqual(reply.type, "registered")
        token = engine_token(KEY, reply["nonce"], "i" * 32)
        record = self.registry.get("e0")
        self.assertEqual(record.identity, token)
        # Whoever replays a register gets this reply: the token itself must not be in it.
        self.assertNotIn(token.decode(), repr(reply.fields) + reply.session)
        again = self.register()
        self.assertNotEqual(again["nonce"], reply["nonce"])
        self.assertIs(self.registry.get("e0"), record, "a second register (or a replay) is pending, not a takeover")

    def test_ids_with_control_characters_are_rejected(self):
        for fields in ({"engine": "e0\x00"}, {"engine": "e0\n"}, {"engine": ""}, {"engine": "é" * 65},
                       {"instance": "i\x1b"}, {"host": "h\r"}):
            reply = self.register(**fields)
            self.assertEqual(reply.type, "rejected", fields)
        self.assertEqual(len(self.registry), 0)


class EngineResultLimit(SynchronousTestCase):
    """An engine does not send a result the controller would refuse: the task fails with PayloadTooLarge."""

    def setUp(self):
        import zmq

        from ipcluster.engine.engine import Engine

        self.engine = Engine(engine_id="e0")
        self.addCleanup(self.engine.context.destroy, 0)
        self.engine.control.sealing = (KEY, "t" * 32, 5_000)
        self.out, self.inbox = self.engine.context.socket(zmq.PAIR), self.engine.context.socket(zmq.PAIR)
        for sock in (self.out, self.inbox):
            sock.setsockopt(zmq.LINGER, 0)
            self.addCleanup(sock.close)
        self.inbox.bind("inproc://test-results")
        self.out.connect("inproc://test-results")

    def run_task(self, fn, *args):
        import cloudpickle

        from ipcluster.engine.taskqueue import QueuedTask

        self.engine._run_one(QueuedTask("t1", cloudpickle.dumps((fn, args, {}))), self.out)
        self.assertTrue(self.inbox.poll(5000))
        frames = self.inbox.recv_multipart()
        self.assertEqual(frames[0], b"send")
        return Codec(KEY).decode(frames[1:]), frames[1:]

    def test_a_result_over_the_limit_fails_the_task(self):
        msg, frames = self.run_task(bytes, 10_000)
        self.assertIs(msg["ok"], False)
        self.assertEqual((msg["error"]["type"], msg["error"]["origin"]), ("PayloadTooLarge", "ipcluster"))
        self.assertIn("5000", msg["error"]["message"])
        self.assertLess(sum(map(len, frames)), 5_000)
        self.assertEqual(msg.session, "t" * 32)

    def test_a_result_within_the_limit_goes_as_it_is(self):
        msg, _ = self.run_task(bytes, 100)
        self.assertIs(msg["ok"], True)

    def test_the_client_sees_the_engines_error_by_name(self):
        error = errors.from_wire(errors.to_wire(errors.PayloadTooLarge("too big")))
        self.assertIs(type(error), errors.PayloadTooLarge)
