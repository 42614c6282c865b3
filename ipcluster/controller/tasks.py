"""Direct tasks: a client's task goes to the engine it names, its result back.

The router keeps one small record per task in flight (client, engine, times);
payloads pass through as opaque bytes.  When an engine dies or leaves, each
of its tasks fails at once with ``EngineDied``, and a result that arrives
later for such a task is dropped: a task never yields two results.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import attr
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipcluster import errors
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import LIVE_STATES, REGISTERING, EngineRecord, Registry
from ipcluster.wire import ACCEPTS, BadMessage, Codec

Send = Callable[[Sequence[bytes]], bool]


@attr.s(slots=True)
class TaskRecord:
    id: str = attr.ib()
    client: bytes = attr.ib()
    engine: str = attr.ib()
    submitted_at: float = attr.ib()
    started_at: Optional[float] = attr.ib(default=None)


class TaskRouter:
    """Routes direct tasks to engines and their results to clients."""

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        codec: Codec,
        clock: IReactorTime,
        send_engine: Send,
        send_client: Send,
        drops: DropLog,
        on_engine_traffic: Callable[[EngineRecord], None] = lambda record: None,
    ) -> None:
        self.registry = registry
        self.codec = codec
        self.clock = clock
        self.send_engine = send_engine
        self.send_client = send_client
        self.drops = drops
        self.on_engine_traffic = on_engine_traffic
        self.tasks: dict[str, TaskRecord] = {}
        self._by_engine: dict[str, set[str]] = {}
        self.completed = 0
        self.failed = 0
        registry.subscribe(self._registry_event)

    def submit(self, client: bytes, task_id: str, engine_id: str, payload: bytes) -> None:
        """Send a task to its engine; raises a ClusterError if it cannot go."""
        if not task_id or len(task_id) > 200:
            raise errors.BadRequest("task id must be a non-empty string of at most 200 characters")
        if task_id in self.tasks:
            raise errors.BadRequest(f"task id {task_id!r} is already in flight")
        record = self.registry.get(engine_id)
        if record is None:
            raise errors.UnknownEngine(f"no engine {engine_id!r}")
        if record.state == REGISTERING:
            raise errors.UnknownEngine(f"engine {engine_id} has not joined yet (registering); wait for it to join")
        if record.state not in LIVE_STATES:
            raise errors.EngineDead(f"engine {engine_id} is {record.state}" + (f": {record.reason}" if record.reason else ""))
        frames = self.codec.encode("task", {"task": task_id}, [payload])
        if not self.send_engine([record.identity, *frames]):
            raise errors.EngineDead(f"engine {engine_id} is not connected")
        self.tasks[task_id] = TaskRecord(task_id, client, engine_id, self.clock.seconds())
        self._by_engine.setdefault(engine_id, set()).add(task_id)

    def message_received(self, frames: list) -> None:
        """A message from an engine on the task socket: ``started``, ``result`` or ``bye``."""
        identity, body = frames[0], frames[1:]
        try:
            msg = self.codec.decode(body, ACCEPTS["task"])
        except BadMessage as e:
            self.drops.drop("task", e.reason, identity, e.detail)
            return
        engine_id = identity.decode("utf-8", "replace")
        record = self.registry.get(engine_id)
        if record is not None and record.state in LIVE_STATES:
            self.on_engine_traffic(record)
        if msg.type == "bye":
            # Sent on this socket, after the engine's last result.
            if record is not None and record.instance == msg["instance"]:
                self.registry.remove(record, f"exited: {msg['reason']}", self.clock.seconds())
            else:
                self.drops.drop("task", "bye from an unknown engine instance", identity)
            return
        task = self.tasks.get(msg["task"])
        if task is None or task.engine != engine_id:
            # Finished already (e.g. failed when its engine was declared dead).
            self.drops.drop("task", f"{msg.type} for a task not in flight on this engine", identity, msg["task"])
            return
        if msg.type == "started":
            task.started_at = self.clock.seconds()
            if record is not None:
                record.running_task = task.id
                record.task_started_at = task.started_at
            return
        self._finish(task)
        if record is not None and record.running_task == task.id:
            record.running_task = None
            record.task_started_at = None
        fields = {k: msg.get(k) for k in ("ok", "error", "started", "finished") if msg.get(k) is not None}
        fields.update(task=task.id, engine=engine_id)
        if msg["ok"]:
            self.completed += 1
        else:
            self.failed += 1
        self.send_client([task.client, *self.codec.encode("result", fields, list(msg.payloads))])

    def _finish(self, task: TaskRecord) -> None:
        del self.tasks[task.id]
        ids = self._by_engine.get(task.engine)
        if ids is not None:
            ids.discard(task.id)
            if not ids:
                del self._by_engine[task.engine]

    def fail(self, task: TaskRecord, error: errors.ClusterError) -> None:
        """Fail a task in flight with a controller-made error."""
        self._finish(task)
        self.failed += 1
        fields = {"task": task.id, "engine": task.engine, "ok": False, "error": errors.to_wire(error)}
        self.send_client([task.client, *self.codec.encode("result", fields, [b"", b"", b""])])

    def _registry_event(self, event: str, record: EngineRecord, reason: str) -> None:
        if event not in ("dead", "left", "purged"):
            return
        for task_id in sorted(self._by_engine.get(record.id, ())):
            task = self.tasks[task_id]
            where = "while running it" if task.started_at is not None else "before running it"
            self.fail(task, errors.EngineDied(f"engine {record.id} {event} {where} (task {task_id}): {reason}"))
