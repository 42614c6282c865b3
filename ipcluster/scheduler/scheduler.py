"""The Scheduler: what wires a task's lifecycle (``task``), the ready queues and
stealing (``dispatch``, ``queues``), the dependency graph (``dependencies``) and
results (``results``) to the engines' task socket, their control channels and
the task store.

* **Retries.**  The task an engine was running when it died is rerun
  elsewhere up to ``retries`` times, then fails with ``EngineDied``; the tasks
  queued behind it go back unharmed (``rescue``).  A result is accepted only
  from the engine the task is assigned to, so a task never yields two results.
* **No engines.**  Ready tasks that may run anywhere fail with ``NoEngines``
  once no engine has been there, nor coming, for ``no_engine_timeout`` s (``noengines``).
* **Timeouts.**  ``timeout`` counts from the task's start; at the deadline the
  task fails with ``TaskTimeout`` and the engine gets a SIGINT aimed at it.

Finished tasks leave memory (the store keeps them).  The scheduler is the one
writer of ``EngineRecord.running_task`` and ``task_started_at``: from the
engines' ``started`` and ``result`` messages, and from their pongs through
:meth:`Scheduler.engine_reported`.
"""
from __future__ import annotations

import functools
import signal
from typing import Callable, Iterable, Optional, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipcluster import errors
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import GONE_EVENTS, LIVE_STATES, EngineEvent, EngineRecord, Registry
from ipcluster.controller.sessions import EngineInbox
from ipcluster.interfaces import IEngineControl, ITaskStore
from ipcluster.scheduler.admission import Admission
from ipcluster.scheduler.dependencies import Dependencies
from ipcluster.scheduler.dispatch import Dispatcher, log_control_failure
from ipcluster.scheduler.noengines import DEFAULT_NO_ENGINE_TIMEOUT, NoEngineWatch
from ipcluster.scheduler.rescue import FAIL, RETRY, rescues, stranded_error
from ipcluster.scheduler.runs import RunLog
from ipcluster.scheduler.running import note_report, note_running, reported_seconds
from ipcluster.scheduler.recovery import DEFAULT_RECOVERY_GRACE, Recovery
from ipcluster.scheduler.results import NO_PAYLOADS, ResultPost
from ipcluster.scheduler.inputs import InputValues
from ipcluster.scheduler.output import OutputRelay
from ipcluster.scheduler.submission import check_engines, check_fields
from ipcluster.scheduler.views import SchedulerViews
from ipcluster.store import DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_RESULT
from ipcluster.transport import joined as pickle_buffers
from ipcluster.scheduler.task import ASSIGNED, DEFAULT_RETRIES, DONE, READY, RUNNING, WAITING, NoTransition, Task
from ipcluster.transport.wire import Codec, Message

__all__ = ["Scheduler", "DEFAULT_PREFETCH", "DEFAULT_RETRIES", "WAITING", "READY", "ASSIGNED", "RUNNING", "DONE"]

Send = Callable[[Sequence[bytes]], bool]

DEFAULT_PREFETCH = 1


