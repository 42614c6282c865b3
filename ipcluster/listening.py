"""The controller's listening services (the manhole, the status page): one class.

:class:`ListeningService` serves a protocol factory on a Twisted server
endpoint, its lifecycle an Automat machine; :class:`ConnectionTracker` knows
its open connections so that stopping leaves nothing on the reactor; and
:func:`endpoint_interface` / :func:`is_loopback` tell what interface an
endpoint description binds and whether that is loopback.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional, Protocol

from automat import TypeMachineBuilder, pep614
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure

log = Logger()


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


def loopback_by_default(description: str) -> str:
    """``description`` bound to 127.0.0.1 unless it names an interface itself.

    A bare port (``"8080"``) becomes ``tcp:8080:interface=127.0.0.1``; a ``tcp:``
    description without an interface gets ``interface=127.0.0.1``; anything
    else (an explicit interface, ``unix:``, ``ssl:``...) is kept as written.
    """
    description = description.strip()
    if description.isdigit():
        description = f"tcp:{description}"
    parts = _split_description(description)
    if parts[0].lower() == "tcp" and "interface=" not in description and len([p for p in parts[1:] if "=" not in p]) < 2:
        return f"{description}:interface=127.0.0.1"
    return description


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
        """Abort every open connection; fires once the last one is gone."""
        if not self.protocols:
            return defer.succeed(None)
        d = defer.Deferred()
        self._all_gone.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d


# -- the listening service ---------------------------------------------------------


class _Listener(Protocol):
    """The inputs of a listening service's machine (see :class:`ListeningService`)."""

    def bind(self) -> None:
        """Listen now (``privilegedStartService``): binding twice is an error."""

    def start(self) -> None:
        """The service starts: listen, unless ``bind`` already did."""

    def listening(self) -> defer.Deferred:
        """A new Deferred: the bound address once listening (fails if listening failed)."""

    def stop(self) -> defer.Deferred:
        """Stop listening and hang up every connection; fires once all is closed."""

    def _listened(self, port: IListeningPort) -> None:
        """The endpoint listens."""

    def _failed(self, failure: Failure) -> None:
        """The endpoint could not listen (or the attempt was cancelled)."""

    def _closed(self) -> None:
        """The port is closed and every connection is gone."""


@dataclass
class _Core:
    endpoint: IStreamServerEndpoint
    factory: ConnectionTracker
    label: str
    description: str
    unauthenticated: bool
    address: Optional[IAddress] = None
    waiters: list = field(default_factory=list)
    stop_waiters: list = field(default_factory=list)

    def answer(self, outcome) -> None:
        """Fire every ``listening()`` waiter with ``outcome`` (an address or a Failure)."""
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(outcome)  # a Failure as the result errbacks

    def wait(self) -> defer.Deferred:
        d = defer.Deferred()
        self.waiters.append(d)
        return d

    def wait_for_stop(self) -> defer.Deferred:
        d = defer.Deferred()
        self.stop_waiters.append(d)
        return d

    def finish_stopping(self) -> None:
        """Stopped: fail whoever waits for a port that will not come, tell whoever waits for the stop."""
        self.answer(Failure(defer.CancelledError(f"{self.label} stopped before it listened")))
        waiters, self.stop_waiters = self.stop_waiters, []
        for d in waiters:
            d.callback(None)


