"""The controller's five ROUTER sockets: bound together, sent to and drained by channel name.

Components never hold a socket: they get ``sender(channel)`` (a function of
frames that returns whether the message went out) and, for the heart monitor,
``drainer(channels)``.  So every component can be built before the sockets are
bound, and tested with a plain function instead.

Who may connect is settled before a single frame is read: the ZAP handler
(``transport.security.ZapHandler``, answered on the reactor) is bound first, in
the same ZeroMQ context, and every socket is a CURVE server (with ``curve`` keys) or a
PLAIN server.  Refused connections are counted
in the DropLog: wrong credentials by the ZAP handler, peers without any (the
ZeroMQ security mechanism does not match) by a monitor on each socket.  Each
socket takes messages up to its own limits (``wire.limits``).

Batches (``transport.batch``): the task and client sockets take them, each
envelope handled as if it had come alone; what the controller sends to clients
goes through an :class:`~ipcluster.transport.batch.Outbox`, so every reply and
result one reactor turn makes for a client leaves in one message at the start
of the next turn.
"""
from __future__ import annotations

import contextlib
import os
import socket as _socket
from typing import Callable, Iterator, Mapping, Optional, Sequence

import zmq
from zmq.utils.monitor import parse_monitor_message

from twisted.logger import Logger

from ipcluster.connection import CHANNELS
from ipcluster.controller.droplog import DropLog
from ipcluster.transport import batch, security, wire
from ipcluster.transport.soon import Soon

Send = Callable[[Sequence[bytes]], bool]

#: The handshake failures a socket monitor reports, and how the DropLog names them.
_MONITORED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def refusal(event: dict) -> Optional[str]:
    """The DropLog reason for a monitor event (None: not a refusal we count)."""
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "refused connection: no credentials"
        if event["value"] == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return "refused connection: CURVE handshake failed (wrong server key?)"
        return "refused connection: protocol error"
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "refused connection: handshake failed (no credentials, or the peer hung up)"
    return None


class CannotListen(OSError):
    """A controller socket could not be bound (its port is in use, its address is not this host's)."""


