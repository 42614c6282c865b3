"""Issue 11, item 5: the API's edges -- reserved keywords, unknown engines, timeout messages,
``close()`` cancelling, remote tracebacks with source lines and exception class names."""
from __future__ import annotations

import concurrent.futures
import functools
import linecache
import pickle

import cloudpickle
from twisted.internet import defer, threads
from twisted.trial import unittest

from ipcluster import Client, errors
from ipcluster.client.core import _remote_exception
from ipcluster.engine.runner import describe, unpack
from ipcluster.sourcelines import MAX_SOURCE_CHARS, task_extras
from tests.cluster import BOUND, until, within
from tests.test_executor import ClusterCase, gated, open_gate, started


def takes_progress(x, progress=None):
    return (x, progress)


class TwoArgs(Exception):
    """Pickles, but cannot be rebuilt from its pickle (its args are one, __init__ wants two)."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_two_args():
    raise TwoArgs("left", "right")


def cell(filename: str, source: str, name: str):
    """A function as an IPython cell makes it: compiled from text under a made-up file name,
    its lines known to this process's linecache only."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


BOOM = "def boom(x):\n    y = x + 1\n    raise ValueError('boom %d' % y)  # the line to see\n"


class Sources(unittest.TestCase):
    def test_dynamic_code_travels_and_files_on_disk_do_not(self):
        boom = cell("<cell-sources-1>", BOOM, "boom")
        self.assertEqual(task_extras(boom), {"files": ["<cell-sources-1>"], "sources": {"<cell-sources-1>": BOOM.splitlines(True)}})
        self.assertEqual(task_extras(takes_progress), {}, "a file on disk: the engine reads it")
        self.assertEqual(task_extras(functools.partial(boom, 1)), task_extras(boom))
        self.assertEqual(task_extras(abs), {})

    def test_too_much_source_is_left_out(self):
        big = "def big():\n    return 1\n" + "#" * (MAX_SOURCE_CHARS + 10) + "\n"
        self.assertEqual(task_extras(cell("<cell-sources-big>", big, "big")), {})

    def test_the_engine_registers_them_and_its_traceback_shows_the_line(self):
        boom = cell("<cell-sources-2>", BOOM, "boom")
        payload = cloudpickle.dumps((boom, (1,), {}, task_extras(boom)))
        del linecache.cache["<cell-sources-2>"]  # as on an engine, which never saw the cell
        fn, args, kwargs = unpack(payload)
        try:
            fn(*args, **kwargs)
        except ValueError as e:
            tb = describe(e)["traceback"]
        self.assertIn("raise ValueError('boom %d' % y)  # the line to see", tb)
        self.assertEqual(unpack(cloudpickle.dumps((abs, (-1,), {})))[:2], (abs, (-1,)), "the old 3-tuple")

    def test_sources_never_replace_a_real_files_lines(self):
        linecache.getlines(__file__)
        real = linecache.cache[__file__]
        unpack(cloudpickle.dumps((abs, (), {}, {"files": [], "sources": {__file__: ["forged\n"]}})))
        self.assertEqual(linecache.cache[__file__], real)


class ExceptionNames(unittest.TestCase):
    def test_an_exception_that_cannot_be_rebuilt_is_named_after_its_class(self):
        e = TwoArgs("a", "b")
        error = describe(e)
        self.assertEqual((error["type"], error["module"]), ("TwoArgs", __name__))
        with self.assertRaises(TypeError):
            pickle.loads(cloudpickle.dumps(e))
        got = _remote_exception(error, cloudpickle.dumps(e))
        self.assertIsInstance(got, errors.RemoteError)
        self.assertEqual(type(got).__name__, "TwoArgs")
        self.assertEqual(type(got).__module__, f"ipcluster.errors.remote.{__name__}")
        self.assertEqual((got.ename, got.evalue, got.module), ("TwoArgs", "a/b", __name__))
        self.assertIs(type(_remote_exception(error, b"")), type(got), "one class per name")
        self.assertEqual(type(errors.remote_error("not a name!", "x")).__name__, "RemoteError")
        self.assertEqual(describe(ValueError("v")).get("module"), None, "builtins are not named twice")


