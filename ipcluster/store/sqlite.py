"""The SQLite task store (the default): ``<data dir>/tasks.sqlite``, WAL mode.

Writes are gathered on the reactor.  Writes nobody waits for go every
``batch_seconds`` (50 ms); ``committed()`` sends what is gathered at the end of
the reactor's turn and fires once that batch is safe: every caller of one turn
shares one commit (group commit).  A small batch (at most :data:`INLINE_BYTES`
of payloads and results, :data:`INLINE_ROWS` rows) is committed right there on
the reactor thread -- with ``synchronous=NORMAL`` in WAL mode a commit is a
write into the OS's cache, no fsync, 0.1-0.2 ms from Python -- which spares
every task two thread wake-ups and the GIL hand-offs they cause.  When someone
waits for such a batch (a result to deliver), it first goes into the store's
one-batch journal (``journal.py``: one ``pwrite``), the waiters are answered
(the results go out), and SQLite commits it right after, in the same call: the
commit is off the result's way to its client, and a crash in between is mended
from the journal at the next open.  Everything that may take long runs on the
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
from ipcluster.store.journal import BatchJournal
from ipcluster.store.sqlitedb import BatchFailed, Retention, blob_bytes, fire, open_db, run_batch

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
        self._window = False  # a batch's waiters are being answered before its commit
        self._held_asks: list = []  # reads (with the writes before them) asked meanwhile
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

    def _replay_journal(self) -> BatchJournal:
        """Commit what the journal holds (a batch whose results went out just before the
        controller stopped); the journal, empty."""
        writes = journal.held(self.path)
        if writes:
            try:
                run_batch(self._db, writes, self._retention)
            except BatchFailed as failed:
                self._db.close()
                raise RuntimeError(
                    f"cannot replay the task store's last batch from {self.path + journal.SUFFIX}: {failed.error!r} "
                    "(the file is left as it is)"
                ) from failed.error
            self.log.info("task store: committed the last batch's {n} write(s) from its journal", n=len(writes))
        slot = BatchJournal(self.path)
        slot.holding = True
        slot.clear()
        return slot

    # -- writes (fire and forget): gathered on the reactor, committed once a batch ----------

    def _write(self, op: str, args: tuple) -> None:
        self._pending.append((op, args))
        self._pending_bytes += blob_bytes(op, args)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(self.batch_seconds, self._flush)

    def _flush(self) -> None:
        if self._window:  # (called from a result's delivery: see _journal_first)
            if not self._soon:
                self._soon = True
                self._call_soon(self._flush)
            return
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call, self._soon = None, False
        if not (self._pending or self._waiters):
            return
        if self._closed:  # (committed() already refuses; writes made after close() are not kept)
            if self._pending:
                self.log.info("task store closed: {n} late writes not kept", n=len(self._pending))
            self._pending, self._pending_bytes, self._waiters = [], 0, []
            return
        batch, nbytes = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        waiters, self._waiters = self._waiters, []
        if waiters:
            batch.append(("commit", (waiters,)))
        self._commits += 1
        if self._housekeeping(batch) or self._handed or nbytes > INLINE_BYTES or len(batch) > INLINE_ROWS:
            self._hand(batch)
        elif waiters:
            self._journal_first(batch[:-1], waiters)
        else:
            self._commit_here(batch)

    def _commit_here(self, batch: list) -> None:
        """Commit ``batch`` on the reactor thread; then the journal holds nothing."""
        try:
            done = run_batch(self._db, batch, self._retention)
        except BatchFailed as failed:
            self.log.error("task store write failed: {e!r}", e=failed.error)
            done = failed.done
        self._journal.clear()
        fire(done.answers)

    def _journal_first(self, writes: list, waiters: list) -> None:
        """A small batch someone waits for: into the journal, the waiters answered (results go
        out), then committed (``journal.py``).  Whatever the waiters' callbacks ask of the store
        meanwhile comes after the commit: reads are held (:meth:`_ask`), flushes put off."""
        try:
            self._journal.hold(writes)
        except (OSError, TypeError, ValueError, OverflowError) as e:  # (no room; a value msgpack cannot pack)
            self.log.warn("task store journal not written ({e!r}): the batch is committed first", e=e)
            self._commit_here(writes + [("commit", (waiters,))])
            return
        self._window = True
        try:
            fire([(d, True, None) for d in waiters])
        finally:
            self._window = False
        self._commit_here(writes)
        held, self._held_asks = self._held_asks, []
        for batch in held:
            self._hand(batch)

    def _checkpoint_failed(self, done) -> None:
        if done.checkpoint_error is not None:  # the WAL stays; the next checkpoint tries again
            self.log.warn("task store checkpoint failed: {e!r}", e=done.checkpoint_error)

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

    def _hand(self, batch: list) -> None:
        """Queue ``batch`` for the store's thread (it reports back through :meth:`_worked`)."""
        self._handed += 1
        self._queue.put(batch)

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
        if self._window:  # (asked while a batch's waiters are answered: after its commit)
            batch, self._pending, self._pending_bytes = self._pending + [(op, (d, *args))], [], 0
            self._held_asks.append(batch)
            return d
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
                batch = self._queue.get()
                batches = 1
                while len(batch) < MERGE_MOST:  # take what else is waiting, in order
                    try:
                        batch.extend(self._queue.get_nowait())
                    except queue.Empty:
                        break
                    batches += 1
                try:
                    done = run_batch(self._db, batch, self._retention)
                except BatchFailed as failed:
                    self.log.error("task store write failed: {e!r}", e=failed.error)
                    done = failed.done
                self._checkpoint_failed(done)
                closing = done.closing
                self.reactor.callFromThread(self._worked, batches, done.answers)
        finally:
            self._db.close()  # checkpoints the WAL and removes it
            self._journal.close(remove=closing is not None)
            if closing is not None:
                # Only now: once close() fires, the process may exit at once.
                self.reactor.callFromThread(closing.callback, None)
