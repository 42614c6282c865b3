"""Throw bad input at every controller port: ``python tests/flood.py CONNECTION_FILE COUNT CANARY``.

A bounded loop: COUNT messages per port, cycling through garbage frames,
wrongly signed envelopes (one carries a pickled function that would create
CANARY if anything ever ran it), truncated envelopes and fake pongs.  Each
port gets its own DEALER with a random identity.  Prints the number sent.

The flooder presents the cluster's ZAP credentials (as someone who saw the
PLAIN password on the network would) but does not have the key: without the
password, nothing it sends would reach the controller at all.  Each port gets
only messages whose frames fit its ``MAXMSGSIZE`` (a larger frame makes libzmq
drop the connection, and the messages queued behind it).
"""
from __future__ import annotations

import os
import sys

import cloudpickle
import zmq

from ipcluster import connection
from ipcluster.transport import security, wire
from ipcluster.transport.wire import Codec


def touch(path):
    with open(path, "w") as f:
        f.write("executed!")


def messages(canary: str):
    liar = Codec(b"not the controller's key")
    evil = cloudpickle.dumps((touch, (canary,), {}))
    signed_wrong = [
        liar.encode("submit", {"task": "evil", "engine": "f0"}, [evil]),
        liar.encode("register", {"engine": "intruder", "instance": "x", "host": "h", "pid": 1}),
        liar.encode("control", {"engine": "f0", "verb": "exit", "args": {}}),
        liar.encode("result", {"task": "evil", "ok": True}, [b"", b"", b""]),
        liar.encode("pong", {"beat": 1, "instance": "x"}),
    ]
    while True:
        yield [os.urandom(16)]
        yield [os.urandom(32), os.urandom(40), os.urandom(8)]
        for frames in signed_wrong:
            yield frames
        yield [os.urandom(32), signed_wrong[0][1]]  # right header, forged signature
        yield [b""]
        yield [os.urandom(32)] * 7


def main(argv):
    path, count, canary = argv[1], int(argv[2]), argv[3]
    info = connection.read(path)
    ctx = zmq.Context()
    sent = 0
    for channel in connection.CHANNELS:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 5000)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.SNDTIMEO, 30000)
        security.configure_client(sock, info)
        sock.connect(info.address(channel))
        largest = wire.limits(channel, info.max_message_size).frame
        fitting = (frames for frames in messages(canary) if max(map(len, frames)) <= largest)
        for _, frames in zip(range(count), fitting):
            sock.send_multipart(frames)
            sent += 1
        sock.close()
    ctx.term()
    print(sent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
