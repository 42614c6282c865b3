"""The ``ipcluster`` command: start, stop, inspect, grow and use a cluster.

``ipcluster start`` runs the controller as ``twistd ipcluster`` (in the
foreground, or as a daemon whose pid and log files live in the data
directory); ``stop`` ends it cleanly; ``status`` shows its engines;
``engines`` adds local engines to it; ``run`` starts a private cluster, runs a
script against it and stops it again.

Files in the data directory (``--data-dir``, default ``$IPCLUSTER_DIR`` or
``~/.ipcluster``):

``connection.json``  written by the controller while it runs (mode 0600)
``ipcluster.pid``    the controller's pid (written by twistd)
``ipcluster.log``    the daemon's log
``engines.pids``     engines added by ``ipcluster engines``: "PID ID" lines
``engine-ID.log``    the output of such an engine
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, TextIO

from ipcluster import __version__, connection, errors
from ipcluster.connection import pid_alive

PIDFILE = "ipcluster.pid"
LOGFILE = "ipcluster.log"
ENGINE_PIDS = "engines.pids"
LIVE = ("alive", "busy")
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 30.0
#: How long status/engines wait for the controller to answer a request.
CLIENT_TIMEOUT = 10.0
# Words in /proc/PID/cmdline that tell our processes from a stranger that reused a pid.
CONTROLLER_MARKERS = (b"twistd", b"ipcluster")
ENGINE_MARKERS = (b"ipcluster.engine", b"ipcluster-engine")


class CLIError(Exception):
    """Reported as ``ipcluster: error: MESSAGE`` on stderr; the command exits with 1."""


# -- processes -------------------------------------------------------------------


def _cmdline(pid: int) -> Optional[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def _looks_like(pid: Optional[int], markers) -> bool:
    """Alive, and (where /proc can tell) running one of our programs rather than a stranger."""
    if not pid_alive(pid):
        return False
    cmdline = _cmdline(pid)
    return cmdline is None or any(m in cmdline for m in markers)


def _ppid(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[-1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _engine_argument(args: list[str], *names: str) -> Optional[str]:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def engine_processes(connection_file: Path) -> dict[int, tuple[str, Optional[int]]]:
    """Engine processes on this machine using ``connection_file``: ``{pid: (engine id, parent pid)}``.

    Found through /proc (empty where there is none).  This catches engines that
    outlived a killed controller: they keep re-reading the connection file and
    would join, and clash with, the next cluster started in the same directory.
    """
    found: dict[int, tuple[str, Optional[int]]] = {}
    wanted = str(connection_file)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        cmdline = _cmdline(pid)
        if not cmdline or not any(m in cmdline for m in ENGINE_MARKERS):
            continue
        args = [a.decode("utf-8", "replace") for a in cmdline.split(b"\0")]
        if _engine_argument(args, "--connection-file", "-f") != wanted or not pid_alive(pid):
            continue
        found[pid] = (_engine_argument(args, "--id") or "?", _ppid(pid))
    return found


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _exit_code(returncode: int) -> int:
    """A child's return code as a shell would report it (128+N for signal N)."""
    return 128 - returncode if returncode < 0 else returncode


# -- the data directory -------------------------------------------------------------


