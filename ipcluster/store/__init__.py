"""Durable task records: every task's times, engine, status, result or error, output.

``SQLiteTaskStore`` (the default, ``<data dir>/tasks.sqlite``, in
:mod:`ipcluster.store.sqlite`) writes in batches: small ones commit on the
reactor (no fsync), large ones, checkpoints and reads on a thread of its own,
so the reactor never waits on the disk; reads come back as Deferreds.
Retention is bounded by age and by count, and ``purge`` deletes on demand.
``MemoryTaskStore`` (:mod:`ipcluster.store.memory`) is the in-memory provider
used by tests and by ``--store memory``.  Both provide
:class:`ipcluster.interfaces.ITaskStore`.
"""
from __future__ import annotations

#: Task statuses as stored.
SUBMITTED, RUNNING, OK, FAILED = "submitted", "running", "ok", "failed"
FINISHED = (OK, FAILED)

#: Largest task payload (pickled function and arguments) written to the store at submit, so that
#: a restarted controller can run the task again: larger ones are not kept (such a task, if no
#: engine holds it after a restart, fails with TaskLost).
DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024
#: Largest result (value, stdout and stderr together) written to the store: larger ones reach
#: their clients but are not kept (``fetch`` later fails with ResultNotKept).  Every stored result
#: is written before any client sees it, so a large one would delay its own delivery by the
#: time its write takes, and make the store file grow by its size (issue 9: large results go to
#: the store only when asked for).
DEFAULT_MAX_RESULT = 8 * 1024 * 1024


def record(task_id, name, status, submitted_at, started_at, finished_at, engine, error, result, stdout, stderr,
           not_kept=None) -> dict:
    """A task's record as ``ITaskStore.get`` returns it.  ``not_kept``: the size in bytes of a
    result (value and output) that was delivered but not written (over the result limit), else None."""
    return {
        "task": task_id,
        "name": name,
        "status": status,
        "submitted_at": submitted_at,
        "started_at": started_at,
        "finished_at": finished_at,
        "engine": engine,
        "error": error,
        "result": result,
        "stdout": stdout,
        "stderr": stderr,
        "not_kept": not_kept,
    }
