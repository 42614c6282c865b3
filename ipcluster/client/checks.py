"""What ``submit`` checks on the client's side: its options, and the task's name.

The controller checks the same again (``scheduler/submission.py``); here they
give a clear ``TypeError``/``ValueError`` before anything is sent.
"""
from __future__ import annotations

from typing import Callable

from ipcluster.limits import MAX_NAME, MAX_RETRIES, MAX_SECONDS, is_retries, is_seconds, is_text


def _name(fn: Callable) -> str:
    """What the controller shows of a task: its function's name, as printable text."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        name = type(fn).__name__
    return name[:MAX_NAME] if is_text(name[:MAX_NAME], MAX_NAME) else repr(name)[:MAX_NAME]


def _engines(engines) -> list:
    if isinstance(engines, str):
        raise TypeError("engines= takes a list of engine ids")
    return [str(e) for e in engines]


def _retries(retries) -> int:
    if not is_retries(retries):
        raise ValueError(f"retries must be a whole number from 0 to {MAX_RETRIES}")
    return retries


def _timeout(timeout) -> float:
    timeout = float(timeout)
    if not (is_seconds(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, at most {MAX_SECONDS:.0f}")
    return timeout


def _after_failed(after_failed) -> str:
    if after_failed not in ("fail", "run"):
        raise ValueError("after_failed must be 'fail' or 'run'")
    return after_failed


#: Each submit option and the check that makes its wire value (or raises TypeError/ValueError).
_OPTION_CHECKS = {
    "engine": str,
    "engines": _engines,
    "after": lambda after: [_task_id(t) for t in after],
    "retries": _retries,
    "timeout": _timeout,
    "after_failed": _after_failed,
}


#: The keyword arguments ``Client.submit`` takes as scheduling options (not the task's).
OPTION_NAMES = tuple(_OPTION_CHECKS)


def take_options(kwargs: dict) -> dict:
    """Remove submit's own option names from ``kwargs`` (the task's keyword arguments); them."""
    return {name: kwargs.pop(name) for name in OPTION_NAMES if name in kwargs}


def submit_options(engine=None, engines=None, after=None, retries=None, timeout=None, after_failed=None) -> dict:
    """The scheduling fields of a submit request, checked on this side for clear errors."""
    if engine is not None and engines is not None:
        raise TypeError("give engine= or engines=, not both")
    given = {"engine": engine, "engines": engines, "after": after or None, "retries": retries,
             "timeout": timeout, "after_failed": after_failed}
    return {name: _OPTION_CHECKS[name](value) for name, value in given.items() if value is not None}


def _task_id(task) -> str:
    task_id = getattr(task, "task_id", task)
    if not isinstance(task_id, str):
        raise TypeError(f"after= takes futures or task ids, not {task!r}")
    return task_id


class ChunkCall:
    """Runs ``fn`` over a chunk of argument tuples on an engine (``map(chunksize=...)``)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "chunk")

    def __call__(self, chunk: list) -> list:
        return [self.fn(*args) for args in chunk]