class DataDir:
    """The paths of one cluster's data directory."""

    def __init__(self, path) -> None:
        self.path = Path(path).expanduser().absolute()

    def __str__(self) -> str:
        return str(self.path)

    @property
    def connection_file(self) -> Path:
        return self.path / connection.CONNECTION_FILE

    @property
    def pidfile(self) -> Path:
        return self.path / PIDFILE

    @property
    def logfile(self) -> Path:
        return self.path / LOGFILE

    @property
    def engine_pids(self) -> Path:
        return self.path / ENGINE_PIDS

    def engine_log(self, engine_id: str) -> Path:
        return self.path / f"engine-{engine_id}.log"

    def option(self) -> str:
        """`` --data-dir PATH`` for messages, or nothing for the default directory."""
        try:
            default = connection.default_data_dir().expanduser().absolute()
        except RuntimeError:  # no home directory
            default = None
        return "" if self.path == default else f" --data-dir {shlex.quote(str(self.path))}"

    def ensure_usable(self) -> None:
        """Create the directory (0700) if needed and check that files can be written in it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=".ipcluster-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            why = e.strerror or str(e)
            if isinstance(e, FileExistsError) and not self.path.is_dir():
                why = "it exists and is not a directory"
            raise CLIError(
                f"the data directory {self.path} is unusable: {why}. "
                "Pass another one with --data-dir or set IPCLUSTER_DIR."
            ) from None

    # -- what runs here ---------------------------------------------------------------

    def read_pidfile(self) -> Optional[int]:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def read_connection(self) -> Optional[connection.ConnectionInfo]:
        if not self.connection_file.exists():
            return None
        try:
            return connection.read(self.connection_file)
        except errors.NoController:
            return None

    def controller_pid(self) -> Optional[int]:
        """The pid of the live controller using this directory, if any."""
        pid = self.read_pidfile()
        if _looks_like(pid, CONTROLLER_MARKERS):
            return pid
        info = self.read_connection()
        if info is not None and _looks_like(info.controller_pid, CONTROLLER_MARKERS):
            return info.controller_pid
        return None

    def read_engine_pids(self) -> list[tuple[int, str]]:
        """``(pid, engine id)`` of every engine ``ipcluster engines`` recorded here."""
        try:
            text = self.engine_pids.read_text()
        except OSError:
            return []
        entries = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                entries.append((int(parts[0]), parts[1]))
        return entries

    def live_engine_pids(self) -> list[tuple[int, str]]:
        return [(pid, eid) for pid, eid in self.read_engine_pids() if _looks_like(pid, ENGINE_MARKERS)]

    def stray_engines(self, controller_pid: Optional[int] = None) -> dict[int, str]:
        """Engines of this cluster the controller did not start itself: ``{pid: id}``.

        Those recorded by ``ipcluster engines`` plus, where /proc tells, any
        engine process using this connection file whose parent is not the
        controller (e.g. left behind by a controller that was killed).
        """
        stray = dict(self.live_engine_pids())
        for pid, (eid, ppid) in engine_processes(self.connection_file).items():
            if controller_pid is None or ppid != controller_pid:
                stray[pid] = eid
        return stray

    @contextlib.contextmanager
    def lock(self):
        """An exclusive lock for changing engines.pids."""
        with open(self.path / ".engines.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def log_tail(self, path: Optional[Path] = None, offset: int = 0, lines: int = 25) -> str:
        path = path or self.logfile
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return f"(no log at {path})"
        tail = text.splitlines()[-lines:]
        if not tail:
            return f"(nothing in {path})"
        return f"last lines of {path}:\n" + "\n".join("    " + line for line in tail)


def _data_dir(args) -> DataDir:
    return DataDir(args.data_dir if args.data_dir is not None else connection.default_data_dir())


def _no_cluster(dd: DataDir, detail: str = "") -> CLIError:
    detail = f" ({detail})" if detail else ""
    return CLIError(
        f"no cluster is running in {dd}{detail}. Start one with `ipcluster start --daemon{dd.option()}`."
    )


def _connect(dd: DataDir, timeout: float = CLIENT_TIMEOUT):
    """A Client of the cluster in ``dd``, or CLIError saying why there is none."""
    from ipcluster.client.sync import Client

    info = dd.read_connection()
    if info is None:
        if dd.connection_file.exists():
            raise _no_cluster(dd, f"cannot read {dd.connection_file}")
        raise _no_cluster(dd, f"no {dd.connection_file}")
    if not pid_alive(info.controller_pid):
        raise _no_cluster(dd, f"{dd.connection_file} is stale: controller pid {info.controller_pid} is gone")
    try:
        return Client(str(dd.connection_file), timeout=timeout)
    except errors.NoController as e:
        raise CLIError(f"the controller in {dd} (pid {info.controller_pid}) does not answer: {e}") from None


# -- start -------------------------------------------------------------------------


def twistd_command() -> list[str]:
    """How to run twistd with this interpreter's Twisted."""
    twistd = Path(sys.executable).parent / "twistd"
    if twistd.exists():
        return [str(twistd)]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def twistd_argv(dd: DataDir, engines: int, daemon: bool, ip=None, web=None, extra=()) -> list[str]:
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
    info = dd.read_connection()
    if info is not None and pid_alive(info.controller_pid):
        # A live process that is not twistd: a controller embedded in some program, or a reused pid.
        try:
            _connect(dd, timeout=3.0).close()
        except CLIError:
            pass
        else:
            raise CLIError(
                f"a controller (pid {info.controller_pid}) is already using {dd}; "
                "stop it first or use another --data-dir"
            )
    # Nothing runs here: what is left is stale.
    for pid in dd.stray_engines():
        _signal(pid, signal.SIGTERM)
    for path in (dd.pidfile, dd.connection_file, dd.engine_pids):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class Progress:
    """Dots on a stream while something slow happens."""

    def __init__(self, stream: TextIO, message: str) -> None:
        self.stream = stream
        self.last = time.monotonic()
        self.dotted = False
        stream.write(message)
        stream.flush()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last >= 1.0:
            self.last = now
            self.dotted = True
            self.stream.write(".")
            self.stream.flush()

    def done(self, message: str = " done") -> None:
        self.stream.write(message + "\n")
        self.stream.flush()


