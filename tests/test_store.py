"""The task stores: MemoryTaskStore and SQLiteTaskStore.

Both run the same tests on the real reactor (SQLiteTaskStore answers from its
writer thread through reactor.callFromThread); every SQLiteTaskStore is closed
in cleanup.
"""
import os
import sqlite3
import threading
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from ipcluster.store import sqlite as store_module
from ipcluster.interfaces import ITaskStore
from ipcluster.store.memory import MemoryTaskStore
from ipcluster.store.sqlite import SQLiteTaskStore

ERROR = {"type": "ValueError", "message": "bad value", "traceback": "Traceback ...", "origin": "ipcluster"}


def _copy_store_files(path, into):
    """Copy the store's files (database, WAL, journal) as they are now: what a crash leaves."""
    import shutil

    for suffix in ("", "-wal", "-batch"):
        if os.path.exists(path + suffix):
            shutil.copyfile(path + suffix, os.path.join(into, "tasks.sqlite" + suffix))


class SkewedTime:
    """Stands in for the ``time`` module in store.py, with a monotonic clock moved by ``skew``."""

    def __init__(self):
        self.skew = 0.0

    def monotonic(self):
        return time.monotonic() + self.skew

    def __getattr__(self, name):
        return getattr(time, name)


class StoreTests:
    """Mixed into a trial TestCase; ``make_store(**kw)`` opens a store."""

    def test_provides_the_interface(self):
        store = self.make_store()
        self.assertTrue(verifyObject(ITaskStore, store))

    @defer.inlineCallbacks
    def test_unknown_task(self):
        store = self.make_store()
        self.assertIsNone((yield store.get("nope")))

    @defer.inlineCallbacks
    def test_round_trip(self):
        store = self.make_store()
        now = time.time()
        store.submitted("t1", "square", now)
        r = yield store.get("t1")
        self.assertEqual(
            (r["task"], r["name"], r["status"], r["submitted_at"], r["started_at"], r["finished_at"], r["engine"]),
            ("t1", "square", "submitted", now, None, None, None),
        )
        store.started("t1", "e1", now + 1)
        r = yield store.get("t1")
        self.assertEqual((r["status"], r["engine"], r["started_at"]), ("running", "e1", now + 1))
        store.finished("t1", True, now + 2, "e1", None, b"\x80\x04result\x00", "out\n", "err\n")
        r = yield store.get("t1")
        self.assertEqual(
            r,
            {
                "task": "t1", "name": "square", "status": "ok", "submitted_at": now, "started_at": now + 1,
                "finished_at": now + 2, "engine": "e1", "error": None, "result": b"\x80\x04result\x00",
                "stdout": "out\n", "stderr": "err\n", "not_kept": None,
            },
        )

    @defer.inlineCallbacks
    def test_failure_round_trip(self):
        store = self.make_store()
        now = time.time()
        store.submitted("t1", "f", now)
        store.started("t1", "e1", now)
        store.finished("t1", False, now + 1, "e1", ERROR, None, "", "boom")
        r = yield store.get("t1")
        self.assertEqual((r["status"], r["error"], r["result"], r["stderr"]), ("failed", ERROR, None, "boom"))

    @defer.inlineCallbacks
    def test_finished_without_submitted(self):
        # A task failed before it was recorded (e.g. refused dependency): still findable.
        store = self.make_store()
        store.finished("t1", False, time.time(), None, ERROR, None, "", "")
        r = yield store.get("t1")
        self.assertEqual((r["task"], r["status"], r["error"], r["engine"]), ("t1", "failed", ERROR, None))

    @defer.inlineCallbacks
    def test_many_tasks(self):
        store = self.make_store()
        now = time.time()
        for i in range(500):
            store.submitted(f"t{i}", "f", now)
            store.finished(f"t{i}", i % 2 == 0, now + i, "e1", None if i % 2 == 0 else ERROR, b"%d" % i, "", "")
        records = yield defer.gatherResults([store.get(f"t{i}") for i in range(500)])
        self.assertEqual([r["status"] for r in records], ["ok", "failed"] * 250)
        self.assertEqual([r["result"] for r in records], [b"%d" % i for i in range(500)])

    @defer.inlineCallbacks
    def test_purge_all_finished(self):
        store = self.make_store()
        now = time.time()
        for task in ("ok", "failed", "running", "submitted"):
            store.submitted(task, "f", now)
        store.started("running", "e1", now)
        store.finished("ok", True, now, "e1", None, b"v", "", "")
        store.finished("failed", False, now, "e1", ERROR, None, "", "")
        self.assertEqual((yield store.purge()), 2)
        self.assertIsNone((yield store.get("ok")))
        self.assertIsNone((yield store.get("failed")))
        self.assertEqual((yield store.get("running"))["status"], "running")
        self.assertEqual((yield store.get("submitted"))["status"], "submitted")
        self.assertEqual((yield store.purge()), 0)

    @defer.inlineCallbacks
    def test_purge_older_than(self):
        store = self.make_store()
        now = time.time()
        for task, age in (("old", 1000), ("older", 2000), ("new", 10)):
            store.submitted(task, "f", now - age - 1)
            store.finished(task, True, now - age, "e1", None, b"v", "", "")
        self.assertEqual((yield store.purge(older_than=500)), 2)
        self.assertIsNone((yield store.get("old")))
        self.assertIsNone((yield store.get("older")))
        self.assertEqual((yield store.get("new"))["status"], "ok")

    @defer.inlineCallbacks
    def test_resubmitted_id_replaces_the_record(self):
        store = self.make_store()
        store.submitted("t1", "f", 1.0)
        store.finished("t1", False, 2.0, "e1", ERROR, None, "", "")
        store.submitted("t1", "g", 3.0)
        r = yield store.get("t1")
        self.assertEqual((r["name"], r["status"], r["error"]), ("g", "submitted", None))


