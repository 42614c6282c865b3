"""Who may connect: ZeroMQ authentication (ZAP) and the secrets derived from the cluster key.

Every controller socket is a ZeroMQ *server* of one of two mechanisms:

* **CURVE** (CurveZMQ: encryption, and authentication of both ends), on by default whenever
  the controller binds a non-loopback address (``--curve`` turns it on for loopback too).  The
  controller generates two key pairs per cluster (:class:`CurveKeys`): the server's, whose
  secret never leaves the controller, and the client pair every engine and client of the
  cluster presents, written with the server's public key into the connection file (0600).  The
  ZAP handler admits exactly that client public key.
* **PLAIN** otherwise: a peer must present the user name :data:`PLAIN_USER` and the password
  :func:`plain_password` (an HMAC of the cluster key, never the key itself).  PLAIN sends its
  password in clear: on loopback that costs nothing; on a network path use CURVE.

Either way a peer without the cluster's credentials is refused during the handshake, before
libzmq lets one frame of it through: nothing it sends is buffered, hashed or handed to a handler.
The choice of mechanism is made in two functions, :func:`configure_client` and
:func:`configure_server`, and checked in one, :meth:`ZapHandler.answer`.

Also here: :func:`engine_token`, an engine's unguessable routing identity.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Optional, Sequence, Union

import attr
import zmq
from zmq.utils import z85

#: The ZAP domain of every controller socket is ``ipcluster/<channel>``: the handler learns
#: which socket a peer knocks at.
ZAP_DOMAIN_PREFIX = "ipcluster/"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
PLAIN_USER = b"ipcluster"
MECHANISM = b"PLAIN"
CURVE = b"CURVE"

#: Length of an engine's routing token, in characters (hex: 128 bits).
TOKEN_CHARS = 32
#: Length of the nonce the controller sends in ``registered``, in bytes.
NONCE_BYTES = 16


def plain_password(key: bytes) -> bytes:
    """The PLAIN password of a cluster: ``HMAC(key, b"ipcluster-zap-plain")``, hex."""
    return hmac.new(key, b"ipcluster-zap-plain", hashlib.sha256).hexdigest().encode()


def _z85(value) -> bytes:
    try:
        key = value.encode("ascii") if isinstance(value, str) else bytes(value)
        if len(key) == 40 and len(z85.decode(key)) == 32:
            return key
    except (KeyError, ValueError, TypeError, UnicodeError):
        pass
    raise ValueError("a CURVE key is 40 Z85 characters")


@attr.s(frozen=True, slots=True)
class CurveKeys:
    """A cluster's CURVE keys (Z85 text, 40 characters each).

    ``server_secret`` is known to the controller only: :meth:`public` (what the connection
    file holds) leaves it out.
    """

    server_public: bytes = attr.ib(converter=_z85)
    client_public: bytes = attr.ib(converter=_z85)
    client_secret: bytes = attr.ib(converter=_z85, repr=False)
    server_secret: Optional[bytes] = attr.ib(default=None, repr=False,
                                             converter=lambda v: None if v is None else _z85(v))

    @classmethod
    def generate(cls) -> "CurveKeys":
        """Two fresh key pairs: the controller's and its engines' and clients'."""
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public, client_public, client_secret, server_secret)

    def public(self) -> "CurveKeys":
        """These keys without the server's secret: what engines and clients are given."""
        return attr.evolve(self, server_secret=None)

    def to_json(self) -> dict:
        return {"server_public": self.server_public.decode(), "client_public": self.client_public.decode(),
                "client_secret": self.client_secret.decode()}

    @classmethod
    def from_json(cls, data: dict) -> "CurveKeys":
        return cls(data["server_public"], data["client_public"], data["client_secret"])


def is_loopback(ip: str) -> bool:
    """Whether binding ``ip`` keeps the sockets on this host (127.0.0.0/8, ::1, localhost)."""
    return ip == "localhost" or ip.startswith("127.") or ip in ("::1", "[::1]")


def configure_client(sock: zmq.Socket, info) -> None:
    """Make ``sock`` (before it connects) present this cluster's credentials.

    ``info`` is the connection info (``connection.ConnectionInfo``: CURVE when it holds
    ``curve`` keys, else PLAIN) or the key itself (PLAIN).
    """
    curve = getattr(info, "curve", None)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.client_public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.client_secret)
        return
    key = info if isinstance(info, (bytes, bytearray)) else info.key
    sock.setsockopt(zmq.PLAIN_USERNAME, PLAIN_USER)
    sock.setsockopt(zmq.PLAIN_PASSWORD, plain_password(bytes(key)))


def configure_server(sock: zmq.Socket, channel: str, curve: Optional[CurveKeys] = None) -> None:
    """Make ``sock`` (before it binds) demand credentials, checked by the ZAP handler:
    CURVE with the server secret of ``curve``, else PLAIN."""
    if curve is not None:
        if curve.server_secret is None:
            raise ValueError("a CURVE server needs the server's secret key")
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.server_secret)
    else:
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

    With ``curve`` keys only the CURVE mechanism with the cluster's client public key is
    admitted; without, only PLAIN with the cluster's password.  Sans I/O: :meth:`answer`
    takes the frames a ROUTER bound at :data:`ZAP_ENDPOINT` received and returns the frames
    to send back, with the verdict (for the DropLog).
    """

    def __init__(self, key: bytes, curve: Optional[CurveKeys] = None) -> None:
        self._password = plain_password(key)
        self._client_key = z85.decode(curve.client_public) if curve is not None else None
        self.mechanism = CURVE if curve is not None else MECHANISM
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
        if mechanism != self.mechanism:
            return Verdict(False, channel, "", name, f"mechanism {name} not allowed")
        if self._client_key is not None:
            if len(credentials) != 1 or not hmac.compare_digest(credentials[0], self._client_key):
                return Verdict(False, channel, "", name, "wrong client key (not this cluster's)")
            return Verdict(True, channel, "", name)
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
