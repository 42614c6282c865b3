"""Multipart send and receive without pyzmq's Python layer.

pyzmq's ``send_multipart`` wraps every frame in enum flag arithmetic and
Python checks: on this machine it cost 13 us for a 6-frame message where the
underlying Cython ``Socket.send`` with plain int flags costs 2.6 us.  Small
tasks are a handful of small messages, so this is most of the controller's
per-message cost.  Errors are the usual ``zmq.ZMQError``s.

Frames of :data:`ZERO_COPY` bytes or more are sent and received without a
copy (``copy=False``): a large received frame is a writable ``memoryview`` of
the ZeroMQ message's memory, and sending one (or any buffer) hands libzmq the
memory itself.  Smaller frames are copied, which is cheaper than a
``zmq.Frame`` each.  (Don't change a buffer you sent until libzmq is done
with it: ``transport.buffers`` says what that means for task arguments.)
"""
from __future__ import annotations

from typing import Sequence

import zmq


def _base(name: str):
    # The first implementation below pyzmq's sugar Socket: the Cython backend's.
    for cls in zmq.Socket.__mro__[1:]:
        if name in cls.__dict__:
            return cls.__dict__[name]
    return getattr(zmq.Socket, name)


_send = _base("send")
_recv = _base("recv")
_get = _base("get")

NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
#: Frames this large or larger are neither copied on send nor on receipt.
ZERO_COPY = 64 * 1024
#: The first frames of a message (identity, signature, header) are small: always copied.
_COPIED = 2


def send_frames(sock: zmq.Socket, frames: Sequence[bytes], flags: int = NOBLOCK) -> None:
    """Send ``frames`` as one message (``flags``: 0 to block, NOBLOCK by default)."""
    last = len(frames) - 1
    more = flags | SNDMORE
    for i, frame in enumerate(frames):
        _send(sock, frame, more if i < last else flags, len(frame) < ZERO_COPY)


def recv_frames(sock: zmq.Socket, flags: int = NOBLOCK) -> list:
    """Receive one whole message; raises ``zmq.Again`` when none waits (with NOBLOCK)."""
    # Each frame as a zmq.Frame, whose ``more`` is free: getsockopt(RCVMORE) costs an enum
    # lookup in pyzmq (about 2 us a 3-frame message).
    frame = _recv(sock, flags, False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv(sock, flags, False)
        frames.append(frame.bytes if len(frames) < _COPIED or len(frame) < ZERO_COPY else frame.buffer)
    return frames


class Oversize:
    """A message that was over its limits: read and thrown away, never copied whole."""

    __slots__ = ("first", "frames", "size")

    def __init__(self, first: bytes, frames: int, size: int) -> None:
        self.first = first  # the first frame (a ROUTER's: the sender's identity)
        self.frames = frames
        self.size = size


def recv_bounded(sock: zmq.Socket, max_frames: int, max_size: int, flags: int = NOBLOCK):
    """One whole message as a list of frames, or :class:`Oversize` if it has more than
    ``max_frames`` frames or ``max_size`` bytes in all.

    Frames are copied only while the message is within its limits; the rest is
    received without a copy and released at once, so an over-size message
    costs at most about one frame of memory here.  Raises ``zmq.Again`` when
    none waits.  (Each frame is received as a ``zmq.Frame``, whose ``more`` is
    free: ``getsockopt(RCVMORE)`` costs an enum lookup in pyzmq, 1 us a frame.)
    """
    frame = _recv(sock, flags, False)
    frames = [frame.bytes]
    size = len(frames[0])
    while size <= max_size:
        if not frame.more:
            return frames
        if len(frames) >= max_frames:
            break
        frame = _recv(sock, flags, False)
        size += len(frame)
        frames.append(frame.bytes if len(frames) < _COPIED or len(frame) < ZERO_COPY else frame.buffer)
    return _discard(sock, frame, frames, size, flags)


def _discard(sock: zmq.Socket, last, frames: list, size: int, flags: int) -> Oversize:
    count = len(frames)
    first = frames[0]
    frames.clear()
    while last.more:
        last = _recv(sock, flags, False)
        size += len(last)
        count += 1
    return Oversize(first, count, size)


def readable(sock: zmq.Socket) -> bool:
    return bool(_get(sock, EVENTS) & POLLIN)
