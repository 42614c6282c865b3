"""The wire format: a signed envelope of small msgpack headers and opaque payloads.

Every message (after the identity frame a ROUTER adds) is::

    [signature, header, payload_0, ..., payload_n]

``signature`` is HMAC-SHA256, keyed with the connection file's key, over every
following frame, each preceded by its length (8 bytes, big-endian), so bytes
cannot be moved between frames; a frame of :data:`LARGE_FRAME` bytes or more
stands in it by its Poly1305 tag under a one-time key derived from the
message's nonce (sent after the HMAC), so a 100 MB buffer costs 9 ms, not 60
(``docs/protocol.md``, Signature, gives the argument).  Payload 0 of some types
may be followed by its out-of-band buffers (header ``b``, ``transport.buffers``).  ``header`` is a msgpack map holding ``v``
(protocol version), ``type``, ``id`` (a message id), ``s`` (the sender's
session) and ``n`` (its sequence number: every message a sender signs gets the
next one) and the type's fields.  Because ``s`` and ``n`` are signed, a
receiver can refuse a replayed message (``ipcluster.transport.replay``).
Payloads are opaque bytes (cloudpickle for functions, arguments and results):
the controller checks signatures and routes them, and never unpickles them.

Heartbeat pings are not envelopes: the engine's heart is a native echo that
cannot check signatures.  A ping is ``struct(beat, sent) + mac`` where the mac
binds beat and time to the engine's identity, so only a pong that echoes a ping
the controller sent to that very engine counts.

``docs/protocol.md`` lists every message type with its frames and fields;
:data:`SCHEMAS` below is the machine-checked form of that table.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import struct
from typing import Any, Iterator, Mapping, Optional, Sequence

import attr
import msgpack
from cryptography.hazmat.primitives.poly1305 import Poly1305

from ipcluster.transport.hmacpads import Hmac

PROTOCOL_VERSION = 3
MAX_HEADER_BYTES = 64 * 1024  # what the controller accepts from its peers
MAX_REPLY_HEADER_BYTES = 64 * 1024 * 1024  # what clients and engines accept from the controller
SIGNATURE_BYTES = 32
#: Frames of at least this many bytes are signed by their Poly1305 tag (``Codec.sign``).
LARGE_FRAME = 64 * 1024
NONCE_BYTES = 16
#: Out-of-band buffer frames one message may carry (header ``b``; ``transport.buffers``).
MAX_BUFFERS = 32
MAX_SESSION_CHARS = 64  # a session is a 32-hex-digit nonce or token; "" before one is issued
MAX_SEQUENCE = 2**63 - 1
#: The most envelopes one batch message carries (``transport.batch``).
MAX_BATCH_ENVELOPES = 256


class BadMessage(Exception):
    """A message failed validation; ``reason`` is a short category for logs."""

    def __init__(self, reason: str, detail: str = "", header: dict | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        #: The decoded header when the signature was good (so a request can be answered).
        self.header = header


@attr.s(frozen=True, slots=True)
class Schema:
    """What a message type carries: its number of payload frames and required fields."""

    payloads: int = attr.ib()
    fields: Mapping[str, tuple] = attr.ib(factory=dict)
    #: Whether its payload 0 (a pickle) may come with out-of-band buffer frames (header ``b``).
    buffers: bool = attr.ib(default=False)


_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)
_MAP = (dict,)

#: Every message type, the number of payload frames it carries and its required
#: header fields with their accepted types.  Optional fields are listed in
#: docs/protocol.md and checked where they are used.
SCHEMAS: dict[str, Schema] = {
    # registration socket (engine DEALER, random identity -> controller ROUTER)
    "register": Schema(0, {"engine": _STR, "instance": _STR, "host": _STR, "pid": _INT}),
    "registered": Schema(0, {"engine": _STR, "heartbeat_period": _NUM, "nonce": _STR}),
    "rejected": Schema(0, {"engine": _STR, "reason": _STR}),
    # control socket (engine DEALER, identity = engine id)
    "ping": Schema(0, {"beat": _INT}),
    "pong": Schema(0, {"beat": _INT, "instance": _STR}),
    "command": Schema(0, {"verb": _STR, "args": _MAP}),
    "reply": Schema(0, {"ref": _STR, "ok": _BOOL}),
    "unknown": Schema(0, {"reason": _STR}),
    # task socket (engine DEALER, identity = engine id)
    "task": Schema(1, {"task": _STR}, buffers=True),
    "task_in": Schema(2, {"task": _STR, "inputs": (list,)}, buffers=True),  # a task with its inputs' results (futures as inputs)
    "started": Schema(0, {"task": _STR, "instance": _STR}),
    "result": Schema(3, {"task": _STR, "ok": _BOOL}, buffers=True),
    "output": Schema(1, {"task": _STR, "stream": _STR}),  # engine -> controller -> client: live output
    "bye": Schema(0, {"instance": _STR, "reason": _STR}),
    # client socket (client DEALER -> controller ROUTER)
    "connect": Schema(0, {}),
    "welcome": Schema(0, {"ref": _STR, "version": _INT}),
    "running": Schema(0, {"task": _STR}),
    "engines": Schema(0, {}),
    "tasks": Schema(0, {}),
    "submit": Schema(1, {"task": _STR}, buffers=True),
    "cancel": Schema(0, {"task": _STR}),
    "fetch": Schema(0, {"task": _STR}),
    "purge": Schema(0, {}),
    "control": Schema(0, {"engine": _STR, "verb": _STR, "args": _MAP}),
}

#: Which message types each controller socket accepts from its peers.
ACCEPTS = {
    "registration": frozenset({"register"}),
    "control": frozenset({"pong", "reply"}),
    "task": frozenset({"started", "result", "output", "bye"}),
    "client": frozenset({"connect", "engines", "tasks", "submit", "control", "cancel", "fetch", "purge"}),
}

#: Which message types engines and clients accept from the controller, per socket.
PEER_ACCEPTS = {
    "registration": frozenset({"registered", "rejected"}),
    "control": frozenset({"ping", "command", "unknown"}),
    "task": frozenset({"task", "task_in"}),
    "client": frozenset({"welcome", "reply", "running", "result", "output", "unknown"}),
}

#: The controller sockets whose peers may send batches (``transport.batch``).
BATCHED = frozenset({"task", "client"})

#: How many payload frames at most each socket's messages carry.
_MOST_PAYLOADS = {channel: max(SCHEMAS[t].payloads for t in types) for channel, types in ACCEPTS.items()}


@attr.s(frozen=True, slots=True)
class Message:
    """A decoded, verified message."""

    type: str = attr.ib()
    id: str = attr.ib()
    fields: dict = attr.ib()
    payloads: tuple = attr.ib(default=())
    #: The sender's session (``s``): "" for a request that opens one.
    session: str = attr.ib(default="")
    #: The sender's sequence number (``n``).
    seq: int = attr.ib(default=0)
    #: Out-of-band buffers of payload 0 (``transport.buffers``), after the type's payloads.
    buffers: tuple = attr.ib(default=())

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def new_key() -> bytes:
    """A fresh random signing key (32 bytes)."""
    return os.urandom(32)


class MessageIds:
    """Cheap unique message ids: a random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._n = 0

    def __call__(self) -> str:
        self._n += 1
        return f"{self._prefix}.{self._n}"


