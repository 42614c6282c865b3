"""The SQLite task store (the default): ``<data dir>/tasks.sqlite``, WAL mode.

Writes are gathered on the reactor.  Writes nobody waits for go every
``batch_seconds`` (50 ms); ``committed()`` sends what is gathered at the end of
the reactor's turn and fires once that batch is safe: every caller of one turn
shares one commit (group commit).  A small batch (at most :data:`INLINE_BYTES`
of payloads and results, :data:`INLINE_ROWS` rows) is committed right there on
the reactor thread -- with ``synchronous=NORMAL`` in WAL mode a commit is a
write into the OS's cache, no fsync, 0.1-0.2 ms from Python -- which spares
every task two thread wake-ups and the GIL hand-offs they cause.  When someone
waits for such a batch (a result to deliver), it is appended to the store's
journal instead (``journal.py``: one ``pwrite``) and the waiters are answered at
once (the results go out); SQLite commits what the journal holds with the next
batch nobody waits for (the timer, a read, a large batch), so no commit stands
on a result's way to its client, and a crash in between is mended from the
journal at the next open.  Everything that may take long runs on the
store's own thread: large batches, reads, retention, WAL checkpoints (the only
fsyncs, every :data:`CHECKPOINT_EVERY` commits), and every batch that comes
while that thread still works (so that the order of writes is kept and the
connection is never used by two threads at once); such a batch's waiters are
answered once SQLite committed it.  What ``committed()`` promised survives the
controller's process being killed; a power loss may take the last commits.
"""
from __future__ import annotations

import queue
import json
import threading
import time
from typing import Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from ipcluster.interfaces import ITaskStore
from ipcluster.store import FAILED, OK
from ipcluster.store import journal
from ipcluster.store.journal import Journal
from ipcluster.store.sqlitedb import BatchFailed, Retention, applied_epoch, blob_bytes, fire, open_db, run_batch

#: Largest batch committed on the reactor thread: bytes of payloads, results and output ...
INLINE_BYTES = 256 * 1024
#: ... and rows.
INLINE_ROWS = 256
#: Commits between two WAL checkpoints (run on the store's thread).
CHECKPOINT_EVERY = 256
#: Seconds between two retention trims (run on the store's thread).
TRIM_EVERY = 60.0
#: Most batches the store's thread merges into one transaction.
MERGE_MOST = 20_000


