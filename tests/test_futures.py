"""The client's Executor pieces without a cluster: TaskFuture, the callback thread, map's
iterator, the options view, and ClientCore's ``running`` message."""
from __future__ import annotations

import gc
import logging
import threading
import weakref
from concurrent.futures import ALL_COMPLETED, CancelledError, FIRST_COMPLETED, Future, as_completed, wait

from twisted.trial.unittest import SynchronousTestCase

from ipcluster import errors
from ipcluster.client.callbacks import CallbackThread
from ipcluster.client.core import ClientCore, OPTION_NAMES, take_options
from ipcluster.client.future import TaskFuture
from ipcluster.client.mapping import map_results
from ipcluster.client.options import TaskOptions

from tests.test_client_core import connected

KEY = b"k" * 32
BOUND = 10.0  # seconds; only reached if something is broken


class Result:
    """A TaskResult as the core makes it."""

    def __init__(self, ok=True, value=None, engine="e0"):
        self.task_id = "t"
        self.ok, self.value, self.engine = ok, value, engine
        self.stdout = self.stderr = ""
        self.started = self.finished = None


class FakeClient:
    """What a TaskFuture uses of its client: the callback thread, settling, cancelling."""

    def __init__(self, answer=True):
        self._callbacks = CallbackThread("test-callbacks")
        self.settled = []
        self.asked = []
        self.answer = answer

    def _settled(self, future):
        self.settled.append(future.task_id)

    def _cancel_tasks(self, futures):
        self.asked.extend(f.task_id for f in futures)
        if self.answer:
            for f in futures:  # as the controller does: the TaskCancelled result comes first
                f._deliver(Result(False, errors.TaskCancelled("cancelled")))
        return [self.answer] * len(futures)


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


class TaskFutureTests(SynchronousTestCase):
    def setUp(self):
        self.client = FakeClient()
        self.addCleanup(self.client._callbacks.stop, True)

    def future(self, task_id="t"):
        return TaskFuture(task_id, self.client)

    def test_pending_running_finished(self):
        f = self.future()
        self.assertFalse(f.running())
        f._started("e1")
        self.assertTrue(f.running())
        self.assertEqual(f.engine, "e1")
        f._started("e1")  # told twice: harmless
        f._deliver(Result(True, 42, engine="e1"))
        self.assertEqual(f.result(0), 42)
        self.assertFalse(f.running())
        self.assertEqual(self.client.settled, ["t"])

    def test_a_task_that_finishes_before_it_is_reported_started(self):
        f = self.future()
        f._deliver(Result(False, ValueError("no")))
        self.assertIsInstance(f.exception(0), ValueError)

    def test_cancel_follows_the_controller(self):
        f = self.future()
        self.assertTrue(f.cancel())
        self.assertTrue(f.cancelled() and f.done())
        self.assertRaises(CancelledError, f.result, 0)
        self.assertTrue(f.cancel(), "cancelled stays cancelled")
        self.client.answer = False
        g = self.future("g")
        self.assertFalse(g.cancel())
        self.assertFalse(g.done())
        self.assertEqual(self.client.asked, ["t", "g"])

    def test_running_or_done_answers_without_asking(self):
        running, done = self.future("r"), self.future("d")
        running._started("e0")
        done._deliver(Result(True, 1))
        self.assertFalse(running.cancel())
        self.assertFalse(done.cancel())
        self.assertEqual(self.client.asked, [])
        self.assertFalse(TaskFuture("x").cancel(), "no client: nothing to ask")

    def test_a_cancel_notifies_wait_and_as_completed(self):
        waiting, other = self.future("w"), self.future("o")
        result = []
        thread = threading.Thread(target=lambda: result.append(wait([waiting, other], BOUND, FIRST_COMPLETED)))
        thread.start()
        waiting._deliver(Result(False, errors.TaskCancelled("by the controller")))
        thread.join(BOUND)
        [(done, not_done)] = result
        self.assertEqual((done, not_done), ({waiting}, {other}))
        other._deliver(Result(True, 2))
        self.assertEqual(set(as_completed([waiting, other], BOUND)), {waiting, other})
        self.assertEqual(wait([waiting, other], 0, ALL_COMPLETED).not_done, set())

    def test_cancelled_after_it_ran_here_is_a_failure(self):
        f = self.future()
        f._started("e0")  # it started, its engine died, it was retried and then cancelled
        f._deliver(Result(False, errors.TaskCancelled("cancelled")))
        self.assertFalse(f.cancelled())
        self.assertIsInstance(f.exception(0), errors.TaskCancelled)

    def test_callbacks_run_on_the_callback_thread_in_order(self):
        f = self.future()
        seen = []
        done = threading.Event()
        for i in range(5):
            f.add_done_callback(lambda fut, i=i: seen.append((i, threading.current_thread().name)))
        f.add_done_callback(lambda fut: done.set())
        f._deliver(Result(True, 1))
        self.assertTrue(done.wait(BOUND))
        self.assertEqual(seen, [(i, "test-callbacks") for i in range(5)])
        # Added once they have run: called at once, here (as Future documents).
        f.add_done_callback(lambda fut: seen.append(("late", threading.current_thread().name)))
        self.assertEqual(seen[-1], ("late", threading.current_thread().name))

    def test_a_future_without_callbacks_does_not_wake_the_callback_thread(self):
        f = self.future()
        f._deliver(Result(True, 1))
        self.assertEqual(self.client.settled, ["t"])
        self.assertIsNone(self.client._callbacks._thread, "never started: nothing was posted")
        seen = []
        f.add_done_callback(lambda fut: seen.append(threading.current_thread().name))
        self.assertEqual(seen, [threading.current_thread().name], "added once done: called at once, here")

    def test_a_raising_callback_is_logged_and_the_next_runs(self):
        records = Records()
        logger = logging.getLogger("ipcluster.client")
        logger.addHandler(records)
        self.addCleanup(logger.removeHandler, records)
        f = self.future()
        ran = threading.Event()
        f.add_done_callback(lambda fut: 1 / 0)
        f.add_done_callback(lambda fut: ran.set())
        f._deliver(Result(True, 1))
        self.assertTrue(ran.wait(BOUND))
        [record] = records.records
        self.assertEqual(record.exc_info[0], ZeroDivisionError)

    def test_a_callback_may_wait_for_another_future(self):
        """The I/O thread (here: this one) is never held by a callback."""
        first, second = self.future("1"), self.future("2")
        got = []
        first.add_done_callback(lambda fut: got.append(second.result(BOUND)))
        first._deliver(Result(True, 1))  # returns at once: the callback waits on its own thread
        second._deliver(Result(True, 2))
        self.client._callbacks.stop(wait=True)
        self.assertEqual(got, [2])