def _settle(path: Path, quiet: float = 0.3, bound: float = 3.0) -> None:
    """Wait (at most ``bound`` s) until ``path`` stops growing: a failing daemon logs its traceback
    just after it has told twistd's parent process that it failed."""
    deadline = time.monotonic() + bound
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def start_daemon(dd: DataDir, engines: int, timeout: float, out: TextIO, progress: TextIO,
                 ip=None, web=None, extra=()) -> None:
    """Start a daemonized controller in ``dd`` (already prepared) and wait until it and its engines are up.

    On failure the half-started cluster is stopped and CLIError raised with the log's tail.
    """
    deadline = time.monotonic() + timeout
    try:
        log_offset = dd.logfile.stat().st_size
    except OSError:
        log_offset = 0
    argv = twistd_argv(dd, engines, daemon=True, ip=ip, web=web, extra=extra)
    bar = Progress(progress, f"Starting a cluster with {engines} engine(s) in {dd}")

    def fail(message: str) -> CLIError:
        bar.done(" failed")
        with contextlib.suppress(CLIError):
            stop_cluster(dd, timeout=DEFAULT_STOP_TIMEOUT, out=None)
        _settle(dd.logfile)
        tail = dd.log_tail(offset=log_offset) if dd.logfile.exists() else ""
        return CLIError(f"{message}\n{tail}".rstrip())

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise fail(f"twistd did not finish starting within {timeout:g} s") from None
    except OSError as e:
        bar.done(" failed")
        raise CLIError(f"cannot run twistd ({argv[0]}): {e}") from None
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).strip().splitlines()[-8:]  # a usage error ends with the reason
        said = ("twistd said:\n" + "\n".join("    " + line for line in said) + "\n") if said else ""
        raise fail(f"the controller failed to start (twistd exited with code {proc.returncode}).\n{said}".rstrip())

    pid = None
    while True:
        pid = dd.read_pidfile()
        info = dd.read_connection()
        if info is not None and pid_alive(info.controller_pid) and (pid is None or info.controller_pid == pid):
            pid = info.controller_pid
            break
        if pid is not None and not pid_alive(pid):
            raise fail(f"the controller (pid {pid}) exited while starting")
        if time.monotonic() > deadline:
            raise fail(f"no connection file appeared in {dd} within {timeout:g} s")
        bar.tick()
        time.sleep(0.05)

    ids: list[str] = []
    try:
        client = _connect(dd, timeout=max(1.0, deadline - time.monotonic()))
    except CLIError as e:
        raise fail(str(e)) from None
    try:
        while True:
            live = [e for e in client.engines() if e["state"] in LIVE]
            if len(live) >= engines:
                ids = sorted(e["id"] for e in live)
                break
            if not pid_alive(pid):
                raise fail(f"the controller (pid {pid}) exited while its engines were starting")
            if time.monotonic() > deadline:
                raise fail(f"only {len(live)} of {engines} engine(s) came up within {timeout:g} s")
            bar.tick()
            time.sleep(0.1)
    except errors.ClusterError as e:
        raise fail(f"lost the controller while waiting for engines: {e}") from None
    finally:
        client.close()
    bar.done()
    if out is not None:
        opt = dd.option()
        out.write(
            f"ipcluster is running: controller pid {pid}, {len(ids)} engine(s)"
            + (f" ({', '.join(ids)})" if ids else "")
            + "\n"
            f"  connection file: {dd.connection_file}\n"
            f"  log file:        {dd.logfile}\n"
            f"  status:          ipcluster status{opt}\n"
            f"  stop:            ipcluster stop{opt}\n"
        )
        out.flush()


