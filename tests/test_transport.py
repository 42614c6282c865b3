"""RouterSocket's bounded read loop, over real ZeroMQ sockets and a fake reactor (Clock);
its reads after every send, on the real reactor."""
import select
import time

import zmq
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.transport.reactor import RouterSocket, make_factory
from tests.cluster import within

COUNT = 1000
BATCH = 100
DEADLINE = 10.0  # seconds; only reached if something is broken


class FakeReactor(Clock):
    """A Clock that txZMQ can add readers to, and that runs timers like a reactor.

    ``Clock.advance`` also runs calls scheduled *while* it runs, so
    ``advance(0)`` would chain every ``callLater(0, doRead)`` and read all at
    once.  A reactor runs those at its next iteration; so does this advance.
    """

    def addReader(self, reader):
        pass

    def removeReader(self, reader):
        pass

    def advance(self, amount):
        self.rightNow += amount
        due = sorted((c for c in self.calls if c.getTime() <= self.rightNow), key=lambda c: c.getTime())
        for call in due:
            if call.active():
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class RouterSocketTests(SynchronousTestCase):
    def setUp(self):
        self.clock = FakeReactor()
        self.factory = make_factory(self.clock)
        self.addCleanup(self.close_factory)
        self.handled = []
        self.router = RouterSocket(
            self.factory, "tcp://127.0.0.1:*", self.on_message, max_batch=BATCH, name="test"
        )
        self.context = zmq.Context()
        self.addCleanup(self.context.term)
        self.dealer = self.context.socket(zmq.DEALER)
        self.addCleanup(self.dealer.close, 0)
        self.dealer.setsockopt(zmq.IDENTITY, b"dealer-1")
        self.dealer.connect(self.router.address)

    def use_inproc(self):
        """Router and dealer over inproc, in one context: a send is in the router's pipe when it
        returns, so a test can count on every pushed message waiting (over TCP they trickle in)."""
        self.router = RouterSocket(
            self.factory, f"inproc://test-{id(self)}", self.on_message, max_batch=BATCH, name="inproc"
        )
        self.dealer = self.factory.context.socket(zmq.DEALER)
        self.addCleanup(self.dealer.close, 0)
        self.dealer.setsockopt(zmq.IDENTITY, b"dealer-1")
        self.dealer.connect(self.router.address)

    def close_factory(self):
        if self.factory.connections is not None:
            self.factory.shutdown()

    def on_message(self, frames):
        self.handled.append(frames)

    def wait_readable(self):
        poller = zmq.Poller()
        poller.register(self.router.socket, zmq.POLLIN)
        self.assertTrue(poller.poll(DEADLINE * 1000), "nothing arrived on the router")

    def push(self, count):
        for i in range(count):
            self.dealer.send_multipart([b"%d" % i])

    def read_until(self, count):
        """Run reads (scheduled ones first) until ``count`` messages are handled; the batch sizes."""
        batches = []
        deadline = time.monotonic() + DEADLINE
        while len(self.handled) < count and time.monotonic() < deadline:
            before = len(self.handled)
            if self.clock.getDelayedCalls():
                self.clock.advance(0)
            else:
                self.wait_readable()
                self.router.doRead()
            batches.append(len(self.handled) - before)
        return batches

    def test_address(self):
        self.assertTrue(self.router.address.startswith("tcp://127.0.0.1:"))
        self.assertGreater(self.router.port, 0)

    def test_reads_at_most_max_batch_then_yields(self):
        self.use_inproc()
        self.push(COUNT)
        self.wait_readable()
        self.router.doRead()
        self.assertEqual(len(self.handled), BATCH)
        self.assertEqual(self.router.batches_cut, 1)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), self.clock.seconds(), "callLater(0, ...)")

        self.clock.advance(0)
        self.assertEqual(len(self.handled), 2 * BATCH)

        batches = self.read_until(COUNT)
        self.assertTrue(all(n <= BATCH for n in batches), batches)
        self.assertEqual(len(self.handled), COUNT)
        self.assertEqual(self.router.received, COUNT)
        self.assertEqual([frames for frames in self.handled], [[b"dealer-1", b"%d" % i] for i in range(COUNT)])
        # Nothing is left over, nothing is read twice.
        if self.clock.getDelayedCalls():
            self.clock.advance(0)
        self.assertEqual(len(self.handled), COUNT)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_after_read_runs_once_a_read_emptied_the_socket(self):
        self.use_inproc()
        calls = []
        self.router.after_read = lambda: calls.append(len(self.handled))
        self.push(5)
        self.wait_readable()
        self.router.doRead()
        self.assertEqual(calls, [5], "once, after the messages")
        self.router.doRead()
        self.assertEqual(calls, [5], "a read that found nothing calls nothing")

    def test_a_message_that_came_during_after_read_is_read(self):
        # after_read sends (the controller's replies): the send takes the socket's readable
        # edge, so the read must look again after it.
        self.use_inproc()
        self.router.after_read = lambda: (self.push(1), self.router.send_frames([b"dealer-1", b"reply"]))
        self.push(1)
        self.wait_readable()
        self.router.doRead()
        self.assertEqual(len(self.handled), 2, "the message pushed during after_read was read too")
        self.assertEqual(self.dealer.recv_multipart(), [b"reply"])

    def test_explicit_limit(self):
        self.use_inproc()
        self.push(50)
        self.wait_readable()
        self.router.doRead(limit=7)
        self.assertEqual(len(self.handled), 7)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_a_failing_handler_does_not_stop_reading(self):
        def on_message(frames):
            if frames[1] == b"3":
                raise ValueError("handler bug")
            self.handled.append(frames)

        self.router.on_message = on_message
        self.push(10)
        self.read_until(9)
        self.assertEqual([frames[1] for frames in self.handled], [b"%d" % i for i in range(10) if i != 3])
        self.assertEqual(self.router.received, 10)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_send_to_unknown_identity_fails(self):
        self.assertFalse(self.router.send_frames([b"nobody", b"hello"]))

    def test_failed_send_still_schedules_a_read(self):
        """A failed send swallows the readable edge of waiting messages: it must schedule the read."""
        self.push(3)
        self.wait_readable()
        self.assertFalse(self.router.send_frames([b"nobody", b"hello"]))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "a read is scheduled after a failed send")
        self.clock.advance(0)
        self.assertEqual([frames[1] for frames in self.handled], [b"0", b"1", b"2"])

    def test_send_to_known_identity(self):
        self.push(1)
        self.read_until(1)
        self.assertTrue(self.router.send_frames([b"dealer-1", b"hello"]))
        self.assertEqual(self.clock.getDelayedCalls(), [], "nothing waits: no read after the send")
        self.assertTrue(self.dealer.poll(DEADLINE * 1000))
        self.assertEqual(self.dealer.recv_multipart(), [b"hello"])

    def test_a_send_while_messages_wait_schedules_a_read(self):
        """A send that went out also takes the readable edge of waiting messages."""
        self.push(1)
        self.read_until(1)
        self.push(3)
        self.wait_readable()
        self.assertTrue(self.router.send_frames([b"dealer-1", b"hello"]))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "a read is scheduled after the send")
        self.clock.advance(0)
        self.assertGreater(len(self.handled), 1, "the scheduled read found what waited")
        self.read_until(4)
        self.assertEqual([frames[1] for frames in self.handled], [b"0", b"0", b"1", b"2"])

    def test_held_sends_schedule_one_read_at_the_release(self):
        """A burst of sends (a heart-monitor slice) asks nothing per send; the release looks once,
        so messages whose edge the sends took are still read."""
        self.push(1)
        self.read_until(1)
        self.push(3)
        self.wait_readable()
        self.router.hold_reads()
        for _ in range(5):
            self.assertTrue(self.router.send_frames([b"dealer-1", b"hello"]))
        self.assertEqual(self.clock.getDelayedCalls(), [], "no read scheduled while held")
        self.router.release_reads()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "one read, scheduled at the release")
        self.read_until(4)
        self.assertEqual([frames[1] for frames in self.handled], [b"0", b"0", b"1", b"2"])

    def test_nested_holds_look_at_the_outer_release(self):
        self.push(1)
        self.read_until(1)
        self.push(1)
        self.wait_readable()
        self.router.hold_reads()
        self.router.hold_reads()
        self.router.send_frames([b"dealer-1", b"hello"])
        self.router.release_reads()
        self.assertEqual(self.clock.getDelayedCalls(), [], "still held")
        self.router.release_reads()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_a_handler_that_sends_needs_no_scheduled_read(self):
        """Sends from a handler inside the read loop schedule nothing: the loop looks again itself."""
        def on_message(frames):
            self.handled.append(frames)
            self.router.send_frames([frames[0], b"ack"])

        self.router.on_message = on_message
        self.push(5)
        self.read_until(5)
        self.assertEqual([frames[1] for frames in self.handled], [b"%d" % i for i in range(5)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drain_reads_past_max_batch(self):
        self.push(COUNT)
        deadline = time.monotonic() + DEADLINE
        while len(self.handled) < COUNT and time.monotonic() < deadline:
            self.wait_readable()
            self.router.drain()
        self.assertEqual(len(self.handled), COUNT)
        self.assertEqual(self.router.batches_cut, 0)

    def test_bounded_drain_says_whether_what_came_before_since_is_read(self):
        """The heart monitor's rule: a drain cut by its limit says more waits, until a read has
        found the socket empty at or after the slice's due time."""
        self.use_inproc()
        self.push(50)
        self.clock.advance(1.0)
        due = self.clock.seconds()
        self.assertFalse(self.router.drain(20, since=due), "30 still wait")
        self.assertEqual(len(self.handled), 20)
        self.assertTrue(self.router.drain(40, since=due))
        self.assertEqual(len(self.handled), 50)
        self.push(5)  # arrive after the socket was found empty at the due time
        self.assertTrue(self.router.drain(2, since=due), "what came after the due time need not be read")
        self.clock.advance(1.0)  # the read the cut drain scheduled finds it empty
        self.push(5)
        self.clock.advance(0.5)
        self.assertFalse(self.router.drain(1, since=self.clock.seconds()), "these came before: 4 wait")
        self.assertTrue(self.router.drain(10, since=self.clock.seconds()))

    def test_closed_socket(self):
        self.close_factory()
        self.assertFalse(self.router.send_frames([b"dealer-1", b"x"]))
        self.router.drain()  # harmless

    def test_replying_handler_leaves_no_orphaned_read(self):
        def on_message(frames):
            self.handled.append(frames)
            self.router.send_frames([frames[0], b"ack"])

        self.router.on_message = on_message
        self.push(50)
        self.wait_readable()
        self.router.doRead(limit=10)
        self.assertEqual(len(self.handled), 10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "one read scheduled, not one per path")
        self.close_factory()
        self.assertEqual(self.clock.getDelayedCalls(), [], "shutdown cancels every scheduled read")


class WholeMessageLimits(SynchronousTestCase):
    """Messages over a socket's frame count or total size are thrown away before any handler."""

    def setUp(self):
        self.clock = FakeReactor()
        self.factory = make_factory(self.clock)
        self.addCleanup(lambda: self.factory.connections is not None and self.factory.shutdown())
        self.handled, self.oversize = [], []
        self.router = RouterSocket(
            self.factory, "tcp://127.0.0.1:*", self.handled.append, name="limited",
            max_frames=4, max_size=1000, on_oversize=self.oversize.append,
        )
        self.context = zmq.Context()
        self.addCleanup(self.context.term)
        self.dealer = self.context.socket(zmq.DEALER)
        self.addCleanup(self.dealer.close, 0)
        self.dealer.setsockopt(zmq.IDENTITY, b"d")
        self.dealer.connect(self.router.address)

    def read(self, count):
        deadline = time.monotonic() + DEADLINE
        while len(self.handled) + len(self.oversize) < count and time.monotonic() < deadline:
            self.router.socket.poll(100)
            self.router.doRead()

    def test_over_the_limits_is_dropped_and_the_rest_goes_on(self):
        self.dealer.send_multipart([b"a", b"b", b"c"])  # 4 frames with the identity: fits
        self.dealer.send_multipart([b"a", b"b", b"c", b"d"])  # 5 frames
        self.dealer.send_multipart([b"x" * 600, b"y" * 600])  # 1,201 bytes
        self.dealer.send_multipart([b"x" * 998])  # 999 bytes with the identity: fits
        self.dealer.send_multipart([b"last"])
        self.read(5)
        self.assertEqual([f[1:] for f in self.handled], [[b"a", b"b", b"c"], [b"x" * 998], [b"last"]])
        self.assertEqual([(o.first, o.frames, o.size) for o in self.oversize], [(b"d", 5, 5), (b"d", 3, 1201)])


class EdgeTriggeredDescriptor(unittest.TestCase):
    """On the real reactor: ZeroMQ's descriptor is edge-triggered, and a failed send eats the edge."""

    def test_the_premise_a_failed_send_hides_waiting_messages_from_select(self):
        """Plain pyzmq, no reactor: why every send path must schedule a read."""
        context = zmq.Context()
        self.addCleanup(context.term)
        router = context.socket(zmq.ROUTER)
        self.addCleanup(router.close, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer = context.socket(zmq.DEALER)
        self.addCleanup(dealer.close, 0)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        fd = router.getsockopt(zmq.FD)
        # A round trip first: the connection is complete, its commands processed and its edge taken.
        dealer.send(b"hello")
        self.assertTrue(router.poll(DEADLINE * 1000), "the first message")
        router.recv_multipart()
        router.getsockopt(zmq.EVENTS)
        dealer.send(b"waiting")
        self.assertTrue(select.select([fd], [], [], DEADLINE)[0], "the message's edge")
        self.assertRaises(zmq.ZMQError, router.send_multipart, [b"nobody", b"x"], zmq.NOBLOCK)
        self.assertFalse(select.select([fd], [], [], 0.2)[0], "the failed send ate the edge")
        self.assertTrue(router.getsockopt(zmq.EVENTS) & zmq.POLLIN, "yet the message waits")

    @defer.inlineCallbacks
    def test_router_hears_a_message_that_waited_through_a_failed_send(self):
        handled = []
        hello, arrived = defer.Deferred(), defer.Deferred()

        def on_message(frames):
            handled.append(frames[1])
            waiter = hello if len(handled) == 1 else arrived
            if not waiter.called:
                waiter.callback(None)

        factory = make_factory(reactor)
        self.addCleanup(factory.shutdown)
        router = RouterSocket(factory, "tcp://127.0.0.1:*", on_message, name="edge")
        context = zmq.Context()
        self.addCleanup(context.term)
        dealer = context.socket(zmq.DEALER)
        self.addCleanup(dealer.close, 0)
        dealer.connect(router.address)
        # A round trip first: the reactor has taken the connection's edges. Then a message waits, unread.
        dealer.send(b"hello")
        yield within(hello, DEADLINE, "the first message")
        fd = router.socket.getsockopt(zmq.FD)
        router.socket.getsockopt(zmq.EVENTS)
        dealer.send(b"waiting")
        self.assertTrue(select.select([fd], [], [], DEADLINE)[0], "the message's edge")
        self.assertFalse(router.send_frames([b"gone-client", b"result"]))
        yield within(arrived, DEADLINE, "the message that waited through a failed send")
        self.assertEqual(handled, [b"hello", b"waiting"])
