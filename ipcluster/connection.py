"""The connection file: addresses and key, written 0600 by the controller.

Engines and clients need nothing else to join a cluster.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional

import attr

from ipcluster.errors import NoController
from ipcluster.transport import DEFAULT_MAX_MESSAGE_SIZE
from ipcluster.transport.security import CurveKeys

#: The sockets a controller binds, in the order they are documented.
CHANNELS = ("registration", "heartbeat", "control", "task", "client")
CONNECTION_FILE = "connection.json"


def pid_alive(pid: Optional[int]) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as gone)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)


def default_data_dir() -> Path:
    """``$IPCLUSTER_DIR`` if set, else ``~/.ipcluster``."""
    env = os.environ.get("IPCLUSTER_DIR")
    return Path(env).expanduser() if env else Path.home() / ".ipcluster"


def default_connection_file() -> Path:
    return default_data_dir() / CONNECTION_FILE


@attr.s(frozen=True, slots=True)
class ConnectionInfo:
    """What a connection file says: where each channel listens and the key."""

    ip: str = attr.ib()
    ports: Mapping[str, int] = attr.ib()
    key: bytes = attr.ib(repr=False)
    controller_pid: int = attr.ib(default=0)
    path: Path | None = attr.ib(default=None, eq=False)
    #: The controller's ``--max-message-size``: the largest message (all its frames) it takes.
    max_message_size: int = attr.ib(default=DEFAULT_MAX_MESSAGE_SIZE)
    #: The cluster's CURVE keys (without the server's secret) when its sockets are CURVE servers.
    curve: Optional[CurveKeys] = attr.ib(default=None, repr=False)

    def address(self, channel: str) -> str:
        return f"tcp://{self.ip}:{self.ports[channel]}"

    def to_json(self) -> dict:
        return {
            "version": 1,
            "transport": "tcp",
            "ip": self.ip,
            "ports": dict(self.ports),
            "signature_scheme": "hmac-sha256",
            "key": self.key.hex(),
            "controller_pid": self.controller_pid,
            "max_message_size": self.max_message_size,
            **({"curve": self.curve.public().to_json()} if self.curve is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict, path: Path | None = None) -> "ConnectionInfo":
        try:
            ports = {name: int(data["ports"][name]) for name in CHANNELS}
            return cls(
                ip=str(data["ip"]),
                ports=ports,
                key=bytes.fromhex(data["key"]),
                controller_pid=int(data.get("controller_pid", 0)),
                path=path,
                max_message_size=int(data.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)),
                curve=CurveKeys.from_json(data["curve"]) if data.get("curve") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"connection file {path} is malformed: {e!r}") from None


def write(info: ConnectionInfo, path: Path) -> None:
    """Write ``info`` to ``path`` atomically, readable by its owner only (0600)."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    import tempfile  # only the controller writes one: engines and clients start without it

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".connection-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info.to_json(), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read(path: str | os.PathLike | None = None) -> ConnectionInfo:
    """Read a connection file (the default one when ``path`` is None).

    Raises :class:`NoController` with a helpful message when it is missing.
    """
    p = Path(path).expanduser() if path is not None else default_connection_file()
    try:
        with open(p) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NoController(
            f"no connection file at {p}: is a controller running? "
            "Start one with `ipcluster start --daemon` (or `twistd -n ipcluster --engines 2`), "
            "or pass the file's path."
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise NoController(f"cannot read connection file {p}: {e}") from None
    try:
        return ConnectionInfo.from_json(data, path=p)
    except ValueError as e:
        raise NoController(str(e)) from None
