#!/usr/bin/env python
"""What CurveZMQ costs against PLAIN (and NULL), per message, over real sockets on 127.0.0.1.

    .venv/bin/python bench/curve.py                      # about a minute
    .venv/bin/python bench/curve.py --round-trips 20000 --big-mb 100 --big-count 3 --json out.json

For each mechanism (``null``: no security; ``plain``: what a loopback controller uses;
``curve``: what a controller on any other address uses, ``transport.security``'s keys and
ZAP handler) one DEALER talks to one ROUTER that echoes:

1. **handshake**: connect and get a first message echoed, ``--connects`` times;
2. **round trip, one by one**: a signed ``submit`` of 100 payload bytes sent and echoed,
   the next only after the previous came back (latency, not throughput);
3. **100 MB payload**: one message of ``--big-mb`` MB sent and echoed (CURVE encrypts and
   authenticates every byte twice per round trip: out and back).

No controller is involved, so the numbers are the mechanism's alone.  The ZAP handler
runs in a thread here (on the reactor in the controller).
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import zmq

from ipcluster.transport import security
from ipcluster.transport.wire import Codec

KEY = b"b" * 32
IP = "127.0.0.1"
MECHANISMS = ("null", "plain", "curve")


class Pair:
    """A ROUTER (with a ZAP thread for PLAIN and CURVE) and a way to make DEALERs for it."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.context = zmq.Context()
        self.keys = security.CurveKeys.generate() if mechanism == "curve" else None
        self.info = _Info(self.keys)
        self.stop = threading.Event()
        self.thread = None
        if mechanism != "null":
            self.zap = self.context.socket(zmq.ROUTER)
            self.zap.bind(security.ZAP_ENDPOINT)
            self.thread = threading.Thread(target=self._serve_zap, daemon=True)
            self.thread.start()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        if mechanism != "null":
            security.configure_server(self.router, "client", self.keys)
        self.address = f"tcp://{IP}:{self.router.bind_to_random_port(f'tcp://{IP}')}"

    def _serve_zap(self) -> None:
        handler = security.ZapHandler(KEY, self.keys)
        try:
            while not self.stop.is_set():
                if self.zap.poll(50):
                    reply, _ = handler.answer(self.zap.recv_multipart())
                    if reply is not None:
                        self.zap.send_multipart(reply)
        finally:
            self.zap.close(0)

    def dealer(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.mechanism != "null":
            security.configure_client(sock, self.info)
        sock.connect(self.address)
        return sock

    def echo(self) -> None:
        if not self.router.poll(60_000):
            raise TimeoutError("nothing arrived")
        self.router.send_multipart(self.router.recv_multipart(copy=False), copy=False)

    def close(self) -> None:
        self.stop.set()
        self.router.close(0)
        if self.thread is not None:
            self.thread.join(5)
        self.context.term()


class _Info:
    key = KEY

    def __init__(self, curve) -> None:
        self.curve = curve


def _answer(dealer: zmq.Socket) -> None:
    if not dealer.poll(60_000):
        raise TimeoutError("no answer")
    dealer.recv_multipart(copy=False)


def handshakes(mechanism: str, count: int) -> list:
    pair = Pair(mechanism)
    times = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            dealer = pair.dealer()
            dealer.send(b"hello")
            pair.echo()
            _answer(dealer)
            times.append(time.perf_counter() - t0)
            dealer.close(0)
    finally:
        pair.close()
    return times


def round_trips(mechanism: str, count: int, frames: list) -> list:
    pair = Pair(mechanism)
    dealer = pair.dealer()
    times = []
    try:
        for i in range(count + min(100, count)):  # the first 100 warm up
            t0 = time.perf_counter()
            dealer.send_multipart(frames, copy=False)
            pair.echo()
            _answer(dealer)
            if i >= min(100, count):
                times.append(time.perf_counter() - t0)
    finally:
        dealer.close(0)
        pair.close()
    return times


def summary(times: list) -> dict:
    times = sorted(times)
    return {
        "n": len(times),
        "median_us": statistics.median(times) * 1e6,
        "p99_us": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6,
        "mean_us": statistics.fmean(times) * 1e6,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connects", type=int, default=200)
    p.add_argument("--round-trips", type=int, default=5000)
    p.add_argument("--big-mb", type=int, default=100, help="size of the large payload, MB (default 100)")
    p.add_argument("--big-count", type=int, default=3, help="round trips of the large payload (default 3)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    small = Codec(KEY).encode("submit", {"task": "t" * 32}, [b"p" * 100])
    big = Codec(KEY).encode("submit", {"task": "t" * 32}, [b"\x01" * (args.big_mb * 1_000_000)])
    out: dict = {}
    for mechanism in MECHANISMS:
        row = {
            "handshake": summary(handshakes(mechanism, args.connects)),
            "round_trip": summary(round_trips(mechanism, args.round_trips, small)),
            "big_round_trip": summary(round_trips(mechanism, args.big_count, big)),
        }
        row["big_MB_per_s"] = 2 * args.big_mb / (row["big_round_trip"]["median_us"] / 1e6)
        out[mechanism] = row
        print(f"{mechanism:6} handshake median {row['handshake']['median_us']:8.0f} us | "
              f"round trip median {row['round_trip']['median_us']:7.1f} us p99 {row['round_trip']['p99_us']:7.1f} us | "
              f"{args.big_mb} MB round trip {row['big_round_trip']['median_us'] / 1e3:7.0f} ms "
              f"({row['big_MB_per_s']:.0f} MB/s)", flush=True)
    for name in ("handshake", "round_trip", "big_round_trip"):
        base = out["plain"][name]["median_us"]
        print(f"curve / plain, {name}: {out['curve'][name]['median_us'] / base:.2f}x "
              f"(+{out['curve'][name]['median_us'] - base:.1f} us)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
