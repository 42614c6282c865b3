"""Who may connect: ZeroMQ authentication (ZAP) and the secrets derived from the cluster key.

Every controller socket is a ZeroMQ PLAIN *server*: a peer must present the user name
:data:`PLAIN_USER` and the password :func:`plain_password` (an HMAC of the cluster key, never
the key itself) before libzmq lets one frame of it through.  A peer without the key is refused
during the handshake, so nothing it sends is buffered, hashed or handed to a handler.

The choice of mechanism is made in two functions, :func:`configure_client` and
:func:`configure_server`, and checked in one, :meth:`ZapHandler.answer`: that is where CURVE
(encryption and server authentication for non-loopback binds) goes next, reading its keys
from the connection info.

PLAIN sends its password in clear: on loopback that costs nothing, on a network path it means
an observer learns the password (not the key) and can pass the handshake; what it can do then
is bounded by the signatures and the replay windows (``docs/guide.md``, Security).

Also here: :func:`engine_token`, an engine's unguessable routing identity.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Optional, Sequence, Union

import attr
import zmq

#: The ZAP domain of every controller socket is ``ipcluster/<channel>``: the handler learns
#: which socket a peer knocks at.
ZAP_DOMAIN_PREFIX = "ipcluster/"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
PLAIN_USER = b"ipcluster"
MECHANISM = b"PLAIN"

#: Length of an engine's routing token, in characters (hex: 128 bits).
TOKEN_CHARS = 32
#: Length of the nonce the controller sends in ``registered``, in bytes.
NONCE_BYTES = 16


def plain_password(key: bytes) -> bytes:
    """The PLAIN password of a cluster: ``HMAC(key, b"ipcluster-zap-plain")``, hex."""
    return hmac.new(key, b"ipcluster-zap-plain", hashlib.sha256).hexdigest().encode()


def configure_client(sock: zmq.Socket, info) -> None:
    """Make ``sock`` (before it connects) present this cluster's credentials.

    ``info`` is the connection info (``connection.ConnectionInfo``) or the key itself.
    """
    key = info if isinstance(info, (bytes, bytearray)) else info.key
    sock.setsockopt(zmq.PLAIN_USERNAME, PLAIN_USER)
    sock.setsockopt(zmq.PLAIN_PASSWORD, plain_password(bytes(key)))


def configure_server(sock: zmq.Socket, channel: str) -> None:
    """Make ``sock`` (before it binds) demand credentials, checked by the ZAP handler."""
    sock.setsockopt(zmq.PLAIN_SERVER, 1)
    sock.setsockopt(zmq.ZAP_DOMAIN, (ZAP_DOMAIN_PREFIX + channel).encode())


def new_nonce() -> str:
    """A fresh random nonce (hex, :data:`NONCE_BYTES` bytes): registration nonces, client sessions."""
    return os.urandom(NONCE_BYTES).hex()


def engine_token(key: bytes, nonce: Union[str, bytes], instance: str) -> bytes:
    """An engine's routing identity for one registration: ``HMAC(key, nonce + instance)``.

    Printable (hex) and never starting with a zero byte (ZeroMQ reserves those identities).
    Only a key holder that saw the ``registered`` reply's nonce can compute it.
    """
    raw = nonce.encode() if isinstance(nonce, str) else nonce
    mac = hmac.new(key, b"ipcluster-token" + raw + instance.encode(), hashlib.sha256)
    return mac.hexdigest()[:TOKEN_CHARS].encode()


@attr.s(frozen=True, slots=True)
class Verdict:
    """What the ZAP handler decided about one handshake."""

    admitted: bool = attr.ib()
    #: The socket knocked at (from the ZAP domain), e.g. ``"task"``; ``""`` if not ours.
    channel: str = attr.ib()
    #: The peer's address, as libzmq reports it.
    address: str = attr.ib()
    mechanism: str = attr.ib()
    reason: str = attr.ib(default="")


class ZapHandler:
    """Answers ZAP requests (RFC 27): admits exactly this cluster's credentials.

    Sans I/O: :meth:`answer` takes the frames a ROUTER bound at :data:`ZAP_ENDPOINT`
    received and returns the frames to send back, with the verdict (for the DropLog).
    """

    def __init__(self, key: bytes) -> None:
        self._password = plain_password(key)
        self.admitted = 0
        self.refused = 0

    def answer(self, frames: Sequence[bytes]) -> tuple[Optional[list], Verdict]:
        """``(reply frames, verdict)``; reply is None for a request too malformed to answer."""
        # [routing id, b"", version, request id, domain, address, identity, mechanism, *credentials]
        if len(frames) < 8 or frames[1] != b"":
            self.refused += 1
            return None, Verdict(False, "", "", "", "malformed ZAP request")
        routing, _, version, request_id, domain, address, _identity, mechanism = frames[:8]
        credentials = frames[8:]
        channel = _channel(domain)
        verdict = self._judge(version, channel, mechanism, credentials)
        verdict = attr.evolve(verdict, address=address.decode("utf-8", "replace"))
        if verdict.admitted:
            self.admitted += 1
            status, text, user = b"200", b"OK", PLAIN_USER
        else:
            self.refused += 1
            status, text, user = b"400", verdict.reason.encode(), b""
        return [routing, b"", ZAP_VERSION, request_id, status, text, user, b""], verdict

    def _judge(self, version: bytes, channel: str, mechanism: bytes, credentials: Sequence[bytes]) -> Verdict:
        name = mechanism.decode("ascii", "replace")
        if version != ZAP_VERSION:
            return Verdict(False, channel, "", name, "unsupported ZAP version")
        if not channel:
            return Verdict(False, channel, "", name, "not an ipcluster socket")
        if mechanism != MECHANISM:
            return Verdict(False, channel, "", name, f"mechanism {name} not allowed")
        if (
            len(credentials) != 2
            or not hmac.compare_digest(credentials[0], PLAIN_USER)
            or not hmac.compare_digest(credentials[1], self._password)
        ):
            return Verdict(False, channel, "", name, "wrong credentials (no key, or another cluster's)")
        return Verdict(True, channel, "", name)


def _channel(domain: bytes) -> str:
    text = domain.decode("utf-8", "replace")
    return text[len(ZAP_DOMAIN_PREFIX):] if text.startswith(ZAP_DOMAIN_PREFIX) else ""
