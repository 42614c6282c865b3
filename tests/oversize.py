"""Send over-size messages to controller ports: ``python tests/oversize.py CONNECTION_FILE [options]``.

Each message is ``--frames`` frames of ``--frame-mb`` MiB (one buffer, sent
without copying, so this process holds it once).  Without ``--credentials`` the
sender is keyless: it never passes the controller's ZAP handshake, so its
messages stay queued here.  With it, it presents the cluster's PLAIN password
(as an eavesdropper could) but still has no signing key.  Bounded: it sends
``--messages`` messages per port, holds its connections ``--hold`` seconds, and
exits.  Prints ``SENDING`` first and ``OFFERED n QUEUED m`` at the end (a keyless
socket whose handshake failed takes nothing to send).
"""
from __future__ import annotations

import argparse
import sys
import time

import zmq

from ipcluster import connection
from ipcluster.transport import security


def main(argv: list) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("connection_file")
    parser.add_argument("--ports", default="task,client")
    parser.add_argument("--messages", type=int, default=3)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--frame-mb", type=int, default=200)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--credentials", action="store_true")
    args = parser.parse_args(argv[1:])
    info = connection.read(args.connection_file)
    frame = bytearray(args.frame_mb * 1024 * 1024)
    ctx = zmq.Context()
    socks = []
    for channel in args.ports.split(","):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        if args.credentials:
            security.configure_client(sock, info)
        sock.connect(info.address(channel))
        socks.append(sock)
    # A keyless DEALER whose handshake failed has no pipe to queue into: it may take nothing.
    # So keep offering each message, without blocking, until it is taken or time is up.
    deadline = time.monotonic() + args.hold
    queued = offered = 0
    print("SENDING", flush=True)
    for sock in socks:
        for _ in range(args.messages):
            offered += 1
            while time.monotonic() < deadline:
                try:
                    sock.send_multipart([frame] * args.frames, flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    time.sleep(0.05)
                    continue
                queued += 1
                break
    time.sleep(max(0.0, deadline - time.monotonic()))
    print(f"OFFERED {offered} QUEUED {queued}", flush=True)
    for sock in socks:
        sock.close(0)
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
