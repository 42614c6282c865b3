"""The Scheduler: direct and load-balanced tasks, dependencies, retries, stealing, timeouts.

A task moves through::

    waiting (dependencies unmet) -> ready -> assigned to an engine -> running -> done
                                      ^             |
                                      +-- retried --+  (its engine died; retries left)

* **Balancing.**  Each live engine holds at most ``1 + prefetch`` tasks (one
  running, ``prefetch`` queued on the engine).  An engine's result frees a
  slot, and the controller fills it at once -- the result is the engine's
  request for more work.  Idle engines are filled before partly loaded ones.
  Busy engines (interpreter held) get nothing new.
* **Stealing.**  When an engine has room and nothing is ready for it, the
  controller asks an engine that holds a prefetched task it has not started
  to release it (``release`` on that engine's control channel) and moves it.
* **Dependencies.**  ``after=[ids]``: the task becomes ready once all of them
  succeeded.  A failed dependency fails it with ``DependencyError`` (or, with
  ``after_failed="run"``, counts as met).  Unknown ids are refused at submit.
* **Retries.**  Tasks on an engine that dies are rerun elsewhere up to
  ``retries`` times, then fail with ``EngineDied``.  A result is accepted only
  from the engine the task is assigned to, so a task never yields two results.
* **Timeouts.**  ``timeout`` counts from the task's start; at the deadline the
  task fails with ``TaskTimeout`` and the engine gets a SIGINT aimed at it.

Finished tasks leave memory (the store keeps them); only a bounded cache of
recent outcomes stays, for dependency checks.
"""
from __future__ import annotations

import signal
from collections import OrderedDict, deque
from typing import Callable, Iterable, Optional, Sequence

import attr
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ipcluster import errors
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import ACTIVE_STATES, ALIVE, LIVE_STATES, EngineRecord, Registry
from ipcluster.store.sqlite import ITaskStore
from ipcluster.transport.wire import ACCEPTS, Codec

Send = Callable[[Sequence[bytes]], bool]

DEFAULT_RETRIES = 1
DEFAULT_PREFETCH = 1
WAITING, READY, ASSIGNED, RUNNING, DONE = "waiting", "ready", "assigned", "running", "done"


@attr.s(slots=True, eq=False)
class Task:
    id: str = attr.ib()
    payload: bytes = attr.ib(repr=False)
    submitted_at: float = attr.ib()
    name: str = attr.ib(default="")
    engines: Optional[frozenset] = attr.ib(default=None)
    retries: int = attr.ib(default=DEFAULT_RETRIES)
    timeout: Optional[float] = attr.ib(default=None)
    run_after_failed: bool = attr.ib(default=False)
    clients: list = attr.ib(factory=list)
    unmet: set = attr.ib(factory=set)
    state: str = attr.ib(default=WAITING)
    engine: Optional[str] = attr.ib(default=None)
    started_at: Optional[float] = attr.ib(default=None)
    attempts: int = attr.ib(default=0)
    timer: Optional[IDelayedCall] = attr.ib(default=None, repr=False)
    releasing: bool = attr.ib(default=False)

    def may_run_on(self, engine_id: str) -> bool:
        return self.engines is None or engine_id in self.engines


