#!/usr/bin/env python
"""What connection security and replay protection cost: the ZAP handshake, and each message.

    .venv/bin/python bench/security.py                 # about 30 s
    .venv/bin/python bench/security.py --connects 500 --round-trips 20000 --json out.json

Three measurements, each over real ZeroMQ sockets on 127.0.0.1 (no controller, so
that nothing else is in the numbers):

1. **handshake**: a fresh DEALER connects to a ROUTER and gets its first message
   answered, ``--connects`` times: with ZeroMQ's NULL mechanism (no security, what
   ipcluster did before) and with PLAIN checked by ipcluster's ZAP handler
   (``transport.security.ZapHandler``, answered in a thread here; on the reactor in
   the controller).  The difference is what each new engine socket and client pays
   once.
2. **round trip per message** over one established connection, NULL and PLAIN: PLAIN
   authenticates the connection, not the messages, so this should not differ.
3. **codec per message**: encoding and decoding a small ``submit`` with the sender's
   session and sequence number in the signed header, and the replay window check,
   against the same codec with those two fields left out (the version before).
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import zmq

from ipcluster.transport import security
from ipcluster.transport.replay import ReplayWindow
from ipcluster.transport.wire import Codec

KEY = b"b" * 32
IP = "127.0.0.1"


class _Info:
    key = KEY


def zap_thread(context: zmq.Context, stop: threading.Event) -> threading.Thread:
    zap = context.socket(zmq.ROUTER)
    zap.bind(security.ZAP_ENDPOINT)
    handler = security.ZapHandler(KEY)

    def serve():
        try:
            while not stop.is_set():
                if zap.poll(50):
                    reply, _ = handler.answer(zap.recv_multipart())
                    if reply is not None:
                        zap.send_multipart(reply)
        finally:
            zap.close(0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def server(context: zmq.Context, plain: bool) -> tuple:
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    if plain:
        security.configure_server(router, "client")
    port = router.bind_to_random_port(f"tcp://{IP}")
    return router, f"tcp://{IP}:{port}"


def echo_once(router: zmq.Socket) -> None:
    if not router.poll(10_000):
        raise TimeoutError("nothing arrived")
    router.send_multipart(router.recv_multipart())


def handshakes(count: int, plain: bool) -> list:
    context = zmq.Context()
    stop = threading.Event()
    thread = zap_thread(context, stop) if plain else None
    router, address = server(context, plain)
    times = []
    try:
        for _ in range(count):
            dealer = context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            if plain:
                security.configure_client(dealer, _Info)
            t0 = time.perf_counter()
            dealer.connect(address)
            dealer.send(b"hello")
            echo_once(router)
            if not dealer.poll(10_000):
                raise TimeoutError("no answer")
            dealer.recv()
            times.append(time.perf_counter() - t0)
            dealer.close(0)
    finally:
        stop.set()
        router.close(0)
        if thread is not None:
            thread.join(5)
        context.term()
    return times


def round_trips(count: int, plain: bool) -> list:
    context = zmq.Context()
    stop = threading.Event()
    thread = zap_thread(context, stop) if plain else None
    router, address = server(context, plain)
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if plain:
        security.configure_client(dealer, _Info)
    dealer.connect(address)
    frames = Codec(KEY).encode("submit", {"task": "t" * 32, "name": "noop"}, [b"p" * 100])
    times = []
    try:
        for i in range(count + 200):
            t0 = time.perf_counter()
            dealer.send_multipart(frames)
            echo_once(router)
            if not dealer.poll(10_000):
                raise TimeoutError("no answer")
            dealer.recv_multipart()
            if i >= 200:
                times.append(time.perf_counter() - t0)
    finally:
        stop.set()
        dealer.close(0)
        router.close(0)
        if thread is not None:
            thread.join(5)
        context.term()
    return times


class _V1Codec(Codec):
    """The codec as it was before sessions: no ``s``, no ``n`` (for comparison only)."""

    def encode(self, type, fields=None, payloads=(), msg_id=None, session=None):
        header = {"v": 2, "type": type, "id": msg_id or self.new_id()}
        if fields:
            header.update(fields)
        body = [self._packer.pack(header), *payloads]
        return [self.sign(body), *body]


def _best_of(rounds: int, count: int, fn) -> float:
    """The fastest of ``rounds`` runs of ``count`` calls, per call, in microseconds."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / count * 1e6


def codec_cost(count: int, rounds: int = 5) -> dict:
    fields = {"task": "t" * 32, "name": "noop"}
    before, after = _V1Codec(KEY), Codec(KEY, session="s" * 32)
    frames = after.encode("submit", fields, [b"p" * 100])
    decoder = Codec(KEY)
    window = ReplayWindow()
    numbers = iter(range(1, 10**9))
    return {
        "header bytes": {"without s and n": len(before.encode("submit", fields, [b"p" * 100])[1]), "with s and n": len(frames[1])},
        "encode us": {"without s and n": _best_of(rounds, count, lambda: before.encode("submit", fields, [b"p" * 100])),
                      "with s and n": _best_of(rounds, count, lambda: after.encode("submit", fields, [b"p" * 100]))},
        "decode us (with s and n)": _best_of(rounds, count, lambda: decoder.decode(frames)),
        "replay window accept us": _best_of(rounds, count, lambda: window.accept(next(numbers))),
    }


def summary(times: list) -> dict:
    times = sorted(times)
    return {"median_ms": statistics.median(times) * 1e3, "p99_ms": times[int(len(times) * 0.99) - 1] * 1e3, "n": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=300)
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--codec", type=int, default=50_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {
        "handshake": {"NULL": summary(handshakes(args.connects, False)), "PLAIN + ZAP": summary(handshakes(args.connects, True))},
        "round trip": {"NULL": summary(round_trips(args.round_trips, False)),
                       "PLAIN + ZAP": summary(round_trips(args.round_trips, True))},
        "codec": codec_cost(args.codec),
    }
    for part in ("handshake", "round trip"):
        print(f"{part} (connect to first answer)" if part == "handshake" else f"{part} per message (one connection)")
        for mech, s in results[part].items():
            print(f"  {mech:12s} median {s['median_ms']:.3f} ms   p99 {s['p99_ms']:.3f} ms   ({s['n']} samples)")
    print("codec per small submit (best of 5)")
    for name, value in results["codec"].items():
        print(f"  {name}: {json.dumps(value)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
