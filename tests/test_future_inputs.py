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

    def test_a_retried_task_is_sent_its_inputs_again(self):
        e1 = self.engine("e1")
        self.submit("a", engines=["e1"])
        self.engine("e2")
        self.submit("b", inputs=["a"], retries=1)
        self.result("e1", "a", payloads=(b"value-a", b"", b""))
        first = [(to, m) for to, m in self.to_engines if m["task"] == "b"]
        self.assertEqual(len(first), 1)
        ran_on = first[0][0]
        self.started(ran_on, "b")
        self.die(e1 if ran_on == "e1" else self.registry.get("e2"))
        again = [(to, m) for to, m in self.to_engines if m["task"] == "b"]
        self.assertEqual(len(again), 2, "retried on the other engine")
        self.assertNotEqual(again[1][0], ran_on)
        self.assertEqual(msgpack.unpackb(again[1][1].payloads[1]), {"a": b"value-a"})

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


class SlowStore(Fixture):
    """The store answers later (as the SQLite store does, from its thread)."""

    def test_a_chain_submitted_in_one_go_behind_a_store_read_is_admitted_in_order(self):
        self.engine("e1")
        self.submit("a")
        self.result("e1", "a", payloads=(b"value-a", b"", b""))
        self.scheduler.inputs.recent.clear()  # a's value is no longer in memory: the store has it
        answers = []
        real_get = self.store.get

        def later(task_id):
            d = defer.Deferred()
            answers.append((d, task_id))
            return d

        self.store.get = later
        b = self.scheduler.submit(b"c1", "b", b"payload-b", inputs=["a"])
        c = self.scheduler.submit(b"c1", "c", b"payload-c", inputs=["b"])
        d = self.scheduler.submit(b"c1", "d", b"payload-d", after=["c"])
        self.assertNoResult(b)
        self.assertNoResult(c)
        self.assertNoResult(d)
        self.assertEqual(sorted(self.scheduler.admission.pending), ["b", "c", "d"])
        self.store.get = real_get
        for waiting, task_id in answers:
            real_get(task_id).chainDeferred(waiting)
        self.assertEqual([self.successResultOf(x) for x in (b, c, d)], ["b", "c", "d"])
        self.assertEqual(self.scheduler.admission.pending, {})
        sent_b = [m for _, m in self.to_engines if m["task"] == "b"][0]
        self.assertEqual(msgpack.unpackb(sent_b.payloads[1]), {"a": b"value-a"})
        self.result("e1", "b", payloads=(b"value-b", b"", b""))
        sent_c = [m for _, m in self.to_engines if m["task"] == "c"][0]
        self.assertEqual(msgpack.unpackb(sent_c.payloads[1]), {"b": b"value-b"})

    def test_a_task_behind_a_refused_one_is_refused_as_unknown(self):
        self.engine("e1")
        answers = []
        self.store.get = lambda task_id: answers.append(defer.Deferred()) or answers[-1]
        b = self.scheduler.submit(b"c1", "b", b"p", inputs=["gone"])
        c = self.scheduler.submit(b"c1", "c", b"p", inputs=["b"])
        for waiting in answers:
            waiting.callback(None)  # the store knows no "gone"
        self.failureResultOf(b, errors.BadRequest)
        self.assertIn("unknown dependency 'b'", str(self.failureResultOf(c, errors.BadRequest).value))


class Recovered(Fixture):
    """A controller that restarts gathers a recovered task's inputs again (from the store, or
    from an input recovered with it once that one finishes)."""

    def test_inputs_of_recovered_tasks_come_again(self):
        from tests.test_recovery import unfinished

        self.engine("a")
        self.store.submitted("done", "f", 1.0)
        self.store.finished("done", True, 2.0, "a", None, b"value-done", "", "")
        self.scheduler.recovery.grace = 15.0
        self.scheduler.recover([
            unfinished("mid", after=["done"], inputs=["done"]),
            unfinished("last", after=["mid"], inputs=["mid", "done"]),
        ])
        self.clock.advance(16)
        sent = {m["task"]: m for _, m in self.to_engines}
        self.assertEqual(sent["mid"].type, "task_in")
        self.assertEqual(msgpack.unpackb(sent["mid"].payloads[1]), {"done": b"value-done"})
        self.result("a", "mid", payloads=(b"value-mid", b"", b""))
        sent = {m["task"]: m for _, m in self.to_engines}
        self.assertEqual(msgpack.unpackb(sent["last"].payloads[1]), {"mid": b"value-mid", "done": b"value-done"})