class CallbackThreadTests(SynchronousTestCase):
    def test_runs_in_order_then_inline_once_stopped(self):
        thread = CallbackThread("cb")
        seen = []
        for i in range(100):
            thread.post(seen.append, i)
        thread.stop(wait=True)
        self.assertEqual(seen, list(range(100)))
        thread.post(seen.append, "after")
        self.assertEqual(seen[-1], "after")

    def test_stop_from_a_callback_does_not_wait_for_itself(self):
        thread = CallbackThread("cb")
        done = threading.Event()

        def stop_here():
            self.assertTrue(thread.is_current())
            thread.stop(wait=True)
            done.set()

        thread.post(stop_here)
        self.assertTrue(done.wait(BOUND))
        thread.stop(wait=True)
        self.assertFalse(thread.is_current())


class Box:
    def __init__(self, value):
        self.value = value


class FakeSubmitter:
    """Futures for map_results: finished at once (or left pending), cancels recorded."""

    def __init__(self, finish=True, keep=True):
        self.finish = finish
        self.keep = keep  # keep the futures (the client lets go of a future once it is done)
        self.submitted = []
        self.cancelled = []

    def submit(self, fn, args):
        f = Future()
        f.set_running_or_notify_cancel()
        if self.keep:
            self.submitted.append(f)
        if self.finish:
            try:
                f.set_result(fn(*args))
            except Exception as e:
                f.set_exception(e)
        return f

    def cancel_soon(self, futures):
        self.cancelled.extend(futures)

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
        return map_results(self.submit, self.cancel_soon, fn, iterables, timeout, chunksize, buffersize)


