"""Engines behind a local process: the common part of the SSH and MPI launchers.

Both start a local process (``ssh``, ``mpiexec``) that runs one or more engines elsewhere,
each through :mod:`ipcluster.launchers.shim`, whose first output line announces the engine's
id, its pid (the pid it registers with), host and rank.  :class:`LaunchedProcess` forwards
every other line to the controller's log, one ``[engine e3@host]`` line at a time, and
reports its end; :class:`ProcessLauncher` keeps the books an ``ILauncher`` answers from and
stops its processes: SIGTERM through the transport (:meth:`ProcessLauncher.deliver`), then
SIGKILL, then the local processes themselves.
"""
from __future__ import annotations

import signal as _signal
from typing import Callable, Iterable, Optional, Sequence

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ipcluster.launchers.local import why_ended
from ipcluster.launchers.shim import parse_announcement

#: ``on_ended(engine_id, pid, why)``, as LocalLauncher's.
OnEnded = Callable[[str, int, str], None]


class LaunchedProcess(protocol.ProcessProtocol):
    """One local process that runs ``engine_ids`` (somewhere); its output goes to the log."""

    log = Logger()

    def __init__(self, label: str, engine_ids: Sequence[str], on_announced, on_ended) -> None:
        self.label = label
        self.engine_ids = list(engine_ids)
        self.on_announced = on_announced
        self.on_ended = on_ended
        self.ended = defer.Deferred()
        self.exit_reason: Optional[str] = None
        self.last_error = ""
        self._partial = {1: b"", 2: b""}

    @property
    def pid(self) -> Optional[int]:
        return getattr(self.transport, "pid", None)

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            announced = parse_announcement(line) if fd == 1 else None
            if announced is not None and announced[0] in self.engine_ids:
                self.on_announced(self, *announced)
                continue
            if fd == 2 and line.strip():
                self.last_error = line.strip()
            self.log.info("[{label}] {line}", label=self.label, line=line)

    def processEnded(self, reason) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self.childDataReceived(fd, b"\n")
        self.exit_reason = self.describe_end(reason.value)
        self.on_ended(self, self.exit_reason)
        self.ended.callback(self.exit_reason)

    def describe_end(self, value) -> str:
        why = why_ended(value)
        return f"{why} ({self.last_error})" if self.last_error and "code 0" not in why else why

    def kill(self, signum: int) -> bool:
        try:
            self.transport.signalProcess({_signal.SIGTERM: "TERM", _signal.SIGKILL: "KILL"}.get(signum, signum))
        except (error.ProcessExitedAlready, OSError):
            return False
        return True


