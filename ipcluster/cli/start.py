"""``ipcluster start``: run the controller as ``twistd ipcluster``, in the foreground or as a daemon."""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, TextIO

from ipcluster import errors
from ipcluster.cli import processes
from ipcluster.cli.datadir import DataDir, connect, foreign_controller
from ipcluster.cli.errors import CLIError
from ipcluster.cli.progress import Deadline, Progress
from ipcluster.cli.stop import DEFAULT_STOP_TIMEOUT, stop_cluster
from ipcluster.connection import pid_alive
from ipcluster.textstatus import LIVE, natural_key

DEFAULT_START_TIMEOUT = 60.0

NAME = "start"
HELP = "start a controller (and local engines)"
DESCRIPTION = (
    "Start a controller with N local engines.\n\n"
    "Without --daemon it runs in the foreground, logging to the terminal, until\n"
    "Ctrl-C (or `ipcluster stop`). With --daemon it runs in the background, its pid\n"
    "in DATA_DIR/ipcluster.pid and its log in DATA_DIR/ipcluster.log, and the command\n"
    "returns once the controller and its engines are up.\n\n"
    "The controller supervises its local engines: one that dies is restarted with\n"
    "the same id (after 0.5 s, backing off to 30 s), at most 10 times within 300 s;\n"
    "one that exits with code 0 left on purpose and stays down. Queued tasks fail\n"
    "with NoEngines after 60 s without any engine. Tune it with the twistd options\n"
    "--restart-limit, --restart-window, --engine-memory-limit, --no-engine-timeout\n"
    "and --dead-engine-ttl (after `--`).\n\n"
    "Fails (exit code 1) if a cluster already runs in the data directory, if the\n"
    "data directory cannot be used, or if the controller does not come up (the end\n"
    "of its log is shown)."
)
EPILOG = (
    "Options after `--` go to `twistd ipcluster` (see `twistd ipcluster --help`), e.g.\n"
    "  ipcluster start --daemon -n 2 -- --heartbeat-period 0.5 --store memory\n"
    "  ipcluster start -n 4 -- --restart-limit 3 --engine-memory-limit 2GB"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--engines", type=int, default=2, metavar="N",
                   help="local engines to start with the controller (default: 2; 0 for none)")
    p.add_argument("--daemon", action="store_true",
                   help="run in the background; return once the cluster is up")
    p.add_argument("--ip", default=None,
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 accepts engines from other hosts)")
    p.add_argument("--web", default=None, metavar="ENDPOINT",
                   help="serve the live status page on this endpoint, e.g. tcp:8080:interface=127.0.0.1")
    p.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT, metavar="S",
                   help=f"with --daemon: seconds to wait for the controller and engines "
                        f"(default {DEFAULT_START_TIMEOUT:g})")
    p.add_argument("--launcher", choices=("local", "ssh", "slurm", "mpi"), default=None,
                   help="what starts the engines: local processes (default), ssh hosts, a Slurm job, mpiexec "
                        "(see docs/launchers.md; settings in --profile or twistd options after --)")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="cluster profile (TOML): launcher, hosts, partition, account, time limit, engine count")
    p.add_argument("--controller", default=None, metavar="ssh:HOST|slurm",
                   help="run the controller itself on HOST (over ssh) or as a Slurm job; its connection "
                        "file is written back here (see docs/launchers.md)")
    p.add_argument("--tunnel", action="store_true",
                   help="with --controller ssh:HOST: reach it through ssh -L tunnels (it may listen on HOST's loopback)")
    p.add_argument("--ssh-options", default="", metavar="'OPTS'",
                   help="with --controller ssh:HOST: more ssh options, e.g. '-i ~/.ssh/key -p 2222'")
    p.add_argument("--remote-python", default="python3", help="with --controller ssh:HOST: the Python there")
    p.add_argument("--remote-data-dir", default=".ipcluster-remote",
                   help="with --controller ssh:HOST: the controller's data directory there (relative: under home)")
    p.add_argument("extra", nargs="*", metavar="-- TWISTD_OPTIONS", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Start a cluster in the foreground (this process becomes twistd) or as a daemon."""
    dd = DataDir.from_args(args)
    if args.engines < 0:
        raise CLIError("-n/--engines must be 0 or more")
    prepare_start(dd)
    if args.controller:
        return _start_remote(dd, args)
    args.extra = [*(["--launcher", args.launcher] if args.launcher else []),
                  *(["--profile", os.path.abspath(args.profile)] if args.profile else []), *args.extra]
    if args.daemon:
        start_daemon(dd, args.engines, args.timeout, out=sys.stdout, progress=sys.stderr,
                     ip=args.ip, web=args.web, extra=args.extra)
        return 0
    argv = twistd_argv(dd, args.engines, daemon=False, ip=args.ip, web=args.web, extra=args.extra)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        raise CLIError(f"cannot run twistd ({argv[0]}): {e}") from None
    return 1  # not reached


def _start_remote(dd: DataDir, args: argparse.Namespace) -> int:
    """``--controller ssh:HOST|slurm``: the controller (and its -n engines) elsewhere; ``ipcluster stop`` ends it."""
    import shlex

    from ipcluster.launchers import controller as remote

    start_args = ["-n", str(args.engines), *(["--ip", args.ip] if args.ip else []),
                  *(["--launcher", args.launcher] if args.launcher else []), "--", *args.extra]
    try:
        if args.controller.startswith("ssh:"):
            info = remote.start_ssh(dd.path, args.controller[4:], start_args, shlex.split(args.ssh_options),
                                    args.remote_python, args.remote_data_dir, args.tunnel, args.timeout)
        elif args.controller == "slurm":
            info = remote.start_slurm(dd.path, start_args, timeout=args.timeout)
        else:
            raise CLIError("--controller must be ssh:HOST or slurm")
    except remote.RemoteError as e:
        raise CLIError(str(e)) from None
    print(f"Controller on {args.controller} is up; connection file {dd.connection_file} "
          f"(engines and clients connect to {info.ip}). Stop it with `ipcluster stop{dd.option()}`.")
    return 0


# -- the command line ------------------------------------------------------------------


def twistd_command() -> list[str]:
    """How to run twistd with this interpreter's Twisted."""
    twistd = Path(sys.executable).parent / "twistd"
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def twistd_argv(dd: DataDir, engines: int, daemon: bool, ip: Optional[str] = None, web: Optional[str] = None,
                extra: Sequence[str] = ()) -> list[str]:
    """The ``twistd ... ipcluster ...`` command line of a controller in ``dd``."""
    argv = twistd_command()
    if not daemon:
        argv.append("-n")
    argv += ["--pidfile", str(dd.pidfile)]
    if daemon:
        argv += ["--logfile", str(dd.logfile)]
    argv += ["ipcluster", "--data-dir", str(dd.path), "--engines", str(engines)]
    if ip is not None:
        argv += ["--ip", ip]
    if web is not None:
        argv += ["--web", web]
    argv += list(extra)
    return argv


def prepare_start(dd: DataDir) -> None:
    """Check that the data directory is usable and free; tidy what a dead cluster left behind."""
    dd.ensure_usable()
    pid = dd.controller_pid()
    if pid is not None:
        raise CLIError(
            f"a cluster is already running in {dd} (controller pid {pid}). "
            f"Stop it with `ipcluster stop{dd.option()}`, or use another --data-dir."
        )
    pid = foreign_controller(dd)
    if pid is not None:
        raise CLIError(f"a controller (pid {pid}) is already using {dd}; stop it first or use another --data-dir")
    # Nothing runs here: what is left is stale.
    for pid in dd.stray_engines():
        processes.send_signal(pid)
    dd.remove(dd.pidfile, dd.connection_file, dd.engine_pids)


# -- the daemon ------------------------------------------------------------------------


class _StartFailed(Exception):
    """The daemon did not come up: what is half-started must be stopped and the log shown."""


def start_daemon(dd: DataDir, engines: int, timeout: float, out: Optional[TextIO], progress: TextIO,
                 ip: Optional[str] = None, web: Optional[str] = None, extra: Sequence[str] = ()) -> None:
    """Start a daemonized controller in ``dd`` (already prepared) and wait until it and its engines are up.

    On failure the half-started cluster is stopped and CLIError raised with the log's tail.
    """
    deadline = Deadline(timeout)
    log_offset = _size(dd.logfile) or 0
    argv = twistd_argv(dd, engines, daemon=True, ip=ip, web=web, extra=extra)
    try:
        with Progress(progress, f"Starting a cluster with {engines} engine(s) in {dd}") as bar:
            _run_twistd(argv, timeout)
            pid = deadline.wait_until(
                lambda: _controller_up(dd),
                lambda: _StartFailed(f"no connection file appeared in {dd} within {timeout:g} s"),
                bar, interval=0.05,
            )
            ids = _wait_for_engines(dd, pid, engines, deadline, bar)
    except _StartFailed as e:
        with contextlib.suppress(CLIError):
            stop_cluster(dd, timeout=DEFAULT_STOP_TIMEOUT, out=None)
        reason = _settle(dd.logfile, log_offset)
        tail = dd.log_tail(offset=log_offset) if dd.logfile.exists() else ""
        first = f"the controller failed to start: {reason}" if reason else str(e)
        rest = str(e) if reason else ""
        raise CLIError("\n".join(part for part in (first, rest, tail) if part)) from None
    if out is not None:
        out.write(_running_message(dd, pid, ids))
        out.flush()


#: How the controller words a start-up failure in its log (``twistd ipcluster: REASON``).
_REASON_MARKER = "twistd ipcluster: "


def _controller_said(log: Path, offset: int) -> Optional[str]:
    """The controller's own one-line reason for failing to start, from its log (twistd's status
    pipe cuts it at 100 bytes); None if it gave none."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    reasons = [line.split(_REASON_MARKER, 1)[1].strip() for line in text.splitlines() if _REASON_MARKER in line]
    return reasons[-1] if reasons else None


def _size(path: Path) -> Optional[int]:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _run_twistd(argv: list[str], timeout: float) -> None:
    """Run twistd until it has daemonized (or failed to)."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise _StartFailed(f"twistd did not finish starting within {timeout:g} s") from None
    except OSError as e:
        raise CLIError(f"cannot run twistd ({argv[0]}): {e}") from None
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).strip().splitlines()[-8:]  # a usage error ends with the reason
        said = ("twistd said:\n" + "\n".join("    " + line for line in said) + "\n") if said else ""
        raise _StartFailed(f"the controller failed to start (twistd exited with code {proc.returncode}).\n{said}".rstrip())


