"""``Client.map`` without a ``chunksize``: chunks sized by measured task time.

The function is pickled once per map (:class:`RunChunk` carries its bytes;
an engine unpickles it once and keeps it for the chunks that follow).  The
items are taken from the iterables when ``map`` is called, as
``Executor.map`` does; the chunks are submitted as results come back, with at
most :data:`WINDOW_PER_ENGINE` chunks in flight per engine:

* the first chunks hold one item each, so a map of a few long calls uses
  every engine at once;
* each chunk reports how long its calls took on the engine; the next chunk's
  size aims at :data:`TARGET_SECONDS` of work, grows at most
  :data:`GROWTH` times over the largest so far, and stays under an even share
  of what is left (``remaining / window``), so the last chunks are small and
  every engine finishes at about the same time.

So a map of 100,000 no-ops goes in a few dozen tasks while a map of ten 1 s
calls goes in ten.  Results are yielded in order; a call's exception is raised
when its item is reached (the chunk's earlier results are yielded first); when
the iterator stops early, the chunks not started are cancelled.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Callable, Iterator, Optional

import cloudpickle

#: What a chunk's calls should take on an engine, in seconds.
TARGET_SECONDS = 0.02
#: How much larger than the largest chunk so far the next may be.
GROWTH = 4
#: Chunks in flight per engine (one running, one waiting there).
WINDOW_PER_ENGINE = 2
#: Engines assumed at least (a map started while engines still come up).
MIN_ENGINES = 2
#: Unpickled functions an engine keeps, by their pickled bytes.
KEEP_FUNCTIONS = 8

_functions: "collections.OrderedDict[bytes, Callable]" = collections.OrderedDict()
_functions_lock = threading.Lock()


def _function(pickled: bytes) -> Callable:
    """The function pickled as ``pickled``: unpickled once per engine and map, then kept."""
    with _functions_lock:
        fn = _functions.get(pickled)
        if fn is not None:
            _functions.move_to_end(pickled)
            return fn
    fn = cloudpickle.loads(pickled)
    with _functions_lock:
        _functions[pickled] = fn
        while len(_functions) > KEEP_FUNCTIONS:
            _functions.popitem(last=False)
    return fn


class RunChunk:
    """Runs a map's function (pickled once) over a chunk of argument tuples, on an engine.

    Returns ``(seconds, values)``: the time the calls took, and their values.  A
    call that raises stops the chunk; the values before it travel on the
    exception (``ipcluster_partial``), so the client yields them first.
    """

    def __init__(self, pickled: bytes, name: str) -> None:
        self.pickled = pickled
        self.__name__ = name

    def __call__(self, chunk: list) -> tuple:
        fn = _function(self.pickled)
        values: list = []
        started = time.perf_counter()
        try:
            for args in chunk:
                values.append(fn(*args))
        except Exception as e:
            e.ipcluster_partial = values
            raise
        return time.perf_counter() - started, values


class AdaptiveMap:
    """The state of one adaptive map: what is submitted, what is in flight, how large chunks get."""

    def __init__(self, submit: Callable, cancel_soon: Callable[[list], None], fn: Callable, items: list,
                 engines: int) -> None:
        self._submit = submit
        self._cancel_soon = cancel_soon
        self._call = RunChunk(cloudpickle.dumps(fn), getattr(fn, "__name__", "map"))
        self._items = items
        self._next = 0  # the first item not submitted
        self._window = WINDOW_PER_ENGINE * max(MIN_ENGINES, engines)
        self._in_flight = 0
        self._largest = 1
        self._per_item: Optional[float] = None  # seconds a call takes, as measured
        self._cond = threading.Condition()
        self._chunks: collections.deque = collections.deque()  # (future, items) in item order
        self._pumping = False
        self._closed = False
        self._error: Optional[BaseException] = None
        #: Chunks submitted, and their sizes (for the curious and the tests).
        self.sizes: list[int] = []

    # -- submitting -----------------------------------------------------------------------

    def _size(self) -> int:
        remaining = len(self._items) - self._next
        if self._per_item is None:
            return 1
        fit = TARGET_SECONDS / max(self._per_item, 1e-9)
        share = math.ceil(remaining / self._window)
        return max(1, min(int(fit), GROWTH * self._largest, share))

    def _plan(self) -> list:
        """The chunks to submit now (called with the lock held)."""
        plan = []
        while not self._closed and self._next < len(self._items) and self._in_flight < self._window:
            size = self._size()
            plan.append(self._items[self._next:self._next + size])
            self._next += size
            self._in_flight += 1
            self._largest = max(self._largest, size)
            self.sizes.append(size)
        return plan

    def pump(self) -> None:
        """Submit what the window has room for; one thread at a time does (the others return)."""
        with self._cond:
            if self._pumping:
                return
            self._pumping = True
        try:
            while True:
                with self._cond:
                    plan = self._plan()
                    if not plan:
                        self._pumping = False
                        return
                for chunk in plan:
                    future = self._submit(self._call, (chunk,))
                    with self._cond:
                        self._chunks.append((future, len(chunk)))
                        self._cond.notify_all()
                    future.add_done_callback(self._finished)
        except BaseException as e:  # the client was shut down meanwhile: the consumer hears it
            with self._cond:
                self._error = e
                self._closed = True
                self._pumping = False
                self._cond.notify_all()

    def _finished(self, future) -> None:
        measured = None
        if not future.cancelled() and future.exception() is None:
            seconds, values = future.result()
            if values:
                measured = seconds / len(values)
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()  # (the consumer may wait for the last one)
            if measured is not None:
                self._per_item = measured if self._per_item is None else (self._per_item + measured) / 2
        self.pump()

    def stop(self) -> None:
        """Submit no more chunks (``shutdown(cancel_futures=True)``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_submitted(self) -> None:
        """Return once every item is submitted, or the map stopped (``shutdown`` waits so)."""
        with self._cond:
            self._cond.wait_for(lambda: self._next >= len(self._items) or self._closed)

    # -- consuming ------------------------------------------------------------------------

    def results(self, deadline: Optional[float]) -> Iterator:
        try:
            while True:
                future = self._head(deadline)
                if future is None:
                    return
                try:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    _, values = future.result(left)
                except Exception as e:
                    partial = getattr(e, "ipcluster_partial", None)
                    if partial is None:
                        raise
                    del e.ipcluster_partial
                    values, error = partial, e
                else:
                    error = None
                with self._cond:
                    self._chunks.popleft()
                del future
                values.reverse()
                while values:
                    yield values.pop()  # the list keeps only the values not yet yielded
                if error is not None:
                    raise error
        finally:
            with self._cond:
                self._closed = True
                pending = [f for f, _ in self._chunks if not f.done()]
            self._cancel_soon(pending)

    def _head(self, deadline: Optional[float]):
        """The first chunk's future (None: every item was yielded), waiting for it to be submitted."""
        with self._cond:
            while not self._chunks:
                if self._error is not None:
                    raise self._error
                if self._next >= len(self._items) and self._in_flight == 0:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("map's timeout passed")
                self._cond.wait(left)
            return self._chunks[0][0]


def adaptive_results(submit: Callable, cancel_soon: Callable[[list], None], fn: Callable, iterables: tuple,
                     timeout: Optional[float], engines: int, started: Callable[[AdaptiveMap], None] = lambda run: None,
                     ) -> Iterator:
    """Start an adaptive map of ``fn`` over ``iterables`` on ``engines`` engines; its results' iterator.
    ``started(run)`` hears of the map before its first chunk is submitted."""
    deadline = None if timeout is None else time.monotonic() + timeout
    run = AdaptiveMap(submit, cancel_soon, fn, list(zip(*iterables)), engines)
    started(run)
    run.pump()
    return run.results(deadline)
