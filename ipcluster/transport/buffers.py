"""Pickles with out-of-band buffers: large buffers travel as ZeroMQ frames of their own.

:func:`dumps` pickles with protocol 5 and takes every contiguous buffer of at
least :data:`THRESHOLD` bytes out of the pickle -- numpy arrays (their own
``__reduce_ex__``), ``bytes``, ``bytearray`` and contiguous ``memoryview`` (our
reducer) -- up to :data:`MAX_BUFFERS` of them; the rest stays in-band.  The
pickle and the buffers go on the wire as separate frames (``wire``, header
field ``bufs``) and are sent and received without copies (``zmqfast``), so a
100 MB array is never copied by pickle, the controller or the engine's thread
hand-off.  :func:`loads` rebuilds the value over the received frames: a numpy
array received this way is a writable view of the frame's memory.

The store and the results kept for futures-as-inputs hold a value as one
blob: :func:`join` and :func:`split` (``transport.joined``, which the
controller uses without importing cloudpickle).
"""
from __future__ import annotations

import io
import pickle
from typing import Any, Sequence

import cloudpickle

from ipcluster.transport.joined import join, split  # noqa: F401 (part of this module's API)

#: Buffers smaller than this stay inside the pickle (a frame costs more than a small copy).
THRESHOLD = 64 * 1024
#: Out-of-band buffers in one message at most; any further ones stay in-band.
MAX_BUFFERS = 32


def _rebuild_memoryview(buf) -> memoryview:
    return memoryview(buf)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, with ``bytes``, ``bytearray`` and ``memoryview`` as pickle buffers."""

    def reducer_override(self, obj: Any):
        kind = type(obj)
        if kind is bytes or kind is bytearray:
            if len(obj) >= THRESHOLD:
                return kind, (pickle.PickleBuffer(obj),)
        elif kind is memoryview:
            if obj.nbytes >= THRESHOLD and obj.contiguous:
                return _rebuild_memoryview, (pickle.PickleBuffer(obj),)
            return _rebuild_memoryview, (obj.tobytes(),)
        return super().reducer_override(obj)


def dumps(obj: Any) -> tuple[bytes, list]:
    """``(pickle, buffers)``: protocol 5, large buffers out of band (as memoryviews, not copies)."""
    buffers: list = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()  # raises BufferError for a non-contiguous one: then it stays in-band
        if view.nbytes < THRESHOLD or len(buffers) >= MAX_BUFFERS:
            return True
        buffers.append(view)
        return False

    out = io.BytesIO()
    pickler = _Pickler(out, protocol=5, buffer_callback=_guarded(out_of_band))
    pickler.dump(obj)
    return out.getvalue(), buffers


def _guarded(callback):
    def call(buf: pickle.PickleBuffer) -> bool:
        try:
            return callback(buf)
        except BufferError:
            return True
    return call


def loads(payload, buffers: Sequence = ()) -> Any:
    """The value of :func:`dumps`'s ``(pickle, buffers)``; without buffers, ``payload`` may be a
    :func:`join`'s blob too (a result or task payload read back from the store)."""
    if not buffers:
        payload, buffers = split(payload)
    return pickle.loads(payload, buffers=buffers)
