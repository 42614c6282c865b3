"""Sessions and replay windows: the check every signed message passes after its signature.

Each message carries its sender's session (``s``) and sequence number (``n``)
in the signed header.  The controller accepts a message only from a session it
knows, and each ``(session, socket)`` number only once
(``transport.replay.ReplayWindow``); a replay or an unknown session is dropped
and counted in the DropLog, like a bad signature.

* **Engines**: an engine's session is its routing token; the windows live on
  its ``EngineRecord`` (``windows``), so there are as many as there are active
  engines.  :class:`EngineInbox` checks the control and task sockets.
* **Clients**: the controller issues a session with every ``welcome`` (the reply
  to ``connect``).  :class:`ClientSessions` holds at most ``limit`` of them
  (10,000 by default, about 600 bytes each), forgetting the least recently used
  first; a client whose session was forgotten is told so (``unknown``) and
  opens a new one.  A restarted controller knows no session, so its clients
  and engines take the same path.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Sequence

from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import EngineRecord, Registry
from ipcluster.transport.replay import ReplayWindow
from ipcluster.transport.security import new_nonce
from ipcluster.transport.wire import ACCEPTS, BadMessage, Codec, Message

REPLAYED = "replayed message"
UNKNOWN_SESSION = "unknown session"
MAX_CLIENT_SESSIONS = 10_000

#: What an engine socket hands its handler: the sender's identity, its record (None: an
#: unknown session, already counted as a drop) and the message.
Received = tuple[bytes, Optional[EngineRecord], Message]


class EngineInbox:
    """Messages from engines on one socket: well signed, from an engine's session, never seen before."""

    def __init__(self, registry: Registry, codec: Codec, drops: DropLog, channel: str) -> None:
        self.registry = registry
        self.codec = codec
        self.drops = drops
        self.channel = channel
        self._accept = ACCEPTS[channel]

    def receive(self, frames: Sequence[bytes]) -> Optional[Received]:
        """``(identity, record, message)``, or None if the message was dropped.

        ``record`` is None for a valid message from an identity that has no
        active registration (dropped and counted as an unknown session): the
        caller may tell the engine so.
        """
        identity = frames[0]
        record = self.registry.by_identity(identity)
        peer = record.id.encode() if record is not None else b"an unregistered engine"
        try:
            msg = self.codec.decode(frames[1:], self._accept)
        except BadMessage as e:
            self.drops.drop(self.channel, e.reason, peer, e.detail)
            return None
        if record is None:
            self.drops.drop(self.channel, UNKNOWN_SESSION, peer, msg.type)
            return identity, None, msg
        if msg.session != record.session:
            self.drops.drop(self.channel, "session of another sender", peer, msg.type)
            return None
        if not record.windows[self.channel].accept(msg.seq):
            self.drops.drop(self.channel, REPLAYED, peer, f"{msg.type} #{msg.seq}")
            return None
        return identity, record, msg


class ClientSessions:
    """The client sessions the controller issued, each with its replay window (LRU-bounded).

    It also remembers which session each client identity used last, so that
    results sent later (``session_of``) carry the session the client checks.
    """

    def __init__(self, limit: int = MAX_CLIENT_SESSIONS, new_session: Callable[[], str] = new_nonce) -> None:
        self.limit = limit
        self._new = new_session
        self._windows: OrderedDict[str, ReplayWindow] = OrderedDict()
        self._by_identity: dict[bytes, str] = {}
        self._identity_of: dict[str, bytes] = {}
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self._windows)

    def __contains__(self, session: str) -> bool:
        return session in self._windows

    def open(self, identity: bytes) -> str:
        """A new session for the client at ``identity`` (the oldest is forgotten if there are
        ``limit`` already)."""
        session = self._new()
        self._windows[session] = ReplayWindow()
        self._bind(identity, session)
        while len(self._windows) > self.limit:
            old, _ = self._windows.popitem(last=False)
            self.forgotten += 1
            identity = self._identity_of.pop(old, None)
            if identity is not None and self._by_identity.get(identity) == old:
                del self._by_identity[identity]
        return session

    def accept(self, identity: bytes, session: str, seq: int) -> Optional[str]:
        """None if message ``seq`` of ``session`` (from ``identity``) is new, else the drop reason."""
        window = self._windows.get(session)
        if window is None:
            return UNKNOWN_SESSION
        if not window.accept(seq):
            return REPLAYED
        self._windows.move_to_end(session)
        if self._by_identity.get(identity) != session:
            self._bind(identity, session)
        return None

    def _bind(self, identity: bytes, session: str) -> None:
        self._by_identity[identity] = session
        before = self._identity_of.get(session)
        if before is not None and before != identity and self._by_identity.get(before) == session:
            del self._by_identity[before]  # the client reconnected under a new identity
        self._identity_of[session] = identity

    def session_of(self, identity: bytes) -> str:
        """The session to label messages to ``identity`` with ("" if it has none now)."""
        return self._by_identity.get(identity, "")