def _controller_up(dd: DataDir) -> Optional[int]:
    """The daemon's pid once its connection file names it; None while it starts."""
    pid = dd.read_pidfile()
    info = dd.read_connection()
    if info is not None and pid_alive(info.controller_pid) and (pid is None or info.controller_pid == pid):
        return info.controller_pid
    if pid is not None and not pid_alive(pid):
        raise _StartFailed(f"the controller (pid {pid}) exited while starting")
    return None


def _wait_for_engines(dd: DataDir, pid: int, engines: int, deadline: Deadline, bar: Progress) -> list[str]:
    """The ids of the live engines, once there are ``engines`` of them."""
    try:
        client = connect(dd, timeout=max(1.0, deadline.left()))
    except CLIError as e:
        raise _StartFailed(str(e)) from None
    live: list = []

    def up() -> Optional[list[str]]:
        live[:] = [e for e in client.engines() if e["state"] in LIVE]
        if len(live) >= engines:
            return sorted((e["id"] for e in live), key=natural_key)
        if not pid_alive(pid):
            raise _StartFailed(f"the controller (pid {pid}) exited while its engines were starting")
        return None

    try:
        return deadline.wait_until(
            up, lambda: _StartFailed(f"only {len(live)} of {engines} engine(s) came up within {deadline.seconds:g} s"),
            bar,
        )
    except errors.ClusterError as e:
        raise _StartFailed(f"lost the controller while waiting for engines: {e}") from None
    finally:
        client.close()


def _settle(path: Path, offset: int, quiet: float = 3.0, bound: float = 15.0, clock=time.monotonic,
            sleep=time.sleep) -> Optional[str]:
    """The controller's reason for failing, once its log has it; None if the log stays quiet for
    ``quiet`` s without one (or at ``bound``). A failing daemon logs its reason just after it has
    told twistd's parent process that it failed: on a loaded machine that can take a while."""
    deadline = Deadline(bound, clock, sleep)
    last, since = None, clock()
    while not deadline.passed():
        reason = _controller_said(path, offset)
        if reason is not None:
            return reason
        size = _size(path)
        if size != last:
            last, since = size, clock()
        elif clock() - since >= quiet:
            return None
        sleep(0.05)
    return _controller_said(path, offset)


def _running_message(dd: DataDir, pid: int, ids: list[str]) -> str:
    opt = dd.option()
    return (
        f"ipcluster is running: controller pid {pid}, {len(ids)} engine(s)"
        + (f" ({', '.join(ids)})" if ids else "")
        + "\n"
        f"  connection file: {dd.connection_file}\n"
        f"  log file:        {dd.logfile}\n"
        f"  status:          ipcluster status{opt}\n"
        f"  stop:            ipcluster stop{opt}\n"
    )
