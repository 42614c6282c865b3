#!/usr/bin/env python
"""The floor under the heart monitor's cost: a bare pyzmq ROUTER ping loop.

    .venv/bin/python bench/hb/bare.py --engines 1000 --window 15 [--sign]

One process binds a ROUTER on 127.0.0.1 and pings ``--engines`` DEALERs at the controller's
default period, cut into slices of 100 spread over the period as ``HeartMonitor`` does; it
reads every pong and does nothing else: no registry, no judging, no control channel, no
Twisted (``--sign`` adds one HMAC-SHA256 per ping, as ``PingCodec`` does).  ``--helpers``
processes hold the DEALERs and echo in one epoll loop each (``hb/sim.py``'s light hearts,
without registering).  The ROUTER process's CPU (all its threads, libzmq's I/O thread among
them) over ``--window`` seconds is the floor: what any Python controller pays on this machine
for two TCP messages per engine per period.  ``bench/heartbeat.py --engines N`` reports the
controller's cost; the ratio of the two is what the controller adds.
"""
from __future__ import annotations

import argparse
import hmac
import os
import select
import subprocess
import sys
import time

import zmq

PERIOD = 0.5
SLICE = 100


def echo(port: int, first: int, count: int) -> int:
    """Helper: ``count`` DEALERs (identities b"e<k>") that echo what they get, until stdin closes."""
    from ipcluster.transport.zmqfast import recv_frames, send_frames

    ctx = zmq.Context()
    epoll, by_fd = select.epoll(), {}
    for k in range(first, first + count):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, b"e%d" % k)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        send_frames(sock, [b"hello"], 0)
        try:
            recv_frames(sock)  # (a send takes the descriptor's edge: look once, to re-arm it)
        except zmq.Again:
            pass
        fd = sock.getsockopt(zmq.FD)
        by_fd[fd] = sock
        epoll.register(fd, select.EPOLLIN)
    epoll.register(sys.stdin.fileno(), select.EPOLLIN)
    stdin = sys.stdin.fileno()
    while True:
        for fd, _ in epoll.poll(1.0):
            if fd == stdin:
                return 0
            sock = by_fd[fd]
            while True:
                try:
                    frames = recv_frames(sock)
                except zmq.Again:
                    break
                send_frames(sock, frames)
        time.sleep(0.005)  # as hb/sim.py's helpers: batch wake-ups


def router(n: int, helpers: int, window: float, sign: bool) -> dict:
    import psutil

    from ipcluster.transport.zmqfast import recv_frames, send_frames

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    share = -(-n // helpers)
    procs = [subprocess.Popen([sys.executable, __file__, "--echo", str(port), str(k * share), str(min(share, n - k * share))],
                              stdin=subprocess.PIPE) for k in range(helpers) if k * share < n]
    try:
        ids, deadline = [], time.monotonic() + 120
        while len(ids) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(ids)} of {n} DEALERs connected")
            if sock.poll(1000):
                ids.append(recv_frames(sock)[0])
        key, slices = os.urandom(32), max(1, -(-n // SLICE))
        pongs = sent = 0
        me = psutil.Process()
        start = time.monotonic()
        measure_from, cpu0 = start + 3.0, None
        beat = 0
        while True:
            beat += 1
            for s in range(slices):
                due = start + (beat - 1) * PERIOD + s * PERIOD / slices
                while True:
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    if sock.poll(wait * 1000):
                        while True:
                            try:
                                recv_frames(sock)
                            except zmq.Again:
                                break
                            pongs += 1
                payload = b"%d:%f" % (beat, time.monotonic())
                for ident in ids[s * n // slices:(s + 1) * n // slices]:
                    ping = hmac.digest(key, ident + payload, "sha256") if sign else payload
                    send_frames(sock, [ident, ping])
                    sent += 1
            now = time.monotonic()
            if cpu0 is None and now >= measure_from:
                t = me.cpu_times()
                cpu0, t0, pongs0 = t.user + t.system, now, pongs
            elif cpu0 is not None and now - t0 >= window:
                t = me.cpu_times()
                return {"engines": n, "signed": sign, "core_pct": 100 * (t.user + t.system - cpu0) / (now - t0),
                        "pongs_per_s": (pongs - pongs0) / (now - t0)}
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(10)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--echo":
        return echo(*(int(x) for x in sys.argv[2:5]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", type=int, default=1000)
    ap.add_argument("--helpers", type=int, default=4)
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--sign", action="store_true", help="one HMAC-SHA256 per ping")
    args = ap.parse_args()
    res = router(args.engines, args.helpers, args.window, args.sign)
    print(f"bare ROUTER ping loop: {res['engines']} engines{' (signed)' if res['signed'] else ''}: "
          f"{res['core_pct']:.1f}% of a core, {res['pongs_per_s']:.0f} pongs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
