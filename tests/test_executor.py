"""Integration: ``Client`` keeps the ``concurrent.futures.Executor`` contract on a real cluster.

Each test drives a blocking ``Client`` on a thread (the controller runs in this
process, on the reactor) against two engines.  Tasks that must stay unfinished
wait on a *gate*: a file the test creates; every task that starts leaves a
marker file, so "it never ran" is something a test can check.
"""
from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import threading
from concurrent.futures import CancelledError

from twisted.internet import defer, threads
from twisted.trial import unittest

from ipcluster import Client, errors
from tests.cluster import BOUND, start_controller, start_engines, until, within


def gated(gate_dir: str, name, seconds: float = BOUND):
    """Leave a marker that this task started, then wait (bounded) for the gate to open."""
    import os
    import time

    open(os.path.join(gate_dir, f"started-{name}"), "w").close()
    deadline = time.monotonic() + seconds
    while not os.path.exists(os.path.join(gate_dir, "open")) and time.monotonic() < deadline:
        time.sleep(0.005)
    return name


def echo_kwargs(*args, **kwargs):
    return args, kwargs


def square(x):
    return x * x


def started(gate_dir: str) -> set:
    return {name[len("started-"):] for name in os.listdir(gate_dir) if name.startswith("started-")}


def open_gate(gate_dir: str) -> None:
    open(os.path.join(gate_dir, "open"), "w").close()