class MapTests(SynchronousTestCase):
    def test_submits_everything_at_once_and_yields_in_order(self):
        s = FakeSubmitter()
        results = s.map(pow, range(10), [2] * 10)
        self.assertEqual(len(s.submitted), 10, "submitted when map is called")
        self.assertEqual(list(results), [i * i for i in range(10)])
        self.assertEqual(s.cancelled, [])

    def test_holds_no_result_it_has_yielded(self):
        for chunksize in (1, 3):
            s = FakeSubmitter(keep=False)
            results = s.map(Box, range(7), chunksize=chunksize)
            seen = []
            for box in results:
                seen.append(box.value)
                ref = weakref.ref(box)
                del box
                gc.collect()
                self.assertIsNone(ref(), f"chunksize {chunksize}: the iterator kept a yielded result")
            self.assertEqual(seen, list(range(7)))

    def test_chunksize_packs_calls_into_tasks(self):
        s = FakeSubmitter()
        self.assertEqual(list(s.map(pow, range(10), [2] * 10, chunksize=4)), [i * i for i in range(10)])
        self.assertEqual(len(s.submitted), 3)
        self.assertRaises(ValueError, s.map, pow, [1], chunksize=0)

    def test_buffersize_submits_lazily(self):
        s = FakeSubmitter()
        results = s.map(abs, range(100), buffersize=3)
        self.assertEqual(len(s.submitted), 3)
        self.assertEqual(next(results), 0)
        self.assertEqual(len(s.submitted), 4)
        self.assertEqual(list(results), list(range(1, 100)))
        self.assertRaises(ValueError, s.map, abs, [1], buffersize=0)

    def test_timeout_raises_and_cancels_the_rest(self):
        s = FakeSubmitter(finish=False)
        results = s.map(abs, range(5), timeout=0)
        self.assertRaises(TimeoutError, next, results)
        self.assertEqual(s.cancelled, s.submitted, "the timed-out task and every later one")

    def test_an_exception_stops_it_and_cancels_the_rest(self):
        s = FakeSubmitter(finish=False)
        results = s.map(abs, range(3))
        first, failed, later = s.submitted
        first.set_result(1)
        failed.set_exception(ZeroDivisionError())
        self.assertEqual(next(results), 1)
        self.assertRaises(ZeroDivisionError, next, results)
        self.assertEqual(s.cancelled, [later], "the pending one; not the one that failed")
        self.assertRaises(StopIteration, next, results)

    def test_closing_early_cancels_what_is_pending(self):
        s = FakeSubmitter(finish=False)
        results = s.map(abs, range(4))
        s.submitted[0].set_result(0)
        self.assertEqual(next(results), 0)
        results.close()
        self.assertEqual(s.cancelled, s.submitted[1:])


class OptionsTests(SynchronousTestCase):
    def test_take_options_leaves_the_task_its_other_keywords(self):
        kwargs = {"engine": "e0", "self": 1, "fn": 2, "timeout": 3}
        self.assertEqual(take_options(kwargs), {"engine": "e0", "timeout": 3})
        self.assertEqual(kwargs, {"self": 1, "fn": 2})
        self.assertEqual(set(OPTION_NAMES), {"engine", "engines", "after", "retries", "timeout", "after_failed"})

    def test_the_view_passes_every_keyword_to_the_task(self):
        calls = []

        class Client:
            def _submit(self, fn, args, kwargs, options):
                calls.append((fn, args, kwargs, options))

        view = TaskOptions(Client(), {"engine": "e0", "retries": 2})
        view.submit(abs, 1, engine="mine", timeout=9)
        view.options(retries=0).submit(abs)
        self.assertEqual(calls, [
            (abs, (1,), {"engine": "mine", "timeout": 9}, {"engine": "e0", "retries": 2}),
            (abs, (), {}, {"engine": "e0", "retries": 0}),
        ])
        self.assertRaises(ValueError, TaskOptions, Client(), {"retries": -1})
        self.assertRaises(TypeError, TaskOptions, Client(), {"nonsense": 1})
        self.assertIn("engine='e0'", repr(view))


class RunningMessageTests(SynchronousTestCase):
    def test_running_reaches_the_task_once(self):
        core = ClientCore(KEY)
        controller = connected(core)
        heard, results = [], []
        task_id, _ = core.submit(abs, (-1,), {}, {}, results.append, heard.append)
        running = controller.encode("running", {"task": task_id, "engine": "e1"})
        core.received(running)
        core.received(running)
        self.assertEqual(heard, ["e1"])
        core.received(controller.encode("running", {"task": "someone-elses"}))
        self.assertEqual(core.dropped, 0, "news of a task not waited for is not bad input")
