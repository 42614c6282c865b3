"""Tasks a restarted controller finds unfinished in its store, and what becomes of them.

At start the controller loads every task the store holds as *submitted* or
*running* (the old controller's tasks in flight) and keeps them *recovering*:
waiting, known to ``fetch`` and to dependencies, sent to no engine.  For the
grace period (``--recovery-grace``, 15 s by default: three times the engines'
default silence limit, so that engines of the old controller have noticed it
is gone, re-registered and reported) the engines settle them:

* an engine whose pong says it runs a recovering task **claims** it: the task
  is assigned to it and runs on, and its result is taken as usual;
* an engine that re-sends a result it could not deliver (``engine/outbox.py``)
  **finishes** a recovering task with it, whichever engine sends it, once: a
  second copy finds the task finished and is dropped (counted).

When the grace is over, each task nobody settled is **re-queued** (its payload
is in the store) or, if its payload was too large to keep
(``--store-max-payload``), **fails** with :class:`~ipcluster.errors.TaskLost`.
A re-queued task may so run twice: once on an engine of the old controller
whose result was lost with it, once here (at-least-once execution).

Clients do not survive a controller: a client that reconnects re-announces its
tasks (``fetch``) and is added to their clients, or gets their results from the store.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ipcluster import errors
from ipcluster.controller.registry import EngineRecord
from ipcluster.scheduler.rescue import stranded_error
from ipcluster.scheduler.running import reported_seconds
from ipcluster.scheduler.task import DEFAULT_RETRIES, RECOVERING, WAITING, Task
from ipcluster.transport.wire import Message

if TYPE_CHECKING:
    from ipcluster.scheduler.scheduler import Scheduler

#: Seconds recovered tasks wait for the engines' reports before they are re-queued or failed.
DEFAULT_RECOVERY_GRACE = 15.0


class Recovery:
    """The recovering tasks of one controller start, and the counts of what became of them."""

    log = Logger()

    def __init__(self, scheduler: "Scheduler", grace: float = DEFAULT_RECOVERY_GRACE) -> None:
        self.scheduler = scheduler
        self.grace = grace
        self.recovering: dict[str, Task] = {}
        #: recovered (loaded), claimed (an engine runs it), results (re-sent by an engine),
        #: requeued (after the grace), lost (failed: payload not kept).
        self.counts = dict.fromkeys(("recovered", "claimed", "results", "requeued", "lost"), 0)
        self._timer: Optional[IDelayedCall] = None

    def load(self, records: Iterable[dict]) -> int:
        """Take the store's unfinished records; the number now recovering."""
        s = self.scheduler
        loaded = []
        for record in records:
            if record["task"] in s.tasks:
                continue
            task = _task(record, s)
            s.tasks[task.id] = task
            self.recovering[task.id] = task
            loaded.append((task, record.get("options") or {}))
        for task, options in loaded:  # waiting on each other as before
            if task.inputs:  # (once every recovered task is in: those in flight hand their values over)
                s.inputs.load(task, s.store)
            for dep in options.get("after") or ():
                if dep in self.recovering:
                    task.unmet.add(dep)
                    s.dependencies.dependents.setdefault(dep, set()).add(task.id)
        self.counts["recovered"] += len(loaded)
        if loaded:
            self.log.info(
                "recovered {n} task(s) in flight when the controller stopped; engines have {grace:g} s to "
                "report them, then they are queued again (--recovery-grace)", n=len(loaded), grace=self.grace,
            )
            if self._timer is None:
                self._timer = s.clock.callLater(self.grace, self.expire)
        return len(loaded)

    def _settle(self, task: Task) -> None:
        """``task`` is recovering no more: it waits on its dependencies only."""
        del self.recovering[task.id]
        task.unmet.discard(RECOVERING)

    def claim(self, record: EngineRecord, task_id: object, running_for: object) -> None:
        """An engine's pong says it runs ``task_id``: a recovering task is now assigned to it, running."""
        task = self.recovering.get(task_id) if isinstance(task_id, str) else None
        if task is None or not task.may_run_on(record.id):
            return
        s = self.scheduler
        self._settle(task)
        s.dependencies.detach(task)
        started_at = s.clock.seconds() - (reported_seconds(running_for) or 0.0)
        task.lifecycle.dependencies_met()
        task.lifecycle.assign(record.id)
        task.lifecycle.start(started_at)
        s.dispatcher.assignments.add(record.id, task)
        s.store.started(task.id, record.id, started_at)
        self.counts["claimed"] += 1
        self.log.info("engine {engine} runs recovered task {task}", engine=record.id, task=task.id)

    def result(self, engine_id: str, msg: Message) -> bool:
        """A result from an engine the task is not assigned to: taken (True) if the task is recovering."""
        task = self.recovering.get(msg["task"])
        if task is None:
            return False
        s = self.scheduler
        self._settle(task)
        s.dependencies.detach(task)
        task.lifecycle.dependencies_met()
        task.lifecycle.assign(engine_id)
        task.lifecycle.result()
        self.counts["results"] += 1
        fields = {k: msg.get(k) for k in ("ok", "error", "started", "finished") if msg.get(k) is not None}
        s._finish(task, bool(msg["ok"]), fields, list(msg.payloads), msg.get("error"))
        return True

    def expire(self) -> None:
        """The grace is over: queue again what nobody reported (or fail it, if its payload was not kept)."""
        self._timer = None
        s = self.scheduler
        left = list(self.recovering.values())
        for task in left:
            self._settle(task)
        lost = requeued = 0
        for task in left:
            if task.state != WAITING:  # (failed meanwhile: a dependency was lost)
                continue
            if task.payload is None:
                lost += 1
                s._fail(task, task.lifecycle.stranded, errors.TaskLost(
                    f"task {task.id} was in flight when the controller stopped, no engine reported it within "
                    f"{self.grace:g} s (--recovery-grace), and its payload was too large to be kept in the store "
                    "(--store-max-payload): it cannot run again; submit it again"
                ))
                continue
            requeued += 1
            s._settle(task, None)  # ready if nothing else is unmet (its inputs packed)
        self.counts["lost"] += lost
        self.counts["requeued"] += requeued
        if left:
            self.log.info("recovery: {requeued} task(s) queued again, {lost} lost (payload not kept)",
                          requeued=requeued, lost=lost)
        for task in s.dispatcher.stranded():
            s._fail(task, task.lifecycle.stranded, stranded_error(task))
        s.dispatcher.dispatch()
        s.watch.check()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.recovering.clear()


def _task(record: dict, s: "Scheduler") -> Task:
    options = record.get("options") or {}
    engines = options.get("engines")
    timeout = options.get("timeout")
    task = Task(
        record["task"], record.get("payload"), record.get("submitted_at") or s.clock.seconds(),
        name=record.get("name") or "", engines=frozenset(engines) if engines else None,
        retries=int(options.get("retries", DEFAULT_RETRIES)), timeout=float(timeout) if timeout else None,
        run_after_failed=options.get("after_failed") == "run", clients=[], clock=s.clock, on_timeout=s._timed_out,
    )
    task.unmet.add(RECOVERING)
    task.inputs = tuple(options.get("inputs") or ())  # futures as inputs: gathered again (inputs.py)
    return task
