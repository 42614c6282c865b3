"""The SQLite store's one-batch journal (``store/journal.py``): a batch whose waiters were
answered before SQLite committed it survives a crash, a torn journal is ignored, what the
waiters' callbacks ask of the store comes after the commit."""
import errno
import os
import stat

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipcluster.store import journal
from ipcluster.store import sqlite as store_module
from ipcluster.store.journal import BatchJournal
from ipcluster.store.sqlite import SQLiteTaskStore
from ipcluster.store.sqlitedb import open_db

#: One task's life in one batch, and a second task's start and end.
BATCH = [
    ("submitted", ("t1", "f", 1.0, b"payload", "{}")),
    ("started", ("e1", 2.0, "t1")),
    ("finished", ("t1", "ok", 3.0, "e1", None, b"value", "out", "err", None)),
    ("started", ("e2", 2.5, "t2")),
    ("finished", ("t2", "failed", 3.5, "e2", '{"type": "ValueError"}', None, "", "", None)),
]


class Replay(TestCase):
    def setUp(self):
        self.path = self.mktemp()
        db = open_db(self.path)  # t2 was submitted (and committed) before the batch
        db.execute("INSERT INTO tasks (task, name, status, submitted_at) VALUES ('t2', 'g', 'submitted', 0.5)")
        db.close()

    def open(self):
        store = SQLiteTaskStore(self.path, batch_seconds=3600)
        self.addCleanup(store.close)
        return store

    def hold(self, writes):
        slot = BatchJournal(self.path)
        slot.hold(writes)
        os.close(slot.fd)  # (as a killed process leaves it: never cleared)

    @defer.inlineCallbacks
    def records(self, store):
        found = {}
        for task in ("t1", "t2"):
            r = yield store.get(task)
            found[task] = r and (r["status"], r["result"], r["engine"], r["started_at"], r["finished_at"])
        return found

    @defer.inlineCallbacks
    def test_a_batch_sqlite_never_committed_is_committed_at_open(self):
        self.hold(BATCH)
        store = self.open()
        self.assertEqual((yield self.records(store)), {
            "t1": ("ok", b"value", "e1", 2.0, 3.0),
            "t2": ("failed", None, "e2", 2.5, 3.5),
        })
        self.assertIsNone(journal.held(self.path), "the journal is empty once replayed")

    @defer.inlineCallbacks
    def test_a_batch_replayed_after_its_commit_leaves_the_same_rows(self):
        store = self.open()
        for op, args in BATCH:
            store._write(op, args)
        store._flush()
        before = yield self.records(store)
        yield store.close()
        self.hold(BATCH)  # killed between SQLite's commit and the journal's mark
        self.assertEqual((yield self.records(self.open())), before)

    @defer.inlineCallbacks
    def test_a_torn_journal_is_ignored(self):
        self.hold(BATCH)
        with open(self.path + journal.SUFFIX, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            f.truncate(size - 1)  # (killed inside the write)
        store = self.open()
        self.assertEqual((yield self.records(store)), {"t1": None, "t2": ("submitted", None, None, None, None)})

    @defer.inlineCallbacks
    def test_the_journal_is_private_and_gone_after_a_clean_close(self):
        store = self.open()
        mode = stat.S_IMODE(os.stat(self.path + journal.SUFFIX).st_mode)
        self.assertEqual(mode, 0o600)
        yield store.close()
        self.assertFalse(os.path.exists(self.path + journal.SUFFIX))


class TheWindow(TestCase):
    """Between the journal write and SQLite's commit, the waiters' callbacks run."""

    def setUp(self):
        self.path = self.mktemp()
        self.store = SQLiteTaskStore(self.path, batch_seconds=3600)
        self.addCleanup(self.store.close)

    @defer.inlineCallbacks
    def test_what_a_callback_asks_comes_after_the_commit_in_order(self):
        store = self.store
        store.finished("t1", True, 2.0, "e1", None, b"v1", "", "")
        asked = []

        def delivered(_):
            store.finished("t2", True, 3.0, "e1", None, b"v2", "", "")
            asked.append(store.get("t1"))
            asked.append(store.get("t2"))
            store.finished("t2", True, 4.0, "e1", None, b"later", "", "")  # after the read: not seen by it
            store._flush()  # (put off until the commit)

        d = store.committed().addCallback(delivered)
        store._flush()
        yield d
        t1, t2 = yield defer.gatherResults(asked)
        self.assertEqual((t1["result"], t2["result"]), (b"v1", b"v2"))
        store._flush()
        self.assertEqual((yield store.get("t2"))["result"], b"later")

    @defer.inlineCallbacks
    def test_no_room_for_the_journal_commits_first(self):
        def full(writes):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(self.store._journal, "hold", full)
        ran = []
        real = store_module.run_batch
        self.patch(store_module, "run_batch", lambda db, batch, r: (ran.append([op for op, _ in batch]), real(db, batch, r))[1])
        self.store.finished("t1", True, 2.0, "e1", None, b"v", "", "")
        d = self.store.committed()
        self.store._flush()
        yield d
        self.assertEqual(ran, [["finished", "commit"]])
        self.assertEqual((yield self.store.get("t1"))["result"], b"v")
        self.flushLoggedErrors()


class Reading(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_any_bytes_are_a_batch_or_nothing(self, data):
        path = self.mktemp()
        with open(path + journal.SUFFIX, "wb") as f:
            f.write(data)
        self.assertIsNone(journal.held(path))

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["submitted", "junk"]), st.lists(st.integers(-2**63, 2**63 - 1), max_size=3)), max_size=4))
    def test_a_well_framed_body_of_other_things_is_nothing(self, writes):
        path = self.mktemp()
        slot = BatchJournal(path)
        self.addCleanup(slot.close)
        slot.hold(writes)
        found = journal.held(path)
        if any(op == "junk" for op, _ in writes):
            self.assertIsNone(found)
        else:
            self.assertEqual(found, [(op, tuple(args)) for op, args in writes])
