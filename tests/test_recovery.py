"""Crash safety in the scheduler, on task.Clock: store before deliver, and the recovery of
tasks a previous controller left unfinished (claimed by a pong, finished by a re-sent
result, re-queued or lost after the grace)."""
import msgpack
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ipcluster import errors
from ipcluster.interfaces import ITaskStore
from ipcluster.scheduler.scheduler import Scheduler
from ipcluster.scheduler.task import RUNNING, WAITING
from ipcluster.store.memory import MemoryTaskStore

from tests.test_scheduler import Fixture


@implementer(ITaskStore)
class HeldStore(MemoryTaskStore):
    """A memory store whose commits wait until the test releases them."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.held = []

    def committed(self):
        d = defer.Deferred()
        self.held.append(d)
        return d

    def release(self, error=None):
        held, self.held = self.held, []
        for d in held:
            d.errback(error) if error is not None else d.callback(None)


@implementer(ITaskStore)
class SlowReads(MemoryTaskStore):
    """A memory store whose ``get`` answers when the test releases it, as the store's
    thread answers a read after the recovery read queued before it."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.reads = []

    def get(self, task_id):
        d = defer.Deferred()
        self.reads.append((d, task_id))
        return d

    def release(self):
        reads, self.reads = self.reads, []
        for d, task_id in reads:
            super().get(task_id).chainDeferred(d)


