"""A controller's identity across restarts: the key and ports of the one before it.

A controller started on a data directory whose connection file was left by a
controller that is gone (killed: a clean stop removes the file) takes over its
key and its ports, so that the engines and clients of the old one reconnect by
themselves: their ZeroMQ sockets reconnect to the same addresses, their
credentials and signatures still hold, and the new controller's ``unknown``
answers make them open new sessions (clients) and register again (engines).

A port given on the command line wins over the kept one; a kept port that
another process holds now is given up with a warning (the controller binds
another; engines find it in the new connection file, clients must be made again).
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Iterator, Optional

from twisted.logger import Logger

from ipcluster import connection
from ipcluster.connection import CHANNELS, ConnectionInfo

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
