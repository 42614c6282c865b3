"""Integration: the Executor contract for TwistedClient, where Deferreds allow it."""
from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from ipcluster import errors
from tests.cluster import BOUND, connect_client, error_of, start_controller, start_engines, until, within
from tests.test_executor import echo_kwargs, gated, open_gate, square, started


class TwistedExecutor(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        self.controller = yield start_controller(self)
        yield start_engines(self, self.controller, ["e0", "e1"])
        self.client = yield connect_client(self, self.controller)
        self.gate = os.path.abspath(self.mktemp())
        os.makedirs(self.gate)

    def unfinished(self) -> int:
        return len(self.controller.scheduler.tasks)

    @defer.inlineCallbacks
    def occupy_both_engines(self):
        busy = [self.client.submit(gated, self.gate, f"busy{i}") for i in range(2)]
        yield until(lambda: all(d.running for d in busy), what="both engines busy")
        return busy

    @defer.inlineCallbacks
    def test_submit_takes_any_keyword_for_the_task(self):
        value = yield within(self.client.submit(echo_kwargs, self=1, fn=2), BOUND, "a task")
        self.assertEqual(value, ((), {"self": 1, "fn": 2}))
        d = self.client.options(engine="e1").submit(echo_kwargs, engine="mine", retries=5)
        self.assertEqual((yield within(d, BOUND, "a task")), ((), {"engine": "mine", "retries": 5}))
        self.assertEqual(d.engine, "e1")
        self.assertEqual((yield within(self.client.options(retries=0).map(square, [1, 2]), BOUND, "map")), [1, 4])

    @defer.inlineCallbacks
    def test_running_then_cancel_follows_the_controller(self):
        busy = yield self.occupy_both_engines()
        self.assertEqual({d.engine for d in busy}, {"e0", "e1"})
        queued = [self.client.submit(gated, self.gate, f"q{i}") for i in range(4)]
        answers = yield defer.gatherResults([self.client.cancel(d) for d in queued])
        self.assertEqual(answers, [True] * 4)
        for d in queued:
            self.assertIsInstance((yield error_of(d, "a cancelled task")), defer.CancelledError)
        self.assertFalse((yield self.client.cancel(busy[0])), "a running task is not cancelled")
        open_gate(self.gate)
        self.assertEqual((yield within(defer.gatherResults(busy), BOUND, "the busy tasks")), ["busy0", "busy1"])
        self.assertEqual(started(self.gate), {"busy0", "busy1"})

    @defer.inlineCallbacks
    def test_deferred_cancel_stops_waiting_and_cancels_on_the_cluster(self):
        busy = yield self.occupy_both_engines()
        failed = self.controller.scheduler.failed
        queued = self.client.submit(gated, self.gate, "queued")
        mapped = self.client.map(gated, [self.gate] * 3, ["m0", "m1", "m2"])
        queued.cancel()
        mapped.cancel()
        self.failureResultOf(queued, defer.CancelledError)
        self.failureResultOf(mapped, defer.CancelledError)
        # (d.cancel() cannot wait for the controller's answer: wait here, before a slot frees.)
        yield until(lambda: self.controller.scheduler.failed == failed + 4, what="the controller to cancel the four tasks")
        self.assertEqual(self.unfinished(), 2)
        open_gate(self.gate)
        yield within(defer.gatherResults(busy), BOUND, "the busy tasks")
        self.assertEqual(started(self.gate), {"busy0", "busy1"})

    @defer.inlineCallbacks
    def test_shutdown_waits_for_pending_tasks_then_closes(self):
        busy = yield self.occupy_both_engines()
        queued = self.client.submit(gated, self.gate, "queued")
        closed = self.client.shutdown()
        self.failureResultOf(self.client.submit(square, 2), RuntimeError)
        self.assertNoResult(closed)
        open_gate(self.gate)
        yield within(closed, BOUND, "shutdown")
        self.assertEqual([self.successResultOf(d) for d in busy + [queued]], ["busy0", "busy1", "queued"])
        with self.assertRaises(errors.NoController):
            yield self.client.engines()

    @defer.inlineCallbacks
    def test_shutdown_cancel_futures_cancels_the_unstarted(self):
        busy = yield self.occupy_both_engines()
        queued = [self.client.submit(gated, self.gate, f"q{i}") for i in range(3)]
        closed = self.client.shutdown(cancel_futures=True)
        for d in queued:
            self.assertIsInstance((yield error_of(d, "a cancelled task")), defer.CancelledError)
        open_gate(self.gate)
        yield within(closed, BOUND, "shutdown")
        self.assertEqual([self.successResultOf(d) for d in busy], ["busy0", "busy1"])
        self.assertEqual(started(self.gate), {"busy0", "busy1"})

    @defer.inlineCallbacks
    def test_shutdown_without_wait_fires_at_once(self):
        busy = yield self.occupy_both_engines()
        self.successResultOf(self.client.shutdown(wait=False))
        self.assertNoResult(busy[0])
        open_gate(self.gate)
        self.assertEqual((yield within(defer.gatherResults(busy), BOUND, "the busy tasks")), ["busy0", "busy1"])
        yield until(lambda: self.client._factory is None, what="the client to close itself")

    @defer.inlineCallbacks
    def test_close_gives_up_on_pending_tasks(self):
        busy = yield self.occupy_both_engines()
        self.client.close()
        for d in busy:
            self.assertIsInstance((yield error_of(d, "a task pending at close")), errors.NoController)
        self.failureResultOf(self.client.submit(square, 2), RuntimeError)
        open_gate(self.gate)
