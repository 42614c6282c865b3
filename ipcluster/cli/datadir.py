"""One cluster's data directory as the commands see it: its files, and what runs there.

``connection.json``  written by the controller while it runs (mode 0600)
``ipcluster.pid``    the controller's pid (written by twistd)
``ipcluster.log``    the daemon's log
``engines.pids``     engines added by ``ipcluster engines``: "PID ID" lines
``engine-ID.log``    the output of such an engine
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
from pathlib import Path
from typing import Iterator, Mapping, Optional

from ipcluster import connection, datadir, errors
from ipcluster.cli import processes
from ipcluster.cli.errors import CLIError
from ipcluster.connection import pid_alive

PIDFILE = "ipcluster.pid"
LOGFILE = "ipcluster.log"
ENGINE_PIDS = "engines.pids"
#: How long status/engines wait for the controller to answer a request.
CLIENT_TIMEOUT = 10.0


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.getuid()}"


class DataDir:
    """The paths of one cluster's data directory, and what they say runs there."""

    def __init__(self, path) -> None:
        self.path = Path(path).expanduser().absolute()

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def from_args(cls, args) -> "DataDir":
        """The directory of ``--data-dir``, else ``$IPCLUSTER_DIR`` or ``~/.ipcluster``.

        Raises CLIError when it exists but is no directory, or one this user cannot read
        (a directory that does not exist yet is fine: ``start`` makes it).
        """
        dd = cls(args.data_dir if args.data_dir is not None else connection.default_data_dir())
        dd.ensure_readable()
        return dd

    def ensure_readable(self) -> None:
        """CLIError unless the directory is missing, or a directory this user may list and read."""
        again = "Pass another one with --data-dir or set IPCLUSTER_DIR."
        try:
            exists, is_dir = self.path.exists(), self.path.is_dir()
        except OSError as e:  # a path through a file or an unreadable directory
            raise CLIError(f"the data directory {self.path} is unusable: {e.strerror or e}. {again}") from None
        if exists and not is_dir:
            raise CLIError(f"the data directory {self.path} is unusable: it exists and is not a directory. {again}")
        if exists and not os.access(self.path, os.R_OK | os.X_OK):
            raise CLIError(f"the data directory {self.path} is unusable: this user ({_user()}) may not read it. {again}")

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
            datadir.ensure_usable(self.path)
        except datadir.UnusableDataDir as e:
            raise CLIError(f"{e}. Pass another one with --data-dir or set IPCLUSTER_DIR.") from None

    def remove(self, *paths: Path) -> list[str]:
        """Delete those of ``paths`` that exist; the names of those deleted."""
        removed = []
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
        return removed

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
        if processes.is_controller(pid):
            return pid
        info = self.read_connection()
        if info is not None and processes.is_controller(info.controller_pid):
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

    def record_engines(self, pids: Mapping[str, int]) -> None:
        """Add ``{engine id: pid}`` to engines.pids (hold :meth:`lock`)."""
        with open(self.engine_pids, "a") as f:
            f.writelines(f"{pid} {engine_id}\n" for engine_id, pid in pids.items())

    def live_engine_pids(self) -> list[tuple[int, str]]:
        return [(pid, eid) for pid, eid in self.read_engine_pids() if processes.is_engine(pid)]

    def stray_engines(self, controller_pid: Optional[int] = None) -> dict[int, str]:
        """Engines of this cluster the controller did not start itself: ``{pid: id}``.

        Those recorded by ``ipcluster engines`` plus, where /proc tells, any
        engine process using this connection file whose parent is not the
        controller (e.g. left behind by a controller that was killed).
        """
        stray = dict(self.live_engine_pids())
        for pid, (eid, ppid) in processes.engine_processes(self.connection_file).items():
            if controller_pid is None or ppid != controller_pid:
                stray[pid] = eid
        return stray

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock for changing engines.pids."""
        with open(self.path / ".engines.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def log_tail(self, path: Optional[Path] = None, offset: int = 0, lines: int = 25) -> str:
        """The last ``lines`` of a log (the daemon's by default) from ``offset`` on, indented, for an error message."""
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


# -- the controller in a data directory ------------------------------------------------


def no_cluster(dd: DataDir, detail: str = "") -> CLIError:
    """The error for a command that needs a running cluster where there is none."""
    detail = f" ({detail})" if detail else ""
    return CLIError(
        f"no cluster is running in {dd}{detail}. Start one with `ipcluster start --daemon{dd.option()}`."
    )


def connect(dd: DataDir, timeout: float = CLIENT_TIMEOUT):
    """A :class:`~ipcluster.client.Client` of the cluster in ``dd``, or CLIError saying why there is none."""
    from ipcluster.client.sync import Client

    info = dd.read_connection()
    if info is None:
        if dd.connection_file.exists():
            raise no_cluster(dd, f"cannot read {dd.connection_file}")
        raise no_cluster(dd, f"no {dd.connection_file}")
    if not pid_alive(info.controller_pid):
        raise no_cluster(dd, f"{dd.connection_file} is stale: controller pid {info.controller_pid} is gone")
    try:
        return Client(str(dd.connection_file), timeout=timeout)
    except errors.NoController as e:
        raise CLIError(f"the controller in {dd} (pid {info.controller_pid}) does not answer: {e}") from None


def foreign_controller(dd: DataDir) -> Optional[int]:
    """The pid of a live controller that answers on ``dd``'s connection file though twistd did not start it.

    A controller embedded in some program; ``ipcluster`` must neither start a
    second one beside it nor try to stop it.  None if there is none (a
    connection file naming a pid reused by a stranger does not count).
    """
    info = dd.read_connection()
    if info is None or not pid_alive(info.controller_pid):
        return None
    try:
        connect(dd, timeout=3.0).close()
    except CLIError:
        return None
    return info.controller_pid
