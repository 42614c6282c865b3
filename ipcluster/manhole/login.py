"""Logging in to the manhole: every login and failed login logged, telnet hanging up after a few.

:class:`AuditedPortal` wraps the cred portal each connection sees;
:class:`SSHUserAuth` and :class:`TelnetLogin` are the SSH ``ssh-userauth``
service and the telnet user name / password prompt, both audited.
"""
from __future__ import annotations

from twisted.conch import error as conch_error
from twisted.conch import telnet as conch_telnet
from twisted.conch.ssh import userauth
from twisted.cred import portal as cred_portal
from twisted.logger import Logger

TELNET_MAX_FAILURES = 3

log = Logger()


def _peer(transport) -> str:
    try:
        address = transport.getPeer()
    except Exception:
        return "unknown peer"
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def _text(name) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


class AuditedPortal:
    """A portal, seen by one connection, that logs each login and each failed one."""

    def __init__(self, portal: cred_portal.Portal, kind: str, peer: str) -> None:
        self._portal = portal
        self.kind = kind
        self.peer = peer

    def listCredentialsInterfaces(self):
        return self._portal.listCredentialsInterfaces()

    def login(self, credentials, mind, *interfaces):
        user = _text(getattr(credentials, "username", "?"))

        def succeeded(result):
            log.info("manhole: {user} logged in over {kind} from {peer}", user=user, kind=self.kind, peer=self.peer)
            return result

        def failed(failure):
            if not failure.check(conch_error.ValidPublicKey):  # a client asking whether to sign: not a login
                log.warn(
                    "manhole: failed {kind} login for user {user!r} from {peer}: {why}",
                    kind=self.kind,
                    user=user,
                    peer=self.peer,
                    why=failure.getErrorMessage() or failure.type.__name__,
                )
            return failure

        return self._portal.login(credentials, mind, *interfaces).addCallbacks(succeeded, failed)


class SSHUserAuth(userauth.SSHUserAuthServer):
    def serviceStarted(self):
        super().serviceStarted()
        self.portal = AuditedPortal(self.portal, "ssh", _peer(self.transport.transport))

    def serviceStopped(self):
        super().serviceStopped()
        if getattr(self.transport, "avatar", None) is None:
            log.info(
                "manhole: ssh connection from {peer} closed without logging in (user {user!r})",
                peer=self.portal.peer,
                user=_text(self.user or b""),
            )


class TelnetLogin(conch_telnet.AuthenticatingTelnetProtocol):
    """Telnet's user name / password prompt, audited, hanging up after a few failures."""

    failures = 0

    def connectionMade(self):
        self.portal = AuditedPortal(self.portal, "telnet", _peer(self.transport))
        super().connectionMade()

    def _ebLogin(self, failure):
        self.failures += 1
        if self.failures >= TELNET_MAX_FAILURES:
            self.transport.write(b"\r\nAuthentication failed; too many failures.\r\n")
            self.transport.loseConnection()
            return
        super()._ebLogin(failure)



#: Telnet's editing commands (RFC 1184, sent by a client in LINEMODE) as the control characters the
#: console understands: EOF is Ctrl-D, SUSP Ctrl-Z, ABORT Ctrl-C.
_EDITING = {bytes([236]): b"\x04", bytes([237]): b"\x1a", bytes([238]): b"\x03"}


class TelnetTransport(conch_telnet.TelnetTransport):
    """Twisted's telnet server transport, which also understands LINEMODE's EOF, SUSP and ABORT.

    The console asks the client for LINEMODE; such a client sends Ctrl-D as
    ``IAC EOF``, which Twisted's transport does not know (it raised
    ``ValueError('Stumped', b'\\xec')`` and the session's Deferred failed unhandled).
    """

    def dataReceived(self, data: bytes) -> None:
        if not any(code in data for code in _EDITING):
            super().dataReceived(data)
            return
        for i in range(len(data)):
            byte = data[i:i + 1]
            if self.state == "escaped" and byte in _EDITING:
                self.state = "data"
                self.applicationDataReceived(_EDITING[byte])
            else:
                super().dataReceived(byte)
