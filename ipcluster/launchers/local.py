"""Engines as children of the reactor's process: the controller's local launcher.

:class:`LocalLauncher` starts engines with ``reactor.spawnProcess``, sends
their output to the log, and reports each one's end (``on_ended``) the moment
its process exits -- the controller then declares it dead without waiting for
missed heartbeats.
"""
from __future__ import annotations

import os
import signal
from typing import Callable, Iterable, Optional

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from zope.interface import implementer

from ipcluster.engine.parent import PARENT_ENV
from ipcluster.faults import FaultTrail, with_fault
from ipcluster.interfaces import ILauncher
from ipcluster.launchers.command import engine_command

#: ``on_ended(engine_id, pid, why)``
OnEnded = Callable[[str, int, str], None]

#: How :func:`why_ended` says that a process exited on its own with code 0.
CLEAN_EXIT = "process exited with code 0"


def why_ended(value) -> str:
    """A process's end, in words: ``process killed by signal 9``, ``process exited with code 1``."""
    if isinstance(value, error.ProcessDone):
        return CLEAN_EXIT
    if getattr(value, "signal", None):
        try:
            name = signal.Signals(value.signal).name
        except ValueError:
            name = "?"
        return f"process killed by signal {value.signal} ({name})"
    return f"process exited with code {getattr(value, 'exitCode', '?')}"


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
        self._fault = FaultTrail()  # a faulthandler dump on stderr goes with the death's reason

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            text = line.decode("utf-8", "replace")
            if fd == 2:
                self._fault.feed(text)
            self.log.info("[engine {engine}] {line}", engine=self.engine_id, line=text)

    def processEnded(self, reason) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self.childDataReceived(fd, b"\n")
        self.exit_reason = with_fault(why_ended(reason.value), self._fault)
        self.on_ended(self, self.exit_reason)
        self.ended.callback(self.exit_reason)

    def kill(self, signum: int) -> bool:
        try:
            self.transport.signalProcess({signal.SIGTERM: "TERM", signal.SIGKILL: "KILL"}.get(signum, signum))
        except error.ProcessExitedAlready:
            return False
        return True


@implementer(ILauncher)
class LocalLauncher:
    """Starts engines on this host as children of the reactor's process."""

    log = Logger()

    def __init__(self, reactor, connection_file: str, on_ended: OnEnded = lambda engine_id, pid, why: None) -> None:
        self.reactor = reactor
        self.connection_file = str(connection_file)
        self.on_ended = on_ended
        self.processes: dict[str, EngineProcess] = {}
        self._ended: dict[str, str] = {}

    def start(self, engine_ids: Iterable[str]) -> defer.Deferred:
        return defer.maybeDeferred(lambda: [self.start_engine(engine_id).engine_id for engine_id in engine_ids])

    def start_engine(self, engine_id: str) -> EngineProcess:
        if engine_id in self.processes:
            raise ValueError(f"engine {engine_id} runs already (pid {self.processes[engine_id].pid})")
        proc = EngineProcess(engine_id, self._process_ended)
        command = engine_command(self.connection_file, engine_id)
        env = dict(command.env, **{PARENT_ENV: str(os.getpid())})  # it ends with this process (engine/parent.py)
        self.reactor.spawnProcess(proc, command.executable, command.argv, env=env, childFDs={0: "w", 1: "r", 2: "r"})
        proc.pid = proc.transport.pid
        self.processes[engine_id] = proc
        self._ended.pop(engine_id, None)
        self.log.info("started engine {engine} (pid {pid})", engine=engine_id, pid=proc.pid)
        return proc

    def _process_ended(self, proc: EngineProcess, why: str) -> None:
        if self.processes.get(proc.engine_id) is proc:
            del self.processes[proc.engine_id]
            self._ended[proc.engine_id] = why
        self.on_ended(proc.engine_id, proc.pid, why)

    def stop(self, timeout: float = 5.0) -> defer.Deferred:
        """SIGTERM every engine (they exit cleanly), SIGKILL what is left after ``timeout``."""
        procs = list(self.processes.values())
        for proc in procs:
            proc.kill(signal.SIGTERM)

        def force():
            for proc in procs:
                if not proc.ended.called:
                    self.log.warn("engine {engine} ignored SIGTERM; killing it", engine=proc.engine_id)
                    proc.kill(signal.SIGKILL)

        timer = self.reactor.callLater(timeout, force)
        done = defer.DeferredList([p.ended for p in procs], consumeErrors=True)
        done.addBoth(lambda r: (timer.active() and timer.cancel(), None)[1])
        return done

    def signal(self, engine_id: str, signum: int) -> bool:
        proc = self.processes.get(engine_id)
        return proc is not None and proc.kill(signum)

    def running(self) -> dict:
        return {engine_id: proc.pid for engine_id, proc in self.processes.items()}

    def ended(self, engine_id: str) -> Optional[str]:
        return self._ended.get(engine_id)

    def is_local(self, engine_id: str) -> bool:
        return engine_id in self.processes
