"""Engines that outlive the command that starts them: the launcher of ``ipcluster engines``.

Each engine runs in a session of its own (a Ctrl-C in the terminal does not
reach it, and it stays up when the command exits) with its output in a log
file of its own.

The launcher is synchronous: it runs without a reactor, in a short-lived
command, and every Deferred it returns has already fired (read it with
:func:`fired`).  ``stop`` blocks until the engines are gone or killed.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from ipcluster.interfaces import ILauncher
from ipcluster.launchers.command import EngineCommand, engine_command

T = TypeVar("T")


def fired(d: "defer.Deferred[T]") -> T:
    """The result of a Deferred that has already fired; its failure, if it failed, is raised."""
    outcome: list = []
    d.addBoth(outcome.append)
    if not outcome:
        raise RuntimeError(f"{d!r} has not fired: it does not come from a synchronous launcher")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def _why(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


@implementer(ILauncher)
class DetachedEngines:
    """Starts engines on this host as detached processes, each logging to ``log_path(engine_id)``.

    ``command`` (default :func:`~ipcluster.launchers.command.engine_command`)
    and ``popen`` are seams for tests; ``clock`` bounds :meth:`stop`.
    """

    def __init__(
        self,
        connection_file: str,
        log_path: Callable[[str], Path],
        command: Callable[[str, str], EngineCommand] = engine_command,
        popen: Callable[..., subprocess.Popen] = subprocess.Popen,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connection_file = str(connection_file)
        self.log_path = log_path
        self.command = command
        self.popen = popen
        self.clock = clock
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, engine_ids: Iterable[str]) -> defer.Deferred:
        """Start one engine per id.  Fired Deferred: the ids (it fails, e.g. with OSError, if one cannot start;
        those started before stay in :meth:`running` for :meth:`stop`)."""
        return defer.maybeDeferred(self._start_all, list(engine_ids))

    def _start_all(self, engine_ids: list[str]) -> list[str]:
        for engine_id in engine_ids:
            if engine_id in self.processes:
                raise ValueError(f"engine {engine_id} was started already")
            command = self.command(self.connection_file, engine_id)
            with open(self.log_path(engine_id), "ab") as log:
                self.processes[engine_id] = self.popen(
                    command.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=command.env, start_new_session=True,
                )
        return engine_ids

    def stop(self, timeout: float = 5.0) -> defer.Deferred:
        """SIGTERM every running engine, SIGKILL those left after ``timeout`` s; returns once all have ended."""
        running = [proc for proc in self.processes.values() if proc.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = self.clock() + timeout
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return defer.succeed(None)

    def signal(self, engine_id: str, signum: int) -> bool:
        """Send ``signum`` to the engine's process; True if it was running."""
        proc = self.processes.get(engine_id)
        if proc is None or proc.poll() is not None:
            return False
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            return False
        return True

    def running(self) -> dict[str, int]:
        return {engine_id: proc.pid for engine_id, proc in self.processes.items() if proc.poll() is None}

    def ended(self, engine_id: str) -> Optional[str]:
        proc = self.processes.get(engine_id)
        if proc is None or proc.poll() is None:
            return None
        return _why(proc.returncode)

    def is_local(self, engine_id: str) -> bool:
        return engine_id in self.processes