def cmd_start(args) -> int:
    dd = _data_dir(args)
    if args.engines < 0:
        raise CLIError("-n/--engines must be 0 or more")
    prepare_start(dd)
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


# -- stop --------------------------------------------------------------------------


def stop_cluster(dd: DataDir, timeout: float, out: Optional[TextIO]) -> None:
    """SIGTERM the controller and the engines ``ipcluster engines`` added; wait until all are gone."""
    pid = dd.controller_pid()
    extra = sorted(dd.stray_engines(pid).items())
    if pid is None:
        info = dd.read_connection()
        if info is not None and pid_alive(info.controller_pid):
            try:
                _connect(dd, timeout=3.0).close()
            except CLIError:
                pass  # a stranger reusing a dead controller's pid: the files are stale
            else:
                raise CLIError(
                    f"the controller using {dd} (pid {info.controller_pid}) was not started by "
                    "`ipcluster start` or twistd; stop it from the program that runs it"
                )
        for epid, _ in extra:
            _signal(epid, signal.SIGTERM)
        stale = [p.name for p in (dd.connection_file, dd.pidfile) if p.exists()]
        for path in (dd.connection_file, dd.pidfile, dd.engine_pids):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        notes = []
        if stale:
            notes.append(f"removed stale {' and '.join(stale)}")
        if extra:
            notes.append(f"stopped {len(extra)} leftover engine(s)")
        raise _no_cluster(dd, "; ".join(notes))
    # Added engines first, so they leave while the controller still listens.
    for epid, _ in extra:
        _signal(epid, signal.SIGTERM)
    # The controller's own engines: it stops them itself; we wait for them too.
    own = sorted((p, i) for p, (i, ppid) in engine_processes(dd.connection_file).items() if ppid == pid)
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        left_engines = [(p, i) for p, i in extra + own if pid_alive(p)]
        controller_up = pid_alive(pid)
        if not controller_up and not left_engines:
            break
        if time.monotonic() > deadline:
            what = ([f"the controller (pid {pid})"] if controller_up else []) + [
                f"engine {i} (pid {p})" for p, i in left_engines
            ]
            raise CLIError(
                f"{' and '.join(what)} still running {timeout:g} s after SIGTERM; "
                f"see {dd.logfile}. Kill with: kill -9 {' '.join(str(p) for p in ([pid] if controller_up else []) + [p for p, _ in left_engines])}"
            )
        time.sleep(0.05)
    notes = []
    if dd.connection_file.exists():
        info = dd.read_connection()
        if info is None or not pid_alive(info.controller_pid):
            dd.connection_file.unlink()
            notes.append("it left its connection file behind (removed)")
    with contextlib.suppress(FileNotFoundError):
        dd.engine_pids.unlink()
    if out is not None:
        out.write(
            f"Stopped the cluster in {dd} (controller pid {pid}"
            + (f", {len(extra)} added engine(s)" if extra else "")
            + ")"
            + (f"; {'; '.join(notes)}" if notes else "")
            + "\n"
        )
        out.flush()


def cmd_stop(args) -> int:
    stop_cluster(_data_dir(args), args.timeout, sys.stdout)
    return 0