class Scheduler:
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
        control_for: Callable[[str], object] = None,
        prefetch: int = DEFAULT_PREFETCH,
        on_engine_traffic: Callable[[EngineRecord], None] = lambda record: None,
        remember: int = 100_000,
    ) -> None:
        self.registry = registry
        self.codec = codec
        self.clock = clock
        self.send_engine = send_engine
        self.send_client = send_client
        self.drops = drops
        self.store = store
        self.control_for = control_for
        self.prefetch = prefetch
        self.on_engine_traffic = on_engine_traffic
        self.tasks: dict[str, Task] = {}  # unfinished tasks only
        self.ready: deque[str] = deque()  # may run anywhere
        self.ready_on: dict[str, deque] = {}  # restricted tasks, per eligible engine
        self.assigned: dict[str, "OrderedDict[str, Task]"] = {}  # per live engine
        self.dependents: dict[str, set] = {}
        self.recent: "OrderedDict[str, bool]" = OrderedDict()  # task id -> succeeded
        self._remember = remember
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.stolen = 0
        registry.subscribe(self._registry_event)

    @property
    def capacity(self) -> int:
        return 1 + self.prefetch

    # -- what the status source reads -----------------------------------------------

    def counts(self) -> dict:
        """Unfinished tasks by state (waiting, ready, assigned, running) and the totals."""
        counts = dict.fromkeys((WAITING, READY, ASSIGNED, RUNNING), 0)
        for task in self.tasks.values():
            if task.state in counts:
                counts[task.state] += 1
        counts.update(completed=self.completed, failed=self.failed, retried=self.retried, stolen=self.stolen)
        return counts

    def assigned_to(self, engine_id: str) -> int:
        """How many tasks the engine holds (running and queued there)."""
        return len(self.assigned.get(engine_id, ()))

    # -- submission ---------------------------------------------------------------

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
    ) -> defer.Deferred:
        """Accept a task; fires with its id, or fails with a ClusterError (nothing is queued then)."""
        try:
            task = self._validate(client, task_id, payload, engines, retries, timeout, after_failed, name)
        except errors.ClusterError:
            return defer.fail()
        after = list(dict.fromkeys(after))
        unknown = [dep for dep in after if dep not in self.tasks and dep not in self.recent]
        if not unknown:
            return defer.succeed(self._accept(task, after, {}))
        # Dependencies finished long ago: ask the store (the task waits for the answer).
        lookups = [self.store.get(dep) for dep in unknown]

        def known(records):
            outcomes = {}
            for dep, record in zip(unknown, records):
                if record is None:
                    raise errors.BadRequest(f"unknown dependency {dep!r}: no such task")
                if record["status"] not in ("ok", "failed"):
                    raise errors.BadRequest(
                        f"dependency {dep!r} was {record['status']} when the controller stopped; it will never finish"
                    )
                outcomes[dep] = record["status"] == "ok"
            if task_id in self.tasks:
                raise errors.BadRequest(f"task id {task_id!r} is already in flight")
            return self._accept(task, after, outcomes)

        return defer.gatherResults(lookups, consumeErrors=True).addCallback(known).addErrback(_first_error)

    def _validate(self, client, task_id, payload, engines, retries, timeout, after_failed, name) -> Task:
        if not isinstance(task_id, str) or not task_id or len(task_id) > 200:
            raise errors.BadRequest("task id must be a non-empty string of at most 200 characters")
        if task_id in self.tasks:
            raise errors.BadRequest(f"task id {task_id!r} is already in flight")
        if retries is None:
            retries = DEFAULT_RETRIES
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise errors.BadRequest("retries must be a whole number >= 0")
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout < float("inf")
        ):
            raise errors.BadRequest("timeout must be a positive number of seconds")
        if after_failed not in ("fail", "run"):
            raise errors.BadRequest("after_failed must be 'fail' or 'run'")
        allowed = None
        if engines is not None:
            allowed = frozenset(engines)
            if not allowed:
                raise errors.BadRequest("engines must name at least one engine")
            records = [self.registry.get(e) for e in allowed]
            if all(r is None for r in records):
                raise errors.UnknownEngine(f"no engine {', '.join(sorted(map(repr, allowed)))}")
            if not any(r is not None and r.state in ACTIVE_STATES for r in records):
                states = ", ".join(f"{e} is {r.state if r else 'unknown'}" for e, r in zip(allowed, records))
                raise errors.EngineDead(f"no engine the task may run on is alive ({states})")
        return Task(
            task_id, payload, self.clock.seconds(), name=name or "", engines=allowed, retries=retries,
            timeout=float(timeout) if timeout is not None else None, run_after_failed=after_failed == "run",
            clients=[client],
        )

    def _accept(self, task: Task, after: list, outcomes: dict) -> str:
        self.tasks[task.id] = task
        self.store.submitted(task.id, task.name, task.submitted_at)
        failed_dep = None
        for dep in after:
            if dep in self.tasks:
                task.unmet.add(dep)
                self.dependents.setdefault(dep, set()).add(task.id)
                continue
            ok = self.recent[dep] if dep in self.recent else outcomes[dep]
            if not ok and not task.run_after_failed:
                failed_dep = dep
        if failed_dep is not None:
            self._fail(task, errors.DependencyError(f"task {task.id} depends on {failed_dep}, which failed"))
        elif not task.unmet:
            self._make_ready(task)
            self._dispatch()
        return task.id

    # -- assignment -----------------------------------------------------------------

    def _make_ready(self, task: Task, front: bool = False) -> None:
        task.state = READY
        task.engine = None
        if task.engines is None:
            (self.ready.appendleft if front else self.ready.append)(task.id)
        else:
            for engine_id in task.engines:
                record = self.registry.get(engine_id)
                if record is None or record.state not in ACTIVE_STATES:
                    continue  # its queue would never be read
                q = self.ready_on.setdefault(engine_id, deque())
                (q.appendleft if front else q.append)(task.id)

    def _next_for(self, engine_id: str) -> Optional[Task]:
        for q in (self.ready_on.get(engine_id), self.ready):
            while q:
                task = self.tasks.get(q[0])
                if task is None or task.state != READY:
                    q.popleft()  # stale entry (assigned elsewhere, cancelled, ...)
                    continue
                q.popleft()
                return task
        return None

    def _has_room(self, engine_id: str) -> bool:
        record = self.registry.get(engine_id)
        return (
            record is not None
            and record.state == ALIVE
            and len(self.assigned.get(engine_id, ())) < self.capacity
        )

    def _dispatch(self) -> None:
        """Fill free engine slots: idle engines first, then partly loaded ones."""
        if not self.ready and not any(self.ready_on.values()):
            return
        engines = [r.id for r in self.registry.live() if r.state == ALIVE]
        for depth in range(self.capacity):
            for engine_id in list(engines):
                if len(self.assigned.setdefault(engine_id, OrderedDict())) == depth:
                    task = self._next_for(engine_id)
                    if task is not None and not self._assign(task, engine_id):
                        engines.remove(engine_id)  # unreachable right now

    def _fill(self, engine_id: str) -> None:
        while self._has_room(engine_id):
            task = self._next_for(engine_id)
            if task is None:
                if not self.assigned.get(engine_id):
                    self._steal_for(engine_id)
                return
            if not self._assign(task, engine_id):
                return

    def _assign(self, task: Task, engine_id: str) -> bool:
        """Send ``task`` to the engine; False (task ready again) if it is unreachable."""
        record = self.registry.get(engine_id)
        frames = self.codec.encode("task", {"task": task.id}, [task.payload])
        if record is None or not self.send_engine([record.identity, *frames]):
            # Gone without a word yet (its death will be noticed): keep the task for others.
            self._make_ready(task, front=True)
            return False
        task.state = ASSIGNED
        task.engine = engine_id
        task.attempts += 1
        self.assigned.setdefault(engine_id, OrderedDict())[task.id] = task
        return True

    def _steal_for(self, engine_id: str) -> None:
        """``engine_id`` is idle with nothing ready: move a prefetched task to it."""
        if self.control_for is None:
            return
        for victim, held in self.assigned.items():
            if victim == engine_id or len(held) < 2 or not self._answers(victim):
                continue
            for task in reversed(held.values()):
                if task.state == ASSIGNED and not task.releasing and task.may_run_on(engine_id):
                    self._release(task, victim, engine_id)
                    return

    def _answers(self, engine_id: str) -> bool:
        """Whether the engine's control thread answers now: a busy one would answer late, after
        the release had timed out, and the released task would be lost between the two."""
        record = self.registry.get(engine_id)
        return record is not None and record.state == ALIVE

    def _release(self, task: Task, victim: str, thief: str) -> None:
        task.releasing = True
        try:
            d = self.control_for(victim).abort(task.id, timeout=5.0, release=True)
        except errors.ClusterError:
            task.releasing = False
            return

        def answered(outcome):
            task.releasing = False
            if outcome != "released" or self.tasks.get(task.id) is not task or task.engine != victim:
                return
            self.assigned[victim].pop(task.id, None)
            self.stolen += 1
            if not (self._has_room(thief) and task.may_run_on(thief) and self._assign(task, thief)):
                if task.state != READY:
                    self._make_ready(task, front=True)
                self._dispatch()
            self._fill(victim)

        def failed(f):
            task.releasing = False
            self._log_control_failure(f, "releasing task", task.id, victim)

        d.addCallbacks(answered, failed)

    # -- engine traffic -------------------------------------------------------------

    def message_received(self, frames: list) -> None:
        """A message from an engine on the task socket: ``started``, ``result`` or ``bye``."""
        received = self.drops.decode(self.codec, "task", frames, ACCEPTS["task"])
        if received is None:
            return
        identity, msg = received
        engine_id = identity.decode("utf-8", "replace")
        record = self.registry.get(engine_id)
        if record is not None and record.state in LIVE_STATES:
            self.on_engine_traffic(record)
        if msg.type == "bye":
            if record is not None and record.instance == msg["instance"]:
                self.registry.remove(record, f"exited: {msg['reason']}", self.clock.seconds())
            else:
                self.drops.drop("task", "bye from an unknown engine instance", identity)
            return
        held = self.assigned.get(engine_id)
        task = held.get(msg["task"]) if held is not None else None
        if task is None:
            self.drops.drop("task", f"{msg.type} for a task not assigned to this engine", identity, msg["task"])
            return
        if msg.type == "started":
            task.state = RUNNING if task.state == ASSIGNED else task.state
            running_for = msg.get("running_for")
            if not isinstance(running_for, (int, float)) or isinstance(running_for, bool) or not 0 <= running_for < 86400:
                running_for = 0.0
            task.started_at = self.clock.seconds() - running_for
            if record is not None:
                record.running_task = task.id
                record.task_started_at = task.started_at
            self.store.started(task.id, engine_id, task.started_at)
            if task.timeout is not None and task.state == RUNNING:
                task.timer = self.clock.callLater(
                    max(0.0, task.timeout - (self.clock.seconds() - task.started_at)), self._timed_out, task
                )
            return
        # result: the slot is free whatever happens to the task
        del held[task.id]
        if record is not None and record.running_task == task.id:
            record.running_task = None
            record.task_started_at = None
        if task.state != DONE:
            if task.started_at is None:  # finished before the engine reported it started
                task.started_at = self.clock.seconds()
                self.store.started(task.id, engine_id, msg.get("started") or task.started_at)
            error = msg.get("error")
            ok = bool(msg["ok"])
            fields = {k: msg.get(k) for k in ("ok", "error", "started", "finished") if msg.get(k) is not None}
            self._finish(task, ok, fields, list(msg.payloads), error)
        self._fill(engine_id)

    def _timed_out(self, task: Task) -> None:
        task.timer = None
        if task.state != RUNNING:
            return
        engine_id = task.engine
        self._fail(task, errors.TaskTimeout(f"task {task.id} ran longer than its timeout of {task.timeout:g} s on engine {engine_id}"))
        if self.control_for is not None and engine_id is not None:
            try:
                self.control_for(engine_id).signal(signal.SIGINT, task.id).addErrback(
                    self._log_control_failure, "interrupting timed-out task", task.id, engine_id
                )
            except errors.ClusterError:
                pass

    # -- outcomes ---------------------------------------------------------------------

    def _finish(self, task: Task, ok: bool, fields: dict, payloads: list, error) -> None:
        """Deliver the outcome to the task's clients, record it, release its dependents."""
        if task.timer is not None and task.timer.active():
            task.timer.cancel()
        task.timer = None
        task.state = DONE
        self.tasks.pop(task.id, None)
        self.recent[task.id] = ok
        while len(self.recent) > self._remember:
            self.recent.popitem(last=False)
        if ok:
            self.completed += 1
        else:
            self.failed += 1
        fields = dict(fields, task=task.id, ok=ok)
        if task.engine is not None:
            fields["engine"] = task.engine
        frames = self.codec.encode("result", fields, payloads)
        for client in task.clients:
            self.send_client([client, *frames])
        self.store.finished(
            task.id, ok, self.clock.seconds(), task.engine, error if not ok else None,
            payloads[0] if ok else payloads[0] or None, _text(payloads[1]), _text(payloads[2]),
        )
        for dependent_id in sorted(self.dependents.pop(task.id, ())):
            dependent = self.tasks.get(dependent_id)
            if dependent is None or dependent.state != WAITING:
                continue
            dependent.unmet.discard(task.id)
            if not ok and not dependent.run_after_failed:
                self._fail(dependent, errors.DependencyError(f"task {dependent.id} depends on {task.id}, which failed"))
            elif not dependent.unmet:
                self._make_ready(dependent)
        self._dispatch()

    def _fail(self, task: Task, error: errors.ClusterError) -> None:
        if task.state == DONE:
            return
        self._finish(task, False, {"error": errors.to_wire(error)}, [b"", b"", b""], errors.to_wire(error))

    def cancel(self, task_id: str) -> defer.Deferred:
        """Remove a task that has not started; fires with True if it was removed."""
        task = self.tasks.get(task_id)
        if task is None:
            return defer.succeed(False)
        if task.state in (WAITING, READY):
            self._drop_waiting(task)
            self._fail(task, errors.TaskAborted(f"task {task_id} was cancelled"))
            return defer.succeed(True)
        if task.state != ASSIGNED or self.control_for is None or not self._answers(task.engine):
            return defer.succeed(False)
        engine_id = task.engine
        try:
            d = self.control_for(engine_id).abort(task.id, timeout=5.0, release=True)
        except errors.ClusterError:
            return defer.succeed(False)

        def answered(outcome):
            if outcome != "released" or task.state != ASSIGNED or task.engine != engine_id:
                return False
            self.assigned.get(engine_id, {}).pop(task.id, None)
            self._fail(task, errors.TaskAborted(f"task {task_id} was cancelled"))
            self._fill(engine_id)
            return True

        def refused(failure):
            self._log_control_failure(failure, "cancelling task", task_id, engine_id)
            return False

        return d.addCallbacks(answered, refused)

    def _log_control_failure(self, failure, doing: str, task_id: str, engine_id: Optional[str]) -> None:
        if failure.check(errors.ClusterError):
            self.log.warn("{doing} {task} on engine {engine}: {why}", doing=doing, task=task_id, engine=engine_id, why=failure.value)
        else:
            self.log.failure("{doing} {task} on engine {engine}", failure, doing=doing, task=task_id, engine=engine_id)

    def _drop_waiting(self, task: Task) -> None:
        for dep in task.unmet:
            waiting = self.dependents.get(dep)
            if waiting is not None:
                waiting.discard(task.id)
        task.unmet.clear()

    def fetch(self, client: bytes, task_id: str) -> defer.Deferred:
        """Send ``client`` the task's result (now if finished, when it finishes otherwise).

        Fires with the task's status: ``"pending"`` or ``"done"``.
        """
        task = self.tasks.get(task_id)
        if task is not None:
            if client not in task.clients:
                task.clients.append(client)
            return defer.succeed("pending")

        def stored(record):
            if record is None:
                raise errors.BadRequest(f"unknown task {task_id!r} (never submitted, or purged)")
            if record["status"] not in ("ok", "failed"):
                raise errors.ClusterError(f"task {task_id} is {record['status']} but no longer in flight (the controller restarted)")
            ok = record["status"] == "ok"
            fields = {"task": task_id, "ok": ok}
            if record["engine"]:
                fields["engine"] = record["engine"]
            if not ok and record["error"]:
                fields["error"] = record["error"]
            payloads = [record["result"] or b"", (record["stdout"] or "").encode(), (record["stderr"] or "").encode()]
            self.send_client([client, *self.codec.encode("result", fields, payloads)])
            return "done"

        return self.store.get(task_id).addCallback(stored)

    # -- engines come and go ----------------------------------------------------------

    def _registry_event(self, event: str, record: EngineRecord, reason: str) -> None:
        if event in ("joined", "alive"):
            self.assigned.setdefault(record.id, OrderedDict())
            if event == "joined":
                # Restricted tasks made ready before this engine existed may run here too.
                mine = [t.id for t in self.tasks.values() if t.state == READY and t.engines and record.id in t.engines]
                if mine:
                    self.ready_on.setdefault(record.id, deque()).extend(mine)
            self._fill(record.id)
            self._dispatch()
        elif event in ("dead", "left", "purged"):
            held = self.assigned.pop(record.id, OrderedDict())
            self.ready_on.pop(record.id, None)
            # Reversed: each retried task goes to the front, so they keep their order.
            for task in reversed(held.values()):
                if task.state == DONE:
                    continue
                if task.timer is not None and task.timer.active():
                    task.timer.cancel()
                    task.timer = None
                where = "while running it" if task.state == RUNNING else "before running it"
                others = task.engines is None or any(
                    (r := self.registry.get(e)) is not None and r.state in LIVE_STATES and e != record.id for e in task.engines
                )
                if task.retries > 0 and others:
                    task.retries -= 1
                    self.retried += 1
                    self.log.info(
                        "retrying task {task}: engine {engine} {event} {where} ({left} retries left)",
                        task=task.id, engine=record.id, event=event, where=where, left=task.retries,
                    )
                    task.started_at = None
                    self._make_ready(task, front=True)
                else:
                    self._fail(task, errors.EngineDied(f"engine {record.id} {event} {where} (task {task.id}): {reason}"))
            # Restricted tasks that can now run nowhere fail at once.
            for task in list(self.tasks.values()):
                if task.state in (READY, WAITING) and task.engines is not None and not any(
                    (r := self.registry.get(e)) is not None and r.state in ACTIVE_STATES for e in task.engines
                ):
                    self._drop_waiting(task)
                    self._fail(task, errors.EngineDied(f"no engine task {task.id} may run on is alive ({', '.join(sorted(task.engines))})"))
            self._dispatch()

    def stop(self) -> None:
        for task in self.tasks.values():
            if task.timer is not None and task.timer.active():
                task.timer.cancel()
            task.timer = None


def _text(data: bytes) -> str:
    return bytes(data).decode("utf-8", "replace") if data else ""


def _first_error(failure):
    failure.trap(defer.FirstError)
    return failure.value.subFailure
