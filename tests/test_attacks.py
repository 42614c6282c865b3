"""The attacks of issue 8, against a real controller and real engines on 127.0.0.1.

* keyless peers that name an engine (its id, or a guessed token) on the task, control and
  heartbeat ports get nothing and change nothing;
* a SIGSTOPped engine goes dead while impostors echo heartbeats in its name;
* a captured submit and a captured control request, replayed, are dropped and counted:
  never run twice, never answered twice;
* over-size input and absurd field values are refused, and nothing else suffers.

(The keyless over-size flood and the controller's memory under it: ``test_flood_memory``.)
"""
from __future__ import annotations

import os
import signal

import zmq
from twisted.internet import defer
from twisted.logger import Logger
from twisted.trial import unittest

from ipcluster import errors
from ipcluster.engine.heart import Heart
from ipcluster.transport import security
from tests.cluster import BOUND, connect_client, error_of, event, start_controller, start_engines, until, within

REFUSED = "refused connection"
log = Logger()


def report(testcase, controller) -> None:
    """What the controller counted, in the test log (the figures of the closing note)."""
    log.info("attack counts in {test}: {totals}", test=testcase.id(), totals=dict(sorted(controller.drops.totals.items())))


def refused(controller, channels) -> defer.Deferred:
    """Fires once keyless connections were refused (and counted) on each of ``channels``."""

    def counted():
        # How often a refused peer retries, and whether libzmq sees the mechanism mismatch or the
        # peer hang up first, is libzmq's business: one refusal counted on the socket is the proof.
        refusals = {ch for (ch, reason), n in controller.drops.totals.items() if reason.startswith(REFUSED) and n}
        return refusals.issuperset(channels)

    def failed(failure):
        raise AssertionError(f"keyless connections not counted on {channels}: {dict(controller.drops.totals)}")

    return until(counted, what="keyless connections to be refused").addErrback(failed)


def guessed_token() -> bytes:
    return os.urandom(security.TOKEN_CHARS // 2).hex().encode()


class Impostors:
    """DEALERs and hearts of someone who can reach the ports: keyless, or with the PLAIN password."""

    def __init__(self, testcase, info) -> None:
        self.info = info
        self.context = zmq.Context()
        testcase.addCleanup(self.context.destroy, 0)
        self.sockets = []
        self.hearts = []
        testcase.addCleanup(self.stop_hearts)

    def dealer(self, channel: str, identity: bytes, credentials: bool = False) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.LINGER, 0)
        if credentials:
            security.configure_client(sock, self.info)
        sock.connect(self.info.address(channel))
        sock.send_multipart([b"let me in"])
        self.sockets.append(sock)
        return sock

    def heart(self, identity: bytes, credentials: bool = False) -> Heart:
        configure = (lambda sock: security.configure_client(sock, self.info)) if credentials else None
        heart = Heart(self.context, self.info.address("heartbeat"), identity, configure)
        heart.start()
        self.hearts.append(heart)
        return heart

    def received(self) -> int:
        """Messages that reached any impostor socket."""
        count = 0
        for sock in self.sockets:
            while sock.poll(0):
                sock.recv_multipart()
                count += 1
        return count

    def stop_hearts(self) -> None:
        for heart in self.hearts:
            heart.stop()
        self.hearts = []


