"""What the blocking client's I/O thread does with the frames the calling threads hand it.

The calling threads put whole envelopes on an inproc pipe (``Client._send``);
the I/O thread takes everything waiting there at once and sends it to the
controller as few messages as fit (``transport.batch``): many submits made
while it was busy go as one batch, and a lone request goes as it is, at once
-- nothing waits to be batched.
"""
from __future__ import annotations

import zmq

from ipcluster.transport.batch import MAX_ENVELOPES, packed
from ipcluster.transport.zmqfast import recv_frames, send_frames

#: What a calling thread sends on the pipe to stop the I/O thread.
CLOSE = [b"close"]


def forward_waiting(pipe: zmq.Socket, dealer: zmq.Socket, max_size: int, limit: int = 4 * MAX_ENVELOPES) -> bool:
    """Send on ``dealer`` what waits on ``pipe`` (at most ``limit`` envelopes this call), batched.

    Returns False when a :data:`CLOSE` was among them (what came before it
    is sent first).
    """
    waiting = []
    open_ = True
    while len(waiting) < limit:
        try:
            frames = recv_frames(pipe)
        except zmq.Again:
            break
        if frames == CLOSE:
            open_ = False
            break
        waiting.append(frames)
    for message in packed(waiting, max_size):
        send_frames(dealer, message, 0)
    return open_
