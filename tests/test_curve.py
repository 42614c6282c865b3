"""CurveZMQ: the cluster's keys, the ZAP verdicts under CURVE, and a real controller on CURVE sockets
that serves its engines and clients and refuses every other peer at the handshake."""
from __future__ import annotations

import json
import os
import stat

import zmq
from twisted.internet import defer
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase
from zmq.utils import z85

from ipcluster import connection
from ipcluster.connection import CHANNELS
from ipcluster.controller.config import ControllerConfig
from ipcluster.controller.sockets import refusal
from ipcluster.transport import security
from tests.cluster import BOUND, connect_client, start_controller, start_engines, until, within

KEY = b"k" * 32


def curve_request(client_public, mechanism=b"CURVE", domain=b"ipcluster/task"):
    return [b"\x00peer", b"", b"1.0", b"9", domain, b"10.77.0.2", b"", mechanism, z85.decode(client_public)]


class Keys(SynchronousTestCase):
    def test_generated_pairs_are_fresh_and_z85(self):
        a, b = security.CurveKeys.generate(), security.CurveKeys.generate()
        self.assertNotEqual(a.server_public, b.server_public)
        self.assertNotEqual(a.client_secret, b.client_secret)
        for key in (a.server_public, a.server_secret, a.client_public, a.client_secret):
            self.assertEqual(len(z85.decode(key)), 32)
        self.assertEqual(zmq.curve_public(a.server_secret), a.server_public)
        self.assertEqual(zmq.curve_public(a.client_secret), a.client_public)

    def test_the_server_secret_never_leaves_the_controller(self):
        keys = security.CurveKeys.generate()
        self.assertIsNone(keys.public().server_secret)
        self.assertNotIn("server_secret", keys.to_json())
        self.assertNotIn(keys.server_secret.decode(), repr(keys))
        self.assertNotIn(keys.client_secret.decode(), repr(keys))

    def test_malformed_keys_are_refused(self):
        for bad in ("short", "x" * 41, b"\x00" * 40):
            self.assertRaises(ValueError, security.CurveKeys, bad, bad, bad)

    def test_connection_file_round_trip_0600(self):
        keys = security.CurveKeys.generate()
        info = connection.ConnectionInfo("10.77.0.1", {ch: 1000 + i for i, ch in enumerate(CHANNELS)}, KEY, curve=keys)
        path = os.path.join(self.mktemp(), "connection.json")
        connection.write(info, path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            text = f.read()
        self.assertNotIn(keys.server_secret.decode(), text)
        read = connection.read(path)
        self.assertEqual(read.curve, keys.public())
        self.assertEqual(read, attr_evolve(info, curve=keys.public()))
        plain = attr_evolve(info, curve=None)
        connection.write(plain, path)
        self.assertNotIn("curve", json.load(open(path)))
        self.assertIsNone(connection.read(path).curve)

    def test_curve_is_on_off_loopback_by_default(self):
        self.assertFalse(ControllerConfig(ip="127.0.0.1").curve_enabled)
        self.assertTrue(ControllerConfig(ip="127.0.0.1", curve=True).curve_enabled)
        for ip in ("0.0.0.0", "10.77.0.1", "192.168.1.5"):
            self.assertTrue(ControllerConfig(ip=ip).curve_enabled, ip)

    def test_socket_options(self):
        keys = security.CurveKeys.generate()
        context = zmq.Context()
        self.addCleanup(context.destroy, 0)
        client, server = context.socket(zmq.DEALER), context.socket(zmq.ROUTER)
        security.configure_client(client, connection.ConnectionInfo("h", {}, KEY, curve=keys.public()))
        security.configure_server(server, "control", keys)
        self.assertEqual(client.getsockopt(zmq.MECHANISM), zmq.CURVE)
        self.assertEqual(server.getsockopt(zmq.CURVE_SERVER), 1)
        self.assertEqual(server.getsockopt(zmq.ZAP_DOMAIN), b"ipcluster/control")
        self.assertRaises(ValueError, security.configure_server, context.socket(zmq.ROUTER), "task", keys.public())


def attr_evolve(info, **changes):
    import attr

    return attr.evolve(info, **changes)


class CurveVerdicts(SynchronousTestCase):
    def setUp(self):
        self.keys = security.CurveKeys.generate()
        self.zap = security.ZapHandler(KEY, self.keys)

    def test_only_the_cluster_client_key_is_admitted(self):
        reply, verdict = self.zap.answer(curve_request(self.keys.client_public))
        self.assertTrue(verdict.admitted)
        self.assertEqual(reply[4], b"200")
        self.assertEqual(verdict.mechanism, "CURVE")

    def test_other_keys_and_mechanisms_are_refused(self):
        other = security.CurveKeys.generate()
        plain = [b"\x00peer", b"", b"1.0", b"9", b"ipcluster/task", b"a", b"", b"PLAIN", security.PLAIN_USER,
                 security.plain_password(KEY)]
        for request in (
            curve_request(other.client_public),
            curve_request(self.keys.server_public),  # the server's own public key is not a client's
            plain,  # even with the right PLAIN password: a CURVE cluster speaks CURVE only
            curve_request(self.keys.client_public, mechanism=b"NULL"),
            curve_request(self.keys.client_public, domain=b"elsewhere"),
            curve_request(self.keys.client_public) + [b"extra"],
        ):
            reply, verdict = self.zap.answer(request)
            self.assertFalse(verdict.admitted, request)
            self.assertEqual(reply[4], b"400")
        self.assertEqual((self.zap.admitted, self.zap.refused), (0, 6))

    def test_a_wrong_server_key_is_named_in_the_droplog(self):
        event = {"event": zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, "value": zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC}
        self.assertEqual(refusal(event), "refused connection: CURVE handshake failed (wrong server key?)")


class CurveCluster(unittest.TestCase):
    """A controller whose sockets are CURVE servers (``--curve`` on 127.0.0.1)."""

    timeout = 300

    @defer.inlineCallbacks
    def test_engines_and_clients_work_and_nobody_else_gets_a_frame_in(self):
        controller = yield start_controller(self, curve=True, heartbeat_period=0.2)
        info = connection.read(controller.config.connection_file)
        self.assertIsNotNone(info.curve)
        self.assertIsNone(info.curve.server_secret)
        handled = self.count_handled(controller)
        yield start_engines(self, controller, ["e0", "e1"])
        client = yield connect_client(self, controller)
        result = yield within(client.submit(pow, 3, 4), BOUND, "a task over CURVE")
        self.assertEqual(result, 81)
        before = dict(handled)

        context = zmq.Context()
        self.addCleanup(context.destroy, 0)
        other = security.CurveKeys.generate()
        impostors = []
        for channel in CHANNELS:
            for kind in ("keyless", "plain", "wrong client key", "wrong server key"):
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                if kind == "plain":
                    security.configure_client(sock, controller.key)  # the PLAIN password of this very cluster
                elif kind == "wrong client key":
                    sock.curve_serverkey = info.curve.server_public
                    sock.curve_publickey, sock.curve_secretkey = other.client_public, other.client_secret
                elif kind == "wrong server key":
                    sock.curve_serverkey = other.server_public
                    sock.curve_publickey, sock.curve_secretkey = info.curve.client_public, info.curve.client_secret
                sock.connect(info.address(channel))
                sock.send_multipart([b"let me in"], copy=True)
                impostors.append(sock)

        def all_refused():
            totals = controller.drops.totals
            wrong = {ch for (ch, reason), n in totals.items() if n and "wrong credentials" in reason}
            curve = {ch for (ch, reason), n in totals.items() if n and "CURVE handshake" in reason}
            keyless = {ch for (ch, reason), n in totals.items() if n and reason.startswith("refused connection")}
            return wrong >= set(CHANNELS) and curve >= set(CHANNELS) and keyless >= set(CHANNELS)

        yield until(all_refused, what="every impostor to be refused on every socket")
        # Only the wrong client keys reach the ZAP handler: the others fail the handshake before it.
        self.assertGreaterEqual(controller.sockets.zap.refused, len(CHANNELS))
        # A beat round trip: anything an impostor managed to send would have been read by now.
        yield within(client.beat("e0"), BOUND, "a beat")
        extra = {ch: handled[ch] - before[ch] for ch in CHANNELS}
        self.assertEqual(extra["registration"], 0, extra)
        for sock in impostors:
            self.assertFalse(sock.poll(0), "an impostor got an answer")
        self.assertEqual(sorted(r.id for r in controller.registry.live()), ["e0", "e1"])
        not_refusals = {k: n for k, n in controller.drops.totals.items() if not k[1].startswith("refused connection")}
        self.assertEqual(not_refusals, {}, "no impostor frame reached a handler (it would be dropped there)")

    def count_handled(self, controller):
        handled = {ch: 0 for ch in CHANNELS}
        for channel, sock in controller.sockets.sockets.items():
            def counting(frames, inner=sock.on_message, channel=channel):
                handled[channel] += 1
                return inner(frames)

            sock.on_message = counting
        return handled