class Edges(ClusterCase):
    @defer.inlineCallbacks
    def test_map_progress_is_maps_own_and_partial_passes_a_literal_one(self):
        c = self.client
        got = yield self.blocking(lambda: list(c.map(takes_progress, [1, 2], progress=True)))
        self.assertEqual(got, [(1, None), (2, None)])
        literal = functools.partial(takes_progress, progress="mine")
        got = yield self.blocking(lambda: list(c.map(literal, [3], progress=True)))
        self.assertEqual(got, [(3, "mine")])
        got = yield self.blocking(lambda: list(c.map(takes_progress, iter([4]), chunksize=2, progress=True)))
        self.assertEqual(got, [(4, None)], "an iterator of unknown length: a bar without a total")
        with self.assertRaises(TypeError) as caught:
            yield self.blocking(c.map, takes_progress, [1], bogus=2)
        self.assertIn("functools.partial", str(caught.exception))
        # submit has no progress option: the keyword is the task's.
        self.assertEqual((yield self.blocking(lambda: c.submit(takes_progress, 5, progress=1).result(BOUND))), (5, 1))

    @defer.inlineCallbacks
    def test_unknown_engines_are_refused_in_every_form(self):
        c = self.client
        for options in ({"engine": "nope"}, {"engines": ["e0", "nope"]}, {"engines": ["nope", "nada"]}):
            f = yield self.blocking(c.submit, abs, -1, **options)
            e = yield self.blocking(f.exception, BOUND)
            self.assertIsInstance(e, errors.UnknownEngine, options)
            self.assertIn("nope", str(e))
            self.assertNotIn("e0", str(e))
        f = yield self.blocking(c.options(engines=["e1", "typo"]).submit, abs, -1)
        self.assertIsInstance((yield self.blocking(f.exception, BOUND)), errors.UnknownEngine)

    @defer.inlineCallbacks
    def test_a_timeout_says_what_was_waited_for_and_where_the_task_is(self):
        busy = yield self.occupy_both_engines()
        queued = yield self.blocking(self.client.submit, gated, self.gate, "queued")
        with self.assertRaises(concurrent.futures.TimeoutError) as caught:
            yield self.blocking(busy[0].result, 0.05)
        self.assertEqual(
            str(caught.exception),
            f"task {busy[0].task_id} (gated) did not finish within 0.05 s: it is running on engine {busy[0].engine}",
        )
        with self.assertRaises(concurrent.futures.TimeoutError) as caught:
            yield self.blocking(queued.exception, 0.01)
        self.assertIn(f"task {queued.task_id} (gated) did not finish within 0.01 s: it is pending", str(caught.exception))
        open_gate(self.gate)

    @defer.inlineCallbacks
    def test_close_cancels_the_tasks_not_started_unless_told_not_to(self):
        busy = yield self.occupy_both_engines()
        queued = yield self.blocking(lambda: [self.client.submit(gated, self.gate, f"q{i}") for i in range(3)])
        yield self.blocking(self.client.close)
        self.assertEqual(self.unfinished(), 2, "only the running tasks are left")
        self.assertTrue(all(f.cancelled() for f in queued))
        other = yield self.blocking(Client, self.conn, BOUND)
        kept = yield self.blocking(lambda: [other.submit(gated, self.gate, f"k{i}") for i in range(2)])
        yield until(lambda: self.unfinished() == 4, what="the kept tasks to reach the controller")
        yield self.blocking(other.close, cancel=False)
        self.assertEqual(self.unfinished(), 4, "close(cancel=False) leaves them queued")
        self.assertFalse(any(f.cancelled() for f in kept))
        open_gate(self.gate)
        yield until(lambda: self.unfinished() == 0, what="the kept tasks to run for nobody")
        self.assertEqual(started(self.gate), {"busy0", "busy1", "k0", "k1"})
        del busy

    @defer.inlineCallbacks
    def test_a_with_block_left_by_an_exception_cancels_the_unstarted(self):
        client = yield self.blocking(Client, self.conn, BOUND)
        yield self.occupy_both_engines()  # (by the other client: this one's with block does not wait for them)
        queued: list = []

        def body():
            with client:
                queued.extend(client.submit(gated, self.gate, f"w{i}") for i in range(2))
                raise KeyError("leaving")

        left = threads.deferToThread(body)
        with self.assertRaises(KeyError):
            yield within(left, BOUND * 2, "the with block")
        self.assertTrue(all(f.cancelled() for f in queued))
        self.assertTrue(client._closed)
        self.assertEqual(self.unfinished(), 2, "cancelled on the controller too")
        open_gate(self.gate)
        yield until(lambda: self.unfinished() == 0, what="the running tasks to end")
        self.assertEqual(started(self.gate), {"busy0", "busy1"})

    @defer.inlineCallbacks
    def test_a_remote_traceback_shows_the_source_of_an_interactive_function(self):
        boom = cell("<ipython-input-7-edges>", BOOM, "boom")
        f = yield self.blocking(self.client.submit, boom, 41)
        e = yield self.blocking(f.exception, BOUND)
        self.assertIsInstance(e, ValueError)
        self.assertIn('File "<ipython-input-7-edges>", line 3, in boom', str(e.__cause__))
        self.assertIn("raise ValueError('boom %d' % y)  # the line to see", str(e.__cause__))

    @defer.inlineCallbacks
    def test_an_exception_class_the_client_cannot_rebuild_is_named(self):
        f = yield self.blocking(self.client.submit, raise_two_args)
        e = yield self.blocking(f.exception, BOUND)
        self.assertIsInstance(e, errors.RemoteError)
        self.assertEqual((type(e).__name__, e.module, e.evalue), ("TwoArgs", __name__, "left/right"))
        self.assertIn("raise TwoArgs", e.traceback)
