"""Who may connect and who an engine is: ZAP answers, PLAIN credentials, routing tokens, and the
sessions and replay windows every signed message passes."""
import zmq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import Registry
from ipcluster.controller.sessions import REPLAYED, UNKNOWN_SESSION, ClientSessions, EngineInbox
from ipcluster.controller.sockets import refusal
from ipcluster.transport import security, wire
from ipcluster.transport.replay import WINDOW, ReplayWindow
from ipcluster.transport.wire import ACCEPTS, PEER_ACCEPTS, Codec

KEY = b"k" * 32


def zap_request(password, user=security.PLAIN_USER, mechanism=b"PLAIN", domain=b"ipcluster/task"):
    return [b"\x00peer", b"", b"1.0", b"7", domain, b"127.0.0.1", b"", mechanism, user, password]


class Credentials(SynchronousTestCase):
    def test_the_password_is_derived_never_the_key(self):
        password = security.plain_password(KEY)
        self.assertNotIn(KEY, password)
        self.assertNotIn(KEY.hex().encode(), password)
        self.assertEqual(password, security.plain_password(KEY))
        self.assertNotEqual(password, security.plain_password(b"another key"))

    def test_tokens_are_printable_and_bound_to_key_nonce_and_instance(self):
        token = security.engine_token(KEY, "nonce", "instance")
        self.assertEqual(len(token), security.TOKEN_CHARS)
        self.assertTrue(token.decode().isprintable())
        self.assertNotEqual(token[0], 0, "ZeroMQ reserves identities that start with a zero byte")
        self.assertEqual(token, security.engine_token(KEY, "nonce", "instance"))
        others = {security.engine_token(KEY, "nonce2", "instance"), security.engine_token(KEY, "nonce", "instance2"),
                  security.engine_token(b"other", "nonce", "instance")}
        self.assertNotIn(token, others)
        self.assertEqual(len(others), 3)

    def test_nonces_are_fresh(self):
        self.assertEqual(len({security.new_nonce() for _ in range(100)}), 100)

    def test_client_and_server_options(self):
        context = zmq.Context()
        self.addCleanup(context.destroy, 0)
        client, server = context.socket(zmq.DEALER), context.socket(zmq.ROUTER)
        security.configure_client(client, _Info(KEY))
        security.configure_server(server, "task")
        self.assertEqual(client.getsockopt(zmq.PLAIN_USERNAME), security.PLAIN_USER)
        self.assertEqual(client.getsockopt(zmq.PLAIN_PASSWORD), security.plain_password(KEY))
        self.assertEqual(server.getsockopt(zmq.PLAIN_SERVER), 1)
        self.assertEqual(server.getsockopt(zmq.ZAP_DOMAIN), b"ipcluster/task")


class _Info:
    def __init__(self, key):
        self.key = key


class ZapAnswers(SynchronousTestCase):
    def setUp(self):
        self.zap = security.ZapHandler(KEY)

    def test_the_cluster_credential_is_admitted(self):
        reply, verdict = self.zap.answer(zap_request(security.plain_password(KEY)))
        self.assertEqual(reply, [b"\x00peer", b"", b"1.0", b"7", b"200", b"OK", security.PLAIN_USER, b""])
        self.assertTrue(verdict.admitted)
        self.assertEqual((verdict.channel, verdict.address), ("task", "127.0.0.1"))
        self.assertEqual((self.zap.admitted, self.zap.refused), (1, 0))

    def test_anything_else_is_refused(self):
        good = security.plain_password(KEY)
        for request in (
            zap_request(security.plain_password(b"another cluster")),
            zap_request(b""),
            zap_request(good, user=b"root"),
            zap_request(good, mechanism=b"NULL"),
            zap_request(good, mechanism=b"CURVE"),
            zap_request(good, domain=b"elsewhere"),
            zap_request(good)[:-1],  # no password frame
            [b"\x00peer", b"", b"2.0", b"7", b"ipcluster/task", b"a", b"", b"PLAIN", security.PLAIN_USER, good],
        ):
            reply, verdict = self.zap.answer(request)
            self.assertFalse(verdict.admitted, request)
            self.assertEqual(reply[4], b"400", request)
            self.assertEqual(reply[3], b"7", "the reply names the request")
        self.assertEqual(self.zap.admitted, 0)

    def test_malformed_requests_get_no_answer(self):
        for frames in ([], [b"x"], [b"\x00peer", b"not empty", b"1.0", b"7", b"d", b"a", b"", b"PLAIN"]):
            reply, verdict = self.zap.answer(frames)
            self.assertIsNone(reply)
            self.assertFalse(verdict.admitted)

    def test_monitor_events_named_for_the_droplog(self):
        no_key = {"event": zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, "value": zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH}
        garbage = {"event": zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, "value": zmq.PROTOCOL_ERROR_ZMTP_UNSPECIFIED}
        self.assertEqual(refusal(no_key), "refused connection: no credentials")
        self.assertEqual(refusal(garbage), "refused connection: protocol error")
        self.assertEqual(refusal({"event": zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, "value": 0}),
                         "refused connection: handshake failed (no credentials, or the peer hung up)")
        self.assertIsNone(refusal({"event": zmq.EVENT_HANDSHAKE_SUCCEEDED, "value": 0}))


