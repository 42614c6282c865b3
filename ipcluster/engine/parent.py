"""Engines started by a controller end with it.

The controller's local launcher sets :data:`PARENT_ENV` to its pid in each
engine's environment.  Such an engine asks Linux to send it SIGTERM when its
parent dies (``prctl(PR_SET_PDEATHSIG)``, through ctypes) and leaves at once if
the parent is gone already; SIGTERM makes it leave cleanly (exit code 0).

Why not let them rejoin the next controller: they are the old controller's
children, so the new one can neither wait for their exit status nor restart
them under its supervision budget (it learns of an adopted engine's death only
from missed heartbeats, and cannot tell a crash from a clean exit), their
stdout and stderr are pipes to a dead process, and a new ``e0`` would collide
with the old one.  The new controller starts fresh engines instead, and the
tasks the old ones ran are re-queued from the store after the recovery grace
(at-least-once).  Engines started by hand, or by ``ipcluster engines``, have no
such variable: they always rejoin, and report what they run.
"""
from __future__ import annotations

import ctypes
import os
import signal
from typing import Mapping, Optional

PARENT_ENV = "IPCLUSTER_PARENT_PID"
PR_SET_PDEATHSIG = 1


def parent_to_follow(environ: Mapping[str, str] = os.environ) -> Optional[int]:
    """The pid this engine ends with (None: it outlives whoever started it)."""
    try:
        pid = int(environ.get(PARENT_ENV, ""))
    except ValueError:
        return None
    return pid if pid > 0 else None


def follow_parent(environ: Mapping[str, str] = os.environ) -> bool:
    """Arrange SIGTERM at the parent's death; False if the parent to follow is gone already."""
    pid = parent_to_follow(environ)
    if pid is None:
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the check below is all there is
        pass
    return os.getppid() == pid
