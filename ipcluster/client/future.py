"""A task's future: a ``concurrent.futures.Future`` with the task's id, engine and output.

Its state follows the controller:

* *pending* until the controller says the task started (it does for tasks that
  run 20 ms or more), then *running*; a task that finishes sooner goes from
  pending straight to finished.
* ``cancel()`` asks the controller, which decides on its own thread whether the
  task can still be kept from running; the answer is ``cancel()``'s, and the
  future is cancelled exactly when the task will never run.
* done-callbacks run on the client's callback thread (never its I/O thread), in
  the order they were added; a raising callback is logged.
"""
from __future__ import annotations

import concurrent.futures
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from ipcluster import errors
from ipcluster.client.callbacks import call_logged
from ipcluster.client.inputs import with_cause
from ipcluster.futureinputs import reduce_future

if TYPE_CHECKING:
    from ipcluster.client.core import TaskResult
    from ipcluster.client.sync import Client

# Where a future's done-callbacks are: waiting for it to finish, handed to the callback
# thread, or all run (a callback added now is called at once, as Future documents).
_WAITING, _POSTED, _RAN = "waiting", "posted", "ran"


class TaskFuture(Future):
    """A ``concurrent.futures.Future`` for one task, with its id, engine and output."""

    def __init__(self, task_id: str, client: Optional["Client"] = None) -> None:
        super().__init__()
        self.task_id = task_id
        self.engine: Optional[str] = None
        self.stdout = ""
        self.stderr = ""
        #: The task's function's name (what the controller shows), when known.
        self.name = ""
        self._client = client
        self._lock = threading.RLock()  # our transitions: started, delivered, cancelled
        self._dispatch = _WAITING
        super().add_done_callback(self._completed)

    # What most futures never need is made on first use (the class's defaults till then): a
    # client keeps thousands of pending futures, and the garbage collector visits each object.
    _heard: Optional[list] = None  # the live output heard so far
    _output_changed: Optional[threading.Condition] = None  # made by the first iter_output
    _output_callbacks: tuple = ()
    #: The futures among this task's arguments (their results are its inputs).
    _inputs: Sequence = ()
    _callbacks: Optional[list] = None  # the done-callbacks not run yet

    @property
    def output(self) -> list:
        """The live output heard so far, ``(stream, text)`` chunks (the engine bounds it)."""
        with self._lock:
            if self._heard is None:
                self._heard = []
            return self._heard

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id} on {self.engine} {self._state.lower()}>"

    def __reduce__(self):
        """In a task's arguments: a placeholder the engine replaces by this task's result."""
        return reduce_future(self)

    # -- the Future API ---------------------------------------------------------------

    def cancel(self) -> bool:
        """Keep the task from running: True if it never will (the controller removed it).

        False if it runs or ran (or the controller could not be asked).  Asks the
        controller and waits for its answer (one round trip); a future already
        running or done answers at once.
        """
        if self.cancelled():
            return True
        if self.running() or self.done() or self._client is None:
            return False
        return self._client._cancel_tasks([self])[0]

    def result(self, timeout: Optional[float] = None):
        """The task's value (or its exception, raised); TimeoutError that says what was
        waited for, for how long, and where the task is, if ``timeout`` passes first."""
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            raise concurrent.futures.TimeoutError(self._waited(timeout)) from None

    def exception(self, timeout: Optional[float] = None):
        """The task's exception (None if it succeeded); TimeoutError as :meth:`result`."""
        try:
            return super().exception(timeout)
        except concurrent.futures.TimeoutError:
            raise concurrent.futures.TimeoutError(self._waited(timeout)) from None

    def _waited(self, timeout: Optional[float]) -> str:
        if self.running():
            where = f"running on engine {self.engine}" if self.engine else "running"
        else:
            where = "pending (queued in the controller or on an engine, not started)"
        name = f" ({self.name})" if self.name else ""
        return f"task {self.task_id}{name} did not finish within {timeout:g} s: it is {where}"

    def add_done_callback(self, fn: Callable[["TaskFuture"], object]) -> None:
        """Call ``fn(future)`` once it is done, on the client's callback thread, in the order added.

        If the future is done and its callbacks have run, ``fn`` is called at
        once, in this thread.  An exception in ``fn`` is logged.
        """
        with self._lock:
            if self._dispatch != _RAN:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        call_logged(fn, self)

    # -- live output -------------------------------------------------------------------

    def add_output_callback(self, fn: Callable[[str, str], object]) -> None:
        """Call ``fn(stream, text)`` for each chunk the task prints while it runs (``stream`` is
        ``"stdout"`` or ``"stderr"``), on the client's callback thread, in order; the chunks
        heard before are replayed first.  ``stdout``/``stderr`` hold the whole output once done."""
        with self._lock:
            self._output_callbacks += (fn,)
            heard = list(self.output)
        for chunk in heard:
            self._post(fn, *chunk)

    def iter_output(self, timeout: Optional[float] = None):
        """Yield ``(stream, text)`` chunks as the task prints them, until it is done.

        ``timeout`` bounds each wait for the next chunk (TimeoutError).  A task
        that ends within 0.1 s streams nothing: its output is in ``stdout``/``stderr``.
        """
        seen = 0
        with self._lock:
            if self._output_changed is None:
                self._output_changed = threading.Condition(self._lock)
            changed = self._output_changed
        while True:
            with changed:
                if seen >= len(self.output) and not self.done():
                    if not changed.wait_for(lambda: seen < len(self.output) or self.done(), timeout):
                        raise concurrent.futures.TimeoutError(self._waited(timeout).replace("finish", "print"))
                if seen >= len(self.output):
                    return
                chunk = self.output[seen]
            seen += 1
            yield chunk

    def _output(self, stream: str, text: str, engine: str) -> None:
        """A chunk of live output arrived (the I/O thread)."""
        with self._lock:
            if engine and self.engine is None:
                self.engine = engine
            self.output.append((stream, text))
            if self._output_changed is not None:
                self._output_changed.notify_all()
            callbacks = self._output_callbacks
        for fn in callbacks:
            self._post(fn, stream, text)

    def _post(self, fn: Callable, *args: object) -> None:
        if self._client is None:
            call_logged(fn, *args)
        else:
            self._client._callbacks.post(fn, *args)

    # -- what the client calls -------------------------------------------------------

    def _started(self, engine: str) -> None:
        """The controller says the task started on ``engine``."""
        with self._lock:
            if engine:
                self.engine = engine
            if not (self.running() or self.done()):
                self.set_running_or_notify_cancel()

    def _deliver(self, result: "TaskResult") -> None:
        """The task's outcome arrived (or the client gave up on it)."""
        with self._lock:
            if self.done():
                return
            if not result.ok and isinstance(result.value, errors.TaskCancelled):
                self._cancelled_by_controller(result.value)
                return
            self.engine = result.engine or self.engine
            self.stdout, self.stderr = result.stdout, result.stderr
            # (A pending future may be finished at once: no need to pass through running.)
            if result.ok:
                self.set_result(result.value)
            else:
                self.set_exception(with_cause(result.value, self._inputs))

    def _cancelled_by_controller(self, error: Optional[BaseException] = None) -> None:
        """The controller cancelled the task: cancel the future and tell its waiters
        (``wait``/``as_completed`` hear of a cancel through set_running_or_notify_cancel)."""
        with self._lock:
            if self.done():
                return
            if Future.cancel(self):
                self.set_running_or_notify_cancel()
            else:  # it was running here (it started, then was retried and cancelled)
                self.set_exception(error or errors.TaskCancelled(f"task {self.task_id} was cancelled"))

    # -- callbacks ---------------------------------------------------------------------

    def _completed(self, _: Future) -> None:
        # Runs in the thread that completed the future (the I/O thread, mostly): hand the
        # callbacks to the callback thread and tell the client this future is settled.  A
        # future without callbacks (most) does not wake the callback thread: one added from
        # now on is called at once, as if the thread had run the (none) before it.
        client = self._client
        with self._lock:
            posted = client is None or bool(self._callbacks)
            self._dispatch = _POSTED if posted else _RAN
            if self._output_changed is not None:
                self._output_changed.notify_all()  # iter_output ends
        if client is None:
            self._run_callbacks()
            return
        client._settled(self)
        if posted:
            client._callbacks.post(self._run_callbacks)

    def _run_callbacks(self) -> None:
        while True:
            with self._lock:
                if not self._callbacks:
                    self._dispatch = _RAN
                    return
                fn = self._callbacks.pop(0)
            call_logged(fn, self)
