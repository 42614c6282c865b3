"""When a silent controller counts as gone, for a client with work pending.

A controller can be silent and still there: paused (SIGSTOP), swapping, or
restarting on the same data directory (the new one keeps the old one's key and
ports, so the client's socket reconnects by itself).  So silence alone fails
nothing until :attr:`give_up_after` (600 s by default).  Before that, a
client of a controller on this host judges by the connection file:

* the file is gone (the controller stopped cleanly) or holds another key (a
  controller that is not the old one's heir): gone, once silent for the
  client's ``controller_timeout``;
* the file's controller process lives: it is paused or busy -- keep waiting;
* that process is gone: gone if no controller took over (a live pid in the
  file, same key) within :attr:`restart_wait` (60 s).

A remote controller's process cannot be seen: only ``give_up_after`` ends the wait.
"""
from __future__ import annotations

import socket
from typing import Callable, Optional

from ipcluster import connection
from ipcluster.connection import ConnectionInfo
from ipcluster.errors import NoController

DEFAULT_RESTART_WAIT = 60.0
DEFAULT_GIVE_UP_AFTER = 600.0


def is_local(ip: str) -> bool:
    """Whether the controller's address is this host's (its process can be checked)."""
    if ip in ("localhost", "::1") or ip.startswith("127."):
        return True
    try:
        return ip in (socket.gethostname(), socket.getfqdn())
    except OSError:
        return False


class ControllerWatch:
    """Judges a controller's silence (see the module's docstring); the caller keeps the clock."""

    def __init__(
        self,
        info: ConnectionInfo,
        silence_limit: float = 20.0,
        restart_wait: float = DEFAULT_RESTART_WAIT,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
        read: Callable[[object], ConnectionInfo] = connection.read,
        alive: Callable[[int], bool] = connection.pid_alive,
        local: Optional[bool] = None,
    ) -> None:
        self.info = info
        self.silence_limit = silence_limit
        self.restart_wait = restart_wait
        self.give_up_after = max(give_up_after, silence_limit)
        self.read = read
        self.alive = alive
        self.local = is_local(info.ip) if local is None else local
        self._gone_since: Optional[float] = None

    def verdict(self, silent_for: float, now: float) -> Optional[str]:
        """None while the controller may come back; else why it is gone (after "the controller at X ...")."""
        if silent_for <= self.silence_limit:
            self._gone_since = None
            return None
        said = f"has not answered for {silent_for:.0f} s"
        if silent_for > self.give_up_after:
            return f"{said} (the client gives up after {self.give_up_after:g} s)"
        if not self.local:
            return None
        try:
            now_info = self.read(self.info.path)
        except NoController:
            return f"{said} and its connection file is gone (it was stopped)"
        if now_info.key != self.info.key:
            return f"{said} and another controller (another key) took its place: make a new client"
        if self.alive(now_info.controller_pid):
            self._gone_since = None
            return None  # paused, busy, or its heir is starting
        if self._gone_since is None:
            self._gone_since = now
        if now - self._gone_since > self.restart_wait:
            return (f"{said}: its process (pid {now_info.controller_pid}) is gone and no controller took over "
                    f"within {self.restart_wait:g} s")
        return None