class ReplayWindows(SynchronousTestCase):
    def test_each_number_once(self):
        w = ReplayWindow()
        self.assertEqual([w.accept(n) for n in (1, 2, 2, 5, 3, 3, 4, 1, 5)],
                         [True, True, False, True, True, False, True, False, False])
        self.assertEqual(w.highest, 5)

    def test_late_within_the_window_and_not_beyond(self):
        w = ReplayWindow()
        self.assertTrue(w.accept(WINDOW + 10))
        self.assertTrue(w.accept(11), "1,023 behind: still in the window")
        self.assertFalse(w.accept(10), "1,024 behind: too old to tell from a replay")
        self.assertFalse(w.accept(0))
        self.assertFalse(w.accept(-5))

    def test_a_huge_jump_costs_nothing(self):
        w = ReplayWindow()
        w.accept(3)
        self.assertTrue(w.accept(2**63 - 1))
        self.assertFalse(w.accept(2**63 - 1))
        self.assertFalse(w.accept(3))
        self.assertLess(w._seen.bit_length(), WINDOW + 1)


class ClientSessionTable(SynchronousTestCase):
    def test_issued_sessions_take_each_number_once(self):
        table = ClientSessions()
        s = table.open(b"c1")
        self.assertEqual(len(s), 32)
        self.assertIsNone(table.accept(b"c1", s, 1))
        self.assertEqual(table.accept(b"c1", s, 1), REPLAYED)
        self.assertEqual(table.accept(b"c1", "not issued", 2), UNKNOWN_SESSION)
        self.assertEqual(table.accept(b"c1", "", 2), UNKNOWN_SESSION)
        self.assertEqual(table.session_of(b"c1"), s)
        self.assertEqual(table.session_of(b"nobody"), "")

    def test_bounded_least_recently_used_first(self):
        names = iter(f"s{i}" for i in range(100))
        table = ClientSessions(limit=3, new_session=lambda: next(names))
        for i in range(3):
            table.open(b"c%d" % i)
        self.assertIsNone(table.accept(b"c0", "s0", 1))  # s0 used: s1 is now the oldest
        table.open(b"c3")
        self.assertEqual((len(table), table.forgotten), (3, 1))
        self.assertNotIn("s1", table)
        self.assertEqual(table.accept(b"c1", "s1", 2), UNKNOWN_SESSION)
        self.assertEqual(table.session_of(b"c1"), "", "a forgotten session is forgotten for its client too")
        self.assertEqual(table.session_of(b"c0"), "s0")

    def test_a_client_reconnecting_under_a_new_identity(self):
        table = ClientSessions(limit=1)
        s = table.open(b"old")
        self.assertIsNone(table.accept(b"new", s, 1))
        self.assertEqual((table.session_of(b"new"), table.session_of(b"old")), (s, ""))
        table.open(b"other")  # forgets s
        self.assertEqual(table.session_of(b"new"), "")
        self.assertEqual(len(table._by_identity), 1, "nothing of the forgotten session stays")


class EngineSockets(SynchronousTestCase):
    def setUp(self):
        self.drops = DropLog(Clock())
        self.addCleanup(self.drops.stop)
        self.registry = Registry()
        self.record = self.registry.register("e0", "i0", "h", 1, 0.0, identity=b"T" * 32)
        self.codec = Codec(KEY)
        self.inbox = EngineInbox(self.registry, self.codec, self.drops, "task")

    def frames(self, identity=b"T" * 32, session="T" * 32):
        return [identity, *self.codec.encode("bye", {"instance": "i0", "reason": "r"}, session=session)]

    def test_once_from_its_own_session(self):
        frames = self.frames()
        identity, record, msg = self.inbox.receive(frames)
        self.assertIs(record, self.record)
        self.assertIsNone(self.inbox.receive(frames), "a replay")
        self.assertIsNone(self.inbox.receive(self.frames(session="another")))
        self.assertEqual(self.drops.totals[("task", "replayed message")], 1)
        self.assertEqual(self.drops.totals[("task", "session of another sender")], 1)

    def test_unknown_identity_is_an_unknown_session(self):
        identity, record, msg = self.inbox.receive(self.frames(identity=b"e0", session="e0"))
        self.assertIsNone(record)
        self.assertEqual(self.drops.totals[("task", "unknown session")], 1)

    def test_windows_are_per_socket(self):
        """The sender numbers all its messages from one counter: each socket sees its own subsequence."""
        control = EngineInbox(self.registry, self.codec, self.drops, "control")
        pong = [b"T" * 32, *self.codec.encode("pong", {"beat": 1, "instance": "i0"}, session="T" * 32)]
        late = self.frames()  # numbered before the pong, read after it on another socket
        self.assertIsNotNone(control.receive(pong))
        self.assertIsNotNone(self.inbox.receive(late))


class PeerTypes(SynchronousTestCase):
    def test_no_type_is_taken_on_two_sockets_of_one_side(self):
        for table in (ACCEPTS, PEER_ACCEPTS):
            seen = {}
            for channel, types in table.items():
                for t in types:
                    if t == "unknown":
                        continue  # the controller's "we do not know you", on control and client sockets
                    self.assertNotIn(t, seen, f"{t} on {seen.get(t)} and {channel}")
                    seen[t] = channel

    def test_nothing_goes_back_the_way_it_came(self):
        for channel in ACCEPTS:
            self.assertEqual(ACCEPTS[channel] & PEER_ACCEPTS.get(channel, frozenset()), frozenset(), channel)

    def test_limits_per_socket(self):
        size = 1000_000
        # task and client sockets take batches of up to MAX_BATCH_ENVELOPES envelopes (transport.batch)
        batch = wire.MAX_BATCH_ENVELOPES
        self.assertEqual(wire.limits("task", size), wire.Limits(size, 2 + batch * 5, size + 256))
        self.assertEqual(wire.limits("client", size), wire.Limits(size, 2 + batch * 3, size + 256))
        small = wire.limits("control", size)
        self.assertEqual((small.frame, small.frames), (wire.MAX_HEADER_BYTES, 3))
        beat = wire.limits("heartbeat", size)
        self.assertEqual(beat.frames, 2)
        self.assertLess(beat.frame, 1024)