class Scheduler(SchedulerViews):
    """Assigns tasks to engines and results to clients."""

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        codec: Codec,
        clock: IReactorTime,
        send_engine: Send,
        send_client: Send,
        drops: DropLog,
        store: ITaskStore,
        control_for: Optional[Callable[[str], IEngineControl]] = None,
        prefetch: int = DEFAULT_PREFETCH,
        on_engine_traffic: Callable[[EngineRecord], None] = lambda record: None,
        remember: int = 10_000,
        session_of: Callable[[bytes], str] = lambda client: "",
        no_engine_timeout: Optional[float] = DEFAULT_NO_ENGINE_TIMEOUT,
        engines_coming: Callable[[], bool] = lambda: False,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_result: int = DEFAULT_MAX_RESULT,
        recovery_grace: float = DEFAULT_RECOVERY_GRACE,
    ) -> None:
        self.registry = registry
        self.codec = codec
        self.clock = clock
        self.send_engine = send_engine
        self.send_client = send_client
        self.drops = drops
        self.store = store
        self.prefetch = prefetch
        self.on_engine_traffic = on_engine_traffic
        self.tasks: dict[str, Task] = {}  # unfinished tasks only
        #: Payloads larger than this are not written to the store (such a task cannot be re-queued
        #: by a restarted controller).
        self.max_payload = max_payload
        self.results = ResultPost(codec, clock, send_client, self.tasks, session_of, max_result)
        self.dispatcher = Dispatcher(registry, codec, send_engine, self.tasks, 1 + prefetch, self._withdrawn, control_for)
        self.dependencies = Dependencies(self.tasks, remember)
        self.inputs = InputValues(self.tasks)  # futures as inputs: their results go with the task
        self.admission = Admission(self.tasks, self.dependencies, self.inputs, lambda: self.store, self._accept)
        self.watch = NoEngineWatch(registry, clock, no_engine_timeout, self.tasks.values, self._no_engines, engines_coming)
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.runs = RunLog(clock)  # each ended run, for the status page's task stream
        self._on_engine_event = {EngineEvent.JOINED: self._engine_joined, EngineEvent.ALIVE: self._engine_alive}
        self._on_engine_event.update(dict.fromkeys(GONE_EVENTS, self._engine_gone))
        self.output = OutputRelay(codec, send_client, session_of, drops.drop)  # live output, never stored
        self._on_task_message = {"started": self._started, "result": self._result, "output": self.output.relay}
        self.inbox = EngineInbox(registry, codec, drops, "task")
        self.recovery = Recovery(self, recovery_grace)
        registry.subscribe(self._registry_event)

    # -- submission -----------------------------------------------------------------------

    def submit(
        self,
        client: bytes,
        task_id: str,
        payload: bytes,
        engines: Optional[Iterable[str]] = None,
        after: Iterable[str] = (),
        retries: Optional[int] = None,
        timeout: Optional[float] = None,
        after_failed: str = "fail",
        name: str = "",
        inputs: Sequence[str] = (),
        buffers: Sequence = (),
    ) -> defer.Deferred:
        """Accept a task; fires with its id, or fails with a ClusterError (nothing is queued then).
        ``inputs``: tasks whose results it takes as arguments (``inputs.py``; they are in ``after`` too).
        ``buffers``: the payload's out-of-band buffers (``transport.buffers``)."""
        try:
            task = self._new_task(client, task_id, payload, engines, retries, timeout, after_failed, name)
        except errors.ClusterError:
            return defer.fail()
        task.inputs = tuple(dict.fromkeys(inputs))
        task.buffers = tuple(buffers)
        after = list(dict.fromkeys([*after, *task.inputs]))
        return self.admission.admit(task, after)

    def _new_task(self, client, task_id, payload, engines, retries, timeout, after_failed, name) -> Task:
        retries = DEFAULT_RETRIES if retries is None else retries
        check_fields({"task_id": task_id, "retries": retries, "timeout": timeout, "after_failed": after_failed,
                      "name": name or ""})
        if task_id in self.tasks:
            raise errors.BadRequest(f"task id {task_id!r} is already in flight")
        return Task(
            task_id, payload, self.clock.seconds(), name=name or "", engines=check_engines(self.registry, engines),
            retries=retries, timeout=float(timeout) if timeout is not None else None,
            run_after_failed=after_failed == "run", clients=[client], clock=self.clock, on_timeout=self._timed_out,
        )

    def _accept(self, task: Task, after: list, outcomes: dict) -> str:
        self.tasks[task.id] = task
        self.store.submitted(task.id, task.name, task.submitted_at, _kept(task.payload, task.buffers, self.max_payload), {
            "engines": sorted(task.engines) if task.engines else None, "after": after, "retries": task.retries,
            "timeout": task.timeout, "after_failed": "run" if task.run_after_failed else "fail",
            "inputs": list(task.inputs)})
        self._settle(task, self.dependencies.attach(task, after, outcomes))
        if task.state == READY:
            self.dispatcher.dispatch()
            if task.state == READY:
                self.watch.check()
        return task.id

    def _settle(self, task: Task, failed: Optional[str]) -> None:
        """A waiting task heard from its dependencies: ``failed`` (one that failed it) fails it,
        else it is ready once none is unmet."""
        error = None if failed is not None or task.unmet else self.inputs.pack(task)  # ready: its inputs packed
        if failed is not None or error is not None:
            error = error or errors.DependencyError(f"task {task.id} depends on {failed}, which failed")
            self._fail(task, task.lifecycle.dependency_failed, error)
        elif not task.unmet:
            task.lifecycle.dependencies_met()
            self.dispatcher.push(task)

    # -- cancel ------------------------------------------------------------------------------

    def cancel(self, task_id: str) -> defer.Deferred:
        """Remove a task that has not started; fires with True exactly when it will never run.

        Decided here, on the reactor: a waiting or ready task is cancelled at
        once; a prefetched one once its engine gave it back (the engine says
        ``released`` only for a task it will not run).  A cancelled task's
        clients get a ``TaskCancelled`` result before the reply.
        """
        task = self.tasks.get(task_id)
        if task is None:
            return defer.succeed(False)
        if task.state in (WAITING, READY):
            self._withdrawn(task)
            decided = defer.succeed(True)
        else:
            decided = self.dispatcher.withdraw(task)
        # The answer follows the TaskCancelled result, which waits for the store.
        return decided.addCallback(lambda cancelled: self.store.committed().addCallback(lambda _: cancelled))

    def _withdrawn(self, task: Task) -> None:
        """Cancel a task that has not started (waiting, ready, or given back by its engine)."""
        self._fail(task, task.lifecycle.cancel, errors.TaskCancelled(f"task {task.id} was cancelled"))

    # -- engine traffic ---------------------------------------------------------------------

    def message_received(self, frames: list) -> None:
        """A message from an engine on the task socket: ``started``, ``result``, ``output`` or ``bye``."""
        received = self.inbox.receive(frames)
        if received is None or received[1] is None or not self.registry.listed(received[1]):
            return  # dropped, or from no registration the scheduler gives work to
        identity, record, msg = received
        engine_id = record.id
        if record.state in LIVE_STATES:
            self.on_engine_traffic(record)
        if msg.type == "bye":
            self._bye(identity, record, msg)
            return
        task = self.dispatcher.assignments.held(engine_id).get(msg["task"])
        if task is None:
            if msg.type == "result" and self.recovery.result(engine_id, msg):
                self.dispatcher.fill(engine_id)
                return
            why = "of a finished task (a resend)" if msg["task"] in self.recent else "for a task not assigned to this engine"
            self.drops.drop("task", f"{msg.type} {why}", engine_id.encode(), msg["task"])
            return
        self._on_task_message[msg.type](identity, engine_id, record, task, msg)

    def _bye(self, identity: bytes, record: EngineRecord, msg: Message) -> None:
        if record.instance == msg["instance"]:
            self.registry.remove(record, f"exited: {msg['reason']}", self.clock.seconds())
        else:
            self.drops.drop("task", "bye from an unknown engine instance", record.id.encode())

    def _started(self, identity: bytes, engine_id: str, record: Optional[EngineRecord], task: Task, msg: Message) -> None:
        started_at = self.clock.seconds() - (reported_seconds(msg.get("running_for")) or 0.0)
        try:
            task.lifecycle.start(started_at)
        except NoTransition:
            self.drops.drop("task", f"started for a task that is {task.state}", engine_id.encode(), task.id)
            return
        if record is not None:
            note_running(record, task.id, started_at)
        self.store.started(task.id, engine_id, started_at)
        self.results.started(task)

    def _result(self, identity: bytes, engine_id: str, record: Optional[EngineRecord], task: Task, msg: Message) -> None:
        self.dispatcher.assignments.remove(engine_id, task.id)  # the slot is free whatever happens to the task
        if record is not None and record.running_task == task.id:
            note_running(record, None, None)
        never_started = task.started_at is None
        try:
            task.lifecycle.result()
        except NoTransition:
            # Late: it timed out (and has its result).  Expected, so logged but not counted as bad input.
            self.log.info(
                "dropped the result of task {task} from engine {engine}: the task is {state}",
                task=task.id, engine=engine_id, state=task.state,
            )
        else:
            if never_started:  # finished before the engine reported it started
                self.store.started(task.id, engine_id, msg.get("started") or self.clock.seconds())
            fields = {k: msg.get(k) for k in ("ok", "error", "started", "finished") if msg.get(k) is not None}
            self._finish(task, bool(msg["ok"]), fields, [*msg.payloads, *msg.buffers], msg.get("error"))
        self.dispatcher.fill(engine_id)

    def engine_reported(self, record: EngineRecord, task_id: Optional[str], running_for: Optional[float]) -> None:
        """What an engine's pong said it runs: ``task_id`` (None: nothing), for ``running_for`` seconds.

        The control channel calls this for each pong (``running.note_report``).
        """
        note_report(record, task_id, running_for, self.clock.seconds())
        if self.recovery.recovering:
            self.recovery.claim(record, task_id, running_for)

    def recover(self, records) -> int:
        """Take the store's unfinished tasks (``ITaskStore.unfinished``) at start: see ``recovery.py``."""
        return self.recovery.load(records)

    def _timed_out(self, task: Task) -> None:
        """The running task's timeout timer fired."""
        engine_id = task.engine
        error = errors.TaskTimeout(f"task {task.id} ran longer than its timeout of {task.timeout:g} s on engine {engine_id}")
        self._fail(task, task.lifecycle.time_out, error)
        if self.control_for is not None and engine_id is not None:
            try:
                d = self.control_for(engine_id).signal(signal.SIGINT, task.id)
            except errors.ClusterError:
                return
            d.addErrback(log_control_failure, self.log, "interrupting timed-out task", task.id, engine_id)

    # -- outcomes ---------------------------------------------------------------------------

    def _fail(self, task: Task, move: Callable[[], None], error: errors.ClusterError) -> None:
        """Finish ``task`` with ``error``; ``move`` is the lifecycle input that takes it to done."""
        move()
        self.dependencies.detach(task)
        wire = errors.to_wire(error)
        self._finish(task, False, {"error": wire}, NO_PAYLOADS, wire)

    def _finish(self, task: Task, ok: bool, fields: dict, payloads: list, error) -> None:
        """A task is done: deliver its outcome to its clients and the store, release its dependents."""
        self.tasks.pop(task.id, None)
        if ok:
            self.completed += 1
        else:
            self.failed += 1
        self.runs.finished(task, ok, fields, error)
        self.results.deliver(self.store, task, ok, fields, payloads, error)
        self.inputs.finished(task, ok, payloads)
        for dependent in self.dependencies.finished(task.id, ok):
            self._settle(dependent, task.id if not (ok or dependent.run_after_failed) else None)
        self.dispatcher.dispatch()

    def fetch(self, client: bytes, task_id: str) -> defer.Deferred:
        """Send ``client`` the task's result (now if finished, when it finishes otherwise).

        Fires with the task's status: ``"pending"`` or ``"done"``.
        """
        return self.results.fetch(self.store, client, task_id)

    # -- engines come and go ------------------------------------------------------------------

    def _registry_event(self, event: EngineEvent, record: EngineRecord, reason: str) -> None:
        handler = self._on_engine_event.get(event)
        if handler is not None:
            handler(record, event, reason)
        self.watch.check()

    def engines_changed(self) -> None:
        """Engines may be coming back, or no longer (a local engine's supervisor says so)."""
        self.watch.check()

    def _engine_joined(self, record: EngineRecord, event: EngineEvent, reason: str) -> None:
        self.dispatcher.engine_up(record.id, [t for t in self.tasks.values() if t.state == READY])

    def _engine_alive(self, record: EngineRecord, event: EngineEvent, reason: str) -> None:
        self.dispatcher.engine_up(record.id)

    def _engine_gone(self, record: EngineRecord, event: EngineEvent, reason: str) -> None:
        note_running(record, None, None)
        held = self.dispatcher.engine_gone(record.id)
        elsewhere = functools.partial(self.dispatcher.may_run_elsewhere, gone=record.id)
        for rescue in rescues(held, record.id, str(event), reason, elsewhere):
            task = rescue.task
            if rescue.action == FAIL:
                self._fail(task, task.lifecycle.engine_lost, rescue.error)
                continue
            if rescue.action == RETRY:
                self.runs.retried(task)
                task.lifecycle.retry()
                self.retried += 1
                self.log.info("retrying task {task}: engine {engine} {event} while running it ({left} retries left)",
                              task=task.id, engine=record.id, event=str(event), left=task.retries)
            else:
                task.lifecycle.put_back()
            self.dispatcher.push(task, front=True)
        for task in self.dispatcher.stranded():  # restricted tasks that can now run nowhere fail at once
            self._fail(task, task.lifecycle.stranded, stranded_error(task))
        self.dispatcher.dispatch()

    def _no_engines(self, task: Task, error: errors.NoEngines) -> None:
        self._fail(task, task.lifecycle.stranded, error)

    def stop(self) -> None:
        """The controller stops: every unfinished task is abandoned (its timeout timer cancelled)."""
        self.watch.stop()
        self.recovery.stop()
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.lifecycle.abandon()


def _kept(payload: bytes, bufs: Sequence, limit: int):
    """The payload (with its buffers, ``transport.buffers.join``) as the store keeps it: None when
    over ``limit`` bytes."""
    return pickle_buffers.join(payload, bufs) if len(payload) + sum(map(len, bufs)) <= limit else None
