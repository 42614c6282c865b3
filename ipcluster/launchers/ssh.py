"""Engines on other hosts over SSH: the OpenSSH client, no password prompts.

For each host the launcher first copies the connection file there (``ssh HOST 'umask 077;
... cat > FILE'``: mode 0600, in ``remote_dir``), then runs one ``ssh HOST exec PYTHON -m
ipcluster.launchers.shim ...`` per engine.  That ``ssh`` process lives as long as the engine:
its output (the engine's) goes to the controller's log, its end is the engine's end.  Stopping
sends ``kill -TERM`` (then ``-KILL``) to the engines' pids on their hosts over fresh ``ssh``
connections, and ends the local ``ssh`` processes last (a host that cannot be reached).

Every ``ssh`` runs with ``BatchMode=yes`` (a key or agent, never a prompt) and server-alive
probes, so a host that vanishes ends its ``ssh`` within about 15 s even if the engine's own
heartbeat has not declared it dead yet.
"""
from __future__ import annotations

import os
import shlex
from typing import Iterable, Optional, Sequence

import attr
from twisted.internet import defer, protocol
from zope.interface import implementer

from ipcluster.interfaces import ILauncher
from ipcluster.launchers.remote import OnEnded, ProcessLauncher

#: Options every ``ssh`` the launcher runs gets (before the user's ``options``).
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=3")
DEFAULT_REMOTE_DIR = ".ipcluster/remote"


@attr.s(frozen=True, slots=True)
class SSHHost:
    """One host: ``destination`` as ``ssh`` takes it (``user@host``, a ``Host`` of ~/.ssh/config).

    ``engines``: how many of the cluster's engines it runs (None: an even share);
    ``python``: the interpreter there (with ipcluster installed).
    """

    destination: str = attr.ib()
    port: Optional[int] = attr.ib(default=None)
    engines: Optional[int] = attr.ib(default=None)
    python: Optional[str] = attr.ib(default=None)

    @classmethod
    def parse(cls, text: str) -> "SSHHost":
        """``[user@]host[:port][*engines]``, e.g. ``alice@node1:2222*4``."""
        engines = None
        if "*" in text:
            text, count = text.rsplit("*", 1)
            engines = int(count)
        port = None
        if ":" in text and not text.startswith("["):
            text, number = text.rsplit(":", 1)
            port = int(number)
        if not text:
            raise ValueError("an SSH host needs a name")
        return cls(text, port, engines)


def place(engine_ids: Sequence[str], hosts: Sequence[SSHHost]) -> dict[str, SSHHost]:
    """Which host runs each engine: hosts with a count take that many in order, the rest share the
    others round-robin."""
    placed: dict[str, SSHHost] = {}
    ids = list(engine_ids)
    for host in hosts:
        if host.engines is not None:
            for engine_id in ids[: host.engines]:
                placed[engine_id] = host
            ids = ids[host.engines:]
    shared = [h for h in hosts if h.engines is None] or list(hosts)
    for i, engine_id in enumerate(ids):
        placed[engine_id] = shared[i % len(shared)]
    return placed


