"""The blocking client's shared dealer (client/iothread.py): a lone request sent by its caller,
a burst batched through the outbox with one wake-up, order per thread, the edge-triggered
descriptor's trap, the close -- and, on a real cluster, many submitting threads."""
from __future__ import annotations

import select
import threading

import zmq
from twisted.internet import defer, threads
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from ipcluster import Client
from ipcluster.client.iothread import Closed, Outbox, SharedDealer
from ipcluster.transport import batch
from ipcluster.transport.wake import Wake
from ipcluster.transport.zmqfast import readable
from tests.cluster import BOUND, start_controller, start_engines, within


def envelope(name: str) -> list:
    return [b"s" * 32, name.encode()]


class OutboxTests(SynchronousTestCase):
    def setUp(self):
        self.wake = Wake()
        self.addCleanup(self.wake.close)
        self.outbox = Outbox(self.wake)

    def woken(self) -> bool:
        """Whether the wake is set, and clear it (what the I/O thread does when it wakes)."""
        woken = self.wake.wait(0)
        self.wake.clear()
        return woken

    def test_a_burst_is_one_wake_up_and_comes_in_order(self):
        self.assertFalse(self.woken())
        for i in range(5):
            self.outbox.put(envelope(str(i)))
        self.assertTrue(self.woken())
        self.outbox.put(envelope("5"))
        self.assertFalse(self.woken(), "one wake-up for the burst: the I/O thread has not taken it yet")
        taken, open_ = self.outbox.take(100)
        self.assertTrue(open_)
        self.assertEqual([frames[1] for frames in taken], [b"0", b"1", b"2", b"3", b"4", b"5"])
        self.assertEqual(self.outbox.puts, 6)
        self.outbox.put(envelope("6"))
        self.assertTrue(self.woken(), "empty again: the next put wakes the thread again")

    def test_more_than_a_turn_wakes_the_thread_again(self):
        for i in range(5):
            self.outbox.put(envelope(str(i)))
        self.woken()
        first, _ = self.outbox.take(3)
        self.assertEqual(len(first), 3)
        self.assertTrue(self.woken(), "what is left wakes the I/O thread at its next poll")
        rest, open_ = self.outbox.take(3)
        self.assertEqual([frames[1] for frames in rest], [b"3", b"4"])
        self.assertTrue(open_)
        self.assertFalse(self.woken())

    def test_close_sends_what_came_before_then_refuses(self):
        self.outbox.put(envelope("last"))
        self.assertTrue(self.outbox.close())
        self.assertFalse(self.outbox.close(), "closed once")
        self.assertFalse(self.outbox.idle())
        self.assertRaises(Closed, self.outbox.put, envelope("late"))
        taken, open_ = self.outbox.take(100)
        self.assertEqual(taken, [envelope("last")])
        self.assertFalse(open_)

    def test_idle_only_while_empty_and_open(self):
        self.assertTrue(self.outbox.idle())
        self.outbox.put(envelope("0"))
        self.assertFalse(self.outbox.idle())
        self.outbox.take(100)
        self.assertTrue(self.outbox.idle())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SharedDealerTests(SynchronousTestCase):
    """A dealer connected over TCP to a router (the controller's side), no I/O thread: the test
    plays it, holding the lock where the thread would."""

    LONE = 100e-6

    def setUp(self):
        self.context = zmq.Context()
        self.addCleanup(self.context.term)
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.addCleanup(self.router.close, 0)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        self.clock = Clock()
        self.line = SharedDealer(dealer, 1 << 20, self.clock, self.LONE)
        self.addCleanup(self.line.release)
        self.addCleanup(lambda: dealer.closed or dealer.close(0))
        # A round trip first: the connection is up and its commands (and edges) are taken.
        self.line.send(envelope("hello"))
        self.identity, _, _ = self.received()
        self.router.send_multipart([self.identity, b"welcome"])
        self.assertTrue(dealer.poll(BOUND * 1000))
        dealer.recv()
        readable(dealer)
        self.line.wake.clear()
        self.clock.now += 1
        self.direct_before, self.puts_before = self.line.direct, self.line.outbox.puts

    def received(self) -> list:
        self.assertTrue(self.router.poll(BOUND * 1000), "a message for the controller")
        return self.router.recv_multipart()

    def nothing_received(self) -> bool:
        return not self.router.poll(0)

    def test_a_lone_request_is_sent_by_its_thread_without_waking_the_io_thread(self):
        self.line.send(envelope("lone"))
        self.assertEqual(self.received(), [self.identity, *envelope("lone")])
        self.assertEqual(self.line.direct - self.direct_before, 1)
        self.assertEqual(self.line.outbox.puts, self.puts_before, "nothing went to the outbox")
        self.assertFalse(self.line.wake.wait(0), "the I/O thread was not woken")

    def test_a_burst_after_the_lone_first_goes_as_one_batch_with_one_wake_up(self):
        self.line.send(envelope("first"))
        for i in range(4):
            self.clock.now += self.LONE / 10
            self.line.send(envelope(f"b{i}"))
        self.assertEqual(self.received(), [self.identity, *envelope("first")], "the first was lone")
        self.assertEqual(self.line.outbox.puts - self.puts_before, 4)
        self.assertTrue(self.nothing_received(), "the rest wait for the I/O thread")
        self.assertTrue(self.line.wake.wait(0))
        with self.line.lock:
            self.assertTrue(self.line.forward())
        frames = self.received()
        self.assertEqual(batch.unpack(frames[1:]), [envelope(f"b{i}") for i in range(4)], "one batch")

    def test_a_lone_request_waits_while_the_io_thread_is_awake(self):
        with self.line.lock:  # (the I/O thread, awake)
            self.line.send(envelope("queued"))
            self.assertTrue(self.line.wake.wait(0))
            self.assertTrue(self.line.forward())
        self.assertEqual(self.received(), [self.identity, *envelope("queued")])
        self.assertEqual(self.line.direct, self.direct_before)

    def test_a_lone_request_never_overtakes_one_that_waits(self):
        with self.line.lock:
            self.line.send(envelope("earlier"))
        self.clock.now += 1
        self.line.send(envelope("later"))  # lone, the lock free: but something waits
        self.assertTrue(self.nothing_received())
        with self.line.lock:
            self.line.forward()
        frames = self.received()
        self.assertEqual(batch.unpack(frames[1:]), [envelope("earlier"), envelope("later")])

    def test_a_direct_send_that_leaves_a_message_readable_sets_the_wake(self):
        """The edge-triggered trap: a result arrives, its edge is on the descriptor the I/O
        thread sleeps on, and the caller's send takes it."""
        fd = self.line.dealer.getsockopt(zmq.FD)
        self.router.send_multipart([self.identity, b"result"])
        self.assertTrue(select.select([fd], [], [], BOUND)[0], "the result's edge")
        self.line.send(envelope("lone"))
        self.assertEqual(self.line.direct - self.direct_before, 1)
        self.assertFalse(select.select([fd], [], [], 0.2)[0], "the premise: the send took the edge")
        events = dict(self.line.poller().poll(0))
        self.assertIn(self.line.wake.fileno(), events, "so the I/O thread is woken by the wake")
        self.assertTrue(readable(self.line.dealer))
        self.assertEqual(self.line.dealer.recv(), b"result", "and finds the result")

    def test_a_lone_send_with_nothing_readable_leaves_the_wake_alone(self):
        self.line.send(envelope("lone"))
        self.received()
        self.assertFalse(self.line.wake.wait(0))

    def test_sleep_releases_the_lock_and_clears_the_wake(self):
        poller = self.line.poller()
        held_while_sleeping = []

        def probe():
            held_while_sleeping.append(self.line.lock.locked())
            self.line.wake.set()

        with self.line.lock:
            timer = threading.Timer(0.01, probe)
            timer.start()
            self.addCleanup(timer.cancel)
            self.line.sleep(poller, BOUND * 1000)
            self.assertEqual(held_while_sleeping, [False])
            self.assertTrue(self.line.lock.locked(), "taken again on waking")
        self.assertFalse(self.line.wake.wait(0), "cleared")
        timer.join(BOUND)

    def test_after_the_close_requests_are_refused_and_the_shut_dealer_is_left_alone(self):
        self.line.outbox.close()
        self.assertRaises(Closed, self.line.send, envelope("late"))
        with self.line.lock:
            self.assertFalse(self.line.forward())
            self.line.shut()
        self.clock.now += 1
        self.assertRaises(Closed, self.line.send, envelope("later"))
        self.assertEqual(self.line.direct, self.direct_before)

    def test_a_shut_dealer_is_never_sent_on(self):
        """(The I/O thread died without a close: requests wait, as before.)"""
        with self.line.lock:
            self.line.shut()
        self.line.send(envelope("orphan"))
        self.assertEqual(self.line.direct, self.direct_before)
        self.assertEqual(self.line.outbox.puts - self.puts_before, 1)

    def test_many_threads_lose_nothing_and_keep_their_order(self):
        """Eight threads send at once, on the real clock, to an I/O thread that forwards."""
        line = SharedDealer(self.line.dealer, 1 << 20)  # (real clock and limit; same dealer)
        self.addCleanup(line.release)
        stop = threading.Event()

        def io_thread():
            poller = line.poller()
            with line.lock:
                while line.forward():
                    line.sleep(poller, 50)
            stop.set()

        io = threading.Thread(target=io_thread)
        io.start()
        self.addCleanup(io.join, BOUND)
        senders, each = 8, 300
        go = threading.Barrier(senders)

        def sender(n: int):
            go.wait(BOUND)
            for i in range(each):
                line.send(envelope(f"{n}:{i}"))

        workers = [threading.Thread(target=sender, args=(n,)) for n in range(senders)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(BOUND)
        line.outbox.close()
        self.assertTrue(stop.wait(BOUND), "the I/O thread forwarded all and stopped")
        got: dict = {n: [] for n in range(senders)}
        while len(sum(got.values(), [])) < senders * each:
            for env in batch.envelopes(self.received()[1:]):
                n, i = env[1].decode().split(":")
                got[int(n)].append(int(i))
        self.assertEqual(got, {n: list(range(each)) for n in range(senders)})
        self.assertTrue(self.nothing_received())
        self.assertEqual(line.direct + line.outbox.puts, senders * each)


def chain_step(x):
    return x + 1


class ManyThreadsOnACluster(unittest.TestCase):
    """A real client: threads submit chains (each task takes the one before as its input and
    runs after it), so a request that overtook the one before it would fail."""

    timeout = 300

    @defer.inlineCallbacks
    def test_many_submitting_threads_lose_nothing_and_keep_order(self):
        controller = yield start_controller(self)
        yield start_engines(self, controller, ["e0", "e1"])
        client = yield within(threads.deferToThread(Client, str(controller.config.connection_file), BOUND),
                              BOUND * 2, "a client")
        self.addCleanup(lambda: threads.deferToThread(client.close))
        senders, each = 6, 40

        def chains() -> list:
            results: list = [None] * senders
            go = threading.Barrier(senders)

            def sender(n: int):
                go.wait(BOUND)
                previous = client.submit(chain_step, 0)
                for _ in range(each - 1):
                    previous = client.submit(chain_step, previous, after=[previous])
                results[n] = previous.result(BOUND * 2)

            workers = [threading.Thread(target=sender, args=(n,)) for n in range(senders)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(BOUND * 3)
            return results

        results = yield within(threads.deferToThread(chains), BOUND * 4, "the chains")
        self.assertEqual(results, [each] * senders)
