#!/usr/bin/env python
"""How long one heart-monitor turn holds the reactor, at 1,000 and 10,000 engines (in process).

    .venv/bin/python bench/heartbeat_hold.py                  # 1,000 and 10,000 engines, 20 periods
    .venv/bin/python bench/heartbeat_hold.py --engines 10000 --periods 40

The controller's own HeartMonitor, Registry, PingCodec and Codec (the control
ping is encoded as ``ControlChannel.send_ping`` does) run on a ``task.Clock``
advanced 1 ms at a time; each ``advance`` that runs a monitor call is timed with
``perf_counter``: that is how long the reactor would be held by that turn.
Every engine answers its heart ping and its control ping at once (through
``pong_received`` and ``control_seen``, timed apart: that work happens as the
pongs arrive, between turns).  No sockets: the send is a function that keeps
the frames, so this is the Python work of the monitor alone, not libzmq's.
Runs against whatever ``ipcluster`` is importable (``PYTHONPATH`` to compare).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def run(n: int, periods: int) -> dict:
    from twisted.internet.task import Clock

    from ipcluster.controller.control import send_control_ping
    from ipcluster.controller.heartmonitor import HeartMonitor
    from ipcluster.controller.registry import Registry
    from ipcluster.transport.wire import Codec, PingCodec, new_key

    key = new_key()
    clock, registry, codec = Clock(), Registry(), Codec(key)
    hearts: list = []
    controls: list = []
    monitor = HeartMonitor(
        clock, registry, PingCodec(key), lambda identity, ping: hearts.append((identity, ping)) or True,
        lambda record, beat: send_control_ping(codec, controls.append, record, beat) or True,
    )
    for i in range(n):
        registry.register(f"e{i}", "i", "host", 1, clock.seconds())
    perf = time.perf_counter
    holds, answering = [], 0.0
    monitor.start()
    steps = int(periods * monitor.period / 0.001)
    for _ in range(steps):
        t0 = perf()
        clock.advance(0.001)
        t1 = perf()
        if hearts or controls:
            holds.append(t1 - t0)
        t2 = perf()
        for identity, ping in hearts:
            monitor.pong_received(identity, ping)
        for frames in controls:
            record = registry.by_identity(frames[0])
            if record is not None:
                monitor.control_seen(record)
        answering += perf() - t2
        hearts.clear()
        controls.clear()
    monitor.stop()
    seconds = periods * monitor.period
    alive = sum(1 for r in registry.active() if r.state == "alive")
    return {
        "engines": n, "periods": periods, "turns": len(holds), "alive_at_end": alive,
        "hold_max_ms": 1e3 * max(holds), "hold_median_ms": 1e3 * statistics.median(holds),
        "monitor_cpu_percent": 100 * (sum(holds) + answering) / seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="1000,10000", help="engine counts (default 1000,10000)")
    p.add_argument("--periods", type=int, default=20, help="heartbeat periods simulated (default 20)")
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()}")
    print(f"{'engines':>8} {'turns':>6} {'hold max':>9} {'hold med':>9} {'cpu %':>6} {'alive':>6}")
    for n in [int(x) for x in args.engines.split(",")]:
        r = run(n, args.periods)
        print(f"{r['engines']:>8} {r['turns']:>6} {r['hold_max_ms']:>7.2f}ms {r['hold_median_ms']:>7.2f}ms "
              f"{r['monitor_cpu_percent']:>5.1f}% {r['alive_at_end']:>6}")
    print("(hold: wall time of one monitor turn; cpu %: monitor turns + pong handling per simulated second;\n"
          " Python work only -- libzmq's sends and receives, and the control pong's decoding, are not in it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