_LEN = struct.Struct(">Q")


class Codec:
    """Signs, encodes, verifies and decodes envelopes with one key.

    ``session`` is what :meth:`encode` puts in ``s`` unless told otherwise;
    ``sequence`` yields the numbers for ``n`` (codecs of one sender that run in
    different threads share one: ``next`` on an ``itertools.count`` is atomic).
    """

    def __init__(
        self,
        key: bytes,
        max_header: int = MAX_HEADER_BYTES,
        session: str = "",
        sequence: Optional[Iterator[int]] = None,
    ) -> None:
        if not key:
            raise ValueError("an empty signing key is not allowed")
        self._key = key
        self._hmac = Hmac(key)
        self.max_header = max_header
        self.session = session
        self._sequence = sequence if sequence is not None else itertools.count(1)
        self._packer = msgpack.Packer(use_bin_type=True)
        self.new_id = MessageIds()

    def sign(self, frames: Sequence[bytes], nonce: bytes = b"") -> bytes:
        """The signature of ``frames`` (header, payloads, buffers): the HMAC alone (32 bytes),
        or, when a frame has :data:`LARGE_FRAME` bytes or more, the HMAC and ``nonce`` (48)."""
        parts = [nonce]
        for i, frame in enumerate(frames):
            size = len(frame)
            parts.append(_LEN.pack(size))
            parts.append(frame if size < LARGE_FRAME else self._frame_tag(nonce, i, frame))
        digest = self._hmac(b"".join(parts))
        return digest + nonce if nonce else digest

    def _frame_tag(self, nonce: bytes, index: int, frame) -> bytes:
        """A large frame's Poly1305 tag, under a one-time key derived from the message's nonce."""
        if len(nonce) != NONCE_BYTES:
            raise BadMessage("bad signature", "a large frame without a nonce")
        one_time = hmac.digest(self._key, b"ipcluster-frame" + nonce + index.to_bytes(4, "big"), "sha256")
        return Poly1305.generate_tag(one_time, frame)

    def encode(
        self,
        type: str,
        fields: Mapping[str, Any] | None = None,
        payloads: Sequence[bytes] = (),
        msg_id: str | None = None,
        session: str | None = None,
    ) -> list[bytes]:
        """Frames for one message: ``[signature, header, *payloads]``.

        ``session`` (default: the codec's) is the ``s`` the receiver checks:
        the controller labels each message with its receiver's session.  Payloads
        beyond the type's count are payload 0's out-of-band buffers (header ``b``).
        """
        header = {"v": PROTOCOL_VERSION, "type": type, "id": msg_id or self.new_id()}
        if fields:
            header.update(fields)
        header["s"] = self.session if session is None else session
        header["n"] = next(self._sequence)
        schema = SCHEMAS.get(type)
        extra = len(payloads) - schema.payloads if schema is not None and schema.buffers else 0
        if extra > 0:
            header["b"] = extra
        else:
            header.pop("b", None)
        body = [self._packer.pack(header), *payloads]
        large = any(len(frame) >= LARGE_FRAME for frame in body)
        return [self.sign(body, os.urandom(NONCE_BYTES) if large else b""), *body]

    def decode(self, frames: Sequence[bytes], accept: frozenset | None = None) -> Message:
        """Verify and decode ``frames`` (identity already removed).

        Raises :class:`BadMessage` for anything that is not a well-formed,
        correctly signed message of an accepted type; nothing is unpickled.
        """
        header = self._verified_header(frames)
        mtype = header.get("type")
        schema = SCHEMAS.get(mtype) if isinstance(mtype, str) else None
        if schema is None or (accept is not None and mtype not in accept):
            raise BadMessage("unexpected type", repr(mtype)[:40], header)
        msg_id = header.get("id")
        if not isinstance(msg_id, str) or not msg_id:
            raise BadMessage("missing id", mtype)
        session, seq = _sender(header)
        buffers = _buffer_count(mtype, schema, header)
        payloads = tuple(frames[2:])
        if len(payloads) != schema.payloads + buffers:
            raise BadMessage(
                "wrong frame count",
                f"{mtype} carries {schema.payloads} payload(s) and {buffers} buffer(s), got {len(payloads)} frames",
                header,
            )
        _check_fields(mtype, schema, header)
        return Message(mtype, msg_id, header, payloads[: schema.payloads], session, seq, payloads[schema.payloads :])

    def _verified_header(self, frames: Sequence[bytes]) -> dict:
        """The header of a correctly signed message of our protocol version."""
        if len(frames) < 2:
            raise BadMessage("too few frames", f"{len(frames)} frame(s)")
        signature, header_bytes = bytes(frames[0]), frames[1]
        if len(header_bytes) > self.max_header:
            raise BadMessage("oversize header", f"{len(header_bytes)} bytes")
        if len(signature) not in (SIGNATURE_BYTES, SIGNATURE_BYTES + NONCE_BYTES):
            raise BadMessage("bad signature")
        if not hmac.compare_digest(signature, self.sign(frames[1:], signature[SIGNATURE_BYTES:])):
            raise BadMessage("bad signature")
        try:
            header = msgpack.unpackb(header_bytes, raw=False, strict_map_key=True)
        except Exception as e:
            raise BadMessage("undecodable header", type(e).__name__) from None
        if not isinstance(header, dict):
            raise BadMessage("header is not a map")
        version = header.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise BadMessage("protocol version", f"got {version!r}, speak {PROTOCOL_VERSION}")
        return header