class Takeover(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_impostors_named_like_an_engine_get_nothing_and_change_nothing(self):
        controller = yield start_controller(self)
        yield start_engines(self, controller, ["e0"])
        client = yield connect_client(self, controller)
        record = controller.registry.get("e0")
        impostors = Impostors(self, controller.info)
        for channel in ("task", "control", "heartbeat"):
            for identity in (b"e0", guessed_token()):
                impostors.dealer(channel, identity)  # keyless: refused at the handshake
                impostors.dealer(channel, identity, credentials=True)  # saw the password: routed nothing
        # e0 keeps getting its tasks while they sit there (ROUTER_HANDOVER took over no route of e0's).
        for i in range(20):
            value = yield within(client.submit(pow, 2, i, engine="e0"), BOUND, f"task {i} on e0")
            self.assertEqual(value, 2**i)
        beat = yield within(client.beat("e0"), BOUND, "beat e0")
        self.assertGreater(beat, 0)
        yield refused(controller, ("task", "control", "heartbeat"))
        self.assertEqual(impostors.received(), 0, "an impostor received something")
        self.assertIs(controller.registry.get("e0"), record)
        self.assertEqual(record.state, "alive")
        self.assertNotEqual(record.identity, b"e0")
        self.assertNotIn(record.identity.decode(), repr(record.describe(0.0)), "the token is never shown")
        report(self, controller)

    @defer.inlineCallbacks
    def test_a_stopped_engine_dies_while_impostors_echo_in_its_name(self):
        controller = yield start_controller(self)
        procs = yield start_engines(self, controller, ["e1"])
        impostors = Impostors(self, controller.info)
        for credentials in (False, True):
            impostors.heart(b"e1", credentials)
            impostors.heart(guessed_token(), credentials)
        dead = event(controller.registry, "dead", "e1")
        procs["e1"].kill(signal.SIGSTOP)
        record, reason = yield dead
        self.assertIn("heart silent", reason)
        procs["e1"].kill(signal.SIGCONT)
        yield refused(controller, ("heartbeat",))
        report(self, controller)


class Replays(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_a_captured_submit_and_beat_replayed_are_dropped(self):
        controller = yield start_controller(self)
        yield start_engines(self, controller, ["e0"])
        client = yield connect_client(self, controller)
        captured = []
        send = client._socket.send_frames
        client._socket.send_frames = lambda frames: (captured.append(list(frames)), send(frames))[1]
        runs = os.path.abspath(self.mktemp())

        def mark(path):
            with open(path, "a") as f:
                f.write("ran\n")
            return "done"

        self.assertEqual((yield within(client.submit(mark, runs, engine="e0"), BOUND, "the task")), "done")
        yield within(client.beat("e0"), BOUND, "the beat")
        [submit, beat] = captured
        impostors = Impostors(self, controller.info)
        replayers = [impostors.dealer("client", b"replayer", credentials=True), impostors.dealer("client", b"keyless")]
        for frames in (submit, beat):
            replayers[0].send_multipart(frames)  # an eavesdropper who has the PLAIN password, not the key
            replayers[1].send_multipart(frames)  # keyless: never gets through
            send(frames)  # the client's own socket, as if the network repeated it
        yield until(lambda: controller.drops.totals[("client", "replayed message")] >= 4, what="the replays to be dropped")
        yield within(client.beat("e0"), BOUND, "a fresh beat")  # the channel still works
        self.assertEqual(controller.drops.totals[("client", "replayed message")], 4)
        with open(runs) as f:
            self.assertEqual(f.read(), "ran\n", "the task ran once")
        self.assertEqual(impostors.received(), 0, "a replayer got an answer")
        self.assertEqual(controller.scheduler.completed, 1)
        self.assertEqual(client._core.refused, 0)
        report(self, controller)


class Limits(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_over_size_payloads_and_results_and_absurd_fields(self):
        controller = yield start_controller(self, max_message_size=1_000_000)
        yield start_engines(self, controller, ["e0"])
        client = yield connect_client(self, controller)
        exc = yield error_of(client.submit(len, b"x" * 2_000_000), "an over-size submit")
        self.assertIsInstance(exc, errors.PayloadTooLarge)
        self.assertIn("1000000", str(exc))
        exc = yield error_of(client.submit(bytes, 2_000_000, engine="e0"), "a task with an over-size result")
        self.assertIsInstance(exc, errors.PayloadTooLarge)
        self.assertIn("result", str(exc))
        # Absurd values sent as they are (past the client's own checks): refused by the controller.
        for fields in ({"retries": 2**63}, {"timeout": 1e308}, {"name": "evil\x1b[2J"}):
            exc = yield error_of(self.raw_submit(client, fields), f"a submit with {fields}")
            self.assertIsInstance(exc, errors.BadRequest)
        # A key holder's over-size message: dropped before it is decoded; the engine goes on.
        impostors = Impostors(self, controller.info)
        big = impostors.dealer("task", b"big", credentials=True)
        big.send_multipart([b"x" * 600_000, b"y" * 600_000])
        yield until(lambda: controller.drops.totals[("task", "oversize message")] >= 1, what="the over-size message")
        self.assertEqual((yield within(client.submit(pow, 2, 8, engine="e0"), BOUND, "a task")), 256)
        self.assertEqual(controller.registry.get("e0").state, "alive")
        report(self, controller)

    @staticmethod
    def raw_submit(client, fields):
        import cloudpickle

        d = defer.Deferred()
        task_id = os.urandom(8).hex()
        client._core.expect(task_id, lambda result: d.errback(result.value) if not result.ok else d.callback(result.value))
        payload = cloudpickle.dumps((pow, (2, 2), {}))
        client._socket.send_frames(client._core.codec.encode("submit", dict(fields, task=task_id), [payload]))
        return d
