"""``ipcluster stop``: end the cluster of a data directory and wait until all of it is gone."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Optional, Sequence, TextIO

from ipcluster.cli import processes
from ipcluster.cli.datadir import DataDir, foreign_controller, no_cluster
from ipcluster.cli.errors import CLIError
from ipcluster.cli.progress import Deadline
from ipcluster.connection import pid_alive

DEFAULT_STOP_TIMEOUT = 30.0

NAME = "stop"
HELP = "stop the running cluster"
DESCRIPTION = (
    "Stop the cluster running in the data directory: SIGTERM the controller (it\n"
    "stops the engines it started and removes its connection file) and the engines\n"
    "added with `ipcluster engines`, and wait until they are all gone.\n"
    "Exit code 1 if no cluster runs there or it does not stop in time."
)
EPILOG = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT, metavar="S",
                   help=f"seconds to wait for the processes to exit (default {DEFAULT_STOP_TIMEOUT:g})")


def run(args: argparse.Namespace) -> int:
    from ipcluster.launchers import controller as remote

    dd = DataDir.from_args(args)
    if remote.remote_of(dd.path) is not None:  # started with --controller ssh:HOST|slurm
        try:
            print(remote.stop_remote(dd.path, args.timeout))
        except remote.RemoteError as e:
            raise CLIError(str(e)) from None
        return 0
    stop_cluster(dd, args.timeout, sys.stdout)
    return 0


def stop_cluster(dd: DataDir, timeout: float, out: Optional[TextIO]) -> None:
    """SIGTERM the controller and the engines ``ipcluster engines`` added; wait until all are gone.

    With no controller running, tidy what a dead one left behind and raise
    the "no cluster is running" CLIError.
    """
    pid = dd.controller_pid()
    added = sorted(dd.stray_engines(pid).items())
    if pid is None:
        raise _tidy_dead_cluster(dd, added)
    # Added engines first, so they leave while the controller still listens.
    for engine_pid, _ in added:
        processes.send_signal(engine_pid, signal.SIGTERM)
    # The controller's own engines: it stops them itself; we wait for them too.
    own = sorted((p, i) for p, (i, ppid) in processes.engine_processes(dd.connection_file).items() if ppid == pid)
    processes.send_signal(pid, signal.SIGTERM)
    _wait_gone(dd, pid, added + own, timeout)
    notes = _tidy_after_stop(dd)
    if out is not None:
        out.write(
            f"Stopped the cluster in {dd} (controller pid {pid}"
            + (f", {len(added)} added engine(s)" if added else "")
            + ")"
            + (f"; {'; '.join(notes)}" if notes else "")
            + "\n"
        )
        out.flush()


def _tidy_dead_cluster(dd: DataDir, engines: Sequence[tuple[int, str]]) -> CLIError:
    """No controller of ours runs in ``dd``: stop its leftover engines, remove its stale files.

    Returns the "no cluster is running" error saying what was tidied; raises
    instead if a controller we did not start is using the directory.
    """
    pid = foreign_controller(dd)
    if pid is not None:
        raise CLIError(
            f"the controller using {dd} (pid {pid}) was not started by "
            "`ipcluster start` or twistd; stop it from the program that runs it"
        )
    for engine_pid, _ in engines:
        processes.send_signal(engine_pid, signal.SIGTERM)
    stale = [name for name in dd.remove(dd.connection_file, dd.pidfile, dd.engine_pids) if name != dd.engine_pids.name]
    notes = []
    if stale:
        notes.append(f"removed stale {' and '.join(stale)}")
    if engines:
        notes.append(f"stopped {len(engines)} leftover engine(s)")
    return no_cluster(dd, "; ".join(notes))


def _still_running(pid: int, engines: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """``(pid, description)`` of the controller and those of ``engines`` that are still alive."""
    running = [(pid, f"the controller (pid {pid})")] if pid_alive(pid) else []
    return running + [(p, f"engine {i} (pid {p})") for p, i in engines if pid_alive(p)]


def _wait_gone(dd: DataDir, pid: int, engines: Sequence[tuple[int, str]], timeout: float) -> None:
    def expired() -> CLIError:
        running = _still_running(pid, engines)
        return CLIError(
            f"{' and '.join(what for _, what in running)} still running {timeout:g} s after SIGTERM; "
            f"see {dd.logfile}. Kill with: kill -9 {' '.join(str(p) for p, _ in running)}"
        )

    Deadline(timeout).wait_until(lambda: None if _still_running(pid, engines) else True, expired, interval=0.05)


def _tidy_after_stop(dd: DataDir) -> list[str]:
    """Remove what the stopped cluster left behind; notes on anything unexpected."""
    notes = []
    if dd.connection_file.exists():
        info = dd.read_connection()
        if info is None or not pid_alive(info.controller_pid):
            dd.remove(dd.connection_file)
            notes.append("it left its connection file behind (removed)")
    dd.remove(dd.engine_pids)
    return notes
