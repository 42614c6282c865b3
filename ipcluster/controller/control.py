"""Control commands to engines, correlated to Deferreds by message id.

``EngineControl`` is the per-engine :class:`IEngineControl` provider;
``ControlChannel`` handles the control socket: it routes replies to the right
``EngineControl``, feeds the heart monitor's busy detection, notes what each
engine is running, and fails an engine's pending commands when it dies.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import attr
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ipcluster import errors
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.heartmonitor import HeartMonitor
from ipcluster.controller.registry import ACTIVE_STATES, GONE_EVENTS, EngineEvent, EngineRecord, Registry
from ipcluster.controller.sessions import EngineInbox
from ipcluster.interfaces import IEngineControl
from ipcluster.verbs import DEFAULT_EXIT_TIMEOUT, VERBS
from ipcluster.transport.wire import Codec, Message

DEFAULT_TIMEOUT = 10.0

StatusReport = Callable[[EngineRecord, object, object], None]


@attr.s(slots=True)
class _Pending:
    deferred: defer.Deferred = attr.ib()
    timer: IDelayedCall = attr.ib()
    verb: str = attr.ib()
    sent_at: float = attr.ib()


@implementer(IEngineControl)
class EngineControl:
    """Commands to one engine; every method returns a Deferred."""

    log = Logger()

    def __init__(
        self,
        engine_id: str,
        send: Callable[[Sequence[bytes]], bool],
        codec: Codec,
        clock: IReactorTime,
        default_timeout: float = DEFAULT_TIMEOUT,
        session: str = "",
    ) -> None:
        self.engine_id = engine_id
        self._session = session  # the engine's: what its commands are labelled with
        self._send = send
        self._codec = codec
        self._clock = clock
        self.default_timeout = default_timeout
        self._pending: dict[str, _Pending] = {}
        self._gone_waiters: list[defer.Deferred] = []
        self._gone: Optional[errors.ClusterError] = None

    def __repr__(self) -> str:
        return f"<EngineControl {self.engine_id} pending={len(self._pending)}>"

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- IEngineControl --------------------------------------------------------

    def beat(self, timeout: Optional[float] = None) -> defer.Deferred:
        sent = self._clock.seconds()
        return self._call("beat", {}, timeout).addCallback(lambda _: self._clock.seconds() - sent)

    def abort(self, task_id: str, timeout: Optional[float] = None, release: bool = False) -> defer.Deferred:
        return self._call("abort", {"task": task_id, "release": release}, timeout)

    def signal(self, signum: int, task_id: Optional[str] = None, timeout: Optional[float] = None) -> defer.Deferred:
        return self._call("signal", {"signum": signum, "task": task_id}, timeout)

    def exit(self, timeout: float = DEFAULT_EXIT_TIMEOUT) -> defer.Deferred:
        """Fires with None once the engine has left (or died), whichever first."""
        if self._gone is not None:
            return defer.succeed(None)
        gone = defer.Deferred()
        self._gone_waiters.append(gone)
        acked = self._call("exit", {"timeout": timeout}, self.default_timeout + timeout)

        def not_acked(failure):
            if gone.called:
                return None
            self._gone_waiters.remove(gone)
            return failure

        def acked_then_wait(_):
            if gone.called:
                return None
            limit = self._clock.callLater(timeout + self.default_timeout, self._exit_timed_out, gone, timeout)
            gone.addBoth(lambda r: (limit.active() and limit.cancel(), r)[1])
            return gone

        return acked.addCallbacks(acked_then_wait, not_acked)

    def reset(self, timeout: Optional[float] = None) -> defer.Deferred:
        return self._call("reset", {}, timeout)

    # -- plumbing ----------------------------------------------------------------

    def _call(self, name: str, args: dict, timeout: Optional[float]) -> defer.Deferred:
        """Send verb ``name`` with ``args`` (checked against the verbs table); a Deferred of the reply."""
        if self._gone is not None:
            return defer.fail(self._gone)
        verb = VERBS[name]
        try:
            args = verb.engine_args(verb.parse({k: v for k, v in args.items() if v is not None}, internal=True))
        except errors.BadRequest:
            return defer.fail()
        msg_id = self._codec.new_id()
        frames = self._codec.encode("command", {"verb": name, "args": args}, msg_id=msg_id, session=self._session)
        if not self._send(frames):
            return defer.fail(errors.EngineDead(f"engine {self.engine_id} is not connected"))
        timeout = self.default_timeout if timeout is None else timeout

        def cancel(d: defer.Deferred) -> None:
            p = self._pending.pop(msg_id, None)
            if p is not None and p.timer.active():
                p.timer.cancel()

        d = defer.Deferred(canceller=cancel)
        timer = self._clock.callLater(timeout, self._timed_out, msg_id, timeout)
        self._pending[msg_id] = _Pending(d, timer, name, self._clock.seconds())
        return d

    def _timed_out(self, msg_id: str, timeout: float) -> None:
        p = self._pending.pop(msg_id, None)
        if p is not None:
            p.deferred.errback(
                errors.ControlTimeout(
                    f"engine {self.engine_id} did not answer {p.verb!r} within {timeout:g} s "
                    "(busy in a call that holds the GIL, or unreachable)"
                )
            )

    def _exit_timed_out(self, gone: defer.Deferred, timeout: float) -> None:
        if gone in self._gone_waiters:
            self._gone_waiters.remove(gone)
            gone.errback(errors.ControlTimeout(f"engine {self.engine_id} acknowledged exit but did not leave"))

    def reply_received(self, msg: Message) -> None:
        p = self._pending.pop(msg["ref"], None)
        if p is None:
            self.log.debug("late or unknown reply {ref} from engine {engine}", ref=msg["ref"], engine=self.engine_id)
            return
        if p.timer.active():
            p.timer.cancel()
        if msg["ok"]:
            p.deferred.callback(msg.get("value"))
        else:
            p.deferred.errback(errors.from_wire(msg.get("error")))

    def engine_gone(self, error: errors.ClusterError) -> None:
        """The engine died or left: fail what waits on a reply, satisfy exit()."""
        self._gone = error
        # exit() waiters first: an exit whose ack was overtaken by the engine's
        # departure has still done what it was asked.
        waiters, self._gone_waiters = self._gone_waiters, []
        for w in waiters:
            w.callback(None)
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if p.timer.active():
                p.timer.cancel()
            p.deferred.errback(error)


def send_control_ping(codec: Codec, send: Callable[[Sequence[bytes]], bool], record: EngineRecord, beat: int) -> bool:
    """The heart monitor's Python-level ping on an engine's control channel (busy detection);
    False if the socket refused it (the engine's control channel is not connected)."""
    return send([record.identity, *codec.encode("ping", {"beat": beat}, session=record.session)])


class ControlChannel:
    """The controller side of every engine's two-way control channel."""

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        monitor: HeartMonitor,
        codec: Codec,
        clock: IReactorTime,
        send: Callable[[Sequence[bytes]], bool],
        drops: DropLog,
        default_timeout: float = DEFAULT_TIMEOUT,
        on_status: "StatusReport" = lambda record, task_id, running_for: None,
    ) -> None:
        self.registry = registry
        self.monitor = monitor
        self.codec = codec
        self.clock = clock
        self.send = send
        self.drops = drops
        self.default_timeout = default_timeout
        self.controls: dict[str, EngineControl] = {}
        self.inbox = EngineInbox(registry, codec, drops, "control")
        #: ``on_status(record, task_id, running_for)``: what each pong says the engine runs.
        self.on_status: StatusReport = on_status
        registry.subscribe(self._registry_event)

    def control_for(self, engine_id: str) -> EngineControl:
        """The IEngineControl of a live engine; UnknownEngine / EngineDead otherwise."""
        record = self.registry.get(engine_id)
        if record is None:
            raise errors.UnknownEngine(f"no engine {engine_id!r}")
        if record.state not in ACTIVE_STATES:
            raise errors.EngineDead(f"engine {engine_id} is {record.state}: {record.reason}")
        control = self.controls.get(engine_id)
        if control is None:
            identity = record.identity
            control = EngineControl(
                engine_id, lambda frames: self.send([identity, *frames]), self.codec, self.clock, self.default_timeout,
                session=record.session,
            )
            self.controls[engine_id] = control
        return control

    def send_ping(self, record: EngineRecord, beat: int) -> bool:
        return send_control_ping(self.codec, self.send, record, beat)

    def message_received(self, frames: list) -> None:
        received = self.inbox.receive(frames)
        if received is None:
            return
        identity, record, msg = received
        if record is None:
            # A registration that ended (dead, left, or a controller that restarted): re-register.
            unknown = {"reason": "this engine's registration is not known here"}
            self.send([identity, *self.codec.encode("unknown", unknown, session=msg.session)])
            return
        instance = msg.get("instance")
        if instance is not None and instance != record.instance:
            self.drops.drop("control", "stale engine instance", record.id.encode(), msg.type)
            return
        if not self.registry.listed(record):
            return  # a pending registration: it joins by its heart, and has no commands yet
        self.monitor.control_seen(record)
        if msg.type == "pong":
            self._note_status(record, msg)
        elif msg.type == "reply":
            control = self.controls.get(record.id)
            if control is not None:
                control.reply_received(msg)

    def _note_status(self, record: EngineRecord, msg: Message) -> None:
        # What it runs is the scheduler's to record (the one writer of running_task).
        self.on_status(record, msg.get("task"), msg.get("running_for"))
        queued = msg.get("queued")
        if isinstance(queued, int):
            record.queued = queued

    def _registry_event(self, event: EngineEvent, record: EngineRecord, reason: str) -> None:
        if event in GONE_EVENTS:
            control = self.controls.pop(record.id, None)
            if control is not None:
                control.engine_gone(errors.EngineDead(f"engine {record.id} {event}: {reason}"))

    def stop(self, error: errors.ClusterError) -> None:
        """The controller stops: fail every pending command with ``error``."""
        controls, self.controls = self.controls, {}
        for control in controls.values():
            control.engine_gone(error)