class MemoryTaskStoreTests(StoreTests, TestCase):
    def make_store(self, **kw):
        return MemoryTaskStore(**kw)

    @defer.inlineCallbacks
    def test_retention_by_count(self):
        store = self.make_store(max_tasks=3)
        store.submitted("pending", "f", 0.0)
        for i in range(6):
            store.submitted(f"t{i}", "f", float(i))
            store.finished(f"t{i}", True, float(i), "e1", None, b"v", "", "")
        kept = []
        for task in ["pending"] + [f"t{i}" for i in range(6)]:
            if (yield store.get(task)) is not None:
                kept.append(task)
        self.assertEqual(kept, ["pending", "t3", "t4", "t5"], "the oldest finished go; unfinished stay")


class MemoryTaskStoreAgeTests(SynchronousTestCase):
    def test_retention_by_age(self):
        clock = Clock()
        store = MemoryTaskStore(max_age=100, max_tasks=None, clock=clock)
        store.submitted("pending", "f", 0.0)
        store.finished("t0", True, 0.0, "e1", None, b"v", "", "")
        clock.advance(50)
        store.finished("t1", True, 50.0, "e1", None, b"v", "", "")
        clock.advance(60)
        store.finished("t2", True, 110.0, "e1", None, b"v", "", "")
        self.assertIsNone(self.successResultOf(store.get("t0")))
        self.assertEqual(self.successResultOf(store.get("t1"))["status"], "ok")
        self.assertEqual(self.successResultOf(store.get("pending"))["status"], "submitted")

    def test_purge_uses_its_clock(self):
        clock = Clock()
        clock.advance(1000)
        store = MemoryTaskStore(clock=clock)
        store.finished("old", True, 100.0, "e1", None, b"v", "", "")
        store.finished("new", True, 950.0, "e1", None, b"v", "", "")
        self.assertEqual(self.successResultOf(store.purge(older_than=100)), 1)
        self.assertIsNone(self.successResultOf(store.get("old")))

    def test_get_returns_a_copy(self):
        store = MemoryTaskStore()
        store.submitted("t1", "f", 0.0)
        self.successResultOf(store.get("t1"))["status"] = "mangled"
        self.assertEqual(self.successResultOf(store.get("t1"))["status"], "submitted")


