"""The SQLite side of the task store: schema, batches of operations, reads, retention.

Everything here takes an open ``sqlite3.Connection`` and returns what it read;
nothing here knows threads or the reactor (:mod:`ipcluster.store.sqlite` decides
where a batch runs and fires the Deferreds).  A *batch* is a list of
``(op, args)``: writes (``submitted``, ``started``, ``finished``), reads whose
first argument is the Deferred to answer (``get``, ``unfinished``, ``purge``),
``commit`` (Deferreds to fire once the batch is committed), ``trim``,
``checkpoint`` and ``close``.
"""
from __future__ import annotations

import itertools
import json
import os
import sqlite3
import time
from typing import Optional

from ipcluster.store import record as _record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task TEXT PRIMARY KEY,
    name TEXT,
    status TEXT NOT NULL,
    submitted_at REAL,
    started_at REAL,
    finished_at REAL,
    engine TEXT,
    error TEXT,
    result BLOB,
    stdout TEXT,
    stderr TEXT,
    payload BLOB,
    options TEXT,
    not_kept INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);
"""

#: Columns added since the first schema (a store file made by an older controller gets them).
_ADDED_COLUMNS = (("payload", "BLOB"), ("options", "TEXT"), ("not_kept", "INTEGER"))

_COLUMNS = "task, name, status, submitted_at, started_at, finished_at, engine, error, result, stdout, stderr, not_kept"

#: The WAL is truncated back to this size after a checkpoint has emptied it.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

WRITES = {
    "submitted": (
        "INSERT OR REPLACE INTO tasks (task, name, status, submitted_at, payload, options) "
        "VALUES (?, ?, 'submitted', ?, ?, ?)"
    ),
    "started": "UPDATE tasks SET engine=?, started_at=?, status='running' WHERE task=?",
    "finished": (
        "INSERT INTO tasks (task, status, finished_at, engine, error, result, stdout, stderr, not_kept) "
        "VALUES (?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT(task) DO UPDATE SET status=excluded.status, finished_at=excluded.finished_at, "
        "engine=excluded.engine, error=excluded.error, result=excluded.result, stdout=excluded.stdout, "
        "stderr=excluded.stderr, not_kept=excluded.not_kept, payload=NULL"
    ),
    # What ``started`` and the ``finished`` after it make (:func:`coalesced`): finished, and the
    # start time if the row was there (``started`` changes nothing in a row that is not).
    "finished_started": (
        "INSERT INTO tasks (task, status, finished_at, engine, error, result, stdout, stderr, not_kept) "
        "VALUES (?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT(task) DO UPDATE SET status=excluded.status, finished_at=excluded.finished_at, "
        "engine=excluded.engine, error=excluded.error, result=excluded.result, stdout=excluded.stdout, "
        "stderr=excluded.stderr, not_kept=excluded.not_kept, payload=NULL, started_at=?"
    ),
    # The journal's epoch whose records this transaction commits (``journal.py``).
    "applied": "INSERT OR REPLACE INTO meta (key, value) VALUES ('journal_epoch', ?)",
    # A whole record: what ``submitted`` and the ``started``/``finished`` after it in one batch make
    # (:func:`coalesced`).
    "record": (
        "INSERT OR REPLACE INTO tasks (task, name, status, submitted_at, started_at, finished_at, engine, error, "
        "result, stdout, stderr, payload, options, not_kept) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    ),
}

#: Positions in a ``record`` row.
_STATUS, _STARTED_AT, _ENGINE, _PAYLOAD = 2, 4, 6, 11
#: Where a ``finished`` write's values (after its task id) go in a ``record`` row: status,
#: finished_at, engine, error, result, stdout, stderr, not_kept.
_FINISHED_COLUMNS = (2, 5, 6, 7, 8, 9, 10, 13)


def open_db(path: str) -> sqlite3.Connection:
    """Open (or create, 0600) the store file in WAL mode, migrated to the current schema.

    Commits never fsync (``synchronous=NORMAL``: a commit survives the process being
    killed, a power loss may take the last ones) and never checkpoint by themselves
    (``wal_autocheckpoint=0``): checkpoints, which do fsync, are separate ``checkpoint``
    operations that the store runs off the reactor.  The connection may be used from
    more than one thread, never from two at once.
    """
    # Results and captured output are private: create the file 0600 (SQLite gives its -wal
    # and -shm files the same mode).
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for suffix in ("", "-wal", "-shm"):  # also files made before they were private
        if os.path.exists(path + suffix):
            os.chmod(path + suffix, 0o600)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        _migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Create the table, or add the columns a store file of an older controller lacks."""
    db.executescript(_SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    for column, kind in _ADDED_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {kind}")


def applied_epoch(db: sqlite3.Connection) -> int:
    """The last journal epoch committed (``journal.py``); 0 if none."""
    row = db.execute("SELECT value FROM meta WHERE key='journal_epoch'").fetchone()
    return row[0] if row else 0


class Batch:
    """What running one batch gave: Deferreds to answer and the close request, if any."""

    __slots__ = ("answers", "closing", "checkpoint_error")

    def __init__(self) -> None:
        #: ``(deferred, ok, value)`` in the order they are to fire.
        self.answers: list = []
        self.closing = None
        self.checkpoint_error: Optional[Exception] = None


def run_batch(db: sqlite3.Connection, batch: list, retention: "Retention") -> Batch:
    """Run ``batch`` in one transaction (``checkpoint`` after it, outside any transaction).

    ``commit`` Deferreds are answered after the COMMIT, reads inside the transaction; on an
    error everything is rolled back and every Deferred of the batch not yet answered fails
    (:class:`BatchFailed` carries them).
    """
    done = Batch()
    try:
        db.execute("BEGIN")
        waiting, checkpoint = _run_ops(db, coalesced(batch), retention, done)
        db.execute("COMMIT")
    except Exception as e:  # e.g. "database is locked", a full disk: fail this batch, keep serving
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise BatchFailed(e, _failed(batch, done, e)) from e
    done.answers += [(d, True, None) for d in waiting]
    if checkpoint:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            done.checkpoint_error = e
    return done


def coalesced(batch: list) -> list:
    """``batch`` with each task's writes of the batch folded into as few statements as leave
    the same row.

    A task's ``started`` and ``finished`` after its ``submitted`` make one ``record`` row (the
    row those writes would leave, written once); a ``started`` and the ``finished`` after it
    make one ``finished_started``.  A task of a few milliseconds is submitted, started and
    finished within one batch: one statement instead of three, and its result's commit
    writes one row.  Nothing folds across an operation that is not a write (a read must see
    the writes made before it, and only those).
    """
    out: list = []
    records: dict = {}  # task id -> its record row (a list, in ``out``)
    started: dict = {}  # task id -> where its last ``started`` (of a row not in ``records``) is in ``out``
    for item in batch:
        op, args = item
        if op == "submitted":
            task_id, name, submitted_at, payload, options = args
            row = [task_id, name, "submitted", submitted_at, None, None, None, None, None, None, None, payload,
                   options, None]
            records[task_id] = row
            out.append(("record", row))
        elif op == "started" and args[2] in records:
            row = records[args[2]]  # UPDATE ... SET engine, started_at, status='running'
            row[_ENGINE], row[_STARTED_AT], row[_STATUS] = args[0], args[1], "running"
        elif op == "finished" and args[0] in records:
            row = records[args[0]]
            for column, value in zip(_FINISHED_COLUMNS, args[1:]):
                row[column] = value
            row[_PAYLOAD] = None
        elif op == "finished" and args[0] in started:
            at = started.pop(args[0])
            _, (_, started_at, _) = out[at]
            out[at] = None
            out.append(("finished_started", (*args, started_at)))
        else:
            if op == "started":
                started[args[2]] = len(out)
            elif op not in WRITES:
                records.clear()
                started.clear()
            out.append(item)
    return [item for item in out if item is not None]


def _run_ops(db: sqlite3.Connection, batch: list, retention: "Retention", done: Batch) -> tuple[list, bool]:
    """Run the operations of ``batch`` in order; the ``commit`` Deferreds, and whether to checkpoint."""
    waiting: list = []
    checkpoint = False
    for op, rows in itertools.groupby(batch, key=lambda item: item[0]):
        sql = WRITES.get(op)
        if sql is not None:
            db.executemany(sql, [args for _, args in rows])
        elif op == "commit":
            for _, (ds,) in rows:
                waiting.extend(ds)
        elif op == "close":
            done.closing = next(rows)[1][0]
        elif op == "trim":
            retention.trim(db)
        elif op == "checkpoint":
            checkpoint = True
        else:
            for _, (d, *args) in rows:
                done.answers.append((d, True, READS[op](db, *args)))
    return waiting, checkpoint


def _failed(batch: list, done: Batch, error: Exception) -> Batch:
    """What a rolled-back batch answers: the reads made before the error, as read; every
    Deferred not answered yet fails with ``error``."""
    answered = {id(d) for d, _, _ in done.answers}
    failed = Batch()
    failed.answers = list(done.answers)
    for op, args in batch:
        if op in READS and id(args[0]) not in answered:
            failed.answers.append((args[0], False, error))
        elif op == "commit":
            failed.answers.extend((d, False, error) for d in args[0])
        elif op == "close":
            failed.closing = args[0]
    return failed


class BatchFailed(Exception):
    """A batch was rolled back: ``error``, and ``done`` with its Deferreds failed."""

    def __init__(self, error: Exception, done: Batch) -> None:
        super().__init__(error)
        self.error, self.done = error, done


# -- reads -------------------------------------------------------------------------------


def _row(row) -> Optional[dict]:
    if row is None:
        return None
    r = _record(*row)
    if r["error"] is not None:
        r["error"] = json.loads(r["error"])
    return r


def _read_get(db: sqlite3.Connection, task_id: str) -> Optional[dict]:
    return _row(db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE task=?", (task_id,)).fetchone())


def _read_unfinished(db: sqlite3.Connection) -> list:
    rows = db.execute(
        f"SELECT {_COLUMNS}, payload, options FROM tasks WHERE status IN ('submitted', 'running') "
        "ORDER BY submitted_at, rowid"
    ).fetchall()
    found = []
    for row in rows:
        r = _row(row[:-2])
        r["payload"] = row[-2]
        try:
            r["options"] = json.loads(row[-1]) if row[-1] else {}
        except ValueError:
            r["options"] = {}
        found.append(r)
    return found


def _read_purge(db: sqlite3.Connection, older_than: Optional[float]) -> int:
    if older_than is None:
        return db.execute("DELETE FROM tasks WHERE status IN ('ok', 'failed')").rowcount
    return db.execute(
        "DELETE FROM tasks WHERE status IN ('ok', 'failed') AND finished_at <= ?", (time.time() - older_than,)
    ).rowcount


#: Operations that answer their Deferred with what they read (purge answers with its count).
READS = {"get": _read_get, "purge": _read_purge, "unfinished": _read_unfinished}


class Retention:
    """Finished tasks older than ``max_age`` seconds, and beyond the newest ``max_tasks``, go."""

    def __init__(self, max_age: Optional[float], max_tasks: Optional[int]) -> None:
        self.max_age, self.max_tasks = max_age, max_tasks

    def trim(self, db: sqlite3.Connection) -> None:
        if self.max_age is not None:
            db.execute("DELETE FROM tasks WHERE status IN ('ok', 'failed') AND finished_at < ?", (time.time() - self.max_age,))
        if self.max_tasks is not None:
            (n,) = db.execute("SELECT COUNT(*) FROM tasks WHERE status IN ('ok', 'failed')").fetchone()
            if n > self.max_tasks:
                db.execute(
                    "DELETE FROM tasks WHERE task IN (SELECT task FROM tasks WHERE status IN ('ok', 'failed') "
                    "ORDER BY finished_at LIMIT ?)",
                    (n - self.max_tasks,),
                )


def blob_bytes(op: str, args: tuple) -> int:
    """Bytes of payload, result and output a write carries (what makes it slow to run)."""
    if op == "submitted":
        return len(args[3] or b"")
    if op == "finished":
        return len(args[5] or b"") + len(args[6] or "") + len(args[7] or "")
    return 0


def fire(answers: list) -> None:
    """Fire ``(deferred, ok, value)`` answers in order (on the reactor thread)."""
    for d, ok, value in answers:
        if ok:
            d.callback(value)
        else:
            d.errback(value)
