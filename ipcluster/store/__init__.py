"""Durable task records: every task's times, engine, status, result or error, output.

``SQLiteTaskStore`` (the default, ``<data dir>/tasks.sqlite``, in
:mod:`ipcluster.store.sqlite`) writes from one thread of its own, in batches,
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


def record(task_id, name, status, submitted_at, started_at, finished_at, engine, error, result, stdout, stderr) -> dict:
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
    }