# -- status ------------------------------------------------------------------------


def _ms(value) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _secs(value) -> str:
    return "-" if value is None else f"{value:.1f}s"


def format_status(engines: list[dict], dd: DataDir, pid: int) -> str:
    rows = [("ID", "HOST", "PID", "STATE", "RTT(ms)", "TASK", "RUNNING", "BUSY-FOR", "QUEUED")]
    for e in engines:
        rows.append((
            str(e.get("id", "?")),
            str(e.get("host", "?")),
            str(e.get("pid", "?")),
            str(e.get("state", "?")),
            _ms(e.get("rtt")),
            e.get("running_task") or "-",
            _secs(e.get("task_running_for")),
            _secs(e.get("busy_for")),
            str(e.get("queued", "-")),
        ))
    lines = [f"Cluster in {dd}: controller pid {pid}"]
    if engines:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    else:
        lines.append("no engines")
    counts: dict[str, int] = {}
    for e in engines:
        counts[e.get("state", "?")] = counts.get(e.get("state", "?"), 0) + 1
    order = ["alive", "busy", "registering", "dead", "left"]
    states = sorted(counts, key=lambda s: (order.index(s) if s in order else len(order), s))
    summary = f"{len(engines)} engine(s)"
    if counts:
        summary += ": " + ", ".join(f"{counts[s]} {s}" for s in states)
    lines.append(summary)
    live = [e for e in engines if e.get("state") in LIVE]
    queued = sum(int(e.get("queued") or 0) for e in live)
    running = sum(1 for e in live if e.get("running_task"))
    lines.append(f"tasks: {running} running, {queued} queued on engines")
    return "\n".join(lines) + "\n"


def cmd_status(args) -> int:
    dd = _data_dir(args)
    client = _connect(dd)
    try:
        # e2 before e10: numbers in ids sort as numbers
        engines = sorted(
            client.engines(), key=lambda e: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(e["id"]))]
        )
        pid = client.info.controller_pid
    except errors.ClusterError as e:
        raise CLIError(f"the controller in {dd} did not answer: {e}") from None
    finally:
        client.close()
    if args.json:
        json.dump(engines, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_status(engines, dd, pid))
    return 0


# -- engines -----------------------------------------------------------------------


def cmd_engines(args) -> int:
    dd = _data_dir(args)
    if args.engines < 1:
        raise CLIError("-n/--engines must be 1 or more")
    client = _connect(dd)
    started: list[tuple[str, subprocess.Popen]] = []
    try:
        with dd.lock():
            used = {e["id"] for e in client.engines()} | {eid for _, eid in dd.read_engine_pids()} | {eid for eid, _ in engine_processes(dd.connection_file).values()}
            ids = []
            i = 0
            while len(ids) < args.engines:
                if f"x{i}" not in used:
                    ids.append(f"x{i}")
                i += 1
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            for eid in ids:
                argv = [sys.executable, "-m", "ipcluster.engine", "--connection-file", str(dd.connection_file), "--id", eid]
                with open(dd.engine_log(eid), "ab") as log:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
                started.append((eid, proc))
                with open(dd.engine_pids, "a") as f:
                    f.write(f"{proc.pid} {eid}\n")
        bar = Progress(sys.stderr, f"Starting {len(ids)} engine(s)")
        deadline = time.monotonic() + args.timeout
        while True:
            live = {e["id"] for e in client.engines() if e["state"] in LIVE}
            if all(eid in live for eid in ids):
                break
            for eid, proc in started:
                if proc.poll() is not None:
                    bar.done(" failed")
                    raise CLIError(
                        f"engine {eid} exited with code {proc.returncode} before joining\n"
                        f"{dd.log_tail(dd.engine_log(eid))}"
                    )
            if time.monotonic() > deadline:
                bar.done(" failed")
                missing = [eid for eid in ids if eid not in live]
                raise CLIError(
                    f"engine(s) {', '.join(missing)} did not join within {args.timeout:g} s\n"
                    f"{dd.log_tail(dd.engine_log(missing[0]))}"
                )
            bar.tick()
            time.sleep(0.1)
        bar.done()
    except BaseException as e:
        for _, proc in started:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        if isinstance(e, errors.ClusterError):
            raise CLIError(f"lost the controller while starting engines: {e}") from None
        raise
    finally:
        client.close()
    for eid, proc in started:
        print(f"{eid}  pid {proc.pid}  log {dd.engine_log(eid)}")
    print(f"Started {len(started)} engine(s); `ipcluster stop{dd.option()}` stops them with the cluster.")
    return 0


