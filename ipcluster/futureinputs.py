"""Futures as task inputs: a TaskFuture in a task's arguments becomes its result on the engine.

A :class:`~ipcluster.client.future.TaskFuture` pickles (only while a task is
pickled, inside :func:`collecting`) as a placeholder that names its task; the
client makes the new task depend on it (``after``) and sends its id in the
submit's ``inputs``.  The controller forwards the dependency's result frames to
the engine with the task (a ``task_in`` message: nothing is unpickled on the
way, and the value never goes back through the client).  On the engine,
:func:`supplying` makes each placeholder unpickle as that result.  The
placeholders may be anywhere: nested in lists, dicts, tuples, in an object's
attributes -- wherever pickle goes.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Mapping, Optional

_local = threading.local()


class collecting:
    """``with collecting() as found:`` while a task is pickled on this thread: the futures met,
    in order (no repeats).

    Nested, the inner one collects into the outer one's list (the client's
    executor and its core both want them).  (A class, not a generator: this
    runs twice at each submit.)"""

    __slots__ = ("_previous",)

    def __enter__(self) -> list:
        self._previous = previous = getattr(_local, "collected", None)
        _local.collected = found = previous if previous is not None else []
        return found

    def __exit__(self, *exc_info: object) -> None:
        _local.collected = self._previous


def reduce_future(future: Any) -> tuple:
    """``TaskFuture.__reduce__``: the placeholder (a TypeError outside :func:`collecting`)."""
    found: Optional[list] = getattr(_local, "collected", None)
    if found is None:
        raise TypeError(
            f"a TaskFuture ({future.task_id}) can be pickled only in the arguments of a task submitted "
            "by the client: pass future.result() to anything else"
        )
    if all(f is not future for f in found):
        found.append(future)
    return (_input, (future.task_id,))


class _Supplied:
    """The results a task takes, by task id: pickled until first asked for."""

    def __init__(self, frames: Mapping[str, bytes]) -> None:
        self.frames = dict(frames)
        self.values: dict = {}


@contextlib.contextmanager
def supplying(frames: Optional[Mapping[str, bytes]]) -> Iterator[None]:
    """On the engine, while a task's payload is unpickled: the results its placeholders stand for."""
    previous = getattr(_local, "supplied", None)
    _local.supplied = _Supplied(frames or {})
    try:
        yield
    finally:
        _local.supplied = previous


class MissingInput(LookupError):
    """A task's argument stands for a result that did not come with it."""


def _input(task_id: str) -> Any:
    supplied: Optional[_Supplied] = getattr(_local, "supplied", None)
    if supplied is None or task_id not in supplied.frames:
        raise MissingInput(f"the result of task {task_id}, an argument of this task, did not come with it")
    if task_id not in supplied.values:
        from ipcluster.transport import buffers  # the engine imports it with its first task (runner.unpack)

        supplied.values[task_id] = buffers.loads(supplied.frames[task_id])
    return supplied.values[task_id]
