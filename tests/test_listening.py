"""The listening service of the manhole and the status page, driven through its inputs (no sockets),
and the loopback checks they share.
"""
from __future__ import annotations

from automat import NoTransition
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ipcluster.listening import ListeningService, endpoint_interface, is_loopback, loopback_by_default


@implementer(IListeningPort)
class FakePort:
    def __init__(self, host: str = "127.0.0.1", port: int = 4321) -> None:
        self.address = IPv4Address("TCP", host, port)
        self.listening = True
        self.stopped: defer.Deferred = defer.Deferred()

    def startListening(self) -> None:
        self.listening = True

    def stopListening(self) -> defer.Deferred:
        self.listening = False
        return self.stopped

    def getHost(self) -> IPv4Address:
        return self.address


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    """Each listen() hands out a Deferred the test fires (or not)."""

    def __init__(self) -> None:
        self.attempts: list[defer.Deferred] = []
        self.factories: list = []

    def listen(self, factory) -> defer.Deferred:
        self.factories.append(factory)
        self.attempts.append(defer.Deferred())
        return self.attempts[-1]


def factory() -> ServerFactory:
    return ServerFactory.forProtocol(Protocol)


class Lifecycle(unittest.SynchronousTestCase):
    def setUp(self):
        self.endpoint = FakeEndpoint()
        self.port = FakePort()
        verifyObject(IStreamServerEndpoint, self.endpoint)
        verifyObject(IListeningPort, self.port)
        self.svc = ListeningService("test", self.endpoint, "tcp:4321", factory(), label="test service")

    def listen(self) -> None:
        self.svc.privilegedStartService()
        self.endpoint.attempts[-1].callback(self.port)

    def connect(self, transport=None):
        """One connection through the service's factory."""
        protocol = self.svc.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = transport or StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def test_binds_in_privileged_start_and_tells_the_address(self):
        waiting = self.svc.listening()  # before start: waits
        self.assertNoResult(waiting)
        self.svc.privilegedStartService()
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertIs(self.endpoint.factories[0], self.svc.factory)
        self.assertIsNone(self.svc.port)
        self.endpoint.attempts[0].callback(self.port)
        self.assertEqual(self.successResultOf(waiting), self.port.address)
        self.assertEqual(self.successResultOf(self.svc.listening()), self.port.address)
        self.assertEqual((self.svc.address, self.svc.port), (self.port.address, 4321))
        self.svc.startService()  # bound already: it does not listen twice
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_binds_in_start_without_privileged_start(self):
        self.svc.startService()
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.endpoint.attempts[0].callback(self.port)
        self.assertEqual(self.svc.port, 4321)

    def test_binding_twice_is_an_error(self):
        self.svc.privilegedStartService()
        self.assertRaises(NoTransition, self.svc.privilegedStartService)
        self.endpoint.attempts[0].callback(self.port)
        self.assertRaises(NoTransition, self.svc.privilegedStartService)
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_failure_to_listen_is_raised_logged_and_told(self):
        endpoint = FakeEndpoint()
        endpoint.listen = lambda f: defer.fail(error.CannotListenError("127.0.0.1", 4321, OSError("in use")))
        svc = ListeningService("test", endpoint, "tcp:4321", factory())
        self.assertRaises(error.CannotListenError, svc.privilegedStartService)
        self.failureResultOf(svc.listening(), error.CannotListenError)
        self.assertIsNone(svc.port)
        self.assertEqual(len(self.flushLoggedErrors(error.CannotListenError)), 1)

    def test_start_after_a_failure_tries_again(self):
        self.svc.privilegedStartService()
        self.endpoint.attempts[0].errback(error.CannotListenError("127.0.0.1", 4321, OSError("in use")))
        self.assertEqual(len(self.flushLoggedErrors(error.CannotListenError)), 1)
        self.svc.startService()
        self.endpoint.attempts[1].callback(self.port)
        self.assertEqual(self.svc.port, 4321)

    def test_stop_closes_the_port_and_hangs_up(self):
        self.listen()
        _, first = self.connect()
        protocol, second = self.connect(StringTransport())  # hangs up only when told
        self.assertEqual(len(self.svc.factory.protocols), 2)
        stopped = self.svc.stopService()
        self.assertIsNone(self.svc.port)
        self.assertFalse(self.port.listening)
        self.assertTrue(first.disconnected and second.disconnected)  # aborted, both
        self.assertNoResult(stopped)
        self.port.stopped.callback(None)
        self.assertNoResult(stopped)  # one connection is still going
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(len(self.svc.factory.protocols), 0)

    def test_second_stop_while_stopping_waits_too(self):
        self.listen()
        first = self.svc.stopService()
        second = self.svc.stopService()
        self.assertNoResult(second)
        self.port.stopped.callback(None)
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))

    def test_starting_while_stopping_is_an_error(self):
        self.listen()
        self.svc.stopService()
        self.assertRaises(NoTransition, self.svc.privilegedStartService)
        self.assertRaises(NoTransition, self.svc.startService)

    def test_stop_then_start_listens_again(self):
        self.listen()
        self.svc.stopService()
        self.port.stopped.callback(None)
        waiting = self.svc.listening()
        self.assertNoResult(waiting)
        again = FakePort(port=4322)
        self.svc.privilegedStartService()
        self.endpoint.attempts[1].callback(again)
        self.assertEqual(self.successResultOf(waiting).port, 4322)

    def test_stop_while_binding_cancels(self):
        waiting = self.svc.listening()
        self.svc.privilegedStartService()
        stopped = self.svc.stopService()
        self.assertIsNone(self.successResultOf(stopped))  # a plain Deferred: cancelling fails it at once
        self.failureResultOf(waiting, defer.CancelledError)
        self.assertIsNone(self.svc.port)

    def test_stop_before_start(self):
        self.assertIsNone(self.successResultOf(self.svc.stopService()))
        self.assertEqual(self.endpoint.attempts, [])

    def test_an_unauthenticated_service_off_loopback_is_a_warning(self):
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for host, unauthenticated in (("10.1.2.3", True), ("127.0.0.1", True), ("10.1.2.3", False)):
            endpoint = FakeEndpoint()
            svc = ListeningService("t", endpoint, "tcp:1", factory(), unauthenticated=unauthenticated)
            svc.privilegedStartService()
            endpoint.attempts[0].callback(FakePort(host))
        warnings = [e for e in events if e.get("log_level") is not None and e["log_level"].name == "warn"]
        self.assertEqual([e["host"] for e in warnings], ["10.1.2.3"])


