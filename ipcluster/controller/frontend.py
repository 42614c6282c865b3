"""The client front end: serves clients' requests (engines, tasks, control verbs, results)."""
from __future__ import annotations

from typing import Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipcluster import errors, verbs
from ipcluster.controller.control import ControlChannel
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import Registry
from ipcluster.controller.sessions import REPLAYED, UNKNOWN_SESSION, ClientSessions
from ipcluster.limits import is_task_id
from ipcluster.scheduler.inputs import check_inputs
from ipcluster.scheduler.scheduler import READY, WAITING, Scheduler
from ipcluster.transport.wire import ACCEPTS, PROTOCOL_VERSION, BadMessage, Codec, Message

Send = Callable[[Sequence[bytes]], bool]
#: Tasks queued in the controller that a ``tasks`` request lists, by default and at most.
QUEUED_LISTED, MAX_QUEUED_LISTED = 20, 1000


class ClientFrontEnd:
    """Serves clients: engine listings, direct task submission, control verbs.

    ``connect`` opens a session (or confirms the one it carries); every other
    request must carry a session the controller knows and a sequence number
    not seen before in it (``sessions``).  Replies carry the client's session.
    """

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        control: ControlChannel,
        scheduler: Scheduler,
        codec: Codec,
        clock: IReactorTime,
        send: Send,
        drops: DropLog,
        sessions: ClientSessions,
    ) -> None:
        self.registry = registry
        self.control = control
        self.scheduler = scheduler
        self.codec = codec
        self.clock = clock
        self.send = send
        self.drops = drops
        self.sessions = sessions

    def message_received(self, frames: list) -> None:
        identity, body = frames[0], frames[1:]
        try:
            msg = self.codec.decode(body, ACCEPTS["client"])
        except BadMessage as e:
            self._malformed(identity, e)
            return
        if msg.type == "connect":
            self._connect(identity, msg)
            return
        why = self.sessions.accept(identity, msg.session, msg.seq)
        if why is not None:
            self.drops.drop("client", why, identity, f"{msg.type} #{msg.seq}")
            if why == UNKNOWN_SESSION:
                self._unknown(identity, msg)
            return
        if msg.type == "submit":
            self._submit(identity, msg)
            return
        try:
            result = getattr(self, "_on_" + msg.type)(identity, msg)
        except errors.ClusterError as e:
            self._error(identity, msg, e)
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(
                lambda value: self._ok(identity, msg, value),
                lambda f: self._failed(identity, msg, f),
            )
        else:
            self._ok(identity, msg, result)

    def _malformed(self, identity: bytes, e: BadMessage) -> None:
        self.drops.drop("client", e.reason, identity, e.detail)
        header = e.header or {}
        session, seq = header.get("s"), header.get("n")
        if not isinstance(session, str) or type(seq) is not int or seq < 1:
            return
        if self.sessions.accept(identity, session, seq) is not None:
            return  # not answered: from no session we know, or answered once already
        # Signed by a real client but malformed: tell it, do not leave it waiting.
        error = errors.BadRequest(f"malformed request: {e}")
        if header.get("type") == "submit" and isinstance(header.get("task"), str):
            self._refuse_task(identity, session, header["task"], error)
        elif isinstance(header.get("id"), str) and header["id"]:
            self._error(identity, Message("reply", header["id"], header, (), session), error)

    def _unknown(self, identity: bytes, msg: Message) -> None:
        """Tell a client that its session is unknown here (it opens a new one): the request was not run."""
        fields = {"reason": "the controller does not know this client's session", "ref": msg.id}
        if msg.type == "submit":
            fields["task"] = msg["task"]
        self.send([identity, *self.codec.encode("unknown", fields, session=msg.session)])

    # -- requests --------------------------------------------------------------

    def _connect(self, identity: bytes, msg: Message) -> None:
        """Welcome a client into its session: the one it carries if known here, else a new one."""
        why = self.sessions.accept(identity, msg.session, msg.seq) if msg.session else UNKNOWN_SESSION
        if why == REPLAYED:
            self.drops.drop("client", why, identity, f"connect #{msg.seq}")
            return
        session = msg.session if why is None else self.sessions.open(identity)
        welcome = {"ref": msg.id, "version": PROTOCOL_VERSION}
        self.send([identity, *self.codec.encode("welcome", welcome, session=session)])

    def _on_engines(self, identity: bytes, msg: Message):
        now = self.clock.seconds()
        return [record.describe(now) for record in self.registry]

    def _on_tasks(self, identity: bytes, msg: Message):
        """The scheduler's counters and the first ``limit`` (20) tasks queued in the controller."""
        limit = msg.get("limit", QUEUED_LISTED)
        if type(limit) is not int or not 0 <= limit <= MAX_QUEUED_LISTED:
            raise errors.BadRequest(f"limit must be an int from 0 to {MAX_QUEUED_LISTED}")
        queued = [
            {"task": t.id, "name": t.name, "state": t.state, "submitted_at": t.submitted_at,
             "engines": sorted(t.engines) if t.engines is not None else None}
            for t in self.scheduler.tasks.values() if t.state in (WAITING, READY)
        ]  # fmt: skip
        return {"counts": self.scheduler.counts(), "queued": queued[:limit], "queued_total": len(queued)}

    def _submit(self, identity: bytes, msg: Message) -> None:
        """Submits get no reply when accepted (that would double the traffic of small
        tasks); a refused one fails like a task, with a result carrying the error."""
        task_id = msg["task"]
        try:
            accepted = self._on_submit(identity, msg)
        except errors.ClusterError as e:
            self._refuse_task(identity, msg.session, task_id, e)
            return

        def refused(failure):
            if not failure.check(errors.ClusterError):
                self.log.failure("submit of task {task} failed", failure, task=task_id)
                failure = errors.ClusterError(f"the controller failed to accept task {task_id}: {failure.value!r}")
            else:
                failure = failure.value
            self._refuse_task(identity, msg.session, task_id, failure)

        accepted.addErrback(refused)

    def _refuse_task(self, identity: bytes, session: str, task_id: str, error: Exception) -> None:
        fields = {"task": task_id, "ok": False, "error": errors.to_wire(error)}
        self.send([identity, *self.codec.encode("result", fields, [b"", b"", b""], session=session)])

    def _on_submit(self, identity: bytes, msg: Message):
        engine, engines = msg.get("engine"), msg.get("engines")
        if engine is not None:
            if not isinstance(engine, str):
                raise errors.BadRequest("engine must be an engine id")
            engines = [engine]
        elif engines is not None and (not isinstance(engines, list) or not all(isinstance(e, str) for e in engines)):
            raise errors.BadRequest("engines must be a list of engine ids")
        after = msg.get("after") or []
        if not isinstance(after, list) or not all(is_task_id(t) for t in after):
            raise errors.BadRequest("after must be a list of task ids")
        return self.scheduler.submit(
            identity,
            msg["task"],
            msg.payloads[0],
            engines=engines,
            after=after,
            retries=msg.get("retries"),
            timeout=msg.get("timeout"),
            after_failed=msg.get("after_failed") or "fail",
            name=msg.get("name") or "",
            inputs=check_inputs(msg.get("inputs")),
            buffers=msg.buffers,
        )

    def _on_cancel(self, identity: bytes, msg: Message):
        return self.scheduler.cancel(msg["task"])

    def _on_fetch(self, identity: bytes, msg: Message):
        return self.scheduler.fetch(identity, msg["task"])

    def _on_purge(self, identity: bytes, msg: Message):
        older_than = verbs.seconds("older_than", msg.get("older_than"))
        return self.scheduler.store.purge(older_than)

    def _on_control(self, identity: bytes, msg: Message):
        verb = verbs.verb(msg["verb"])
        args = verb.parse(msg["args"])  # a client may not send the controller's internal arguments
        return verb.call(self.control.control_for(msg["engine"]), args)

    # -- replies ---------------------------------------------------------------

    def _ok(self, identity: bytes, msg: Message, value) -> None:
        fields = {"ref": msg.id, "ok": True, "value": value}
        self.send([identity, *self.codec.encode("reply", fields, session=msg.session)])

    def _error(self, identity: bytes, msg: Message, error: Exception) -> None:
        fields = {"ref": msg.id, "ok": False, "error": errors.to_wire(error)}
        self.send([identity, *self.codec.encode("reply", fields, session=msg.session)])

    def _failed(self, identity: bytes, msg: Message, failure) -> None:
        if not failure.check(errors.ClusterError):
            self.log.failure("control request {verb} failed", failure, verb=msg.get("verb"))
        self._error(identity, msg, failure.value)

