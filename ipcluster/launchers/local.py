"""Local engines: started by the controller, watched through their process.

An engine the controller started is declared dead the moment its process
exits (``processEnded``), without waiting for missed heartbeats.
"""
from __future__ import annotations

import signal
from typing import Callable, Optional

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from ipcluster.controller.registry import ACTIVE_STATES, Registry
from ipcluster.launchers.command import engine_command


class EngineProcess(protocol.ProcessProtocol):
    """One engine child process; its output goes to the controller's log."""

    log = Logger()

    def __init__(self, engine_id: str, on_ended: Callable[["EngineProcess", str], None]) -> None:
        self.engine_id = engine_id
        self.on_ended = on_ended
        self.ended = defer.Deferred()
        self.exit_reason: Optional[str] = None
        self.pid: Optional[int] = None
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            self.log.info("[engine {engine}] {line}", engine=self.engine_id, line=line.decode("utf-8", "replace"))

    def processEnded(self, reason) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self.childDataReceived(fd, b"\n")
        value = reason.value
        if isinstance(value, error.ProcessDone):
            why = "process exited with code 0"
        elif getattr(value, "signal", None):
            why = f"process killed by signal {value.signal}"
        else:
            why = f"process exited with code {getattr(value, 'exitCode', '?')}"
        self.exit_reason = why
        self.on_ended(self, why)
        self.ended.callback(why)

    def kill(self, signum: int) -> None:
        try:
            self.transport.signalProcess({signal.SIGTERM: "TERM", signal.SIGKILL: "KILL"}.get(signum, signum))
        except error.ProcessExitedAlready:
            pass


class LocalEngines(service.Service):
    """Starts ``count`` engine processes on this machine and stops them on shutdown."""

    log = Logger()

    def __init__(
        self,
        reactor,
        registry: Registry,
        connection_file: str,
        count: int,
        prefix: str = "e",
        stop_timeout: float = 5.0,
    ) -> None:
        self.reactor = reactor
        self.registry = registry
        self.connection_file = connection_file
        self.count = count
        self.prefix = prefix
        self.stop_timeout = stop_timeout
        self.processes: dict[str, EngineProcess] = {}

    def engine_ids(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]

    def is_local(self, engine_id: str) -> bool:
        return engine_id in self.processes

    def startService(self) -> None:
        super().startService()
        for engine_id in self.engine_ids():
            self.start_engine(engine_id)

    def start_engine(self, engine_id: str) -> EngineProcess:
        proc = EngineProcess(engine_id, self._ended)
        command = engine_command(self.connection_file, engine_id)
        self.reactor.spawnProcess(proc, command.executable, command.argv, env=command.env, childFDs={0: "w", 1: "r", 2: "r"})
        proc.pid = proc.transport.pid
        self.processes[engine_id] = proc
        self.log.info("started engine {engine} (pid {pid})", engine=engine_id, pid=proc.pid)
        return proc

    def _ended(self, proc: EngineProcess, why: str) -> None:
        if self.processes.get(proc.engine_id) is proc:
            del self.processes[proc.engine_id]
        record = self.registry.get(proc.engine_id)
        if record is not None and record.state in ACTIVE_STATES and record.pid == proc.pid:
            self.registry.mark_dead(record, why, self.reactor.seconds())
        else:
            self.log.info("engine {engine} process ended: {why}", engine=proc.engine_id, why=why)

    def stopService(self) -> defer.Deferred:
        """SIGTERM every engine (they exit cleanly), SIGKILL what is left after ``stop_timeout``."""
        super().stopService()
        procs = list(self.processes.values())
        for proc in procs:
            proc.kill(signal.SIGTERM)

        def force():
            for proc in procs:
                if not proc.ended.called:
                    self.log.warn("engine {engine} ignored SIGTERM; killing it", engine=proc.engine_id)
                    proc.kill(signal.SIGKILL)

        timer = self.reactor.callLater(self.stop_timeout, force)
        done = defer.DeferredList([p.ended for p in procs], consumeErrors=True)
        done.addBoth(lambda r: (timer.active() and timer.cancel(), None)[1])
        return done
