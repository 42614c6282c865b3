"""A pickle and its out-of-band buffers as one blob, for the store and futures-as-inputs.

The blob is the pickle itself when there are no buffers, else a msgpack array
``[pickle, *buffers]``: a pickle of protocol 2 or later starts with ``0x80``, a
msgpack array never does, so the two never mix.  Joining copies; the controller
joins only results small enough to be stored (``--store-max-result``) or taken
as another task's input.
"""
from __future__ import annotations

from typing import Any, Sequence

import msgpack


def join(payload, buffers: Sequence) -> bytes:
    """One blob for a pickle and its buffers (the pickle itself when there are none)."""
    if not buffers:
        return payload
    return msgpack.packb([bytes(payload), *(bytes(b) for b in buffers)], use_bin_type=True)


def split(blob) -> tuple[Any, list]:
    """``(pickle, buffers)`` of a :func:`join`'s blob."""
    if not blob or bytes(blob[:1]) == b"\x80":
        return blob, []
    parts = msgpack.unpackb(blob, raw=False)
    return parts[0], parts[1:]