class ProcessLauncher:
    """Books and stopping of engines run behind local processes (subclasses: SSH, MPI).

    A subclass implements :meth:`start` (spawning through :meth:`spawn`) and
    :meth:`deliver` (how a signal reaches engines: ``ssh kill`` on their host, a signal
    to ``mpiexec``, which forwards it).
    """

    log = Logger()

    def __init__(self, reactor, connection_file: str, on_ended: OnEnded = lambda engine_id, pid, why: None) -> None:
        self.reactor = reactor
        self.connection_file = str(connection_file)
        self.on_ended = on_ended
        self.processes: dict[str, LaunchedProcess] = {}  # engine id -> the process it runs behind
        self.pids: dict[str, int] = {}  # engine id -> its own pid, once announced
        self.engine_hosts: dict[str, str] = {}  # engine id -> the host it announced
        self.ranks: dict[str, Optional[int]] = {}
        self._ended: dict[str, str] = {}

    def spawn(self, label: str, engine_ids: Sequence[str], argv: list, env: Optional[dict] = None) -> LaunchedProcess:
        for engine_id in engine_ids:
            if engine_id in self.processes:
                raise ValueError(f"engine {engine_id} runs already")
        proc = LaunchedProcess(label, engine_ids, self._announced, self._process_ended)
        self.reactor.spawnProcess(proc, argv[0], argv, env=env, childFDs={0: "w", 1: "r", 2: "r"})
        for engine_id in engine_ids:
            self.processes[engine_id] = proc
            self._ended.pop(engine_id, None)
            self.pids.pop(engine_id, None)
        self.log.info("{label}: started {argv}", label=label, argv=" ".join(argv))
        return proc

    def _announced(self, proc: LaunchedProcess, engine_id: str, pid: int, host: str, rank: Optional[int]) -> None:
        if self.processes.get(engine_id) is proc:
            self.pids[engine_id], self.engine_hosts[engine_id], self.ranks[engine_id] = pid, host, rank
            self.log.info("engine {engine} runs on {host} (pid {pid}{rank})", engine=engine_id, host=host, pid=pid,
                          rank="" if rank is None else f", rank {rank}")

    def _process_ended(self, proc: LaunchedProcess, why: str) -> None:
        for engine_id in proc.engine_ids:
            if self.processes.get(engine_id) is not proc:
                continue
            del self.processes[engine_id]
            self._ended[engine_id] = why
            pid = self.pids.pop(engine_id, proc.pid or 0)
            self.on_ended(engine_id, pid, why)

    def deliver(self, engine_ids: Sequence[str], signum: int) -> None:
        """Send ``signum`` to these engines (running behind their processes)."""
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> defer.Deferred:
        """SIGTERM every engine (through :meth:`deliver`), SIGKILL after ``timeout``, and after
        another ``timeout`` end the local processes themselves (a host that cannot be reached)."""
        procs = list({id(p): p for p in self.processes.values()}.values())
        if not procs:
            return defer.succeed(None)
        self.deliver(list(self.processes), _signal.SIGTERM)

        def force(signum: int) -> None:
            left = [eid for eid, p in self.processes.items() if not p.ended.called]
            if left and signum == _signal.SIGKILL:
                self.log.warn("engines {engines} ignored SIGTERM; killing them", engines=", ".join(left))
                self.deliver(left, signum)
            elif left:
                for proc in procs:
                    proc.kill(_signal.SIGKILL)

        timers = [self.reactor.callLater(timeout, force, _signal.SIGKILL),
                  self.reactor.callLater(2 * timeout, force, None)]
        done = defer.DeferredList([p.ended for p in procs], consumeErrors=True)

        def cancel(result):
            for timer in timers:
                if timer.active():
                    timer.cancel()

        return done.addBoth(cancel)

    def signal(self, engine_id: str, signum: int) -> bool:
        if engine_id not in self.processes:
            return False
        self.deliver([engine_id], signum)
        return True

    def running(self) -> dict:
        """``{engine_id: pid}``: the engine's own pid once announced, else its local process's."""
        return {eid: self.pids.get(eid, proc.pid) for eid, proc in self.processes.items()}

    def ended(self, engine_id: str) -> Optional[str]:
        return self._ended.get(engine_id)

    def is_local(self, engine_id: str) -> bool:
        return engine_id in self.processes

    def where(self, engine_id: str) -> Optional[str]:
        """The host an engine announced (None before it did)."""
        return self.engine_hosts.get(engine_id)


def batched(reactor, launch: Callable[[list], object]) -> Callable[[Iterable[str]], defer.Deferred]:
    """``start(engine_ids)`` that gathers every call made in one reactor turn into one ``launch(ids)``
    (which may return a Deferred); each caller's Deferred fires when that launch has.

    The supervisors start engines one at a time; an MPI or Slurm launcher wants them as one job.
    """
    pending: list = []
    waiting: list = []

    def flush() -> None:
        ids, ds = list(pending), list(waiting)
        pending.clear()
        waiting.clear()
        done = defer.maybeDeferred(launch, ids)

        def relay(result):
            for d in ds:
                (d.errback if isinstance(result, Failure) else d.callback)(result)

        done.addBoth(relay)

    def start(engine_ids: Iterable[str]) -> defer.Deferred:
        if not pending:
            reactor.callLater(0, flush)
        pending.extend(engine_ids)
        d = defer.Deferred()
        waiting.append(d)
        return d

    return start
