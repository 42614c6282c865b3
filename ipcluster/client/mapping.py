"""``Client.map``: an ordered iterator of results that keeps none it has yielded.

As ``concurrent.futures.Executor.map``: the calls are submitted when ``map`` is
called (with ``buffersize``, at most that many ahead of the consumer, as Python
3.14's ``map`` does); ``timeout`` counts from the call to ``map``, and when it
passes ``__next__`` raises ``TimeoutError``; a task's exception is raised when
its result is reached.  Once the iterator stops early (an exception, a
timeout, ``close()``, or it is dropped), the tasks not yet started are
cancelled on the cluster.  ``chunksize`` > 1 sends that many calls in one task.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable, Iterator, Optional

from ipcluster.client.core import ChunkCall

#: ``submit(fn, args)``: a future; ``cancel_soon(futures)``: ask the controller, do not wait.
Submit = Callable[[Callable, tuple], object]


def map_results(
    submit: Submit,
    cancel_soon: Callable[[list], None],
    fn: Callable,
    iterables: tuple,
    timeout: Optional[float],
    chunksize: int,
    buffersize: Optional[int],
) -> Iterator:
    """Submit the calls (or the first ``buffersize``) now; the iterator of their results."""
    if not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError("chunksize must be a whole number >= 1")
    if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
        raise ValueError("buffersize must be a whole number >= 1 (or None)")
    deadline = None if timeout is None else time.monotonic() + timeout
    calls: Iterable = zip(*iterables)
    if chunksize > 1:
        fn = ChunkCall(fn)
        calls = ((chunk,) for chunk in _chunks(calls, chunksize))
    pending: deque = deque()

    def refill() -> None:
        while buffersize is None or len(pending) < buffersize:
            args = next(calls, None)
            if args is None:
                return
            pending.append(submit(fn, args))

    refill()
    return _results(pending, refill, deadline, chunksize > 1, cancel_soon)


def _results(pending: deque, refill: Callable[[], None], deadline: Optional[float], chunked: bool,
             cancel_soon: Callable[[list], None]) -> Iterator:
    try:
        while pending:
            if chunked:
                chunk = _next_result(pending, deadline)
                refill()
                chunk.reverse()
                while chunk:
                    yield chunk.pop()  # the list keeps only the values not yet yielded
            else:
                # Passed straight out: no name in this frame holds a yielded value.
                yield _next_result(pending, deadline, refill)
    finally:
        cancel_soon([f for f in pending if not f.done()])


def _next_result(pending: deque, deadline: Optional[float], refill: Optional[Callable[[], None]] = None):
    """The first pending future's result, waiting until ``deadline``; it leaves ``pending``
    only once it has its result (a timed-out future stays, to be cancelled)."""
    future = pending[0]
    try:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        value = future.result(left)
        pending.popleft()
        if refill is not None:
            refill()
        return value
    finally:
        del future


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