class SQLiteTaskStoreTests(StoreTests, TestCase):
    def setUp(self):
        self.path = self.mktemp()

    def make_store(self, **kw):
        kw.setdefault("batch_seconds", 0.001)
        store = SQLiteTaskStore(self.path, **kw)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def test_results_survive_a_restart(self):
        store = self.make_store()
        now = time.time()
        store.submitted("t1", "f", now)
        store.started("t1", "e1", now)
        store.finished("t1", True, now + 1, "e1", None, b"result", "out", "err")
        store.submitted("t2", "g", now)
        store.finished("t2", False, now + 1, "e2", ERROR, None, "", "")
        store.submitted("t3", "h", now)
        before = yield defer.gatherResults([store.get(t) for t in ("t1", "t2", "t3")])
        yield store.close()

        store = self.make_store()
        after = yield defer.gatherResults([store.get(t) for t in ("t1", "t2", "t3")])
        self.assertEqual(after, before)
        self.assertEqual((after[0]["result"], after[1]["error"], after[2]["status"]), (b"result", ERROR, "submitted"))

    @defer.inlineCallbacks
    def test_committed_means_on_disk_without_the_batch_timer(self):
        """When ``committed()`` fires, the files on disk hold the write: a controller killed
        right then (the files copied as they are) restarts with it."""
        store = self.make_store(batch_seconds=3600)  # the timer would never flush in this test
        store.submitted("t0", "f", 1.0, b"p")
        store._flush()  # (committed to SQLite: nobody waits for it)
        store.finished("t1", True, 2.0, "e1", None, b"v", "", "")
        crashed = self.mktemp()
        os.makedirs(crashed)
        d = store.committed().addCallback(lambda _: _copy_store_files(self.path, crashed))
        store._flush()  # the turn ends
        yield d
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT task, result FROM tasks ORDER BY task").fetchall(), [("t0", None)],
                         "in the journal, not yet in SQLite")
        store._flush()  # (the batch timer: nothing waits, what the journal holds is committed)
        self.assertEqual(db.execute("SELECT task, result FROM tasks ORDER BY task").fetchall(),
                         [("t0", None), ("t1", b"v")])
        again = SQLiteTaskStore(os.path.join(crashed, "tasks.sqlite"))
        self.addCleanup(again.close)
        self.assertEqual((yield again.get("t1"))["result"], b"v")
        self.assertEqual((yield again.get("t0"))["status"], "submitted")

    @defer.inlineCallbacks
    def test_one_commit_for_a_turn(self):
        store = self.make_store()
        for i in range(5):
            store.finished(f"t{i}", True, 2.0, "e1", None, b"v", "", "")
        waiters = [store.committed() for _ in range(5)]
        self.assertEqual(len(store._pending), 5)
        yield defer.gatherResults(waiters)
        self.assertEqual(store._pending, [])

    @defer.inlineCallbacks
    def test_unfinished_tasks_keep_what_recovery_needs(self):
        store = self.make_store()
        store.submitted("t1", "f", 1.0, b"payload", {"engines": ["e0"], "retries": 2})
        store.submitted("t2", "g", 2.0, None, {})
        store.started("t2", "e1", 3.0)
        store.submitted("t3", "h", 3.0, b"p", {})
        store.finished("t3", True, 4.0, "e1", None, b"v", "", "")
        found = yield store.unfinished()
        self.assertEqual([(r["task"], r["status"], r["payload"], r["options"]) for r in found],
                         [("t1", "submitted", b"payload", {"engines": ["e0"], "retries": 2}),
                          ("t2", "running", None, {})])

    @defer.inlineCallbacks
    def test_a_store_of_the_first_schema_is_migrated(self):
        db = sqlite3.connect(self.path)
        db.executescript(
            "CREATE TABLE tasks (task TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, submitted_at REAL, "
            "started_at REAL, finished_at REAL, engine TEXT, error TEXT, result BLOB, stdout TEXT, stderr TEXT);"
            "INSERT INTO tasks (task, status, result) VALUES ('old', 'ok', X'01');"
        )
        db.close()
        store = self.make_store()
        self.assertEqual((yield store.get("old"))["result"], b"\x01")
        store.submitted("new", "f", 1.0, b"p", {})
        self.assertEqual([r["task"] for r in (yield store.unfinished())], ["new"])

    @defer.inlineCallbacks
    def test_writes_just_before_close_are_kept(self):
        store = self.make_store(batch_seconds=0.5)
        store.submitted("t1", "f", 1.0)
        store.finished("t1", True, 2.0, "e1", None, b"v", "", "")
        yield store.close()
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT task, status, result FROM tasks").fetchall(), [("t1", "ok", b"v")])

    @defer.inlineCallbacks
    def test_closed_store(self):
        store = self.make_store()
        yield store.close()
        yield store.close()
        try:
            yield store.get("t1")
        except RuntimeError as e:
            self.assertIn("closed", str(e))
        else:
            self.fail("get on a closed store succeeded")

    def test_unopenable_path(self):
        path = os.path.join(self.mktemp(), "no", "such", "dir", "tasks.sqlite")
        e = self.assertRaises(RuntimeError, SQLiteTaskStore, path)
        self.assertIn(path, str(e))

    def skew_monotonic(self):
        """Let the test move store.py's monotonic clock (the writer trims once a minute)."""
        skewed = SkewedTime()
        self.patch(store_module, "time", skewed)
        return skewed

    @defer.inlineCallbacks
    def test_retention_by_count(self):
        clock = self.skew_monotonic()
        store = self.make_store(max_tasks=3, max_age=None)
        now = time.time()
        store.submitted("pending", "f", now)
        for i in range(6):
            store.submitted(f"t{i}", "f", now)
            store.finished(f"t{i}", True, now + i, "e1", None, b"v", "", "")
        yield store.get("t0")
        clock.skew += 61
        yield store.get("t0")  # a batch after which the minute is up: the trim follows it
        kept = []
        for task in ["pending"] + [f"t{i}" for i in range(6)]:
            if (yield store.get(task)) is not None:
                kept.append(task)
        self.assertEqual(kept, ["pending", "t3", "t4", "t5"], "the oldest finished go; unfinished stay")

    @defer.inlineCallbacks
    def test_retention_by_age(self):
        clock = self.skew_monotonic()
        store = self.make_store(max_tasks=None, max_age=1000)
        now = time.time()
        store.submitted("pending", "f", now - 5000)
        for task, age in (("old", 2000), ("new", 10)):
            store.submitted(task, "f", now - age)
            store.finished(task, True, now - age, "e1", None, b"v", "", "")
        yield store.get("new")
        clock.skew += 61
        yield store.get("new")
        self.assertIsNone((yield store.get("old")))
        self.assertEqual((yield store.get("new"))["status"], "ok")
        self.assertEqual((yield store.get("pending"))["status"], "submitted")

    @defer.inlineCallbacks
    def test_retention_survives_a_restart(self):
        clock = self.skew_monotonic()
        store = self.make_store(max_tasks=None, max_age=None)
        now = time.time()
        for i in range(6):
            store.finished(f"t{i}", True, now + i, "e1", None, b"v", "", "")
        yield store.close()
        store = self.make_store(max_tasks=2, max_age=None)
        yield store.get("t0")
        clock.skew += 61
        yield store.get("t0")
        kept = []
        for i in range(6):
            if (yield store.get(f"t{i}")) is not None:
                kept.append(f"t{i}")
        self.assertEqual(kept, ["t4", "t5"])


