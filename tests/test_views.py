"""Issue 11, item 1: engine views on a real cluster (two engines), and their parts alone."""
from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ipcluster import errors
from ipcluster.client.views import EngineView, ViewError, ViewResult, join, split
from ipcluster.engine import namespace, viewcalls
from tests.cluster import BOUND, until
from tests.test_executor import ClusterCase, gated, open_gate


def whoami(prefix, suffix=""):
    from ipcluster.engine import namespace

    return f"{prefix}{namespace.get('me', '?')}{suffix}"


class Parts(unittest.TestCase):
    def test_split_and_join(self):
        self.assertEqual(split(list(range(5)), 2), [[0, 1, 2], [3, 4]])
        self.assertEqual(split(list(range(2)), 3), [[0], [1], []])
        self.assertEqual(join(split(list(range(7)), 3)), list(range(7)))
        self.assertEqual(join(split(tuple(range(4)), 3)), (0, 1, 2, 3))
        self.assertEqual(join(split(range(6), 4)), list(range(6)))
        self.assertEqual(join(["ab", "c"]), ["ab", "c"], "unknown kinds: the list of parts")
        with self.assertRaises(ValueError):
            split([1], 0)

    def test_engine_side_calls(self):
        namespace.clear()
        self.addCleanup(namespace.clear)
        viewcalls.push({"a": 2})
        self.assertIsNone(viewcalls.execute("b = a * 21"))
        self.assertEqual(viewcalls.execute("c = b\nc + 1"), 43, "the last line's value")
        self.assertEqual(viewcalls.pull("b"), 42)
        self.assertEqual(viewcalls.pull(["a", "b"]), [2, 42])
        with self.assertRaises(NameError) as caught:
            viewcalls.pull(["a", "nope"])
        self.assertIn("'nope'", str(caught.exception))
        try:
            viewcalls.execute("x = 1\n1 / 0  # line two", "<px-test>")
        except ZeroDivisionError as e:
            import traceback

            self.assertIn("1 / 0  # line two", "".join(traceback.format_exception(e)))

    def test_an_empty_view_result_is_done(self):
        self.assertEqual(ViewResult("apply(f)", {}).result(0), {})


