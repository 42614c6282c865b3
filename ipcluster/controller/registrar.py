"""The registration desk: phase one of an engine's registration."""
from __future__ import annotations

from typing import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import DuplicateEngine, Registry
from ipcluster.transport.wire import ACCEPTS, Codec, Message

Send = Callable[[Sequence[bytes]], bool]


class Registrar:
    """Phase one of registration: record the engine and tell it the heartbeat settings.

    Phase two -- counting the engine -- happens at its first heart pong, in
    the HeartMonitor.
    """

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        codec: Codec,
        clock: IReactorTime,
        send: Send,
        drops: DropLog,
        heartbeat_period: float,
        is_local: Callable[[str], bool] = lambda engine_id: False,
    ) -> None:
        self.registry = registry
        self.codec = codec
        self.clock = clock
        self.send = send
        self.drops = drops
        self.heartbeat_period = heartbeat_period
        self.is_local = is_local

    def message_received(self, frames: list) -> None:
        received = self.drops.decode(self.codec, "registration", frames, ACCEPTS["registration"])
        if received is None:
            return
        identity, msg = received
        engine_id = msg["engine"]
        if not engine_id or len(engine_id.encode()) > 128 or not engine_id.isprintable():
            self._reply(identity, msg, "rejected", engine=engine_id[:128], reason="engine id must be 1-128 bytes of printable text")
            return
        try:
            self.registry.register(
                engine_id, msg["instance"], msg["host"], msg["pid"], self.clock.seconds(), self.is_local(engine_id)
            )
        except DuplicateEngine as e:
            self.log.warn("refused registration of {engine}: {why}", engine=engine_id, why=str(e))
            self._reply(identity, msg, "rejected", engine=engine_id, reason=str(e))
            return
        self._reply(identity, msg, "registered", engine=engine_id, heartbeat_period=self.heartbeat_period)

    def _reply(self, identity: bytes, msg: Message, mtype: str, **fields) -> None:
        self.send([identity, *self.codec.encode(mtype, dict(fields, ref=msg.id))])
