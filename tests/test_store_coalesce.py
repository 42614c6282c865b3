"""The SQLite store folds a task's writes of one batch into one row (``sqlitedb.coalesced``):
the table must end exactly as the writes, run one by one, would leave it (hypothesis)."""
import os
import sqlite3
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.store.sqlitedb import Retention, coalesced, open_db, run_batch

IDS = st.sampled_from(["t1", "t2", "t3"])
TIMES = st.floats(min_value=0, max_value=1e6, allow_nan=False)
TEXT = st.text(max_size=5)
ERROR = st.one_of(st.none(), st.just('{"type": "ValueError"}'))  # (kept as JSON text)
BLOB = st.one_of(st.none(), st.binary(max_size=8))

SUBMITTED = st.tuples(st.just("submitted"), st.tuples(IDS, TEXT, TIMES, BLOB, st.just("{}")))
STARTED = st.tuples(st.just("started"), st.tuples(TEXT, TIMES, IDS))
FINISHED = st.tuples(
    st.just("finished"),
    st.tuples(IDS, st.sampled_from(["ok", "failed"]), TIMES, st.one_of(st.none(), TEXT), ERROR,
              BLOB, TEXT, TEXT, st.one_of(st.none(), st.integers(0, 10**9))),
)
#: A read between writes: nothing folds across it.
GET = st.tuples(st.just("get"), st.tuples(st.just(None), IDS))
OPS = st.lists(st.one_of(SUBMITTED, STARTED, FINISHED, GET), max_size=30)


class Answer:
    """Stands in for the Deferred a read answers (run_batch only collects it)."""


def table(db):
    return sorted(db.execute("SELECT * FROM tasks").fetchall())


class CoalescedTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(self.dir, f)) for f in os.listdir(self.dir)])
        self.n = 0

    def open(self):
        self.n += 1
        db = open_db(os.path.join(self.dir, f"s{self.n}.sqlite"))
        self.addCleanup(db.close)
        return db

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(OPS, OPS)
    def test_the_table_ends_as_writes_one_by_one_leave_it(self, first, second):
        together, one_by_one = self.open(), self.open()
        retention = Retention(None, None)
        for batch in (first, second):  # two batches: the second writes to rows of the first
            batch = [(op, (Answer(), args[1]) if op == "get" else args) for op, args in batch]
            done = run_batch(together, batch, retention)
            reads_together = [value for _, _, value in done.answers]
            reads_alone = []
            for item in batch:
                reads_alone += [value for _, _, value in run_batch(one_by_one, [item], retention).answers]
            self.assertEqual(reads_together, reads_alone, "a read sees the writes before it, and only those")
        self.assertEqual(table(together), table(one_by_one))

    def test_a_task_of_one_batch_is_one_row(self):
        batch = [
            ("submitted", ("t1", "f", 1.0, b"payload", "{}")),
            ("started", ("e0", 2.0, "t1")),
            ("finished", ("t1", "ok", 3.0, "e0", None, b"value", "out", "", None)),
        ]
        ops = coalesced(batch)
        self.assertEqual([op for op, _ in ops], ["record"])
        db = self.open()
        run_batch(db, batch, Retention(None, None))
        row = db.execute("SELECT status, started_at, finished_at, engine, result, stdout, payload FROM tasks").fetchone()
        self.assertEqual(row, ("ok", 2.0, 3.0, "e0", b"value", "out", None))

    def test_writes_do_not_fold_across_a_read(self):
        answer = Answer()
        batch = [
            ("submitted", ("t1", "f", 1.0, b"p", "{}")),
            ("get", (answer, "t1")),
            ("finished", ("t1", "ok", 3.0, "e0", None, b"v", "", "", None)),
        ]
        self.assertEqual([op for op, _ in coalesced(batch)], ["record", "get", "finished"])
        done = run_batch(self.open(), batch, Retention(None, None))
        self.assertEqual(done.answers[0][2]["status"], "submitted")

    def test_a_lone_write_stays_as_it_is(self):
        for batch in ([("started", ("e0", 2.0, "t1"))], [("finished", ("t1", "ok", 3.0, "e0", None, b"v", "", "", None))]):
            self.assertEqual(coalesced(batch), batch)

    def test_started_and_finished_of_an_earlier_submit_are_one_statement(self):
        db = self.open()
        run_batch(db, [("submitted", ("t1", "f", 1.0, b"p", "{}"))], Retention(None, None))
        batch = [("started", ("e0", 2.0, "t1")), ("finished", ("t1", "ok", 3.0, "e1", None, b"v", "", "", None))]
        self.assertEqual([op for op, _ in coalesced(batch)], ["finished_started"])
        run_batch(db, batch, Retention(None, None))
        row = db.execute("SELECT status, started_at, finished_at, engine, payload FROM tasks").fetchone()
        self.assertEqual(row, ("ok", 2.0, 3.0, "e1", None))
