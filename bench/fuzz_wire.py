#!/usr/bin/env python
"""A coverage-guided fuzz run of the wire decoder (atheris, libFuzzer), bounded.

    .venv/bin/pip install atheris
    .venv/bin/python bench/fuzz_wire.py                      # 200,000 inputs, at most 120 s
    .venv/bin/python bench/fuzz_wire.py --runs 2000000 --seconds 1800 --corpus /tmp/wire-corpus

Each input becomes a list of frames and goes through what the controller and
the clients do with bytes from the network:

* ``Codec.decode`` on the raw frames (the signature fails almost always: the
  fuzzer cannot forge HMACs), and on the same header bytes *correctly signed*
  (so the fuzzer explores everything behind the signature: msgpack, version,
  type, session, sequence, schema), with each socket's accepted types;
* ``ClientCore.received`` on the signed frames (a client must survive any
  message the controller could sign);
* ``ReplayWindow.accept`` with the numbers the input spells;
* the ZAP handler's ``answer`` on the frames as a ZAP request.

The only exception allowed out of the decoder is ``BadMessage``; anything
else is a crash, which libFuzzer reports (with the input that caused it) and
exits non-zero.  ``tests/test_fuzz.py`` runs this script with a small bound.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["ipcluster"]):
    from ipcluster.client.core import ClientCore
    from ipcluster.transport.replay import ReplayWindow
    from ipcluster.transport.security import ZapHandler
    from ipcluster.transport.wire import ACCEPTS, PEER_ACCEPTS, SCHEMAS, BadMessage, Codec

KEY = b"fuzz-key-0123456789abcdef0123456"
CODEC = Codec(KEY)
ACCEPT_SETS = [None, *ACCEPTS.values(), *PEER_ACCEPTS.values()]
ZAP = ZapHandler(KEY)


def frames_of(data: bytes) -> tuple:
    """``(accept set, frames)`` from an input: ``[accept][count]``, then ``count`` frames as
    ``[length: 2 bytes][bytes]``, then the rest as the last frame."""
    if len(data) < 2:
        return None, [data]
    accept, count, rest = ACCEPT_SETS[data[0] % len(ACCEPT_SETS)], data[1] % 8, data[2:]
    frames = []
    for _ in range(count):
        length = int.from_bytes(rest[:2], "big") % 128
        frames.append(rest[2 : 2 + length])
        rest = rest[2 + length :]
    return accept, [*frames, rest]


def as_input(accept_index: int, frames: list) -> bytes:
    """The input that :func:`frames_of` reads back as ``frames`` (the last one is the rest)."""
    head = b"".join(len(f).to_bytes(2, "big") + f for f in frames[:-1])
    return bytes([accept_index, len(frames) - 1]) + head + frames[-1]


def seeds() -> list:
    """Real messages of every type, as inputs: the header last (it is what gets signed first)."""
    out = []
    for mtype, schema in SCHEMAS.items():
        fields = {name: _sample(types) for name, types in schema.fields.items()}
        signature, header, *payloads = CODEC.encode(mtype, fields, [b"p"] * schema.payloads, session="s" * 32)
        out.append(as_input(0, [*payloads, header]))
        out.append(as_input(1, [signature, header, *payloads]))
    return out


def _sample(types: tuple):
    return {(bool,): True, (int,): 7, (int, float): 0.5, (dict,): {"timeout": 1.0}}.get(types, "e0")


def decode(frames: list, accept) -> None:
    try:
        CODEC.decode(frames, accept)
    except BadMessage:
        pass


def one_input(data: bytes) -> None:
    accept, frames = frames_of(data)
    decode(frames, accept)
    # The same frames with the last one as a correctly signed header: what lies behind the signature.
    body = [frames[-1], *frames[:-1][:3]]
    signed = [CODEC.sign(body), *body]
    decode(signed, accept)
    ClientCore(KEY).received(signed)
    window = ReplayWindow()
    for i in range(0, min(len(data), 32), 4):
        window.accept(int.from_bytes(data[i : i + 4], "big", signed=True) % 5000 - 10)
    ZAP.answer(frames)


def main(argv: list) -> None:
    parser = argparse.ArgumentParser(description="Fuzz the ipcluster wire decoder (bounded).")
    parser.add_argument("--runs", type=int, default=200_000, help="inputs to try (default 200,000)")
    parser.add_argument("--seconds", type=int, default=120, help="stop after this long at most (default 120)")
    parser.add_argument("--corpus", help="a directory to keep the interesting inputs in (default: a new temporary one); "
                        "real messages of every type are written there as seeds")
    args = parser.parse_args(argv[1:])
    libfuzzer = [argv[0], f"-runs={args.runs}", f"-max_total_time={args.seconds}", "-rss_limit_mb=2048",
                 "-print_final_stats=1", "-use_value_profile=1"]
    corpus = args.corpus or tempfile.mkdtemp(prefix="ipcluster-fuzz-")
    os.makedirs(corpus, exist_ok=True)
    for i, seed in enumerate(seeds()):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(seed)
    libfuzzer.append(corpus)
    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
