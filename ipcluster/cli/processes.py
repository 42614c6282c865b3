"""Our processes on this host, seen through /proc: controllers and engines, told from strangers.

A pid in a pid file or connection file may have been reused by an unrelated
process once ours died; where /proc can tell, a process counts as ours only
if its command line names one of our programs.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ipcluster.connection import pid_alive
from ipcluster.launchers.command import ENGINE_MARKERS, parse_engine_argv

__all__ = [
    "CONTROLLER_MARKERS", "ENGINE_MARKERS", "pid_alive", "is_controller", "is_engine",
    "engine_processes", "send_signal", "exit_code",
]

#: Words in a controller's command line (``twistd ... ipcluster ...``).
CONTROLLER_MARKERS = (b"twistd", b"ipcluster")


def cmdline(pid: int) -> Optional[bytes]:
    """The NUL-separated command line of ``pid``, or None where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def looks_like(pid: Optional[int], markers: Sequence[bytes]) -> bool:
    """Alive, and (where /proc can tell) running one of our programs rather than a stranger."""
    if not pid_alive(pid):
        return False
    line = cmdline(pid)
    return line is None or any(m in line for m in markers)


def is_controller(pid: Optional[int]) -> bool:
    """Whether ``pid`` is alive and looks like a twistd controller."""
    return looks_like(pid, CONTROLLER_MARKERS)


def is_engine(pid: Optional[int]) -> bool:
    """Whether ``pid`` is alive and looks like an engine."""
    return looks_like(pid, ENGINE_MARKERS)


def parent_pid(pid: int) -> Optional[int]:
    """The parent of ``pid``, or None where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[-1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _pids() -> Iterator[int]:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    yield from (int(entry) for entry in entries if entry.isdigit())


def _engine_id(pid: int, connection_file: str) -> Optional[str]:
    """The id of the engine ``pid`` if it is one using ``connection_file``."""
    line = cmdline(pid)
    if not line:
        return None
    engine = parse_engine_argv([arg.decode("utf-8", "replace") for arg in line.split(b"\0")])
    if engine is None or engine[0] != connection_file:
        return None
    return engine[1]


def engine_processes(connection_file: Path) -> dict[int, tuple[str, Optional[int]]]:
    """Engine processes on this machine using ``connection_file``: ``{pid: (engine id, parent pid)}``.

    Found through /proc (empty where there is none).  This catches engines that
    outlived a killed controller: they keep re-reading the connection file and
    would join, and clash with, the next cluster started in the same directory.
    """
    found: dict[int, tuple[str, Optional[int]]] = {}
    for pid in _pids():
        engine_id = _engine_id(pid, str(connection_file))
        if engine_id is not None and pid_alive(pid):
            found[pid] = (engine_id, parent_pid(pid))
    return found


def send_signal(pid: int, signum: int = signal.SIGTERM) -> None:
    """Signal ``pid``; a process that is gone, or not ours to signal, is left alone."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def exit_code(returncode: int) -> int:
    """A child's return code as a shell would report it (128+N for signal N)."""
    return 128 - returncode if returncode < 0 else returncode