# -- run ---------------------------------------------------------------------------


def cmd_run(args) -> int:
    if args.engines < 0:
        raise CLIError("-n/--engines must be 0 or more")
    if not os.path.isfile(args.script):
        raise CLIError(f"no such script: {args.script}")
    temporary = args.data_dir is None
    dd = DataDir(tempfile.mkdtemp(prefix="ipcluster-run-") if temporary else args.data_dir)
    launched = False
    try:
        prepare_start(dd)
        launched = True
        start_daemon(dd, args.engines, args.timeout, out=None, progress=sys.stderr,
                     ip=args.ip, extra=args.extra_options)
        sys.stdout.flush()
        sys.stderr.flush()
        env = dict(os.environ, IPCLUSTER_DIR=str(dd.path))
        proc = subprocess.Popen([sys.executable, args.script, *args.args], env=env)
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:
            # The script got the same Ctrl-C (same process group); give it a moment to finish.
            try:
                returncode = proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                returncode = proc.wait()
        return _exit_code(returncode)
    finally:
        if launched:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the stop
            try:
                stop_cluster(dd, DEFAULT_STOP_TIMEOUT, out=None)
            except CLIError as e:
                if dd.controller_pid() is not None or "still running" in str(e):
                    print(f"ipcluster: warning: {e}", file=sys.stderr)
            finally:
                signal.signal(signal.SIGINT, previous)
        if temporary:
            shutil.rmtree(dd.path, ignore_errors=True)


# -- the parser -----------------------------------------------------------------------


