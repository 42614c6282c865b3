"""The in-memory task store: tests and ``--store memory``.

Nothing survives the controller's process: after a restart (crash or not) no
result can be fetched and no task in flight is recovered.  ``committed`` fires
at once, so results reach their clients without waiting.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Optional

from twisted.internet import defer
from zope.interface import implementer

from ipcluster.interfaces import ITaskStore
from ipcluster.store import FAILED, OK, RUNNING, SUBMITTED, record as _record


@implementer(ITaskStore)
class MemoryTaskStore:
    """Keeps records in a dict (bounded by ``max_tasks`` finished tasks)."""

    def __init__(self, max_age: Optional[float] = None, max_tasks: Optional[int] = 100_000, clock=time) -> None:
        self.max_age = max_age
        self.max_tasks = max_tasks
        self._clock = clock
        self.records: "OrderedDict[str, dict]" = OrderedDict()
        self.finished_ids: "OrderedDict[str, None]" = OrderedDict()
        #: What a restarted controller would need of unfinished tasks: (payload, options) by id.
        self.recovery: dict[str, tuple] = {}

    def _now(self) -> float:
        return self._clock.time() if hasattr(self._clock, "time") else self._clock.seconds()

    def submitted(self, task_id, name, submitted_at, payload=None, options=None) -> None:
        self.records[task_id] = _record(task_id, name, SUBMITTED, submitted_at, None, None, None, None, None, None, None)
        self.recovery[task_id] = (payload, dict(options or {}))

    def started(self, task_id, engine, started_at) -> None:
        r = self.records.get(task_id)
        if r is not None:
            r.update(status=RUNNING, engine=engine, started_at=started_at)

    def finished(self, task_id, ok, finished_at, engine, error, result, stdout, stderr, not_kept=None) -> None:
        r = self.records.pop(task_id, None) or _record(task_id, None, None, None, None, None, None, None, None, None, None)
        r.update(status=OK if ok else FAILED, finished_at=finished_at, engine=engine, error=error, result=result,
                 stdout=stdout, stderr=stderr, not_kept=not_kept)
        self.recovery.pop(task_id, None)
        self.finished_ids[task_id] = None
        self.records[task_id] = r
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest finished records: ``finished_ids`` is in finishing order, so this
        costs only what it removes (the reactor calls it for every finished task)."""
        limit = None if self.max_age is None else self._now() - self.max_age
        while self.finished_ids:
            oldest = next(iter(self.finished_ids))
            record = self.records.get(oldest)
            too_many = self.max_tasks is not None and len(self.finished_ids) > self.max_tasks
            too_old = limit is not None and record is not None and (record["finished_at"] or 0) < limit
            if not (too_many or too_old or record is None):
                break
            del self.finished_ids[oldest]
            self.records.pop(oldest, None)

    def committed(self) -> defer.Deferred:
        """Every write is "committed" at once (in memory: nothing survives the process)."""
        return defer.succeed(None)

    def unfinished(self) -> defer.Deferred:
        found = []
        for task_id, r in self.records.items():
            if r["status"] in (SUBMITTED, RUNNING):
                payload, options = self.recovery.get(task_id, (None, {}))
                found.append(dict(r, payload=payload, options=dict(options)))
        return defer.succeed(found)

    def get(self, task_id) -> defer.Deferred:
        r = self.records.get(task_id)
        return defer.succeed(dict(r) if r is not None else None)

    def purge(self, older_than=None) -> defer.Deferred:
        limit = None if older_than is None else self._now() - older_than
        doomed = [
            k for k, r in self.records.items()
            if r["status"] in (OK, FAILED) and (limit is None or (r["finished_at"] or 0) <= limit)
        ]
        for k in doomed:
            del self.records[k]
            self.finished_ids.pop(k, None)
            self.recovery.pop(k, None)
        return defer.succeed(len(doomed))

    def close(self) -> defer.Deferred:
        return defer.succeed(None)
