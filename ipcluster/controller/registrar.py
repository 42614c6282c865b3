"""The registration desk: phase one of an engine's registration."""
from __future__ import annotations

from typing import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import DuplicateEngine, Registry
from ipcluster.limits import MAX_ENGINE_ID_BYTES, is_engine_id, is_text
from ipcluster.transport.security import engine_token, new_nonce
from ipcluster.transport.wire import ACCEPTS, Codec, Message

Send = Callable[[Sequence[bytes]], bool]

MAX_HOST = 255  # a host name (RFC 1035: 255 octets at most)


class Registrar:
    """Phase one of registration: record the engine and tell it the heartbeat settings.

    The ``registered`` reply carries a fresh nonce; the engine's routing token
    (its sockets' identity and its session) is ``engine_token(key, nonce,
    instance)``, which only key holders can compute.  So a replayed
    ``register`` gets its replayer a reply it can do nothing with, and a
    pending registration that never pongs is purged.

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
        key: bytes = b"",
    ) -> None:
        if not key:
            raise ValueError("the registrar needs the cluster key to make routing tokens")
        self.key = key
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
        engine_id, instance = msg["engine"], msg["instance"]
        if not (is_engine_id(engine_id) and is_engine_id(instance) and is_text(msg["host"], MAX_HOST)):
            reason = (f"engine id and instance must be printable text of 1-{MAX_ENGINE_ID_BYTES} bytes, "
                      f"and host of 1-{MAX_HOST} characters")
            self._reply(identity, msg, "rejected", engine=repr(engine_id)[:MAX_ENGINE_ID_BYTES], reason=reason)
            return
        nonce = new_nonce()
        token = engine_token(self.key, nonce, instance)
        rank = msg.get("rank")
        try:
            self.registry.register(
                engine_id, instance, msg["host"], msg["pid"], self.clock.seconds(), self.is_local(engine_id),
                identity=token, rank=rank if type(rank) is int and 0 <= rank < 2**31 else None,
            )
        except DuplicateEngine as e:
            self.log.warn("refused registration of {engine}: {why}", engine=engine_id, why=str(e))
            self._reply(identity, msg, "rejected", engine=engine_id, reason=str(e))
            return
        # Labelled with no session: the token must not travel (whoever replays a register
        # gets this reply), the engine computes it.
        self._reply(identity, msg, "registered", engine=engine_id, heartbeat_period=self.heartbeat_period, nonce=nonce)

    def _reply(self, identity: bytes, msg: Message, mtype: str, **fields) -> None:
        self.send([identity, *self.codec.encode(mtype, dict(fields, ref=msg.id), session="")])