class StoreBeforeDeliverTests(Fixture):
    def setUp(self):
        super().setUp()
        self.store = self.scheduler.store = HeldStore(clock=self.clock)
        self.e1 = self.engine("e1")

    def test_fake_provides_the_interface(self):
        self.assertTrue(verifyObject(ITaskStore, self.store))

    def test_no_result_before_the_commit(self):
        self.submit("t1")
        self.result("e1", "t1")
        self.clock.advance(60)
        self.assertEqual(self.to_clients, [], "a result reached its client before the store committed it")
        self.assertEqual(self.store.records["t1"]["status"], "ok", "written (not yet committed)")
        self.assertEqual(self.scheduler.results.uncommitted, 1)
        self.store.release()
        [(to, msg)] = self.to_clients
        self.assertEqual((to, msg.type, msg["task"], msg["ok"]), (b"c1", "result", "t1", True))
        self.assertEqual(self.scheduler.results.uncommitted, 0)

    def test_the_slot_is_not_held_by_the_commit(self):
        self.submit("t1")
        self.submit("t2")
        self.submit("t3")
        self.result("e1", "t1")
        self.assertEqual([m["task"] for _, m in self.to_engines], ["t1", "t2", "t3"])

    def test_controller_failures_wait_too(self):
        self.submit("t1", engines=["e1"])
        self.die(self.e1)  # retried nowhere: EngineDied
        self.assertEqual(self.to_clients, [])
        self.store.release()
        [(_, msg)] = self.to_clients
        self.assertEqual(msg["error"]["type"], "EngineDied")

    def test_cancel_answer_follows_the_result(self):
        self.submit("t1", engines=["e1"])
        self.submit("t2", engines=["e1"])
        self.submit("t3", engines=["e1"])  # ready, not sent
        d = self.scheduler.cancel("t3")
        self.assertNoResult(d)
        self.store.release()
        self.assertTrue(self.successResultOf(d))
        [(_, msg)] = self.to_clients
        self.assertEqual(msg["error"]["type"], "TaskCancelled")

    def test_failed_commit_still_delivers(self):
        self.submit("t1")
        self.result("e1", "t1")
        self.store.release(RuntimeError("disk full"))
        [(_, msg)] = self.to_clients
        self.assertEqual(msg["task"], "t1")
        self.assertEqual(self.scheduler.results.unstored, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_large_results_are_delivered_not_kept(self):
        self.scheduler.results.max_result = 100
        self.submit("t1")
        self.result("e1", "t1", payloads=(b"x" * 90, b"o" * 20, b""))
        self.store.release()
        [(_, msg)] = self.to_clients
        self.assertEqual(msg.payloads[0], b"x" * 90)
        record = self.store.records["t1"]
        self.assertEqual((record["status"], record["result"], record["not_kept"]), ("ok", None, 110))
        d = self.scheduler.fetch(b"c2", "t1")
        self.store.release()
        e = self.failureResultOf(d, errors.ResultNotKept).value
        self.assertIn("110 bytes", str(e))

    def test_payload_kept_up_to_the_limit(self):
        self.scheduler.max_payload = 10
        self.submit("small", payload=b"p" * 10, engines=["e1"], retries=3, after_failed="run")
        self.submit("big", payload=b"p" * 11)
        self.assertEqual(self.store.recovery["small"][0], b"p" * 10)
        self.assertEqual(self.store.recovery["small"][1]["engines"], ["e1"])
        self.assertEqual(self.store.recovery["small"][1]["retries"], 3)
        self.assertEqual(self.store.recovery["small"][1]["after_failed"], "run")
        self.assertIsNone(self.store.recovery["big"][0])


def unfinished(task, payload=b"p", status="submitted", **options):
    return {"task": task, "name": "f", "status": status, "submitted_at": 1.0, "payload": payload,
            "options": options}


class RecoveryTests(Fixture):
    def recover(self, *records, grace=15.0):
        self.scheduler.recovery.grace = grace
        return self.scheduler.recover(records)

    def pong(self, record, task_id, running_for=2.0):
        self.scheduler.engine_reported(record, task_id, running_for)

    def test_recovered_tasks_wait_for_the_grace(self):
        a = self.engine("a")
        self.assertEqual(self.recover(unfinished("t1"), unfinished("t2", status="running")), 2)
        self.assertEqual(self.to_engines, [], "recovered tasks are sent nowhere during the grace")
        self.assertEqual(self.scheduler.tasks["t1"].state, WAITING)
        self.clock.advance(14.9)
        self.assertEqual(self.to_engines, [])
        self.clock.advance(0.2)
        self.assertEqual(sorted(m["task"] for _, m in self.to_engines), ["t1", "t2"])
        self.assertEqual(self.scheduler.recovery.counts["requeued"], 2)
        self.result("a", "t1")
        self.assertEqual(self.store.records["t1"]["status"], "ok")
        self.assertIsNotNone(a)

    def test_an_engine_claims_what_it_runs(self):
        a = self.engine("a")
        self.recover(unfinished("t1", status="running"), unfinished("t2"))
        self.pong(a, "t1", running_for=3.0)
        task = self.scheduler.tasks["t1"]
        self.assertEqual((task.state, task.engine), (RUNNING, "a"))
        self.assertIn("t1", self.scheduler.assigned["a"])
        self.assertEqual(self.scheduler.recovery.counts["claimed"], 1)
        self.pong(a, "t1")  # again: nothing more
        self.assertEqual(self.scheduler.recovery.counts["claimed"], 1)
        self.clock.advance(16)  # t2 is re-queued, t1 runs on
        self.assertEqual([m["task"] for _, m in self.to_engines], ["t2"])
        self.result("a", "t1")
        self.assertEqual(self.store.records["t1"]["status"], "ok")
        self.assertEqual(self.scheduler.counts()["completed"], 1)

    def test_an_engine_may_not_claim_a_task_pinned_elsewhere(self):
        a = self.engine("a")
        self.engine("b")
        self.recover(unfinished("t1", engines=["b"]))
        self.pong(a, "t1")
        self.assertEqual(self.scheduler.tasks["t1"].state, WAITING)

    def test_a_resent_result_finishes_it_once(self):
        self.engine("a")
        b = self.engine("b")
        self.recover(unfinished("t1", status="running"))
        d = self.scheduler.fetch(b"client", "t1")  # the client re-announces it
        self.assertEqual(self.successResultOf(d), "pending")
        self.result("b", "t1", payloads=(b"v", b"", b""))
        [(to, msg)] = self.to_clients
        self.assertEqual((to, msg["task"], msg["engine"], msg.payloads[0]), (b"client", "t1", "b", b"v"))
        self.result("a", "t1")  # another copy (from another engine): dropped
        self.assertEqual(len(self.to_clients), 1)
        self.assertEqual(self.drops.totals[("task", "result of a finished task (a resend)")], 1)
        self.assertEqual(self.scheduler.recovery.counts["results"], 1)
        self.clock.advance(20)
        self.assertEqual(self.to_engines, [], "a finished task is not re-queued")
        self.assertEqual(b.running_task, None)

    def test_payload_not_kept_fails_clearly(self):
        self.engine("a")
        self.recover(unfinished("big", payload=None), unfinished("after", after=["big"]))
        self.scheduler.fetch(b"client", "big")
        self.scheduler.fetch(b"client", "after")
        self.clock.advance(16)
        by_task = {m["task"]: m for _, m in self.to_clients}
        self.assertEqual(by_task["big"]["error"]["type"], "TaskLost")
        self.assertIn("--store-max-payload", by_task["big"]["error"]["message"])
        self.assertEqual(by_task["after"]["error"]["type"], "DependencyError")
        self.assertEqual(self.scheduler.recovery.counts["lost"], 1)

    def test_dependencies_between_recovered_tasks_hold(self):
        self.engine("a")
        self.recover(unfinished("first"), unfinished("second", after=["first"]))
        self.clock.advance(16)
        self.assertEqual([m["task"] for _, m in self.to_engines], ["first"])
        self.result("a", "first")
        self.assertEqual([m["task"] for _, m in self.to_engines], ["first", "second"])

    def test_restricted_tasks_are_not_stranded_during_the_grace(self):
        self.engine("a")
        self.recover(unfinished("t1", engines=["hand"]))
        self.die(self.engine("other"))  # an engine event runs the stranded check
        self.assertIn("t1", self.scheduler.tasks)
        self.clock.advance(16)  # "hand" never came back
        self.assertNotIn("t1", self.scheduler.tasks)
        self.assertEqual(self.store.records["t1"]["error"]["type"], "EngineDied")

    def test_timeouts_and_retries_come_back(self):
        a = self.engine("a")
        self.recover(unfinished("t1", status="running", timeout=5.0, retries=0))
        self.pong(a, "t1", running_for=4.0)
        self.clock.advance(1.5)
        self.assertEqual(self.store.records["t1"]["error"]["type"], "TaskTimeout")

    def test_recovering_twice_keeps_one(self):
        self.assertEqual(self.recover(unfinished("t1")), 1)
        self.assertEqual(self.recover(unfinished("t1")), 0)

    def test_a_fetch_that_meets_the_recovery_follows_the_task(self):
        """A client that reconnects at once asks for its tasks before the store's recovery
        read has answered: it is answered like any client of a task in flight, not failed."""
        store = self.scheduler.store = SlowReads(clock=self.clock)
        verifyObject(ITaskStore, store)
        store.submitted("t1", "f", 1.0, b"p")
        store.started("t1", "old-engine", 2.0)
        a = self.engine("a")
        fetched = self.scheduler.fetch(b"c2", "t1")  # (before the recovery read answers)
        self.assertNoResult(fetched)
        self.recover(unfinished("t1", status="running"))
        store.release()
        self.assertEqual(self.successResultOf(fetched), "pending")
        self.pong(a, "t1")
        self.result("a", "t1")
        self.assertEqual(self.result_of("t1", b"c2")["ok"], True)

    def test_a_task_that_takes_a_recovering_one_waits_for_it(self):
        """Submitted before the recovery read answered, after= and inputs= a task the old
        controller ran: it waits for that task and takes its value, not refused."""
        store = self.scheduler.store = SlowReads(clock=self.clock)
        store.submitted("t1", "f", 1.0, b"p")
        store.started("t1", "old-engine", 2.0)
        a = self.engine("a")
        admitted = self.scheduler.submit(b"c2", "t2", b"p2", after=["t1"], inputs=["t1"])
        self.assertNoResult(admitted)
        self.recover(unfinished("t1", status="running"))
        store.release()
        self.assertEqual(self.successResultOf(admitted), "t2")
        self.pong(a, "t1")
        self.result("a", "t1", payloads=(b"value-of-t1", b"", b""))
        sent = [m for to, m in self.to_engines if m["task"] == "t2"]
        self.assertEqual(len(sent), 1)
        self.assertEqual(msgpack.unpackb(sent[0].payloads[1]), {"t1": b"value-of-t1"})

    def test_stop_cancels_the_grace(self):
        self.recover(unfinished("t1"))
        self.scheduler.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RecoveryFromAStoreTests(Fixture):
    def test_unfinished_records_round_trip(self):
        """What one scheduler writes, the next one recovers (MemoryTaskStore shared)."""
        self.engine("a")
        self.submit("done")
        self.submit("running")
        self.submit("queued")
        self.started("a", "running")
        self.result("a", "done")
        found = self.successResultOf(self.store.unfinished())
        self.assertEqual([r["task"] for r in found], ["running", "queued"])
        self.assertEqual(found[0]["payload"], b"payload-running")
        again = Scheduler(self.registry.__class__(), self.codec, self.clock, self.send_engine, self.send_client,
                          self.drops, self.store)
        self.addCleanup(again.stop)
        self.assertEqual(again.recover(found), 2)