class Views(ClusterCase):
    @defer.inlineCallbacks
    def test_push_execute_pull_apply_on_every_engine(self):
        c = self.client
        dview = yield self.blocking(lambda: c[:])
        self.assertEqual(dview.targets, ["e0", "e1"])
        yield self.blocking(lambda: [c[e].push({"me": e}) for e in ("e0", "e1")])
        got = yield self.blocking(dview.execute, "squared = [i * i for i in range(3)]\nprint('hi from', me)\nme")
        self.assertEqual(got, {"e0": "e0", "e1": "e1"})
        self.assertEqual((yield self.blocking(dview.pull, "squared")), {"e0": [0, 1, 4], "e1": [0, 1, 4]})
        self.assertEqual((yield self.blocking(dview.pull, ["me", "squared"]))["e1"], ["e1", [0, 1, 4]])
        self.assertEqual((yield self.blocking(dview.apply, whoami, "<", suffix=">")), {"e0": "<e0>", "e1": "<e1>"})
        pids = yield self.blocking(dview.apply, os.getpid)
        self.assertEqual(len(set(pids.values())), 2)
        later = yield self.blocking(dview.execute_async, "print('out', me)")
        self.assertIsInstance(later, ViewResult)
        self.assertEqual((yield self.blocking(later.result, BOUND)), {"e0": None, "e1": None})
        self.assertEqual(later.stdout, {"e0": "out e0\n", "e1": "out e1\n"})

    @defer.inlineCallbacks
    def test_scatter_gather_broadcast(self):
        c = self.client
        dview = yield self.blocking(c.view)
        yield self.blocking(dview.scatter, "part", list(range(11)))
        parts = yield self.blocking(dview.pull, "part")
        self.assertEqual(parts, {"e0": list(range(6)), "e1": list(range(6, 11))})
        self.assertEqual((yield self.blocking(dview.gather, "part")), list(range(11)))

        def triple(x):
            return 3 * x

        yield self.blocking(dview.broadcast, triple)
        got = yield self.blocking(dview.execute, "[triple(x) for x in part]")
        self.assertEqual(got, {"e0": [0, 3, 6, 9, 12, 15], "e1": [18, 21, 24, 27, 30]})
        async_view = yield self.blocking(c.view, ["e1"], block=False)
        r = yield self.blocking(async_view.gather, "part")
        self.assertEqual((yield self.blocking(r.result, BOUND)), list(range(6, 11)))

    @defer.inlineCallbacks
    def test_unknown_or_dead_engines_are_refused(self):
        c = self.client
        for key in (("e0", "nope"), "nope", ["nope"]):
            with self.assertRaises(errors.UnknownEngine) as caught:
                yield self.blocking(lambda: c[key])
            self.assertIn("'nope'", str(caught.exception))
            self.assertIn("known: e0, e1", str(caught.exception))
        yield self.blocking(c.exit, "e1")
        with self.assertRaises(errors.UnknownEngine):  # it left: its record is gone
            yield self.blocking(c.view, ["e0", "e1"])
        e0 = self.controller.registry.get("e0")
        self.controller.registry.mark_dead(e0, "heart silent (the test says)", reactor.seconds())
        with self.assertRaises(errors.EngineDead) as caught:
            yield self.blocking(c.view, ["e0"])
        self.assertIn("engine e0 is dead", str(caught.exception))
        with self.assertRaises(errors.NoEngines):
            yield self.blocking(lambda: c[:])

    @defer.inlineCallbacks
    def test_positions_pick_among_the_live_engines(self):
        c = self.client
        yield self.blocking(c.exit, "e1")
        self.assertEqual((yield self.blocking(lambda: c[:].targets)), ["e0"])
        self.assertEqual((yield self.blocking(lambda: c[0].targets)), ["e0"])

    @defer.inlineCallbacks
    def test_a_failure_on_one_engine_names_it(self):
        c = self.client
        yield self.blocking(lambda: c["e0"].push({"x": 1}))
        with self.assertRaises(ViewError) as caught:
            yield self.blocking(lambda: c[:].execute("x"))
        e = caught.exception
        self.assertEqual(list(e.errors), ["e1"])
        self.assertIsInstance(e.errors["e1"], NameError)
        self.assertIs(e.__cause__, e.errors["e1"])
        self.assertIn("e1: NameError", str(e))

    @defer.inlineCallbacks
    def test_a_view_call_waits_behind_its_engines_running_task_and_reset_clears(self):
        c = self.client
        busy = yield self.blocking(c.submit, gated, self.gate, "busy", engine="e0")
        pending = yield self.blocking(lambda: c["e0"].push_async({"y": 5}))
        yield self.blocking(lambda: self.assertRaises(Exception, pending.result, 0.2))
        open_gate(self.gate)
        yield self.blocking(pending.result, BOUND)
        yield self.blocking(busy.result, BOUND)
        self.assertEqual((yield self.blocking(lambda: c["e0"].pull("y"))), {"e0": 5})
        yield self.blocking(c.reset, "e0")
        with self.assertRaises(ViewError):
            yield self.blocking(lambda: c["e0"].pull("y"))

    @defer.inlineCallbacks
    def test_an_engine_that_dies_during_a_call_fails_only_its_part(self):
        c = self.client
        call = yield self.blocking(lambda: c[:].apply_async(gated, self.gate, "view"))
        yield until(lambda: all(f.running() for f in call.futures.values()), what="the call to start on both")
        yield self.blocking(c.exit, "e1", 0.0)  # no grace: its running part is interrupted
        open_gate(self.gate)
        with self.assertRaises(ViewError) as caught:
            yield self.blocking(call.result, BOUND)
        self.assertEqual(list(caught.exception.errors), ["e1"])
        self.assertIsInstance(caught.exception.errors["e1"], (errors.EngineDied, errors.TaskInterrupted))
        self.assertEqual(call.futures["e0"].result(0), "view", "not run again elsewhere (retries=0)")

    def test_a_view_of_the_client(self):
        view = EngineView(object(), ["e1", "e0"])
        self.assertEqual((len(view), list(view)), (2, ["e1", "e0"]))
