"""The SQLite store's journal (``store/journal.py``): batches whose waiters were answered
before SQLite committed them survive a crash, an epoch SQLite committed is not applied again,
a torn record ends the journal, what the waiters' callbacks ask of the store comes after."""
import errno
import os
import stat

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipcluster.store import journal
from ipcluster.store import sqlite as store_module
from ipcluster.store.journal import Journal
from ipcluster.store.sqlite import SQLiteTaskStore
from ipcluster.store.sqlitedb import applied_epoch, open_db

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

    def hold(self, *batches, epoch=1):
        """A journal holding ``batches`` at ``epoch``, as a killed controller leaves it."""
        slot = Journal(self.path, epoch)
        for writes in batches:
            slot.append(writes)
        os.close(slot.fd)  # (never reset)

    @defer.inlineCallbacks
    def records(self, store):
        found = {}
        for task in ("t1", "t2"):
            r = yield store.get(task)
            found[task] = r and (r["status"], r["result"], r["engine"], r["started_at"], r["finished_at"])
        return found

    @defer.inlineCallbacks
    def test_batches_sqlite_never_committed_are_committed_at_open(self):
        self.hold(BATCH[:2], BATCH[2:])
        store = self.open()
        self.assertEqual((yield self.records(store)), {
            "t1": ("ok", b"value", "e1", 2.0, 3.0),
            "t2": ("failed", None, "e2", 2.5, 3.5),
        })
        self.assertEqual(journal.held(self.path), (0, []), "the journal is empty once replayed")
        self.assertEqual(applied_epoch(store._db), 1)

    @defer.inlineCallbacks
    def test_an_epoch_sqlite_committed_is_not_applied_again(self):
        store = self.open()
        for op, args in BATCH:
            store._write(op, args)
        store.committed()
        store._flush()  # into the journal (epoch 1)
        store.started("t1", "e9", 9.0)  # (a later write: the replay must not undo it)
        store._flush()  # the timer: epoch 1 committed, with the later write
        before = yield self.records(store)
        self.assertEqual(before["t1"][2], "e9")
        yield store.close()
        self.hold(BATCH, epoch=1)  # killed between SQLite's commit and the journal's reset
        self.assertEqual((yield self.records(self.open())), before)

    @defer.inlineCallbacks
    def test_a_torn_record_ends_the_journal(self):
        self.hold(BATCH[:2], BATCH[2:])
        with open(self.path + journal.SUFFIX, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            f.truncate(size - 1)  # (killed inside the second write)
        store = self.open()
        self.assertEqual((yield self.records(store)), {
            "t1": ("running", None, "e1", 2.0, None), "t2": ("submitted", None, None, None, None)})

    def test_records_of_an_older_epoch_after_the_first_are_not_taken(self):
        self.hold(BATCH[:2], BATCH[2:], epoch=1)
        size = os.path.getsize(self.path + journal.SUFFIX)
        self.hold(BATCH[:2], epoch=2)  # epoch 2's first record over epoch 1's (the same size)
        self.assertEqual(os.path.getsize(self.path + journal.SUFFIX), size, "epoch 1's second record is behind it")
        self.assertEqual(journal.held(self.path), (2, BATCH[:2]))

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
            store._flush()

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

        self.patch(self.store._journal, "append", full)
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
        self.assertEqual(journal.held(path), (0, []))

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["submitted", "junk"]), st.lists(st.integers(-2**63, 2**63 - 1), max_size=3)), max_size=4))
    def test_a_well_framed_body_of_other_things_is_nothing(self, writes):
        path = self.mktemp()
        slot = Journal(path, 7)
        self.addCleanup(slot.close)
        slot.append(writes)
        found = journal.held(path)
        if any(op == "junk" for op, _ in writes):
            self.assertEqual(found, (0, []))
        else:
            self.assertEqual(found, (7, [(op, tuple(args)) for op, args in writes]))
