"""``twistd`` with the reactor's turns timed: how long each one holds the reactor thread.

    python bench/hb/timed.py OUT.json -n --pidfile= ipcluster --data-dir D ...

Runs ``twistd`` in this process after wrapping, with ``perf_counter``:

* ``HeartMonitor.tick`` -- one slice of a period (drain the pongs waiting, judge, ping): ``slice``;
* ``RouterSocket.drain`` -- the bounded read of waiting pongs a slice starts with (part of
  ``slice``; also the scheduler's drains): ``drain``;
* ``HeartMonitor._ping_joining`` -- a round of first pings to registering engines: ``join``;
* ``EPollReactor._doReadOrWrite`` -- one socket event handled (a bounded read of one
  ZeroMQ socket, all its handlers): ``io``.

Each SIGUSR1 writes the durations gathered since the previous one to OUT.json
(atomically, with a sequence number ``seq``) and starts a new window, so the caller
brackets exactly the window it measures.  The wrappers cost about a microsecond a call.

With ``HB_PROFILE=PATH`` in the environment (``bench/heartbeat.py --profile PATH``), the
first SIGUSR1 also starts ``cProfile`` and the second writes its statistics to PATH
(``python -m pstats PATH``): a profile of exactly the steady window.  It slows the
controller down, so its figures are not the run's to quote.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

from twisted.internet import epollreactor

from ipcluster.controller import heartmonitor
from ipcluster.transport import reactor as zmq_reactor

WINDOW: dict = {"slice": [], "drain": [], "join": [], "io": []}
SEQ = [0]
PROFILE = os.environ.get("HB_PROFILE")
PROFILER: list = []


def timed(cls, name: str, kind: str) -> None:
    original = getattr(cls, name)
    clock = time.perf_counter
    durations = WINDOW[kind]

    def wrapper(self, *args, **kwargs):
        t0 = clock()
        try:
            return original(self, *args, **kwargs)
        finally:
            durations.append(clock() - t0)

    setattr(cls, name, wrapper)


def profile() -> None:
    """Start the profiler at the window's start, write it out at its end (``HB_PROFILE``)."""
    if not PROFILER:
        import cProfile

        PROFILER.append(cProfile.Profile())
        PROFILER[0].enable()
    elif PROFILER[0] is not None:
        PROFILER[0].disable()
        PROFILER[0].dump_stats(PROFILE)
        PROFILER[0] = None


def dump(signum, frame) -> None:
    if PROFILE:
        profile()
    SEQ[0] += 1
    out = {"seq": SEQ[0], **{kind: list(values) for kind, values in WINDOW.items()}}
    for values in WINDOW.values():
        values.clear()
    tmp = PATH + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, PATH)


if __name__ == "__main__":
    PATH = sys.argv[1]
    timed(heartmonitor.HeartMonitor, "tick", "slice")
    timed(zmq_reactor.RouterSocket, "drain", "drain")
    timed(heartmonitor.HeartMonitor, "_ping_joining", "join")
    timed(epollreactor.EPollReactor, "_doReadOrWrite", "io")
    signal.signal(signal.SIGUSR1, dump)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[2:]]
    run()
