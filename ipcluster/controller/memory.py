"""The local engines' memory: sizes as ``--engine-memory-limit`` reads them, RSS from
``/proc``, and :class:`MemoryWatch`, which samples every local engine on a LoopingCall.

Reading ``/proc/PID/statm`` is one small read of a kernel-made file (a few
microseconds): cheap enough for the reactor thread once a second per engine.
Where there is no ``/proc`` (not Linux) the RSS is unknown and no limit applies.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Mapping, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
DEFAULT_PERIOD = 1.0

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes from ``"2GB"`` (decimal: 2·10⁹), ``"512MiB"`` (binary), ``"1.5g"`` or ``"1000000"``."""
    match = _SIZE.fullmatch(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (say e.g. 2GB, 512MiB or a number of bytes)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return size


def read_rss(pid: int) -> Optional[int]:
    """The resident memory of process ``pid`` in bytes; None if it cannot be read (gone, no /proc)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def read_cpu_seconds(pid: int) -> Optional[float]:
    """The CPU time (user + system) process ``pid`` has used, in seconds; None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()  # the name in parentheses may hold spaces
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


class MemoryWatch:
    """Every ``period`` seconds, ``over(engine_id, rss)`` for each engine whose RSS passes ``limit``.

    ``pids()`` gives ``{engine_id: pid}`` of the processes to sample (the
    launcher's running engines); ``rss_of(pid)`` reads one (``read_rss``).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        limit: int,
        pids: Callable[[], Mapping[str, int]],
        over: Callable[[str, int], None],
        rss_of: Callable[[int], Optional[int]] = read_rss,
        period: float = DEFAULT_PERIOD,
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.pids = pids
        self.over = over
        self.rss_of = rss_of
        self.period = period
        self.last: dict[str, int] = {}  # the latest reading per engine
        self._loop: Optional[LoopingCall] = None

    def start(self) -> None:
        self._loop = LoopingCall(self.sample)
        self._loop.clock = self.clock
        self._loop.start(self.period, now=False).addErrback(self.log.failure, "the memory watch stopped")

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sample(self) -> None:
        readings = {}
        for engine_id, pid in list(self.pids().items()):
            rss = self.rss_of(pid)
            if rss is None:
                continue
            readings[engine_id] = rss
            if rss > self.limit:
                self.over(engine_id, rss)
        self.last = readings