class ClusterCase(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        self.controller = yield start_controller(self)
        yield start_engines(self, self.controller, ["e0", "e1"])
        self.conn = str(self.controller.config.connection_file)
        self.gate = os.path.abspath(self.mktemp())
        os.makedirs(self.gate)
        self.client = yield self.blocking(Client, self.conn, BOUND)
        self.addCleanup(lambda: threads.deferToThread(self.client.close))

    def blocking(self, f, *args, **kwargs):
        """Run blocking client code on a thread, bounded."""
        return within(threads.deferToThread(f, *args, **kwargs), BOUND * 2, getattr(f, "__name__", "client code"))

    def occupy_both_engines(self):
        """Two gated tasks, running (the client heard they started)."""
        running = [self.client.submit(gated, self.gate, f"busy{i}") for i in range(2)]
        return until(lambda: all(f.running() for f in running), what="both engines busy").addCallback(lambda _: running)

    def unfinished(self) -> int:
        return len(self.controller.scheduler.tasks)


class Submit(ClusterCase):
    @defer.inlineCallbacks
    def test_fn_is_positional_only_and_every_other_keyword_reaches_the_task(self):
        c = self.client
        value = yield self.blocking(lambda: c.submit(echo_kwargs, 1, self=2, fn=3, kwargs=4).result(BOUND))
        self.assertEqual(value, ((1,), {"self": 2, "fn": 3, "kwargs": 4}))
        # submit's own names stay options ...
        pinned = yield self.blocking(lambda: c.submit(echo_kwargs, engine="e1", retries=0).result(BOUND))
        self.assertEqual(pinned, ((), {}))
        # ... and through options(...) every keyword is the task's.
        view = c.options(engine="e1", retries=0)
        f = yield self.blocking(view.submit, echo_kwargs, engine="v8", timeout=3, after_failed="x")
        self.assertEqual((yield self.blocking(f.result, BOUND)), ((), {"engine": "v8", "timeout": 3, "after_failed": "x"}))
        self.assertEqual(f.engine, "e1")
        self.assertEqual((yield self.blocking(lambda: list(view.map(square, range(4))))), [0, 1, 4, 9])

    @defer.inlineCallbacks
    def test_submit_and_map_after_shutdown_raise_runtime_error(self):
        yield self.blocking(self.client.shutdown)
        with self.assertRaises(RuntimeError):
            yield self.blocking(self.client.submit, abs, -1)
        with self.assertRaises(RuntimeError):
            yield self.blocking(self.client.map, abs, [1])
        other = yield self.blocking(Client, self.conn, BOUND)
        yield self.blocking(other.close)
        with self.assertRaises(RuntimeError):
            yield self.blocking(other.submit, abs, -1)

    @defer.inlineCallbacks
    def test_running_once_the_engine_started_it(self):
        busy = yield self.occupy_both_engines()
        self.assertEqual({f.engine for f in busy}, {"e0", "e1"})
        self.assertFalse(any(f.done() for f in busy))
        open_gate(self.gate)
        values = yield self.blocking(lambda: [f.result(BOUND) for f in busy])
        self.assertEqual(values, ["busy0", "busy1"])
        self.assertFalse(any(f.running() for f in busy))


class Cancel(ClusterCase):
    @defer.inlineCallbacks
    def test_cancel_is_true_exactly_when_the_task_never_runs(self):
        busy = yield self.occupy_both_engines()
        self.assertFalse((yield self.blocking(busy[0].cancel)), "a running task is not cancelled")

        def submit_then_cancel(rounds):
            # Straight after submit, with every engine busy: prefetched (on an engine) and ready
            # tasks alike.  The issue saw False in 1-3 of 10 tries, and those tasks then ran.
            futures, answers = [], []
            for i in range(rounds):
                f = self.client.submit(gated, self.gate, f"q{i}")
                futures.append(f)
                answers.append(f.cancel())
            return futures, answers

        futures, answers = yield self.blocking(submit_then_cancel, 12)
        self.assertEqual(answers, [True] * 12)
        self.assertTrue(all(f.cancelled() and f.done() and not f.running() for f in futures))
        with self.assertRaises(CancelledError):
            futures[0].result(0)
        # wait() and as_completed() hear of cancelled futures.
        done, not_done = concurrent.futures.wait(futures + busy, 0)
        self.assertEqual((done, not_done), (set(futures), set(busy)))
        self.assertEqual(set(concurrent.futures.as_completed(futures, BOUND)), set(futures))
        yield until(lambda: self.unfinished() == 2, what="only the two busy tasks left on the controller")
        open_gate(self.gate)
        yield self.blocking(lambda: [f.result(BOUND) for f in busy])
        yield self.blocking(self.client.shutdown)
        self.assertEqual(started(self.gate), {"busy0", "busy1"}, "no cancelled task ran")

    @defer.inlineCallbacks
    def test_cancel_after_done(self):
        f = yield self.blocking(self.client.submit, abs, -3)
        self.assertEqual((yield self.blocking(f.result, BOUND)), 3)
        self.assertFalse(f.cancel())
        self.assertFalse(f.cancelled())


class Shutdown(ClusterCase):
    @defer.inlineCallbacks
    def test_wait_true_waits_for_the_pending_futures(self):
        busy = yield self.occupy_both_engines()
        queued = [self.client.submit(gated, self.gate, f"q{i}") for i in range(4)]
        shut = self.blocking(self.client.shutdown, wait=True)
        yield until(lambda: self.client._shutdown, what="shutdown to begin")
        self.assertFalse(shut.called, "shutdown(wait=True) returned with tasks pending")
        open_gate(self.gate)
        yield shut
        self.assertEqual([f.result(0) for f in busy + queued], ["busy0", "busy1", "q0", "q1", "q2", "q3"])
        self.assertTrue(self.client._closed)

    @defer.inlineCallbacks
    def test_cancel_futures_cancels_the_unstarted_ones_on_the_cluster(self):
        busy = yield self.occupy_both_engines()
        queued = [self.client.submit(gated, self.gate, f"q{i}") for i in range(4)]
        yield self.blocking(self.client.shutdown, wait=False, cancel_futures=True)
        self.assertTrue(all(f.cancelled() for f in queued))
        self.assertEqual(self.unfinished(), 2, "cancelled on the controller too")
        open_gate(self.gate)
        self.assertEqual((yield self.blocking(lambda: [f.result(BOUND) for f in busy])), ["busy0", "busy1"])
        self.assertEqual(started(self.gate), {"busy0", "busy1"})

    @defer.inlineCallbacks
    def test_wait_false_returns_at_once_and_the_futures_still_complete(self):
        busy = yield self.occupy_both_engines()
        yield self.blocking(self.client.shutdown, wait=False)
        self.assertFalse(any(f.done() for f in busy), "returned while the gate was shut")
        io_thread = self.client._thread
        self.assertTrue(io_thread.is_alive(), "the I/O thread stays for the pending futures")
        open_gate(self.gate)
        self.assertEqual((yield self.blocking(lambda: [f.result(BOUND) for f in busy])), ["busy0", "busy1"])
        yield self.blocking(io_thread.join, BOUND)
        self.assertFalse(io_thread.is_alive(), "and ends once they are done")
        yield until(lambda: self.client._closed, what="the client to close itself")

    @defer.inlineCallbacks
    def test_wait_true_ends_when_the_controller_is_gone(self):
        """Pending futures fail once the controller has been silent for controller_timeout: shutdown
        does not wait for ever."""
        client = yield self.blocking(Client, self.conn, BOUND, 2.0)
        self.addCleanup(lambda: threads.deferToThread(client.close))
        pending = client.submit(gated, self.gate, "orphan")
        yield until(lambda: self.unfinished() == 1, what="the task to reach the controller")
        yield self.controller.stopService()
        yield self.blocking(client.shutdown, wait=True)
        self.assertIsInstance(pending.exception(0), errors.NoController)
        self.assertTrue(client._closed)

    @defer.inlineCallbacks
    def test_map_then_shutdown_without_iterating_runs_every_task(self):
        names = [f"m{i}" for i in range(10)]
        open_gate(self.gate)

        def map_and_leave():
            self.client.map(gated, [self.gate] * 10, names)  # never iterated
            self.client.shutdown()

        yield self.blocking(map_and_leave)
        self.assertEqual(started(self.gate), set(names))

    @defer.inlineCallbacks
    def test_context_manager_exit_is_shutdown_wait_true(self):
        def use():
            with Client(self.conn, BOUND) as c:
                futures = [c.submit(square, i) for i in range(6)]
                c.map(gated, [self.gate], ["from-map"])
                open_gate(self.gate)
            return c, futures

        c, futures = yield self.blocking(use)
        self.assertTrue(c._closed)
        self.assertEqual([f.result(0) for f in futures], [i * i for i in range(6)])
        self.assertIn("from-map", started(self.gate))


class Map(ClusterCase):
    @defer.inlineCallbacks
    def test_timeout_raises_and_cancels_the_tasks_not_started(self):
        names = [f"m{i}" for i in range(8)]

        def map_with_deadline():
            results = self.client.map(gated, [self.gate] * 8, names, timeout=1.0)
            try:
                next(results)
            except TimeoutError:
                return "timed out"
            return "no timeout"

        self.assertEqual((yield self.blocking(map_with_deadline)), "timed out")
        yield until(lambda: self.unfinished() <= 2, what="the unstarted tasks to be cancelled")
        open_gate(self.gate)
        yield until(lambda: self.unfinished() == 0, what="the started ones to finish")
        self.assertEqual(started(self.gate), {"m0", "m1"}, "only the two that had started ran")

    @defer.inlineCallbacks
    def test_chunksize_sends_fewer_tasks(self):
        before = self.controller.scheduler.completed
        values = yield self.blocking(lambda: list(self.client.map(square, range(25), chunksize=10)))
        self.assertEqual(values, [i * i for i in range(25)])
        self.assertEqual(self.controller.scheduler.completed - before, 3)

    @defer.inlineCallbacks
    def test_an_exception_is_raised_at_its_place(self):
        def run():
            got = []
            try:
                for value in self.client.map(divmod, [4, 1, 6], [2, 0, 3]):
                    got.append(value)
            except ZeroDivisionError:
                got.append("raised")
            return got

        self.assertEqual((yield self.blocking(run)), [(2, 0), "raised"])


class Callbacks(ClusterCase):
    @defer.inlineCallbacks
    def test_callbacks_run_off_the_io_thread_in_order_and_may_call_the_client(self):
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("ipcluster.client").addHandler(handler)
        self.addCleanup(logging.getLogger("ipcluster.client").removeHandler, handler)
        busy = yield self.occupy_both_engines()
        queued = self.client.submit(gated, self.gate, "queued")
        seen, done = [], threading.Event()
        client = self.client

        def first(f):
            seen.append(("first", threading.current_thread().name))
            seen.append(("cancel", queued.cancel()))  # a round trip to the controller, from a callback
            seen.append(("submit", client.submit(square, 7).result(BOUND)))

        def raising(f):
            raise ValueError("a callback's bug")

        def last(f):
            seen.append(("last", f.result()))
            done.set()

        for fn in (first, raising, last):
            busy[0].add_done_callback(fn)
        open_gate(self.gate)
        yield self.blocking(done.wait, BOUND)
        cancelled = seen[1][1]
        self.assertEqual(seen, [("first", "ipcluster-callbacks"), ("cancel", cancelled), ("submit", 49), ("last", "busy0")])
        [record] = [r for r in records if r.exc_info]
        self.assertIs(record.exc_info[0], ValueError)
        # The queued task had started on the engine the gate freed, or was cancelled: cancel() told which.
        yield self.blocking(concurrent.futures.wait, [queued], BOUND)
        self.assertEqual(queued.cancelled(), cancelled)
        self.assertEqual("queued" in started(self.gate), not cancelled)


# -- ordinary concurrent.futures code, run unchanged on a ProcessPoolExecutor and on a Client --


def workload(executor) -> dict:
    """Code written for ProcessPoolExecutor: submit, map, as_completed, wait, callbacks, shutdown."""
    out = {}
    futures = {executor.submit(pow, 2, i): i for i in range(8)}
    out["as_completed"] = sorted((futures[f], f.result()) for f in concurrent.futures.as_completed(futures))
    out["map"] = list(executor.map(square, range(10)))
    out["map_chunked"] = list(executor.map(divmod, range(20), [3] * 20, chunksize=4))
    done, not_done = concurrent.futures.wait([executor.submit(square, 12)], timeout=60)
    out["wait"] = ([f.result() for f in done], len(not_done))
    failing = executor.submit(divmod, 1, 0)
    out["exception"] = type(failing.exception()).__name__
    called = []
    f = executor.submit(square, 3)
    f.add_done_callback(lambda fut: called.append(fut.result()))
    executor.shutdown(wait=True)
    out["callback"] = called
    try:
        executor.submit(square, 1)
    except RuntimeError:
        out["after_shutdown"] = "RuntimeError"
    return out


class Unchanged(ClusterCase):
    @defer.inlineCallbacks
    def test_process_pool_code_runs_unchanged_on_a_client(self):
        def with_pool():
            pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
            return workload(pool)

        expected = yield self.blocking(with_pool)
        got = yield self.blocking(workload, self.client)
        self.assertEqual(got, expected)
        self.assertEqual(expected["after_shutdown"], "RuntimeError")
