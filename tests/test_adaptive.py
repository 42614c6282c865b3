"""The adaptive map (``client/adaptive.py``) on fake futures: chunk sizes, order, errors, pickling once."""
from __future__ import annotations

import pickle
from concurrent.futures import Future

import cloudpickle
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.client import adaptive


class Engine:
    """Runs chunks as an engine would (through pickle), at once or when told; records each chunk."""

    def __init__(self, seconds_per_item: float = 1e-6, finish: bool = True) -> None:
        self.seconds_per_item = seconds_per_item
        self.finish = finish
        self.chunks = []
        self.pending = []
        self.cancelled = []
        self.payloads = []

    def submit(self, call, args):
        payload = cloudpickle.dumps((call, args))
        self.payloads.append(payload)
        future = Future()
        future.set_running_or_notify_cancel()
        self.chunks.append(len(args[0]))
        self.pending.append((future, payload))
        if self.finish:
            self.run_next()
        return future

    def run_next(self):
        future, payload = self.pending.pop(0)
        call, args = pickle.loads(payload)
        try:
            _, values = call(*args)
        except Exception as e:
            future.set_exception(pickle.loads(cloudpickle.dumps(e)))
            return
        future.set_result((self.seconds_per_item * len(values), values))

    def cancel_soon(self, futures):
        self.cancelled.extend(futures)


def run(engine, fn, items, engines=2, timeout=None):
    return adaptive.adaptive_results(engine.submit, engine.cancel_soon, fn, (items,), timeout, engines)


def square(x):
    return x * x


class Chunks(SynchronousTestCase):
    def test_tiny_calls_go_in_few_tasks_in_order(self):
        engine = Engine(seconds_per_item=1e-6)
        self.assertEqual(list(run(engine, square, range(100_000))), [i * i for i in range(100_000)])
        self.assertEqual(sum(engine.chunks), 100_000)
        self.assertEqual(engine.chunks[:4], [1, 1, 1, 1], "small at first: one call per engine slot")
        self.assertLess(len(engine.chunks), 60)
        self.assertLessEqual(max(engine.chunks), 100_000 // 4, "never more than an even share of what is left")
        self.assertTrue(all(size <= adaptive.GROWTH * max(engine.chunks[:i]) for i, size in enumerate(engine.chunks) if i),
                        "each at most GROWTH times the largest before it")

    def test_long_calls_go_one_per_task(self):
        engine = Engine(seconds_per_item=1.0)
        self.assertEqual(list(run(engine, square, range(10))), [i * i for i in range(10)])
        self.assertEqual(engine.chunks, [1] * 10, "ten 1 s calls: ten tasks, every engine busy")

    def test_the_window_is_two_chunks_per_engine(self):
        engine = Engine(finish=False)
        results = run(engine, square, range(100), engines=3)
        self.assertEqual(engine.chunks, [1] * 6)
        engine.run_next()
        self.assertEqual(len(engine.chunks), 7, "one came back: one more goes")
        self.assertEqual(next(results), 0)

    def test_the_function_is_pickled_once_per_map(self):
        engine = Engine()
        list(run(engine, square, range(1000)))
        pickled_fn = cloudpickle.dumps(square)
        self.assertTrue(all(p.count(pickled_fn) == 1 for p in engine.payloads), "each chunk carries the same bytes")
        self.assertIn(pickled_fn, adaptive._functions, "the engine unpickled it once and keeps it")
        self.assertLessEqual(len(adaptive._functions), adaptive.KEEP_FUNCTIONS)

    def test_an_exception_comes_after_the_results_before_it(self):
        def inverse(x):
            return 1 / x

        engine = Engine(seconds_per_item=1e-6)
        results = run(engine, inverse, [1, 2, 4, 0, 5] + [1] * 50)
        seen = []
        with self.assertRaises(ZeroDivisionError):
            for value in results:
                seen.append(value)
        self.assertEqual(seen, [1.0, 0.5, 0.25])

    def test_stopping_early_cancels_what_is_pending(self):
        engine = Engine(finish=False)
        results = run(engine, square, range(10))
        engine.run_next()
        self.assertEqual(next(results), 0)
        results.close()
        self.assertEqual(len(engine.cancelled), 4, "the chunks in flight, not the one done")
        self.assertEqual(len(engine.chunks), 5, "and nothing more is submitted")

    def test_timeout(self):
        engine = Engine(finish=False)
        results = run(engine, square, range(3), timeout=0)
        self.assertRaises(TimeoutError, next, results)

    def test_empty(self):
        self.assertEqual(list(run(Engine(), square, [])), [])
