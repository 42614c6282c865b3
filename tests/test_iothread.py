"""The blocking client's outbox (client/iothread.py): envelopes in order, one wake-up a burst,
a turn's limit, the close."""
from __future__ import annotations

import uuid

import zmq
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.client.iothread import Closed, Outbox, forward_waiting
from ipcluster.transport import batch


class OutboxTests(SynchronousTestCase):
    def setUp(self):
        self.context = zmq.Context()
        self.addCleanup(self.context.term)
        address = f"inproc://outbox-test-{uuid.uuid4().hex}"
        wake = self.context.socket(zmq.PAIR)
        wake.bind(address)
        self.pipe = self.context.socket(zmq.PAIR)
        self.pipe.connect(address)
        self.addCleanup(self.pipe.close, 0)
        self.outbox = Outbox(wake)
        self.addCleanup(self.outbox.release)

    def wake_ups(self) -> int:
        """The wake-ups waiting on the I/O thread's end of the pipe (not taken)."""
        return self.pipe.poll(0)

    def test_a_burst_is_one_wake_up_and_comes_in_order(self):
        self.assertFalse(self.wake_ups())
        for i in range(5):
            self.outbox.put([b"sig", str(i).encode()])
        self.assertEqual(self.pipe.recv(), b"")
        self.assertFalse(self.wake_ups(), "one wake-up for the five")
        taken, open_ = self.outbox.take(self.pipe, 100)
        self.assertTrue(open_)
        self.assertEqual([frames[1] for frames in taken], [b"0", b"1", b"2", b"3", b"4"])
        self.outbox.put([b"sig", b"5"])
        self.assertTrue(self.wake_ups(), "empty again: the next put wakes the thread again")

    def test_more_than_a_turn_wakes_the_thread_again(self):
        for i in range(5):
            self.outbox.put([b"sig", str(i).encode()])
        first, _ = self.outbox.take(self.pipe, 3)
        self.assertEqual(len(first), 3)
        self.assertTrue(self.wake_ups(), "what is left wakes the I/O thread at its next poll")
        rest, open_ = self.outbox.take(self.pipe, 3)
        self.assertEqual([frames[1] for frames in rest], [b"3", b"4"])
        self.assertTrue(open_)
        self.assertFalse(self.wake_ups())

    def test_close_sends_what_came_before_then_refuses(self):
        self.outbox.put([b"sig", b"last"])
        self.assertTrue(self.outbox.close())
        self.assertFalse(self.outbox.close(), "closed once")
        self.assertRaises(Closed, self.outbox.put, [b"sig", b"late"])
        taken, open_ = self.outbox.take(self.pipe, 100)
        self.assertEqual(taken, [[b"sig", b"last"]])
        self.assertFalse(open_)

    def test_forward_waiting_batches_what_waits(self):
        dealer, router = self.context.socket(zmq.PAIR), self.context.socket(zmq.PAIR)
        address = f"inproc://outbox-dealer-{uuid.uuid4().hex}"
        router.bind(address)
        dealer.connect(address)
        self.addCleanup(dealer.close, 0)
        self.addCleanup(router.close, 0)
        envelopes = [[b"s" * 32, f"header {i}".encode()] for i in range(3)]
        for envelope in envelopes:
            self.outbox.put(envelope)
        self.assertTrue(forward_waiting(self.outbox, self.pipe, dealer, 1 << 20))
        self.assertEqual(batch.unpack(router.recv_multipart()), envelopes)
        self.outbox.put(envelopes[0])
        self.outbox.close()
        self.assertFalse(forward_waiting(self.outbox, self.pipe, dealer, 1 << 20))
        self.assertEqual(router.recv_multipart(), envelopes[0], "a lone envelope goes as it is")