def _sender(header: dict) -> tuple[str, int]:
    """The sender's session and sequence number, checked."""
    session, seq = header.get("s"), header.get("n")
    if not isinstance(session, str) or len(session) > MAX_SESSION_CHARS:
        raise BadMessage("bad session", repr(session)[:40])
    if type(seq) is not int or not 0 < seq <= MAX_SEQUENCE:
        raise BadMessage("bad sequence number", repr(seq)[:40])
    return session, seq


def _buffer_count(mtype: str, schema: Schema, header: dict) -> int:
    """How many out-of-band buffer frames the header says follow the payloads."""
    count = header.get("b", 0)
    if type(count) is not int or not 0 <= count <= (MAX_BUFFERS if schema.buffers else 0):
        raise BadMessage("bad buffer count", f"{mtype}: {count!r}"[:60], header)
    return count


def _check_fields(mtype: str, schema: Schema, header: dict) -> None:
    for name, types in schema.fields.items():
        value = header.get(name)
        if not isinstance(value, types) or (types is not _BOOL and isinstance(value, bool)):
            raise BadMessage("bad field", f"{mtype}.{name}", header)


# -- heartbeat pings ---------------------------------------------------------

_PING = struct.Struct(">Qd")
PING_MAC_BYTES = 16
PING_BYTES = _PING.size + PING_MAC_BYTES


