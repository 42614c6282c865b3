"""Shared by the controller's listening services (manhole, status page).

What interface an endpoint description binds, whether that is loopback, and a
factory wrapper that can hang up every open connection when a service stops
(so that stopping leaves nothing on the reactor).
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from twisted.internet import defer
from twisted.protocols import policies


def _split_description(description: str) -> list[str]:
    """Split an endpoint description on unescaped colons (``\\:`` escapes one)."""
    parts, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def endpoint_interface(description: str) -> Optional[str]:
    """The interface a ``tcp:``/``tcp6:`` endpoint description binds ("" = all); None if not TCP."""
    parts = _split_description(description)
    if parts[0].lower() not in ("tcp", "tcp6"):
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    keywords = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    # Positional order for tcp is port, interface, backlog.
    interface = positional[1] if len(positional) > 1 else ""
    return keywords.get("interface", interface)


def is_loopback(interface: str) -> bool:
    """True for ``localhost``, 127.x.x.x and ::1."""
    if interface.strip("[]").lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(interface.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback



class ConnectionTracker(policies.WrappingFactory):
    """Wraps a server factory to know its open connections and hang them all up."""

    noisy = False

    def __init__(self, wrapped) -> None:
        super().__init__(wrapped)
        self._all_gone: list[defer.Deferred] = []

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._all_gone = self._all_gone, []
            for d in waiters:
                d.callback(None)

    def disconnect_all(self) -> defer.Deferred:
        if not self.protocols:
            return defer.succeed(None)
        d = defer.Deferred()
        self._all_gone.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d
