"""A controller's identity across restarts: the key and ports of the one before it.

A controller started on a data directory whose connection file was left by a
controller that is gone (killed: a clean stop removes the file) takes over its
key and its ports, so that the engines and clients of the old one reconnect by
themselves: their ZeroMQ sockets reconnect to the same addresses, their
credentials and signatures still hold, and the new controller's ``unknown``
answers make them open new sessions (clients) and register again (engines).

With CURVE, the controller's key pairs are kept too: the connection file holds
only the public half of the server's pair, so the whole of it is written to
``DATA_DIR/curve-keys.json`` (0600, read by the controller only) and taken again
by an heir whose predecessor's connection file names the same server key.

A port given on the command line wins over the kept one; a kept port that
another process holds now is given up with a warning (the controller binds
another; engines find it in the new connection file, clients must be made again).
"""
from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Iterator, Optional

from twisted.logger import Logger

from ipcluster import connection
from ipcluster.connection import CHANNELS, ConnectionInfo
from ipcluster.transport.security import CurveKeys

#: The controller's CURVE key pairs, secret halves included (0600), in the data dir.
CURVE_KEYS_FILE = "curve-keys.json"

log = Logger()


def previous_identity(path) -> Optional[ConnectionInfo]:
    """The connection file at ``path`` if its controller is gone (None: no file, unreadable, or
    its controller still runs -- then the data dir is not ours, see ``check_data_dir``)."""
    try:
        old = connection.read(path)
    except Exception:
        return None
    if old.controller_pid == os.getpid() or connection.pid_alive(old.controller_pid):
        return None
    return old


def kept_ports(previous: Optional[ConnectionInfo], configured: dict) -> dict:
    """The ports to reuse: the previous controller's, for each channel not configured (0)."""
    if previous is None:
        return {}
    return {ch: previous.ports[ch] for ch in CHANNELS if not configured.get(ch) and previous.ports.get(ch)}


def curve_keys(data_dir, previous: Optional[ConnectionInfo], enabled: bool) -> Optional[CurveKeys]:
    """The CURVE keys to use (None: CURVE off): the predecessor's when it used CURVE and its
    keys are still in the data dir, else fresh ones (written there for an heir)."""
    if not enabled:
        return None
    path = Path(data_dir) / CURVE_KEYS_FILE
    if previous is not None and previous.curve is not None:
        kept = _read_curve_keys(path)
        if kept is not None and kept.server_public == previous.curve.server_public:
            return kept
        log.warn("the previous controller's CURVE keys are not in {path}: new keys; its engines and clients "
                 "must be given the new connection file", path=str(path))
    keys = CurveKeys.generate()
    data = dict(keys.to_json(), server_secret=keys.server_secret.decode())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, 0o600)
            json.dump(data, f)
    except OSError as e:  # (an unusable data dir stops the controller soon after, with its own error)
        log.warn("cannot keep the CURVE keys in {path} ({e}): a controller after this one will make new ones",
                 path=str(path), e=e)
    return keys


def _read_curve_keys(path: Path) -> Optional[CurveKeys]:
    try:
        data = json.loads(path.read_text())
        keys = CurveKeys.from_json(data)
        return CurveKeys(keys.server_public, keys.client_public, keys.client_secret, data["server_secret"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def announce(previous: ConnectionInfo, path) -> None:
    log.info(
        "the previous controller (pid {pid}) is gone: taking over its key and ports from {path}, so that its "
        "engines and clients reconnect", pid=previous.controller_pid, path=str(path),
    )


def sequence() -> Iterator[int]:
    """The numbers (``n``) of the messages this controller signs: from the microseconds since the
    epoch at its start, so that an heir's numbers are above its predecessor's (which sent fewer
    than a million messages a second): the ``unknown`` it sends in one of the predecessor's
    sessions passes the client's replay window for that session."""
    return itertools.count(int(time.time() * 1_000_000))
