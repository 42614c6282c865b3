"""Pickles with out-of-band buffers: large buffers travel as ZeroMQ frames of their own.

:func:`dumps` pickles with protocol 5 and takes every contiguous buffer of at
least :data:`THRESHOLD` bytes out of the pickle -- numpy arrays (their own
``__reduce_ex__``) and contiguous ``memoryview`` anywhere in the value,
``bytes`` and ``bytearray`` down to :data:`WRAP_DEPTH` levels of tuples, lists
and dicts -- up to :data:`MAX_BUFFERS` of them; the rest stays in-band.  The
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
from types import FunctionType
from typing import Any, Mapping, Optional, Sequence

import cloudpickle

from ipcluster.transport.joined import join, split  # noqa: F401 (part of this module's API)

#: Buffers smaller than this stay inside the pickle (a frame costs more than a small copy).
THRESHOLD = 64 * 1024
#: Out-of-band buffers in one message at most; any further ones stay in-band.
MAX_BUFFERS = 32


def _rebuild_memoryview(buf) -> memoryview:
    return memoryview(buf)


class _OutOfBand:
    """A large ``bytes`` or ``bytearray`` pickled as a pickle buffer (the C pickler saves those
    types itself, before any ``reducer_override``): it unpickles as the original type."""

    __slots__ = ("data",)

    def __init__(self, data) -> None:
        self.data = data

    def __reduce_ex__(self, protocol):
        return type(self.data), (pickle.PickleBuffer(self.data),)


#: How deep into tuples, lists and dicts :func:`dumps` looks for large ``bytes``/``bytearray``
#: (``(fn, args, kwargs)``: their items are at depth 2); deeper ones stay in-band.
WRAP_DEPTH = 3


def _wrapped(obj: Any, depth: int = WRAP_DEPTH) -> Any:
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        return _OutOfBand(obj) if len(obj) >= THRESHOLD else obj
    if depth <= 0:
        return obj
    if kind is tuple or kind is list:
        items = [_wrapped(item, depth - 1) for item in obj]
        if any(a is not b for a, b in zip(items, obj)):
            return kind(items)
    elif kind is dict:
        items = {k: _wrapped(v, depth - 1) for k, v in obj.items()}
        if any(items[k] is not v for k, v in obj.items()):
            return items
    return obj


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, with ``memoryview`` as a pickle buffer, and functions already pickled
    (``known``: function -> its cloudpickle) put in as those pickles."""

    known: Mapping = {}

    def reducer_override(self, obj: Any):
        kind = type(obj)
        if kind is memoryview:
            if obj.nbytes >= THRESHOLD and obj.contiguous:
                return _rebuild_memoryview, (pickle.PickleBuffer(obj),)
            return _rebuild_memoryview, (obj.tobytes(),)
        if kind is FunctionType and obj in self.known:
            return pickle.loads, (self.known[obj],)
        return super().reducer_override(obj)


def dumps(obj: Any, known: Optional[Mapping] = None) -> tuple[bytes, list]:
    """``(pickle, buffers)``: protocol 5, large buffers out of band (as memoryviews, not copies).

    ``known`` maps functions to their own cloudpickles (made by the caller, who knows they
    are still what pickling the function would give): each is put in as it is, not pickled
    again -- unless a function pickled by value shares its globals (cloudpickle gives such
    functions one globals dict on the other side), then ``obj`` is pickled as usual.
    """
    if known:
        payload, buffers, pickler = _dump(obj, known)
        if not any(id(fn.__globals__) in pickler.globals_ref for fn in known):
            return payload, buffers
    payload, buffers, _ = _dump(obj, None)
    return payload, buffers


def _dump(obj: Any, known: Optional[Mapping]) -> tuple[bytes, list, _Pickler]:
    buffers: list = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()  # raises BufferError for a non-contiguous one: then it stays in-band
        if view.nbytes < THRESHOLD or len(buffers) >= MAX_BUFFERS:
            return True
        buffers.append(view)
        return False

    out = io.BytesIO()
    pickler = _Pickler(out, protocol=5, buffer_callback=_guarded(out_of_band))
    if known:
        pickler.known = known
    pickler.dump(_wrapped(obj))
    return out.getvalue(), buffers, pickler


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