class PingCodec:
    """Makes and checks heartbeat pings that bind beat and send time to an engine id."""

    def __init__(self, key: bytes) -> None:
        self._hmac = Hmac(hashlib.sha256(b"ipcluster-heartbeat" + key).digest())

    def _mac(self, engine: bytes, body: bytes) -> bytes:
        return self._hmac(engine + b"\0" + body)[:PING_MAC_BYTES]

    def ping(self, engine: bytes, beat: int, sent: float) -> bytes:
        body = _PING.pack(beat, sent)
        return body + self._mac(engine, body)

    def pong(self, engine: bytes, data: bytes) -> tuple[int, float]:
        """``(beat, sent)`` from an echoed ping; raises BadMessage if it is not ours."""
        if len(data) != PING_BYTES:
            raise BadMessage("bad pong", f"{len(data)} bytes")
        body, mac = data[: _PING.size], data[_PING.size :]
        if not hmac.compare_digest(mac, self._mac(engine, body)):
            raise BadMessage("bad pong", "signature")
        return _PING.unpack(body)


# -- what a whole message may be, per controller socket ------------------------

#: Room for the identity frame a ROUTER puts first (ZeroMQ identities are at most 255 bytes).
IDENTITY_ALLOWANCE = 256
#: ``MAXMSGSIZE`` of the heartbeat socket.
HEARTBEAT_FRAME_LIMIT = 512


@attr.s(frozen=True, slots=True)
class Limits:
    """What one controller socket accepts as one message, checked before it is decoded or hashed.

    ``frame`` is ZeroMQ's ``MAXMSGSIZE`` (libzmq disconnects a peer that sends a
    larger frame); ``frames`` and ``size`` bound the whole message as received
    (the identity frame included).
    """

    frame: int = attr.ib()
    frames: int = attr.ib()
    size: int = attr.ib()


def limits(channel: str, max_message_size: int) -> Limits:
    """The limits of a controller socket: heartbeat, one ping; registration and control, small
    headers; task and client, ``max_message_size`` (``--max-message-size``) for the whole message."""
    if channel == "heartbeat":
        # MAXMSGSIZE also bounds the handshake's commands (READY carries the identity):
        # measured, 96 bytes pass a 32-character token and 384 a 255-byte identity.
        return Limits(HEARTBEAT_FRAME_LIMIT, 2, IDENTITY_ALLOWANCE + PING_BYTES)
    frames = 1 + 2 + _MOST_PAYLOADS[channel]
    if channel in BATCHED:  # the identity, the batch's frame counts, its envelopes
        frames = 2 + MAX_BATCH_ENVELOPES * (2 + _MOST_PAYLOADS[channel])
    if _MOST_PAYLOADS[channel] == 0:
        return Limits(MAX_HEADER_BYTES, frames, IDENTITY_ALLOWANCE + SIGNATURE_BYTES + MAX_HEADER_BYTES)
    return Limits(max_message_size, frames, IDENTITY_ALLOWANCE + max_message_size)
