"""A finished task's result: as its clients get it, as the store keeps it, and as a
client that asks later (``fetch``, also after a controller restart) gets it again.

**Store before deliver.**  A result is written to the store and sent to its
clients only once that write is committed (``ITaskStore.committed``: one
transaction for every result of a reactor turn), so a result a client has seen
is still there after the controller crashes.  A result larger than
``max_result`` (value and output together) is delivered but not kept: its
record says how large it was (``not_kept``), and ``fetch`` fails with
ResultNotKept.  If the commit fails (a full disk), the result is delivered
anyway and the failure logged: the client loses nothing it would have had.

A result message has the fields ``task``, ``ok``, ``engine`` (when it ran or
was assigned somewhere), ``error`` (when it failed), the engine's ``started``
/ ``finished`` times when it sent them, and three payloads: the pickled value
(or exception), stdout and stderr.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipcluster import errors
from ipcluster.interfaces import ITaskStore
from ipcluster.scheduler.task import RUNNING, Task
from ipcluster.store import DEFAULT_MAX_RESULT
from ipcluster.transport import joined as buffers
from ipcluster.transport.wire import Codec

#: The payloads of a result that has none (a failure the controller decided).
NO_PAYLOADS = (b"", b"", b"")


class ResultPost:
    """Sends results to the clients that asked (at submit, or by ``fetch``) once the store has them."""

    log = Logger()

    def __init__(
        self, codec: Codec, clock: IReactorTime, send_client: Callable[[Sequence[bytes]], bool], tasks: Mapping[str, Task],
        session_of: Callable[[bytes], str] = lambda client: "", max_result: int = DEFAULT_MAX_RESULT,
    ) -> None:
        self.codec = codec
        self.clock = clock
        self.send_client = send_client
        self.tasks = tasks  # unfinished tasks by id
        #: The session each client (by identity) checks our messages against.
        self.session_of = session_of
        #: Results (value and output) larger than this are delivered but not stored.
        self.max_result = max_result
        #: Results written but not yet committed (their clients wait).
        self.uncommitted = 0
        #: Results delivered without being stored because the store failed to commit them.
        self.unstored = 0

    def started(self, task: Task) -> None:
        """Tell the task's clients it runs (a ``running`` message): their futures' ``running()``."""
        for client in task.clients:
            self.send_client([client, *self._running(task, client)])

    def _running(self, task: Task, client: bytes) -> list:
        fields = {"task": task.id, "engine": task.engine or ""}
        return self.codec.encode("running", fields, session=self.session_of(client))

    def deliver(self, store: ITaskStore, task: Task, ok: bool, fields: dict, payloads: Sequence[bytes], error) -> defer.Deferred:
        """Record a finished task's result; send it to each of its clients once the store committed it.

        Fires (with None) once the clients were sent the result.
        """
        fields = dict(fields, task=task.id, ok=ok)
        if task.engine is not None:
            fields["engine"] = task.engine
        size = sum(len(p) for p in payloads)
        if size > self.max_result:
            store.finished(task.id, ok, self.clock.seconds(), task.engine, error if not ok else None, None, "", "",
                           not_kept=size)
        else:
            store.finished(
                task.id, ok, self.clock.seconds(), task.engine, error if not ok else None,
                buffers.join(payloads[0], payloads[3:]) if ok else payloads[0] or None, _text(payloads[1]),
                _text(payloads[2]),
            )
        clients = list(task.clients)
        self.uncommitted += 1
        return store.committed().addErrback(self._unstored, task.id).addCallback(self._send, clients, fields, payloads)

    def _unstored(self, failure, task_id: str) -> None:
        self.unstored += 1
        self.log.failure("could not store the result of task {task}; delivering it anyway", failure, task=task_id)

    def _send(self, _: object, clients: list, fields: dict, payloads: Sequence[bytes]) -> None:
        self.uncommitted -= 1
        for client in clients:
            self.send_client([client, *self.codec.encode("result", fields, list(payloads), session=self.session_of(client))])

    def fetch(self, store: ITaskStore, client: bytes, task_id: str) -> defer.Deferred:
        """Send ``client`` the task's result: when it finishes if it is in flight (fires with
        ``"pending"``), now from the store otherwise (fires with ``"done"``).

        Fails with BadRequest for a task the store does not know, ClusterError
        for one the store holds as in flight that no engine runs and the controller
        did not recover (its recovery read failed).
        """
        if task_id in self.tasks:
            return defer.succeed(self._follow(client, task_id))
        return store.get(task_id).addCallback(self._replay, client, task_id)

    def _follow(self, client: bytes, task_id: str) -> str:
        """Add ``client`` to the clients of ``task_id``, in flight."""
        task = self.tasks[task_id]
        if client not in task.clients:
            task.clients.append(client)
        if task.state == RUNNING:  # it started before this client asked
            self.send_client([client, *self._running(task, client)])
        return "pending"

    def _replay(self, record: Optional[dict], client: bytes, task_id: str) -> str:
        if task_id in self.tasks:
            # In flight since the store was asked: recovered from the store (the controller had
            # just started, ``recovery.py``) or submitted again.
            return self._follow(client, task_id)
        if record is None:
            raise errors.BadRequest(f"unknown task {task_id!r} (never submitted, or purged)")
        if record["status"] not in ("ok", "failed"):
            raise errors.ClusterError(f"task {task_id} is {record['status']} but no longer in flight (the controller restarted)")
        if record.get("not_kept"):
            raise errors.ResultNotKept(
                f"task {task_id} finished ({record['status']}) but its result of {record['not_kept']} bytes was not "
                f"kept: results over the store's limit (--store-max-result) go to the clients waiting then, "
                "not to the store"
            )
        ok = record["status"] == "ok"
        fields = {"task": task_id, "ok": ok}
        if record["engine"]:
            fields["engine"] = record["engine"]
        if not ok and record["error"]:
            fields["error"] = record["error"]
        payloads = [record["result"] or b"", (record["stdout"] or "").encode(), (record["stderr"] or "").encode()]
        self.send_client([client, *self.codec.encode("result", fields, payloads, session=self.session_of(client))])
        return "done"


def _text(data: bytes) -> str:
    return bytes(data).decode("utf-8", "replace") if data else ""
