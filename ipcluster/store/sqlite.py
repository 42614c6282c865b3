"""The SQLite task store (the default): ``<data dir>/tasks.sqlite``, WAL mode.

Writes are gathered on the reactor and applied by a thread of its own in one
transaction per batch, so the reactor never waits on the disk; reads come
back as Deferreds.  Writes nobody waits for go every ``batch_seconds`` (50 ms);
``committed()`` sends what is gathered at the end of the reactor's turn, and
fires once that transaction is committed: every caller of one turn, and every
batch queued while the thread was busy, share one commit (group commit).
With ``synchronous=NORMAL`` in WAL mode a commit survives the controller's
process being killed; a power loss may take the last commits.
"""
from __future__ import annotations

import itertools
import json
import os
import queue
import sqlite3
import threading
import time
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ipcluster.interfaces import ITaskStore
from ipcluster.store import FAILED, OK, record as _record


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
"""

#: Columns added since the first schema (a store file made by an older controller gets them).
_ADDED_COLUMNS = (("payload", "BLOB"), ("options", "TEXT"), ("not_kept", "INTEGER"))

_COLUMNS = "task, name, status, submitted_at, started_at, finished_at, engine, error, result, stdout, stderr, not_kept"


@implementer(ITaskStore)
class SQLiteTaskStore:
    """SQLite in WAL mode, written by a thread of its own in batched transactions."""

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor=None,
        max_age: Optional[float] = 7 * 24 * 3600.0,
        max_tasks: Optional[int] = 1_000_000,
        batch_seconds: float = 0.05,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.path = str(path)
        self.reactor = reactor
        self.max_age = max_age
        self.max_tasks = max_tasks
        self.batch_seconds = batch_seconds
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._pending: list = []
        self._waiters: list = []  # committed() Deferreds of the writes gathered now
        self._flush_call = None
        self._soon = None  # the end-of-turn flush that committed() asked for
        self._closed = False
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="ipcluster-store", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    # -- writes (fire and forget): gathered on the reactor, handed over once a batch ---------

    def _write(self, op: str, args: tuple) -> None:
        self._pending.append((op, args))
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(self.batch_seconds, self._flush)

    def _flush(self) -> None:
        for call in (self._flush_call, self._soon):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._soon = None
        if self._pending or self._waiters:
            batch, self._pending = self._pending, []
            if self._waiters:
                batch.append(("commit", (self._waiters,)))
                self._waiters = []
            self._queue.put(batch)

    def committed(self) -> defer.Deferred:
        if self._closed:
            return defer.fail(RuntimeError("the task store is closed"))
        d = defer.Deferred()
        self._waiters.append(d)
        if self._soon is None:
            self._soon = self.reactor.callLater(0, self._flush)
        return d

    def submitted(self, task_id, name, submitted_at, payload=None, options=None) -> None:
        self._write("submitted", (task_id, name, submitted_at, payload, json.dumps(options or {})))

    def started(self, task_id, engine, started_at) -> None:
        self._write("started", (engine, started_at, task_id))

    def finished(self, task_id, ok, finished_at, engine, error, result, stdout, stderr, not_kept=None) -> None:
        self._write(
            "finished",
            (task_id, OK if ok else FAILED, finished_at, engine, json.dumps(error) if error is not None else None, result,
             stdout, stderr, not_kept),
        )

    # -- reads -------------------------------------------------------------------

    def _ask(self, op: str, *args) -> defer.Deferred:
        if self._closed:
            return defer.fail(RuntimeError("the task store is closed"))
        d = defer.Deferred()
        self._flush()  # a read sees every write made before it
        self._queue.put([(op, (d, *args))])
        return d

    def get(self, task_id) -> defer.Deferred:
        return self._ask("get", task_id)

    def purge(self, older_than=None) -> defer.Deferred:
        return self._ask("purge", older_than)

    def unfinished(self) -> defer.Deferred:
        return self._ask("unfinished")

    def close(self) -> defer.Deferred:
        if self._closed:
            return defer.succeed(None)
        d = self._ask("close")
        self._closed = True
        return d

    # -- the writer thread ------------------------------------------------------------

    def _reply(self, d: defer.Deferred, ok: bool, value: Any) -> None:
        self.reactor.callFromThread(d.callback if ok else d.errback, value)

    def _run(self) -> None:
        try:
            # Results and captured output are private: create the file 0600 (SQLite gives
            # its -wal and -shm files the same mode).
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            for suffix in ("", "-wal", "-shm"):  # also files made before they were private
                if os.path.exists(self.path + suffix):
                    os.chmod(self.path + suffix, 0o600)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db)
        except BaseException as e:
            self._error = RuntimeError(f"cannot open the task store {self.path}: {e}")
            self._ready.set()
            return
        self._ready.set()
        last_trim = time.monotonic()
        closing = None
        try:
            while closing is None:
                batch = self._queue.get()
                while len(batch) < 20_000:  # take what else is waiting, in order
                    try:
                        batch.extend(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    closing = self._apply(db, batch)
                    if closing is None and time.monotonic() - last_trim > 60:
                        last_trim = time.monotonic()
                        self._trim(db)
                except Exception as e:  # e.g. "database is locked", a full disk: keep serving
                    self.log.error("task store: {e!r}", e=e)
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
        finally:
            db.close()  # checkpoints the WAL and removes it
            if closing is not None:
                # Only now: once close() fires, the process may exit at once.
                self._reply(closing, True, None)

    _WRITES = {
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
    }

    def _apply(self, db: sqlite3.Connection, batch: list) -> Optional[defer.Deferred]:
        """Run one batch of operations in one transaction; the close request's Deferred, if any.

        ``committed()`` waiters are answered after the COMMIT, reads inside the transaction.
        """
        answered: set = set()
        waiting: list = []
        try:
            db.execute("BEGIN")
            closing = self._run_batch(db, batch, answered, waiting)
            db.execute("COMMIT")
        except Exception as e:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.log.error("task store write failed: {e!r}", e=e)
            for op, args in batch:
                if op in self._READS and id(args[0]) not in answered:
                    self._reply(args[0], False, e)
                elif op == "commit":
                    self._reply_all(args[0], False, e)
            return next((args[0] for op, args in batch if op == "close"), None)
        self._reply_all(waiting, True, None)
        return closing

    def _run_batch(self, db: sqlite3.Connection, batch: list, answered: set, waiting: list) -> Optional[defer.Deferred]:
        closing = None
        for op, rows in itertools.groupby(batch, key=lambda item: item[0]):
            sql = self._WRITES.get(op)
            if sql is not None:
                db.executemany(sql, [args for _, args in rows])
            elif op == "close":
                closing = next(rows)[1][0]
            elif op == "commit":
                waiting.extend(d for _, (ds,) in rows for d in ds)
            else:
                for _, (d, *args) in rows:
                    self._reply(d, True, self._READS[op](self, db, *args))
                    answered.add(id(d))
        return closing

    def _reply_all(self, waiting: list, ok: bool, value: Any) -> None:
        if waiting:
            self.reactor.callFromThread(_fire_all, waiting, ok, value)

    def _read_get(self, db: sqlite3.Connection, task_id: str) -> Optional[dict]:
        row = db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE task=?", (task_id,)).fetchone()
        return self._row(row)

    def _read_unfinished(self, db: sqlite3.Connection) -> list:
        rows = db.execute(
            f"SELECT {_COLUMNS}, payload, options FROM tasks WHERE status IN ('submitted', 'running') "
            "ORDER BY submitted_at, rowid"
        ).fetchall()
        found = []
        for row in rows:
            r = self._row(row[:-2])
            r["payload"] = row[-2]
            try:
                r["options"] = json.loads(row[-1]) if row[-1] else {}
            except ValueError:
                r["options"] = {}
            found.append(r)
        return found

    def _read_purge(self, db: sqlite3.Connection, older_than: Optional[float]) -> int:
        if older_than is None:
            return db.execute("DELETE FROM tasks WHERE status IN ('ok', 'failed')").rowcount
        return db.execute(
            "DELETE FROM tasks WHERE status IN ('ok', 'failed') AND finished_at <= ?", (time.time() - older_than,)
        ).rowcount

    #: Operations that answer their Deferred with what they read (purge answers with its count).
    _READS = {"get": _read_get, "purge": _read_purge, "unfinished": _read_unfinished}

    @staticmethod
    def _row(row) -> Optional[dict]:
        if row is None:
            return None
        r = _record(*row)
        if r["error"] is not None:
            r["error"] = json.loads(r["error"])
        return r

    def _trim(self, db: sqlite3.Connection) -> None:
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


def _migrate(db: sqlite3.Connection) -> None:
    """Create the table, or add the columns a store file of an older controller lacks."""
    db.executescript(_SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    for column, kind in _ADDED_COLUMNS:
        if column not in have:
            db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {kind}")


def _fire_all(waiting: list, ok: bool, value: Any) -> None:
    for d in waiting:
        if ok:
            d.callback(value)
        else:
            d.errback(value)