class SQLiteWhereBatchesRunTests(TestCase):
    """Small batches commit on the reactor thread; large ones, and all that follow while the
    store's thread works, go to that thread in order; checkpoints always go there."""

    def setUp(self):
        self.path = self.mktemp()
        self.ran = []  # (thread name, ops) of every batch run
        self.gate = None  # a threading.Event the store's thread waits on, when set
        real = store_module.run_batch

        def recording(db, batch, retention):
            name = threading.current_thread().name
            if self.gate is not None and name == "ipcluster-store":
                self.gate.wait(30)
            self.ran.append((name, [op for op, _ in batch]))
            return real(db, batch, retention)

        self.patch(store_module, "run_batch", recording)

    def make_store(self, **kw):
        store = SQLiteTaskStore(self.path, batch_seconds=3600, **kw)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def test_a_small_batch_commits_on_the_reactor_thread(self):
        store = self.make_store()
        store.finished("t1", True, 2.0, "e1", None, b"v", "", "")
        seen = []
        d = store.committed().addCallback(lambda _: seen.append(list(self.ran)))
        store._flush()  # the turn ends
        self.assertEqual(seen, [[]], "the waiter is answered once the journal holds the batch, before SQLite")
        self.assertEqual(store_module.journal.held(self.path)[1], [("finished", ("t1", "ok", 2.0, "e1", None, b"v", "", "", None))])
        store._flush()  # (the batch timer)
        self.assertEqual(self.ran, [("MainThread", ["finished", "applied"])])
        self.assertEqual(store_module.journal.held(self.path)[1], [], "the journal is empty once committed")
        store.finished("t2", True, 2.0, "e1", None, b"v", "", "")
        store._flush()  # nobody waits: straight to SQLite
        self.assertEqual(self.ran[-1], ("MainThread", ["finished"]))
        yield d

    @defer.inlineCallbacks
    def test_writes_behind_a_large_one_keep_their_order(self):
        store = self.make_store()
        self.gate = threading.Event()
        big = b"A" * (store_module.INLINE_BYTES + 1)
        store.finished("t1", True, 2.0, "e1", None, big, "", "")
        first = store.committed()
        store._flush()  # the turn ends: too large for the reactor, handed to the (held) thread
        store.finished("t1", True, 3.0, "e1", None, b"B", "", "")
        second = store.committed()
        store._flush()  # small, but the thread still works: it must wait behind
        self.assertEqual(store._handed, 2)
        self.assertEqual(self.ran, [], "nothing may run on the reactor while the thread holds a batch")
        self.gate.set()
        yield defer.gatherResults([first, second])
        self.assertEqual({name for name, _ in self.ran}, {"ipcluster-store"})
        self.assertEqual((yield store.get("t1"))["result"], b"B", "the later write wins")

    @defer.inlineCallbacks
    def test_checkpoints_run_on_the_stores_thread(self):
        self.patch(store_module, "CHECKPOINT_EVERY", 3)
        store = self.make_store()
        for i in range(3):
            store.finished(f"t{i}", True, 2.0, "e1", None, b"v", "", "")
            done = store.committed()
            store._flush()
            yield done  # (in the journal)
            store._flush()  # (the batch timer commits it: the third commit, with a checkpoint, on the thread)
        yield store.get("t0")  # (after the thread's batch)
        self.assertEqual([name for name, _ in self.ran][:3], ["MainThread", "MainThread", "ipcluster-store"])
        self.assertIn("checkpoint", self.ran[2][1])
        (busy, wal_frames, checkpointed) = sqlite3.connect(self.path).execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.assertEqual(busy, 0)

    @defer.inlineCallbacks
    def test_a_failed_small_batch_fails_its_waiters_and_the_store_goes_on(self):
        store = self.make_store()
        store.finished("t1", True, 2.0, 2**80, None, b"v", "", "")  # a value SQLite cannot bind
        failed = store.committed()
        store._flush()
        self.failureResultOf(failed, OverflowError)
        store.finished("t2", True, 2.0, "e1", None, b"v", "", "")
        yield store.committed()
        self.assertIsNone((yield store.get("t1")), "the failed batch was rolled back")
        self.assertEqual((yield store.get("t2"))["result"], b"v")