def _data_dir_help() -> str:
    return (
        "the cluster's data directory: connection file, pid file, logs "
        f"(default: $IPCLUSTER_DIR or ~/.ipcluster, here {connection.default_data_dir()})"
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", "-d", metavar="DIR", default=None, help=_data_dir_help())

    parser = argparse.ArgumentParser(
        prog="ipcluster",
        formatter_class=fmt,
        description=(
            "Start, stop, inspect and use an ipcluster cluster: a Twisted controller\n"
            "(`twistd ipcluster`) and engine processes that run Python tasks sent by\n"
            "`ipcluster.Client`."
        ),
        epilog=(
            "examples:\n"
            "  ipcluster start --daemon -n 4    start a controller with 4 local engines, in the background\n"
            "  ipcluster status                 show the engines\n"
            "  ipcluster engines -n 2           add 2 more local engines\n"
            "  ipcluster stop                   stop the controller and all its engines\n"
            "  ipcluster run -n 4 job.py ARGS   start a private cluster, run job.py, stop it\n"
            "\n"
            "Each command takes --data-dir (or $IPCLUSTER_DIR); `ipcluster COMMAND --help` says more.\n"
            "Exit codes: 0 success, 1 failure (the reason is printed on stderr), 2 bad usage;\n"
            "`run` returns the script's exit code."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ipcluster {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "start", parents=[common], formatter_class=fmt,
        help="start a controller (and local engines)",
        description=(
            "Start a controller with N local engines.\n\n"
            "Without --daemon it runs in the foreground, logging to the terminal, until\n"
            "Ctrl-C (or `ipcluster stop`). With --daemon it runs in the background, its pid\n"
            "in DATA_DIR/ipcluster.pid and its log in DATA_DIR/ipcluster.log, and the command\n"
            "returns once the controller and its engines are up.\n\n"
            "Fails (exit code 1) if a cluster already runs in the data directory, if the\n"
            "data directory cannot be used, or if the controller does not come up (the end\n"
            "of its log is shown)."
        ),
        epilog=(
            "Options after `--` go to `twistd ipcluster` (see `twistd ipcluster --help`), e.g.\n"
            "  ipcluster start --daemon -n 2 -- --heartbeat-period 0.5 --store memory"
        ),
    )
    p.add_argument("-n", "--engines", type=int, default=2, metavar="N",
                   help="local engines to start with the controller (default: 2; 0 for none)")
    p.add_argument("--daemon", action="store_true",
                   help="run in the background; return once the cluster is up")
    p.add_argument("--ip", default=None,
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 accepts engines from other hosts)")
    p.add_argument("--web", default=None, metavar="ENDPOINT",
                   help="serve the live status page on this endpoint, e.g. tcp:8080:interface=127.0.0.1")
    p.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT, metavar="S",
                   help=f"with --daemon: seconds to wait for the controller and engines (default {DEFAULT_START_TIMEOUT:g})")
    p.add_argument("extra", nargs="*", metavar="-- TWISTD_OPTIONS", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser(
        "stop", parents=[common], formatter_class=fmt,
        help="stop the running cluster",
        description=(
            "Stop the cluster running in the data directory: SIGTERM the controller (it\n"
            "stops the engines it started and removes its connection file) and the engines\n"
            "added with `ipcluster engines`, and wait until they are all gone.\n"
            "Exit code 1 if no cluster runs there or it does not stop in time."
        ),
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT, metavar="S",
                   help=f"seconds to wait for the processes to exit (default {DEFAULT_STOP_TIMEOUT:g})")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "status", parents=[common], formatter_class=fmt,
        help="show the engines and their state",
        description=(
            "Show every engine the controller knows: id, host, pid, state (registering,\n"
            "alive, busy, dead), heartbeat round trip in ms, the task it runs and for\n"
            "how long, how long it has been busy (its Python thread not answering), and\n"
            "how many tasks are queued on it; then counts by state.\n"
            "Exit code 1 if no cluster runs in the data directory."
        ),
    )
    p.add_argument("--json", action="store_true", help="print the engine list as JSON instead")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "engines", parents=[common], formatter_class=fmt,
        help="add local engines to the running cluster",
        description=(
            "Start N more engines on this machine for the running cluster, with fresh ids\n"
            "(x0, x1, ...), and wait until they have joined. Their output goes to\n"
            "DATA_DIR/engine-ID.log; `ipcluster stop` stops them too.\n"
            "Exit code 1 if no cluster runs or an engine does not join."
        ),
    )
    p.add_argument("-n", "--engines", type=int, default=1, metavar="N", help="how many engines to add (default 1)")
    p.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT, metavar="S",
                   help=f"seconds to wait for them to join (default {DEFAULT_START_TIMEOUT:g})")
    p.set_defaults(func=cmd_engines)

    p = sub.add_parser(
        "run", parents=[common], formatter_class=fmt,
        help="start a cluster, run a script with it, stop it",
        description=(
            "Start a private cluster with N engines (in a fresh temporary data directory,\n"
            "unless --data-dir is given), run `python SCRIPT ARGS...` with IPCLUSTER_DIR set\n"
            "so that `ipcluster.Client()` in the script finds the cluster, then stop the\n"
            "cluster, whatever happened (also on Ctrl-C). The exit code is the script's.\n"
            "Messages about the cluster go to stderr; the script's output is its own."
        ),
        epilog="example:\n  ipcluster run -n 4 job.py --input data.csv",
    )
    p.add_argument("-n", "--engines", type=int, default=2, metavar="N", help="engines to start (default 2)")
    p.add_argument("--ip", default=None, help="interface for the controller to listen on (default 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT, metavar="S",
                   help=f"seconds to wait for the cluster to come up (default {DEFAULT_START_TIMEOUT:g})")
    p.add_argument("--twistd-option", dest="extra_options", action="append", default=[], metavar="OPT",
                   help="an extra `twistd ipcluster` option, e.g. --twistd-option=--store=memory (repeatable)")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except CLIError as e:
        sys.stdout.flush()
        print(f"ipcluster: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ipcluster: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
