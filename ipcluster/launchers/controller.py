"""The controller itself on another host: ``ipcluster start --controller ssh:HOST`` or ``--controller slurm``.

This runs in the ``ipcluster`` command (blocking calls, no reactor).  ``ssh:HOST`` runs
``ipcluster start --daemon`` on HOST over ``ssh`` (BatchMode), then reads the connection file
back over ``ssh`` into the local data directory (0600).  With ``tunnel`` the controller may
listen on HOST's loopback only (behind SSH): an ``ssh -N -L`` process forwards five local
ports to it, and the local connection file names ``127.0.0.1`` and those ports (its keys,
CURVE ones included, are the controller's: a tunnel changes only where the bytes go).

``slurm`` submits the controller as a Slurm job (``sbatch``, settings as the launcher's) that
runs ``ipcluster start`` in the foreground with its data directory under the local one (a
file system the nodes share), and waits for its connection file to appear.

Either way ``remote.json`` in the local data directory says where the controller runs;
``ipcluster stop`` reads it (:func:`stop_remote`): ``ipcluster stop`` over ``ssh``, or
``scancel``; then the tunnel ends and the local files go.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ipcluster import connection
from ipcluster.connection import CHANNELS, CONNECTION_FILE
from ipcluster.launchers.ssh import SSH_OPTIONS

REMOTE_FILE = "remote.json"
DEFAULT_REMOTE_DATA_DIR = ".ipcluster-remote"


class RemoteError(RuntimeError):
    """The remote controller could not be started, reached or stopped (the message says why)."""


def _ssh(host: str, options: Sequence[str], command: str, timeout: float) -> str:
    argv = ["ssh", *SSH_OPTIONS, *options, host, command]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"ssh {host} did not answer within {timeout:g} s") from None
    if result.returncode != 0:
        raise RemoteError(f"ssh {host} {command!r} failed (exit code {result.returncode}): "
                          f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def open_tunnel(info: connection.ConnectionInfo, host: str, options: Sequence[str], timeout: float = 30.0):
    """``ssh -N -L`` forwarding five free local ports to ``info``'s (as HOST sees them).

    Returns ``(process, info)`` where ``info`` names ``127.0.0.1`` and the local ports.
    """
    ports = dict(zip(CHANNELS, _free_ports(len(CHANNELS))))
    forwards = [arg for ch in CHANNELS for arg in ("-L", f"127.0.0.1:{ports[ch]}:{info.ip}:{info.ports[ch]}")]
    argv = ["ssh", "-N", *SSH_OPTIONS, "-o", "ExitOnForwardFailure=yes", *options, *forwards, host]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RemoteError(f"ssh tunnel to {host} ended: {proc.stderr.read().decode(errors='replace').strip()}")
        try:
            socket.create_connection(("127.0.0.1", ports["client"]), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RemoteError(f"ssh tunnel to {host}: local ports did not open within {timeout:g} s")
    import attr

    return proc, attr.evolve(info, ip="127.0.0.1", ports=ports, path=None)


def start_ssh(data_dir: Path, host: str, start_args: Sequence[str], options: Sequence[str] = (),
              python: str = "python3", remote_data_dir: str = DEFAULT_REMOTE_DATA_DIR, tunnel: bool = False,
              timeout: float = 120.0) -> connection.ConnectionInfo:
    """Start a controller on ``host`` (``ipcluster start --daemon START_ARGS`` there) and write its
    connection file (through a tunnel if asked) into ``data_dir``."""
    rdd = shlex.quote(remote_data_dir)
    cli = f"{shlex.quote(python)} -m ipcluster.cli"
    _ssh(host, options, f"{cli} start --daemon --data-dir {rdd} {shlex.join(list(start_args))}", timeout)
    text = _ssh(host, options, f"cat {rdd}/{CONNECTION_FILE}", timeout)
    try:
        info = connection.ConnectionInfo.from_json(json.loads(text))
    except (ValueError, json.JSONDecodeError) as e:
        raise RemoteError(f"the connection file on {host} is not usable: {e}") from None
    tunnel_pid = None
    if tunnel:
        proc, info = open_tunnel(info, host, options)
        tunnel_pid = proc.pid
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    connection.write(info, data_dir / CONNECTION_FILE)
    _write_remote(data_dir, {"kind": "ssh", "host": host, "options": list(options), "python": python,
                             "remote_data_dir": remote_data_dir, "tunnel_pid": tunnel_pid})
    return info


def start_slurm(data_dir: Path, start_args: Sequence[str], settings: Optional[dict] = None,
                timeout: float = 600.0) -> connection.ConnectionInfo:
    """Submit the controller as a Slurm job; wait (up to ``timeout``) for its connection file."""
    s = dict(settings or {})
    remote = data_dir / "slurm-controller"
    remote.mkdir(mode=0o700, parents=True, exist_ok=True)
    python = s.get("python", sys.executable)
    command = [python, "-m", "ipcluster.cli", "start", "--data-dir", str(remote), *start_args]
    argv = ["sbatch", "--parsable", "--job-name", "ipcluster-controller", "--output", str(remote / "slurm-%j.log")]
    for option, key in (("--partition", "partition"), ("--account", "account"), ("--time", "time")):
        if s.get(key):
            argv += [option, str(s[key])]
    argv += [*s.get("options", ()), "--wrap", "exec " + shlex.join(command)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RemoteError(f"sbatch failed: {result.stderr.strip()}")
    job = result.stdout.strip().split(";")[0]
    _write_remote(data_dir, {"kind": "slurm", "job": job})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = connection.read(remote / CONNECTION_FILE)
            connection.write(info, data_dir / CONNECTION_FILE)
            return info
        except Exception:
            time.sleep(0.5)
    subprocess.run(["scancel", job], capture_output=True, timeout=60)
    raise RemoteError(f"slurm job {job} wrote no connection file within {timeout:g} s (see {remote})")


def _write_remote(data_dir: Path, about: dict) -> None:
    path = data_dir / REMOTE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(about, f)


def remote_of(data_dir: Path) -> Optional[dict]:
    """What ``remote.json`` in ``data_dir`` says (None: the controller there is local)."""
    try:
        with open(Path(data_dir) / REMOTE_FILE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stop_remote(data_dir: Path, timeout: float = 60.0) -> str:
    """Stop the remote controller of ``data_dir``, end its tunnel, remove the local files; what was done."""
    about = remote_of(data_dir)
    if about is None:
        raise RemoteError(f"no remote controller recorded in {data_dir}")
    if about["kind"] == "ssh":
        cli = f"{shlex.quote(about['python'])} -m ipcluster.cli"
        _ssh(about["host"], about["options"], f"{cli} stop --data-dir {shlex.quote(about['remote_data_dir'])}",
             timeout)
        done = f"stopped the controller on {about['host']}"
    else:
        subprocess.run(["scancel", about["job"]], capture_output=True, timeout=60)
        done = f"cancelled the controller's slurm job {about['job']}"
    if about.get("tunnel_pid"):
        try:
            os.kill(about["tunnel_pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    for name in (CONNECTION_FILE, REMOTE_FILE):
        try:
            os.unlink(Path(data_dir) / name)
        except FileNotFoundError:
            pass
    return done
