"""``client.options(...)``: scheduling options bound once, so every keyword goes to the task.

``Client.submit(fn, /, *args, **kwargs)`` takes six keyword names as its own
options (``engine``, ``engines``, ``after``, ``retries``, ``timeout``,
``after_failed``) and passes every other keyword to ``fn``.  A task that takes
a keyword argument with one of those names gets it through a view::

    client.options(engine="e0").submit(fn, timeout=3)   # fn(timeout=3), pinned to e0
    client.options().submit(fn, engine="v8")            # fn(engine="v8"), load-balanced

The view's ``submit`` and ``map`` pass every keyword to the task; the options
are checked when the view is made.
"""
from __future__ import annotations

from typing import Any, Callable

from ipcluster.client.core import submit_options


class TaskOptions:
    """A client with scheduling options bound: ``submit`` and ``map`` as the client's."""

    def __init__(self, client: Any, given: dict) -> None:
        self._client = client
        self._given = dict(given)
        self._options = submit_options(**self._given)  # TypeError/ValueError now, not at submit

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._given.items())
        return f"<TaskOptions {shown or '(none)'} of {self._client!r}>"

    def options(self, **more: Any) -> "TaskOptions":
        """These options updated with ``more``."""
        return TaskOptions(self._client, {**self._given, **more})

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any):
        """``client.submit`` with these options; every keyword argument goes to ``fn``."""
        return self._client._submit(fn, args, kwargs, self._options)

    def map(self, fn: Callable, /, *iterables: Any, **map_args: Any):
        """``client.map`` with these options (``map_args``: map's own, e.g. ``timeout``, ``chunksize``)."""
        return self._client._map(fn, iterables, self._options, **map_args)
