"""The task runner: runs one task on the engine's main thread and describes its outcome.

The main thread runs tasks so that a signal (SIGINT) interrupts the running task.  The
runner unpickles ``(fn, args, kwargs)``, calls it with stdout and stderr captured, and
returns the fields and payloads of the task's ``result`` message: the pickled value, or
the pickled exception with a description that never raises.
"""
from __future__ import annotations

import io
import pickle
import sys
import time
import traceback
from typing import Optional, Sequence

import msgpack

from ipcluster import futureinputs, sourcelines
from ipcluster.engine.liveoutput import LiveOutput, LiveStream
from ipcluster.engine.taskqueue import QueuedTask


class EngineStop(BaseException):
    """Raised in the main thread to stop the engine (SIGTERM, SIGINT while idle)."""


def describe(e: BaseException) -> dict:
    """A task's exception as text; never raises, even if the exception's __str__ does."""
    try:
        message = str(e)
    except Exception:
        message = f"<{type(e).__name__}: str() failed>"
    try:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    except Exception:
        tb = ""
    cls = type(e)
    described = {"type": cls.__name__, "message": message, "traceback": tb}
    module = getattr(cls, "__module__", None)
    if isinstance(module, str) and module != "builtins":
        described["module"] = module[:200]  # so a client that cannot rebuild it can still name it
    return described


def unpack(payload: bytes, inputs: Optional[bytes] = None, buffers: Sequence = ()) -> tuple:
    """``(fn, args, kwargs)`` of a task's payload, its source lines restored (``sourcelines``),
    the futures among its arguments replaced by their results (``inputs``, ``futureinputs``).

    The payload is ``(fn, args, kwargs)`` or ``(fn, args, kwargs, extras)``, pickled with
    ``buffers`` out of band (``transport.buffers``).
    """
    loads = _pickle_buffers().loads
    if inputs is None:
        fn, args, kwargs, *rest = loads(payload, buffers)  # (no inputs: a placeholder fails alike)
    else:
        with futureinputs.supplying(msgpack.unpackb(inputs, raw=False)):
            fn, args, kwargs, *rest = loads(payload, buffers)
    if rest and isinstance(rest[0], dict):
        sourcelines.restore(fn, rest[0])
    return fn, args, kwargs


_buffers_module = None


def _pickle_buffers():
    """``ipcluster.transport.buffers``, imported with the first task: an engine starts faster
    without cloudpickle."""
    global _buffers_module
    if _buffers_module is None:
        from ipcluster.transport import buffers

        _buffers_module = buffers
    return _buffers_module


class Running:
    """The task the main thread runs now, as the control thread sees it."""

    __slots__ = ("id", "started", "announced")

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.started = time.monotonic()
        #: Set by the control thread once it has sent ``started`` for this task.
        self.announced = False


class Runner:
    """Runs tasks one at a time; :attr:`current` is the one running (read by the control thread)."""

    def __init__(self) -> None:
        self.current: Optional[Running] = None
        #: The output of the task running (or the last one), for the control thread to stream.
        self.live: Optional[LiveOutput] = None

    def run(self, task: QueuedTask) -> tuple[dict, list[bytes]]:
        """Run ``task``; the fields and the payloads (value, stdout, stderr, then the value's
        out-of-band buffers: ``transport.buffers``) of its result.

        Every failure of the task, KeyboardInterrupt included, is its result; only
        :class:`EngineStop` goes through.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        fields: dict = {"task": task.id, "started": time.time()}
        saved = sys.stdout, sys.stderr
        try:
            try:
                # Inside the try: an interrupt from here on is this task's error, never lost.
                self.live = live = LiveOutput(task.id)
                self.current = Running(task.id)
                sys.stdout, sys.stderr = LiveStream("stdout", stdout, live), LiveStream("stderr", stderr, live)
                fn, args, kwargs = unpack(task.payload, task.inputs, task.buffers)
                live.restart()
                value = fn(*args, **kwargs)
            finally:
                sys.stdout, sys.stderr = saved
                self.current = None
            payload, buffers = _dumps(value)
            fields["ok"] = True
        except EngineStop:
            raise
        except BaseException as e:  # the task's own failure, KeyboardInterrupt included
            fields["ok"] = False
            fields["error"] = describe(e)
            payload, buffers = _pickled_exception(e), []
        fields["finished"] = time.time()
        return fields, [payload, _text(stdout), _text(stderr), *buffers]


#: Values pickled by plain ``pickle`` (the same bytes, without building a cloudpickle pickler).
_PLAIN = frozenset({type(None), bool, int, float, complex})
_SMALL = frozenset({str, bytes})


def _dumps(value) -> tuple:
    """``(pickle, out-of-band buffers)`` of a task's value (``transport.buffers``)."""
    kind = type(value)
    if kind in _PLAIN or kind in _SMALL and len(value) < 4096:
        return pickle.dumps(value, 5), []
    return _pickle_buffers().dumps(value)


def _pickled_exception(e: BaseException) -> bytes:
    try:
        import cloudpickle  # imported by unpack() already

        return cloudpickle.dumps(e)
    except Exception:
        return b""  # the description alone travels


def _text(captured: io.StringIO) -> bytes:
    return captured.getvalue().encode("utf-8", "replace")
