"""Issue 11, item 2: a TaskFuture among a task's arguments is its result on the engine."""
from __future__ import annotations

import pickle

import cloudpickle
import msgpack
from twisted.internet import defer
from twisted.trial import unittest

from ipcluster import errors, futureinputs
from ipcluster.client.future import TaskFuture
from ipcluster.engine.runner import unpack
from ipcluster.scheduler.inputs import check_inputs
from tests.cluster import BOUND
from tests.test_executor import ClusterCase, gated, open_gate
from tests.test_scheduler import Fixture


class Box:
    def __init__(self, inside):
        self.inside = inside


def add(a, b=0):
    return a + b


def total(xs):
    return sum(xs["values"]) + xs["pair"][0]


def unbox(box):
    return box.inside * 2


def fail():
    raise ValueError("the cause")


class Placeholders(unittest.TestCase):
    def test_a_future_pickles_as_its_result_only_in_a_task(self):
        f = TaskFuture("a" * 32)
        with self.assertRaises(TypeError) as caught:
            pickle.dumps(f)
        self.assertIn("only in the arguments of a task", str(caught.exception))
        with futureinputs.collecting() as found:
            payload = cloudpickle.dumps((add, ([f, {"k": (f,)}],), {"b": Box(f)}))
            with futureinputs.collecting() as inner:
                pass
        self.assertEqual(found, [f], "once, wherever it appears")
        self.assertIs(inner, found, "nested collecting shares the list")
        frames = msgpack.packb({f.task_id: cloudpickle.dumps(41)}, use_bin_type=True)
        fn, args, kwargs = unpack(payload, frames)
        self.assertEqual(args, ([41, {"k": (41,)}],))
        self.assertEqual(kwargs["b"].inside, 41)
        with self.assertRaises(futureinputs.MissingInput):
            unpack(payload, None)

    def test_inputs_are_checked(self):
        self.assertEqual(check_inputs(None), [])
        self.assertEqual(check_inputs(["a", "b", "a"]), ["a", "b"])
        for bad in ("a", [1], ["x"] * 1001, [""]):
            self.assertRaises(errors.BadRequest, check_inputs, bad if bad != ["x"] * 1001 else [f"t{i}" for i in range(1001)])


class Forwarding(Fixture):
    def test_the_inputs_result_goes_to_the_engine_with_the_task(self):
        self.engine("e1")
        self.submit("a")
        self.submit("b", inputs=["a"])
        self.assertEqual(self.sent("e1"), ["a"])
        self.result("e1", "a", payloads=(b"value-of-a", b"", b""))
        sent = [m for to, m in self.to_engines if to == "e1" and m["task"] == "b"]
        self.assertEqual(len(sent), 1)
        self.assertEqual(sent[0].type, "task_in")
        self.assertEqual(sent[0]["inputs"], ["a"])
        self.assertEqual(msgpack.unpackb(sent[0].payloads[1]), {"a": b"value-of-a"})
        self.assertEqual(self.scheduler.inputs.wanted, {})
        self.result("e1", "b")
        self.assertEqual(self.scheduler.tasks, {})

    def test_an_input_finished_before_comes_from_the_store(self):
        self.engine("e1")
        self.submit("a")
        self.result("e1", "a", payloads=(b"stored-a", b"", b""))
        self.submit("b", inputs=["a"])
        sent = [m for to, m in self.to_engines if m["task"] == "b"]
        self.assertEqual(msgpack.unpackb(sent[0].payloads[1]), {"a": b"stored-a"})

    def test_a_failed_input_fails_the_task_even_when_run_after_failed(self):
        self.engine("e1")
        self.submit("a")
        self.submit("b", inputs=["a"], after_failed="run")
        self.result("e1", "a", ok=False)
        self.assertIn("takes the result of a", self.error_of("b", "DependencyError"))

    def test_inputs_too_large_for_one_message_fail_the_task(self):
        self.engine("e1")
        self.scheduler.inputs.max_message_size = 100_000
        self.submit("a")
        self.submit("b", inputs=["a"])
        self.result("e1", "a", payloads=(b"x" * 60_000, b"", b""))
        self.assertIn("--max-message-size", self.error_of("b", "PayloadTooLarge"))
        self.assertEqual(self.sent("e1"), ["a"])


class Chains(ClusterCase):
    @defer.inlineCallbacks
    def test_futures_anywhere_in_the_arguments(self):
        c = self.client

        def chain():
            a = c.submit(add, 1, 2)
            b = c.submit(add, a, b=a)              # 6
            d = c.submit(total, {"values": [a, b], "pair": (b, "x")})   # 3 + 6 + 6
            e = c.submit(unbox, Box(d))            # 30
            return [f.result(BOUND) for f in (a, b, d, e)]

        self.assertEqual((yield self.blocking(chain)), [3, 6, 15, 30])

    @defer.inlineCallbacks
    def test_the_dependent_waits_and_a_failure_is_the_cause(self):
        c = self.client
        slow = yield self.blocking(c.submit, gated, self.gate, "slow")
        after = yield self.blocking(c.submit, add, slow, "!")
        self.assertFalse(after.done())
        open_gate(self.gate)
        self.assertEqual((yield self.blocking(after.result, BOUND)), "slow!")
        bad = yield self.blocking(c.submit, fail)
        dependent = yield self.blocking(c.submit, add, bad, 1)
        e = yield self.blocking(dependent.exception, BOUND)
        self.assertIsInstance(e, errors.DependencyError)
        self.assertIsInstance(e.__cause__, ValueError)
        self.assertEqual(str(e.__cause__), "the cause")
