"""Several envelopes in one ZeroMQ message: what waits is sent together.

A *batch* is one multipart message that carries whole, individually signed
envelopes (``wire``'s ``[signature, header, *payloads]``) one after the other::

    [(identity,) BATCH, envelope_1 frames..., envelope_2 frames..., ...]

``BATCH`` is ``b"B"`` followed by each envelope's frame count as a 16-bit
big-endian number.  Its length is odd, so it is never a 32-byte signature:
a receiver tells a batch from a lone envelope by its first frame.  The
``BATCH`` frame is not signed and needs no signature: it only says where each
envelope ends, and each envelope is verified (signature, session, sequence
number) exactly as if it had come alone, so a lying count only makes
envelopes fail their checks.

Nothing waits to be batched: a sender packs only what is queued at the moment
it sends (the client's I/O thread, what the submitting threads handed it; the
controller, what one reactor turn produced for a peer).  A lone envelope is
always sent as it is, never as a batch of one.
"""
from __future__ import annotations

import struct
from typing import Callable, Iterable, Iterator, Optional, Sequence

from ipcluster.transport.wire import MAX_BATCH_ENVELOPES as MAX_ENVELOPES
from ipcluster.transport.wire import SIGNATURE_BYTES, BadMessage

#: The first byte of a batch's first frame.
MARK = b"B"
#: The most frames one envelope in a batch may have (a count is 16 bits).
MAX_ENVELOPE_FRAMES = 64

_COUNT = struct.Struct(">H")


def is_batch(first: bytes) -> bool:
    """Whether a message whose first frame (after any identity) is ``first`` is a batch."""
    return len(first) != SIGNATURE_BYTES and len(first) % 2 == 1 and first[:1] == MARK


def pack(envelopes: Sequence[Sequence[bytes]]) -> list:
    """The frames of one message carrying ``envelopes``: the envelope itself when there is one."""
    if len(envelopes) == 1:
        return list(envelopes[0])
    if not 1 < len(envelopes) <= MAX_ENVELOPES:
        raise ValueError(f"a batch carries 2 to {MAX_ENVELOPES} envelopes, not {len(envelopes)}")
    header = bytearray(MARK)
    frames: list = [header]
    for envelope in envelopes:
        header += _COUNT.pack(len(envelope))
        frames.extend(envelope)
    frames[0] = bytes(header)
    return frames


def unpack(frames: Sequence[bytes]) -> list[list]:
    """The envelopes of a batch (``frames`` without any identity); BadMessage if it is not one."""
    header = bytes(frames[0])
    if not is_batch(header):
        raise BadMessage("not a batch")
    counts = [c for (c,) in _COUNT.iter_unpack(header[1:])]
    if not 1 < len(counts) <= MAX_ENVELOPES:
        raise BadMessage("bad batch", f"{len(counts)} envelopes")
    if any(c < 2 or c > MAX_ENVELOPE_FRAMES for c in counts) or sum(counts) != len(frames) - 1:
        raise BadMessage("bad batch", f"frame counts {sum(counts)} for {len(frames) - 1} frames")
    envelopes = []
    at = 1
    for count in counts:
        envelopes.append(list(frames[at:at + count]))
        at += count
    return envelopes


class Unbatcher:
    """A ROUTER socket's message handler that takes batches too: each envelope of a batch
    goes to ``handler`` as ``[identity, *envelope]``, in order; a malformed batch goes to
    ``on_bad(identity, error)`` and nothing of it is handled."""

    def __init__(self, handler: Callable[[list], None], on_bad: Callable[[bytes, BadMessage], None]) -> None:
        self.handler = handler
        self.on_bad = on_bad
        #: Batches received, and the envelopes in them.
        self.batches = 0
        self.envelopes = 0

    def __call__(self, frames: list) -> None:
        if len(frames) < 2 or not is_batch(frames[1]):
            self.handler(frames)
            return
        identity = frames[0]
        try:
            envelopes = unpack(frames[1:])
        except BadMessage as e:
            self.on_bad(identity, e)
            return
        self.batches += 1
        self.envelopes += len(envelopes)
        for envelope in envelopes:
            envelope.insert(0, identity)
            self.handler(envelope)


def envelopes(frames: Sequence[bytes]) -> list[list]:
    """The envelopes of a message a peer received (no identity): one, or those of a batch.
    Raises BadMessage for a malformed batch."""
    if frames and is_batch(frames[0]):
        return unpack(frames)
    return [list(frames)]


def packed(envelopes: Iterable[Sequence[bytes]], max_size: int, max_envelopes: int = MAX_ENVELOPES) -> Iterator[list]:
    """``envelopes`` grouped into as few messages as fit ``max_size`` bytes and
    ``max_envelopes`` envelopes each, in order (an envelope over ``max_size``
    alone goes alone)."""
    group: list = []
    size = 1  # the batch header's mark
    for envelope in envelopes:
        n = sum(len(f) for f in envelope) + 2
        if group and (size + n > max_size or len(group) >= max_envelopes):
            yield pack(group)
            group, size = [], 1
        group.append(envelope)
        size += n
    if group:
        yield pack(group)


class Outbox:
    """What one ROUTER socket sends to its peers in this reactor turn, sent together at its end.

    ``put(frames)`` (``[identity, *envelope]``) queues; the first put after a
    flush asks ``call_soon(flush)`` (``reactor.callLater(0, ...)``: the next
    turn of the reactor, before it polls again -- no timer delays anything).
    ``flush`` sends each peer's envelopes, in the order they were put, as few
    messages as fit; ``send(frames)`` returns whether the message went out, and
    ``undeliverable(identity, count)`` hears of those that did not.
    """

    def __init__(
        self,
        send: Callable[[list], bool],
        call_soon: Callable[[Callable[[], None]], object],
        max_size: int,
        undeliverable: Optional[Callable[[bytes, int], None]] = None,
    ) -> None:
        self._send = send
        self._call_soon = call_soon
        self.max_size = max_size
        self._undeliverable = undeliverable
        self._queued: dict[bytes, list] = {}
        self._scheduled = False
        #: Messages sent, and envelopes in them (their ratio is the mean batch).
        self.messages = 0
        self.envelopes = 0

    def put(self, frames: Sequence[bytes]) -> bool:
        """Queue one envelope for ``frames[0]``; True (whether it goes out is known at the flush)."""
        queue = self._queued.get(frames[0])
        if queue is None:
            queue = self._queued[frames[0]] = []
        queue.append(frames[1:])
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self.flush)
        return True

    def __len__(self) -> int:
        return sum(len(q) for q in self._queued.values())

    def flush(self) -> None:
        """Send everything queued, per peer in order."""
        self._scheduled = False
        queued, self._queued = self._queued, {}
        for identity, envelopes in queued.items():
            for message in packed(envelopes, self.max_size):
                self.messages += 1
                count = _count(message)
                self.envelopes += count
                if not self._send([identity, *message]) and self._undeliverable is not None:
                    self._undeliverable(identity, count)


def _count(message: list) -> int:
    return (len(message[0]) - 1) // 2 if is_batch(message[0]) else 1