class Loopback(unittest.SynchronousTestCase):
    def test_endpoint_interface(self):
        for description, interface in [
            ("tcp:80", ""),
            ("tcp:80:interface=127.0.0.1", "127.0.0.1"),
            ("tcp:80:127.0.0.2", "127.0.0.2"),
            (r"tcp6:80:interface=\:\:1", "::1"),
            ("TCP:port=80:interface=localhost", "localhost"),
            ("unix:/tmp/sock", None),
        ]:
            self.assertEqual(endpoint_interface(description), interface, description)

    def test_is_loopback(self):
        for interface in ("localhost", "127.0.0.1", "127.9.8.7", "::1", "[::1]", "::ffff:127.0.0.1"):
            self.assertTrue(is_loopback(interface), interface)
        for interface in ("", "0.0.0.0", "::", "10.0.0.1", "example.com"):
            self.assertFalse(is_loopback(interface), interface)

    def test_loopback_by_default(self):
        for description, bound in [
            ("8080", "tcp:8080:interface=127.0.0.1"),
            (" tcp:8080 ", "tcp:8080:interface=127.0.0.1"),
            ("tcp:0", "tcp:0:interface=127.0.0.1"),
            ("tcp:port=80", "tcp:port=80:interface=127.0.0.1"),
            ("tcp:80:interface=0.0.0.0", "tcp:80:interface=0.0.0.0"),
            ("tcp:80:10.0.0.1", "tcp:80:10.0.0.1"),
            ("unix:/tmp/sock", "unix:/tmp/sock"),
        ]:
            self.assertEqual(loopback_by_default(description), bound, description)
            if endpoint_interface(bound) is not None and "0.0.0.0" not in bound and "10.0" not in bound:
                self.assertTrue(is_loopback(endpoint_interface(bound)), bound)