class ControllerSockets:
    """Binds, sends on, drains and closes the controller's sockets."""

    log = Logger()

    def __init__(self, reactor, config, drops: DropLog, key: bytes, curve: Optional[security.CurveKeys] = None,
                 kept: Optional[Mapping[str, int]] = None) -> None:
        self.reactor = reactor
        #: Ports of the previous controller to bind again where none is configured (``identity.py``).
        self.kept = dict(kept or {})
        self.config = config
        self.drops = drops
        self.key = key
        self.curve = curve
        self.sockets: dict = {}
        self.zap = security.ZapHandler(key, curve)
        self._auxiliary: list = []  # the ZAP handler and the monitors
        self._factory = None
        #: The batch-taking handlers of the task and client sockets (their counts), by channel.
        self.unbatchers: dict = {}
        #: End-of-turn work in one pass (the store's commit, then the outbox flush it feeds).
        self.soon = Soon(reactor)
        #: What goes to clients, sent together once per reactor turn.
        self.outbox = batch.Outbox(lambda frames: self._send_now("client", frames), self.soon, config.max_message_size)

    def sender(self, channel: str) -> Send:
        def send(frames: Sequence[bytes]) -> bool:
            return self.send(channel, frames)

        return send

    def pair_sender(self, channel: str) -> Callable[[bytes, bytes], bool]:
        """``send(first, second)``: a two-frame message on the short path (the heart pings:
        20,000 a second at 10,000 engines), straight to the socket."""
        def send(first: bytes, second: bytes) -> bool:
            sock = self.sockets.get(channel)
            return sock.send_frames((first, second)) if sock is not None else False

        return send

    def drainer(self, *channels: str, limit: int = 10_000) -> Callable[..., bool]:
        """``drain(since=None)``: read up to ``limit`` waiting messages from each channel's
        socket; False if some socket still holds messages that arrived before ``since``
        (reactor time; None: now)."""
        def drain(since: Optional[float] = None) -> bool:
            done = True
            for channel in channels:
                sock = self.sockets.get(channel)
                if sock is not None:
                    done = sock.drain(limit, since) and done
            return done

        return drain

    @contextlib.contextmanager
    def holding(self, *channels: str) -> Iterator[None]:
        """A burst of sends on ``channels`` that looks for waiting messages once, at its end
        (``RouterSocket.hold_reads``)."""
        socks = [s for s in (self.sockets.get(c) for c in channels) if s is not None]
        for sock in socks:
            sock.hold_reads()
        try:
            yield
        finally:
            for sock in socks:
                sock.release_reads()

    def send(self, channel: str, frames: Sequence[bytes]) -> bool:
        if channel == "client":
            return self.outbox.put(frames)
        return self._send_now(channel, frames)

    def _send_now(self, channel: str, frames: Sequence[bytes]) -> bool:
        sock = self.sockets.get(channel)
        sent = sock.send_frames(frames) if sock is not None else False
        if not sent and channel == "client" and sock is not None:
            # Results stay in the task store: the client can fetch them.
            self.drops.drop("client", "reply undeliverable (client gone, or not reading)", frames[0])
        return sent

    @property
    def bound(self) -> bool:
        return bool(self.sockets)

    def bind(self, handlers: Mapping[str, Callable[[list], None]]) -> None:
        """Bind the ZAP handler, then every channel (on the configured or random ports), each
        feeding its handler."""
        from ipcluster.transport.reactor import RouterSocket, make_factory

        self._factory = make_factory(self.reactor)
        try:
            zap = RouterSocket(self._factory, security.ZAP_ENDPOINT, lambda frames: None, name="zap")
            zap.on_message = lambda frames: self._authenticate(zap, frames)
            self._auxiliary.append(zap)
            for channel in CHANNELS:
                self.sockets[channel] = self._bind(RouterSocket, channel, handlers[channel])
        except Exception:
            self.close()
            raise

    def _bind(self, router, channel: str, handler: Callable[[list], None]):
        port = int(self.config.ports.get(channel, 0) or 0)
        if not port and channel in self.kept:
            try:
                return self._bind_on(router, channel, handler, self.kept[channel])
            except CannotListen as e:
                self.log.warn(
                    "the {channel} port {port} of the previous controller is taken ({why}): listening on another "
                    "one; its clients cannot reconnect by themselves (engines re-read the connection file)",
                    channel=channel, port=self.kept[channel], why=e.strerror,
                )
        return self._bind_on(router, channel, handler, port)

    def _bind_on(self, router, channel: str, handler: Callable[[list], None], port: int):
        from ipcluster.transport.reactor import PairSocket

        limits = wire.limits(channel, self.config.max_message_size)

        def configure(sock: zmq.Socket) -> None:
            security.configure_server(sock, channel, self.curve)
            monitor = f"inproc://ipcluster-monitor-{channel}-{id(self)}"
            sock.monitor(monitor, _MONITORED)
            self._auxiliary.append(PairSocket(self._factory, monitor, lambda frames: self._monitored(channel, frames)))

        address = f"tcp://{self.config.ip}:{port or '*'}"
        if channel in wire.BATCHED:
            handler = self.unbatchers[channel] = batch.Unbatcher(
                handler, lambda identity, e: self.drops.drop(channel, e.reason, identity, e.detail)
            )
        try:
            return router(
                self._factory,
                address,
                handler,
                max_batch=self.config.max_batch,
                max_message_size=limits.frame,
                name=channel,
                configure=configure,
                max_frames=limits.frames,
                max_size=limits.size,
                on_oversize=lambda message: self.drops.drop(
                    channel, "oversize message", b"", f"{message.frames} frames, {message.size} bytes"
                ),
                after_read=self.soon.now,
            )
        except zmq.ZMQError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise CannotListen(e.errno, f"cannot listen on {address} (the {channel} socket): {why}") from e

    def _authenticate(self, zap, frames: list) -> None:
        reply, verdict = self.zap.answer(frames)
        if reply is not None:
            zap.send_frames(reply)
        if not verdict.admitted:
            channel = verdict.channel or "zap"
            self.drops.drop(channel, "refused connection: wrong credentials", verdict.address.encode(), verdict.reason)

    def _monitored(self, channel: str, frames: list) -> None:
        reason = refusal(parse_monitor_message(frames)) if len(frames) == 2 else None
        if reason is not None:
            self.drops.drop(channel, reason)

    def ports(self) -> dict:
        return {channel: sock.port for channel, sock in self.sockets.items()}

    def advertised_address(self) -> str:
        """The address written to the connection file: where engines and clients connect."""
        if self.config.location:
            return self.config.location
        if self.config.ip in ("0.0.0.0", "*", "::", ""):
            return _socket.getfqdn()
        return self.config.ip

    def close(self) -> None:
        if self._factory is not None:
            self.outbox.flush()  # what this turn made for clients still goes out
            self._factory.shutdown()
            self._factory = None
        self.sockets = {}
        self._auxiliary = []

    def get(self, channel: str) -> Optional[object]:
        return self.sockets.get(channel)