def _build_machine():
    machine = TypeMachineBuilder(_Listener, _Core)

    def attempt(c: _Listener, s: _Core) -> defer.Deferred:
        attempt = s.endpoint.listen(s.factory)
        attempt.addCallbacks(c._listened, c._failed)
        return attempt

    def remember_port(c: _Listener, s: _Core, port: IListeningPort) -> IListeningPort:
        s.address = port.getHost()
        host, number = getattr(s.address, "host", None), getattr(s.address, "port", None)
        where = f"{host}:{number}" if host is not None else str(s.address)
        log.info("{label} listening on {where} ({description})", label=s.label, where=where, description=s.description)
        if s.unauthenticated and host is not None and not is_loopback(host):
            log.warn("the {label} is unauthenticated and listens on {host}, not on loopback", label=s.label, host=host)
        s.answer(s.address)
        return port

    def remember_failure(c: _Listener, s: _Core, failure: Failure) -> Failure:
        log.failure("{label} could not listen on {description}", failure, label=s.label, description=s.description)
        s.answer(failure)
        return failure

    def close(c: _Listener, s: _Core, port: IListeningPort) -> None:
        # Both at once: connections are hung up even if closing the port fails.
        closing = [defer.maybeDeferred(port.stopListening), s.factory.disconnect_all()]
        defer.gatherResults(closing, consumeErrors=True).addErrback(
            lambda f: log.failure("{label} did not close cleanly", f, label=s.label)
        ).addBoth(lambda _: c._closed())

    Idle = machine.state("Idle")
    Binding = machine.state("Binding", attempt)
    Listening = machine.state("Listening", remember_port)
    Failed = machine.state("Failed", remember_failure)
    Stopping = machine.state("Stopping")

    Idle.upon(_Listener.bind).to(Binding).returns(None)
    Idle.upon(_Listener.start).to(Binding).returns(None)
    Failed.upon(_Listener.bind).to(Binding).returns(None)
    Failed.upon(_Listener.start).to(Binding).returns(None)
    # privilegedStartService bound it already: starting the service changes nothing.
    Binding.upon(_Listener.start).loop().returns(None)
    Listening.upon(_Listener.start).loop().returns(None)
    Binding.upon(_Listener._listened).to(Listening).returns(None)
    Binding.upon(_Listener._failed).to(Failed).returns(None)

    @pep614(Idle.upon(_Listener.listening).loop())
    @pep614(Binding.upon(_Listener.listening, nodata=True).loop())
    @pep614(Stopping.upon(_Listener.listening).loop())
    def wait_for_port(c: _Listener, s: _Core) -> defer.Deferred:
        return s.wait()

    @pep614(Listening.upon(_Listener.listening).loop())
    def bound(c: _Listener, s: _Core, port: IListeningPort) -> defer.Deferred:
        return defer.succeed(s.address)

    @pep614(Failed.upon(_Listener.listening).loop())
    def failed(c: _Listener, s: _Core, failure: Failure) -> defer.Deferred:
        return defer.fail(failure)

    @pep614(Idle.upon(_Listener.stop).loop())
    @pep614(Failed.upon(_Listener.stop, nodata=True).to(Idle))
    def nothing_to_stop(c: _Listener, s: _Core) -> defer.Deferred:
        return defer.succeed(None)

    @pep614(Binding.upon(_Listener.stop).to(Stopping))
    def cancel(c: _Listener, s: _Core, attempt: defer.Deferred) -> defer.Deferred:
        stopped = s.wait_for_stop()
        attempt.cancel()  # a cancelled Deferred fails: its _failed arrives in Stopping
        return stopped

    @pep614(Listening.upon(_Listener.stop).to(Stopping))
    def stop_listening(c: _Listener, s: _Core, port: IListeningPort) -> defer.Deferred:
        s.address = None
        stopped = s.wait_for_stop()
        close(c, s, port)
        return stopped

    @pep614(Stopping.upon(_Listener.stop).loop())
    def already_stopping(c: _Listener, s: _Core) -> defer.Deferred:
        return s.wait_for_stop()

    @pep614(Stopping.upon(_Listener._failed).to(Idle))
    def cancelled(c: _Listener, s: _Core, failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            log.failure("{label} could not listen on {description}", failure, label=s.label, description=s.description)
        s.finish_stopping()

    @pep614(Stopping.upon(_Listener._closed).to(Idle))
    def closed(c: _Listener, s: _Core) -> None:
        s.finish_stopping()

    return machine.build()


_ListenerMachine = _build_machine()


class ListeningService(service.Service):
    """Serves one protocol factory on one server endpoint while the service runs.

    It binds in ``privilegedStartService`` (so that ``twistd`` fails at once on
    a port in use, before it drops privileges or daemonizes) or, if that was
    not called, in ``startService``; a failure to listen is logged and raised
    there.  ``listening()`` gives the bound address; ``address`` and ``port``
    hold it while listening (None otherwise).  Stopping closes the port and
    hangs up every open connection (``factory`` tracks them).

    ``label`` names the service in the log ("status page", "manhole-ssh").
    With ``unauthenticated``, listening anywhere but on loopback is logged as
    a warning.
    """

    def __init__(
        self, name: str, endpoint: IStreamServerEndpoint, description: str, factory,
        label: Optional[str] = None, unauthenticated: bool = False,
    ) -> None:  # fmt: skip
        self.setName(name)
        self.description = description
        #: The wrapped server factory, with every open connection in ``factory.protocols``.
        self.factory = ConnectionTracker(factory)
        self._core = _Core(endpoint, self.factory, label or name, description, unauthenticated)
        self._machine = _ListenerMachine(self._core)

    @property
    def address(self) -> Optional[IAddress]:
        """The bound address while listening (``.host`` and ``.port`` for TCP), else None."""
        return self._core.address

    @property
    def port(self) -> Optional[int]:
        """The bound TCP port number while listening (useful with ``tcp:0``), else None."""
        return getattr(self._core.address, "port", None)

    def listening(self) -> defer.Deferred:
        """A new Deferred: fires with the bound address once listening, fails if listening failed.

        Before the service starts it waits for the start; a stop before the
        port is bound fails it with ``CancelledError``.
        """
        return self._machine.listening()

    def _raise_if_failed(self) -> None:
        failures: list[Failure] = []
        self._machine.listening().addErrback(failures.append)
        if failures:
            failures[0].raiseException()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._machine.bind()
        self._raise_if_failed()

    def startService(self) -> None:
        super().startService()
        self._machine.start()
        self._raise_if_failed()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self._machine.stop()