class _Copy(protocol.ProcessProtocol):
    """``ssh HOST 'cat > FILE'`` with the connection file on its stdin."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done = defer.Deferred()
        self.err = b""

    def connectionMade(self) -> None:
        self.transport.write(self.data)
        self.transport.closeStdin()

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-2000:]

    def processEnded(self, reason) -> None:
        code = getattr(reason.value, "exitCode", 0)
        if code:
            self.done.errback(RuntimeError(f"exit code {code}: {self.err.decode('utf-8', 'replace').strip()}"))
        else:
            self.done.callback(None)


@implementer(ILauncher)
class SSHLauncher(ProcessLauncher):
    """Starts engines on ``hosts`` with ``ssh``; ids are placed by :func:`place` over ``expected`` ids."""

    def __init__(
        self, reactor, connection_file: str, hosts: Sequence[SSHHost], on_ended: OnEnded = lambda e, p, w: None,
        expected: Sequence[str] = (), ssh: str = "ssh", options: Sequence[str] = (), python: str = "python3",
        remote_dir: str = DEFAULT_REMOTE_DIR, engine_options: Sequence[str] = (),
    ) -> None:
        super().__init__(reactor, connection_file, on_ended)
        if not hosts:
            raise ValueError("the SSH launcher needs at least one host")
        self.hosts = list(hosts)
        self.ssh = ssh
        self.options = list(options)
        self.python = python
        self.remote_dir = remote_dir.rstrip("/")
        self.engine_options = list(engine_options)
        self.placement = place(list(expected), self.hosts)
        self.engine_host: dict[str, SSHHost] = {}

    # -- commands --------------------------------------------------------------------------

    def ssh_argv(self, host: SSHHost, command: str) -> list[str]:
        argv = [self.ssh, *SSH_OPTIONS, *self.options]
        if host.port is not None:
            argv += ["-p", str(host.port)]
        return argv + [host.destination, command]

    @property
    def remote_file(self) -> str:
        """The connection file's path on the hosts (relative paths: under the remote home)."""
        return f"{self.remote_dir}/{os.path.basename(self.connection_file)}"

    def copy_command(self) -> str:
        d, f = shlex.quote(self.remote_dir), shlex.quote(self.remote_file)
        return f"umask 077 && mkdir -p {d} && cat > {f}.$$ && chmod 600 {f}.$$ && mv -f {f}.$$ {f}"

    def engine_command(self, host: SSHHost, engine_id: str) -> str:
        words = [host.python or self.python, "-m", "ipcluster.launchers.shim", "--connection-file", self.remote_file,
                 "--ids", engine_id, *self.engine_options]
        return "exec " + " ".join(shlex.quote(w) for w in words)

    # -- ILauncher -------------------------------------------------------------------------

    def start(self, engine_ids: Iterable[str]) -> defer.Deferred:
        ids = list(engine_ids)
        return defer.gatherResults([self._start_one(eid) for eid in ids], consumeErrors=True).addCallback(lambda _: ids)

    @defer.inlineCallbacks
    def _start_one(self, engine_id: str):  # noqa: D401 -- copy, then run
        host = self.engine_host.get(engine_id) or self.placement.get(engine_id) or self._next_host()
        self.engine_host[engine_id] = host
        yield self.copy_to(host)
        self.spawn(f"engine {engine_id}@{host.destination}", [engine_id], self.ssh_argv(host, self.engine_command(host, engine_id)),
                   env=dict(os.environ))
        return engine_id

    def _next_host(self) -> SSHHost:
        counts = {h.destination: 0 for h in self.hosts}
        for h in self.engine_host.values():
            counts[h.destination] = counts.get(h.destination, 0) + 1
        return min(self.hosts, key=lambda h: counts[h.destination])

    def copy_to(self, host: SSHHost) -> defer.Deferred:
        """Copy the connection file to ``host`` (at every engine start: a host may have been reset)."""
        with open(self.connection_file, "rb") as f:
            data = f.read()
        copy = _Copy(data)
        argv = self.ssh_argv(host, self.copy_command())
        self.reactor.spawnProcess(copy, argv[0], argv, env=dict(os.environ))

        def failed(failure):
            raise RuntimeError(f"could not copy the connection file to {host.destination}: {failure.value}")

        return copy.done.addErrback(failed)

    def deliver(self, engine_ids: Sequence[str], signum: int) -> None:
        """``ssh HOST kill -SIG PID...`` per host; engines not announced yet get their ``ssh`` signalled."""
        by_host: dict[SSHHost, list[int]] = {}
        for engine_id in engine_ids:
            pid = self.pids.get(engine_id)
            if pid is None:
                proc = self.processes.get(engine_id)
                if proc is not None:
                    proc.kill(signum)
                continue
            by_host.setdefault(self.engine_host[engine_id], []).append(pid)
        for host, pids in by_host.items():
            argv = self.ssh_argv(host, f"kill -{int(signum)} {' '.join(str(p) for p in pids)}")
            self.reactor.spawnProcess(protocol.ProcessProtocol(), argv[0], argv, env=dict(os.environ))


