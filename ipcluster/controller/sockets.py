"""The controller's five ROUTER sockets: bound together, sent to and drained by channel name.

Components never hold a socket: they get ``sender(channel)`` (a function of
frames that returns whether the message went out) and, for the heart monitor,
``drainer(channels)``.  So every component can be built before the sockets are
bound, and tested with a plain function instead.
"""
from __future__ import annotations

import os
import socket as _socket
from typing import Callable, Mapping, Optional, Sequence

from ipcluster.connection import CHANNELS
from ipcluster.controller.droplog import DropLog

Send = Callable[[Sequence[bytes]], bool]


class CannotListen(OSError):
    """A controller socket could not be bound (its port is in use, its address is not this host's)."""


class ControllerSockets:
    """Binds, sends on, drains and closes the controller's sockets."""

    def __init__(self, reactor, config, drops: DropLog) -> None:
        self.reactor = reactor
        self.config = config
        self.drops = drops
        self.sockets: dict = {}
        self._factory = None

    def sender(self, channel: str) -> Send:
        def send(frames: Sequence[bytes]) -> bool:
            return self.send(channel, frames)

        return send

    def drainer(self, *channels: str) -> Callable[[], None]:
        def drain() -> None:
            for channel in channels:
                sock = self.sockets.get(channel)
                if sock is not None:
                    sock.drain()

        return drain

    def send(self, channel: str, frames: Sequence[bytes]) -> bool:
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
        """Bind every channel (on the configured or random ports), each feeding its handler."""
        from ipcluster.transport.reactor import RouterSocket, make_factory

        import zmq

        self._factory = make_factory(self.reactor)
        try:
            for channel in CHANNELS:
                port = int(self.config.ports.get(channel, 0) or 0)
                address = f"tcp://{self.config.ip}:{port or '*'}"
                try:
                    self.sockets[channel] = RouterSocket(
                        self._factory,
                        address,
                        handlers[channel],
                        max_batch=self.config.max_batch,
                        max_message_size=self.config.max_message_size,
                        name=channel,
                    )
                except zmq.ZMQError as e:
                    why = os.strerror(e.errno) if e.errno else str(e)
                    raise CannotListen(e.errno, f"cannot listen on {address} (the {channel} socket): {why}") from e
        except Exception:
            self.close()
            raise

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
            self._factory.shutdown()
            self._factory = None
        self.sockets = {}

    def get(self, channel: str) -> Optional[object]:
        return self.sockets.get(channel)