@implementer(ITaskStore)
class SQLiteTaskStore:
    """SQLite in WAL mode: small batches committed on the reactor, the rest by a thread of its own."""

    log = Logger()

    def __init__(
        self,
        path: str,
        reactor=None,
        max_age: Optional[float] = 7 * 24 * 3600.0,
        max_tasks: Optional[int] = 1_000_000,
        batch_seconds: float = 0.05,
        call_soon: Optional[Callable[[Callable[[], None]], object]] = None,
    ) -> None:
        """``call_soon(f)`` runs ``f`` at the end of the reactor's turn (default
        ``reactor.callLater(0, f)``; the controller gives its :class:`~ipcluster.transport.soon.Soon`)."""
        if reactor is None:
            from twisted.internet import reactor
        self.path = str(path)
        self.reactor = reactor
        self.max_age = max_age
        self.max_tasks = max_tasks
        self.batch_seconds = batch_seconds
        self._call_soon = call_soon if call_soon is not None else (lambda f: reactor.callLater(0, f))
        try:
            self._db = open_db(self.path)
        except Exception as e:
            raise RuntimeError(f"cannot open the task store {self.path}: {e}") from e
        self._retention = Retention(max_age, max_tasks)
        self._journal = self._replay_journal()
        self._backlog: list = []  # writes in the journal, not committed yet (in order)
        self._backlog_bytes = 0
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._handed = 0  # batches handed to the thread and not reported done yet
        self._pending: list = []
        self._pending_bytes = 0
        self._waiters: list = []  # committed() Deferreds of the writes gathered now
        self._flush_call = None
        self._soon = False  # an end-of-turn flush is asked for (by committed())
        self._commits = 0  # since the last checkpoint
        self._last_trim = time.monotonic()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ipcluster-store", daemon=True)
        self._thread.start()

    def _replay_journal(self) -> Journal:
        """Commit what the journal holds if SQLite has not (results that went out just before
        the controller stopped); the journal, empty, at its next epoch."""
        epoch, writes = journal.held(self.path)
        applied = applied_epoch(self._db)
        if writes and epoch > applied:
            try:
                run_batch(self._db, writes + [("applied", (epoch,))], self._retention)
            except BatchFailed as failed:
                self._db.close()
                raise RuntimeError(
                    f"cannot commit what the task store's journal {self.path + journal.SUFFIX} holds: "
                    f"{failed.error!r} (the file is left as it is)"
                ) from failed.error
            self.log.info("task store: committed {n} write(s) from its journal", n=len(writes))
        return Journal(self.path, max(epoch, applied) + 1)

    # -- writes (fire and forget): gathered on the reactor, committed once a batch ----------

    def _write(self, op: str, args: tuple) -> None:
        self._pending.append((op, args))
        self._pending_bytes += blob_bytes(op, args)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(self.batch_seconds, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call, self._soon = None, False
        if not (self._pending or self._waiters or self._backlog):
            return
        if self._closed:
            self._drop_late()
            return
        batch, nbytes = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        waiters, self._waiters = self._waiters, []
        if waiters and self._journal_first(batch, nbytes, waiters):
            return
        journaled = bool(self._backlog)
        if journaled:
            batch, nbytes = self._with_backlog(batch, nbytes)
        if waiters:
            batch.append(("commit", (waiters,)))
        self._commits += 1
        if self._housekeeping(batch) or self._handed or nbytes > INLINE_BYTES or len(batch) > INLINE_ROWS:
            self._hand(batch, journaled)
        else:
            self._commit_here(batch, journaled)

    def _drop_late(self) -> None:
        """(Closed: committed() already refuses; writes made after close() are not kept.)"""
        if self._pending:
            self.log.info("task store closed: {n} late writes not kept", n=len(self._pending))
        self._pending, self._pending_bytes, self._waiters = [], 0, []

    def _with_backlog(self, batch: list, nbytes: int) -> tuple[list, int]:
        """``batch`` after what the journal holds, and the journal's epoch: all committed now."""
        batch = self._backlog + batch + [("applied", (self._journal.epoch,))]
        nbytes += self._backlog_bytes
        self._backlog, self._backlog_bytes = [], 0
        return batch, nbytes

    def _journal_first(self, batch: list, nbytes: int, waiters: list) -> bool:
        """A small batch someone waits for, while the thread is idle and no housekeeping is due:
        into the journal, its waiters answered at once (the results go out); SQLite commits it
        with the next batch nobody waits for (``journal.py``).  False if it did not go in."""
        if (self._handed or self._backlog_bytes + nbytes > INLINE_BYTES or len(self._backlog) + len(batch) > INLINE_ROWS
                or self._housekeeping_due()):
            return False
        try:
            if batch:
                self._journal.append(batch)
        except (OSError, TypeError, ValueError, OverflowError) as e:  # (no room; a value msgpack cannot pack)
            self.log.warn("task store journal not written ({e!r}): the batch is committed first", e=e)
            return False
        self._backlog += batch
        self._backlog_bytes += nbytes
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(self.batch_seconds, self._flush)
        fire([(d, True, None) for d in waiters])
        return True

    def _commit_here(self, batch: list, journaled: bool = False) -> None:
        """Commit ``batch`` on the reactor thread (``journaled``: with what the journal held)."""
        try:
            done = run_batch(self._db, batch, self._retention)
        except BatchFailed as failed:
            self.log.error("task store write failed: {e!r}", e=failed.error)
            done = failed.done
        if journaled:
            self._journal.reset()
        fire(done.answers)

    def _checkpoint_failed(self, done) -> None:
        if done.checkpoint_error is not None:  # the WAL stays; the next checkpoint tries again
            self.log.warn("task store checkpoint failed: {e!r}", e=done.checkpoint_error)

    def _housekeeping_due(self) -> bool:
        return self._commits >= CHECKPOINT_EVERY or time.monotonic() - self._last_trim > TRIM_EVERY

    def _housekeeping(self, batch: list) -> bool:
        """Add to ``batch`` the checkpoint and the trim that are due; True if any was (the batch
        then goes to the thread)."""
        due = False
        if self._commits >= CHECKPOINT_EVERY:
            batch.append(("checkpoint", ()))
            self._commits, due = 0, True
        if time.monotonic() - self._last_trim > TRIM_EVERY:
            batch.append(("trim", ()))
            self._last_trim, due = time.monotonic(), True
        return due

    def _hand(self, batch: list, journaled: bool = False) -> None:
        """Queue ``batch`` for the store's thread (it reports back through :meth:`_worked`);
        ``journaled``: it commits what the journal held, which then starts again."""
        self._handed += 1
        self._queue.put((batch, journaled))

    def committed(self) -> defer.Deferred:
        if self._closed:
            return defer.fail(RuntimeError("the task store is closed"))
        d = defer.Deferred()
        self._waiters.append(d)
        if not self._soon:
            self._soon = True
            self._call_soon(self._flush)
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
        batch = [(op, (d, *args))]
        self._housekeeping(batch)
        self._hand(batch)
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

    # -- the store's thread ------------------------------------------------------------

    def _worked(self, batches: int, answers: list) -> None:
        """(On the reactor.) The thread ran ``batches`` batches: answer their Deferreds."""
        self._handed -= batches
        fire(answers)

    def _run(self) -> None:
        closing = None
        try:
            while closing is None:
                first, journaled = self._queue.get()
                batch, batches = list(first), 1
                # Take what else is waiting, in order, up to one that commits the journal's
                # records (the journal starts again right after that commit: journal.py).
                while not journaled and len(batch) < MERGE_MOST:
                    try:
                        more, journaled = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    batch.extend(more)
                    batches += 1
                try:
                    done = run_batch(self._db, batch, self._retention)
                except BatchFailed as failed:
                    self.log.error("task store write failed: {e!r}", e=failed.error)
                    done = failed.done
                if journaled:
                    self._journal.reset()
                self._checkpoint_failed(done)
                closing = done.closing
                self.reactor.callFromThread(self._worked, batches, done.answers)
        finally:
            self._db.close()  # checkpoints the WAL and removes it
            self._journal.close(remove=closing is not None)
            if closing is not None:
                # Only now: once close() fires, the process may exit at once.
                self.reactor.callFromThread(closing.callback, None)
