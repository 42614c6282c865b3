"""Integration: batching keeps order and delivers every result exactly once when an engine dies.

A blocking Client submits bursts of tasks (its I/O thread packs what waits into
batches; the test checks that the controller received batches), while both
engines are held by gated tasks; then engine e0 is SIGKILLed with a task
running and one prefetched, and the gate opens.  Every future must get one
result (the right value, no duplicate reaching the client), the killed task
is retried, and the tasks pinned to e1 finish in the order they were
submitted.
"""
from __future__ import annotations

import os
import signal
import threading

from twisted.internet import defer, threads
from twisted.trial import unittest

from ipcluster import Client
from tests.cluster import BOUND, start_controller, start_engines, until, within
from tests.test_executor import gated, open_gate, square

BURST = 100
MAX_BURSTS = 20


class BatchingUnderEngineDeath(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        self.controller = yield start_controller(self)
        self.engines = yield start_engines(self, self.controller, ["e0", "e1"])
        self.gate = os.path.abspath(self.mktemp())
        os.makedirs(self.gate)
        self.client = yield self.blocking(Client, str(self.controller.config.connection_file), BOUND)
        self.addCleanup(lambda: threads.deferToThread(self.client.close))

    def blocking(self, f, *args):
        return within(threads.deferToThread(f, *args), BOUND * 2, getattr(f, "__name__", "client code"))

    @defer.inlineCallbacks
    def test_order_and_exactly_once(self):
        c = self.client
        busy = [c.submit(gated, self.gate, f"busy{i}") for i in range(2)]
        yield until(lambda: all(f.running() for f in busy), what="both engines busy")
        finished_in_order = []
        order_lock = threading.Lock()

        def note(future):
            with order_lock:
                finished_in_order.append(future)

        unbatch = self.controller.sockets.unbatchers["client"]

        def bursts():
            futures, pinned = [], []
            n = 0
            for _ in range(MAX_BURSTS):
                for _ in range(BURST):
                    if n % 3 == 0:
                        f = c.options(engine="e1").submit(square, n)
                        pinned.append(f)
                    else:
                        f = c.submit(square, n)
                    f.add_done_callback(note)
                    futures.append((n, f))
                    n += 1
                if unbatch.batches and len(futures) >= 3 * BURST:
                    break
            return futures, pinned

        futures, pinned = yield self.blocking(bursts)
        yield until(lambda: len(self.controller.scheduler.tasks) == len(futures) + 2,
                    what="every submit reached the controller")
        self.assertGreater(unbatch.batches, 0, "the client's submits arrived in batches")
        self.assertGreater(unbatch.envelopes, unbatch.batches)

        victim = [f for f in busy if f.engine == "e0"][0]
        self.engines["e0"].transport.signalProcess(signal.SIGKILL)
        yield until(lambda: self.controller.scheduler.retried >= 1, what="the killed engine's task retried")
        open_gate(self.gate)

        values = yield self.blocking(lambda: [f.result(BOUND) for _, f in futures])
        self.assertEqual(values, [n * n for n, _ in futures], "every task, its own value")
        self.assertEqual((yield self.blocking(victim.result, BOUND)), victim_name(busy, victim))
        yield until(lambda: len(finished_in_order) == len(futures), what="every done-callback")
        self.assertEqual(len(set(map(id, finished_in_order))), len(futures), "each future finished once")
        self.assertEqual(c._core.dropped, 0, "no result reached the client twice (nor one it did not wait for)")
        self.assertEqual(c._core.refused, 0)
        pinned_ids = set(map(id, pinned))
        pinned_order = [f for f in finished_in_order if id(f) in pinned_ids]
        self.assertEqual(pinned_order, pinned, "tasks pinned to one engine finish in the order submitted")
        self.assertTrue(all(f.engine == "e1" for f in pinned))
        scheduler = self.controller.scheduler
        self.assertEqual(scheduler.failed, 0)
        self.assertEqual(scheduler.completed, len(futures) + 2)


def victim_name(busy, victim) -> str:
    return f"busy{busy.index(victim)}"
