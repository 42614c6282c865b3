"""The Executor half of the blocking client: tasks as futures, map, cancel and shutdown.

:class:`~ipcluster.client.Client` mixes in :class:`TaskExecutor`, which keeps
the promises of ``concurrent.futures.Executor`` on top of the client's
connection (``_core``, ``_send``, ``_call``, ``_close``, the I/O ``_thread``):

* ``submit(fn, /, *args, **kwargs)``; ``RuntimeError`` once shut down.
* ``map`` as ``mapping.py`` says (timeout, chunksize, buffersize, no result kept).
* ``shutdown(wait, cancel_futures)`` waits for this client's pending futures,
  cancels the unstarted ones on the cluster when asked, and closes.
* ``cancel()`` is the controller's decision (``_cancel_tasks``).
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
import weakref
from concurrent.futures import Executor, Future
from typing import Any, Callable, Optional

from ipcluster import errors, futureinputs
from ipcluster.client.adaptive import adaptive_results
from ipcluster.client.callbacks import CallbackThread
from ipcluster.client.core import OPTION_NAMES, ClientCore, submit_options, take_options
from ipcluster.client.future import TaskFuture
from ipcluster.client.mapping import map_results
from ipcluster.client.options import TaskOptions
from ipcluster.client.progress import progress_bar


class TaskExecutor(Executor):
    """``concurrent.futures.Executor`` over a client's connection (a mixin of Client)."""

    timeout: float
    _core: ClientCore
    _thread: threading.Thread
    _closed: bool

    def _init_executor(self) -> None:
        self._shutdown = False  # no new tasks (Executor.shutdown); the connection may stay open
        self._pending: dict[str, TaskFuture] = {}  # this client's unfinished futures, by task id
        self._pending_lock = threading.Lock()
        self._callbacks = CallbackThread("ipcluster-callbacks")
        self._maps: "weakref.WeakSet" = weakref.WeakSet()  # adaptive maps still submitting (shutdown waits)
        self._core.output.find = self._output_of

    def _output_of(self, task_id: str):
        """Where a pending task's live output goes (its future's), or None."""
        future = self._pending.get(task_id)
        return None if future is None else future._output

    def _send(self, frames: list) -> None:  # pragma: no cover - provided by the client
        raise NotImplementedError

    def _close(self, wait_for_callbacks: bool) -> None:  # pragma: no cover - provided by the client
        raise NotImplementedError

    # -- tasks ---------------------------------------------------------------------

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` on an engine; a Future of its result.

        Without ``engine``/``engines`` the task is load-balanced over all
        engines.  ``engine=`` pins it to one engine, ``engines=[...]`` limits
        it to some.  ``after=[futures or ids]`` runs it once all of those
        succeeded (if one failed: DependencyError, or run anyway with
        ``after_failed="run"``).  ``retries`` (default 1) reruns it elsewhere
        when its engine dies; ``timeout`` (seconds from its start) interrupts
        it and fails it with TaskTimeout.  Those six keyword names are
        submit's own; every other keyword argument goes to ``fn``, and
        ``client.options(...).submit(fn, ...)`` passes them all to ``fn``.

        The future's ``stdout``/``stderr`` hold what the task printed.  A task
        that raised re-raises its exception (with the remote traceback as its
        ``__cause__``); KeyboardInterrupt and SystemExit arrive as
        :class:`~ipcluster.errors.TaskInterrupted`.  Raises RuntimeError once
        the client is shut down, :class:`~ipcluster.errors.PayloadTooLarge`
        (nothing is sent) if the pickled function and arguments make a message
        larger than the controller's ``--max-message-size``, and
        ``ValueError``/``TypeError`` for bad options (``retries`` above 1,000,
        a timeout above 365 days, ...).
        """
        options = submit_options(**take_options(kwargs))
        return self._submit(fn, args, kwargs, options)

    def options(self, **options: Any) -> TaskOptions:
        """A view of this client whose ``submit`` and ``map`` use these scheduling options and
        pass every keyword argument to the task: ``client.options(engine="e0").submit(fn, timeout=3)``."""
        return TaskOptions(self, options)

    def _submit(self, fn: Callable, args: tuple, kwargs: dict, options: dict, mapping: bool = False) -> TaskFuture:
        if self._shutdown and not mapping:  # (checked again below: shutdown may come while fn is pickled)
            raise RuntimeError("cannot submit tasks after the client was shut down")
        future = TaskFuture(self._core.new_task_id(), self)
        task_id = future.task_id
        with futureinputs.collecting() as inputs:  # the futures among the arguments (core.submit sends them)
            _, frames = self._core.submit(fn, args, kwargs, options, future._deliver, future._started, task_id)
        if inputs:
            future._inputs = list(inputs)
        name = getattr(fn, "__name__", "")
        future.name = name if isinstance(name, str) else ""
        with self._pending_lock:
            # A map made before shutdown goes on submitting its chunks (shutdown waits for them).
            accepted = mapping or not self._shutdown
            if accepted:
                self._pending[task_id] = future
        if accepted:
            try:
                self._send(frames)
                return future
            except errors.NoController:  # closed meanwhile
                pass
        self._core.forget(task_id=task_id)
        self._settled(future)
        raise RuntimeError("cannot submit tasks after the client was shut down")

    def map(self, fn: Callable, /, *iterables: Any, timeout: Optional[float] = None, chunksize: Optional[int] = None,
            buffersize: Optional[int] = None, progress: bool = False, **options: Any):
        """``Executor.map`` on the cluster: an ordered iterator of ``fn``'s results.

        Without ``chunksize`` the map sizes its chunks itself (``adaptive.py``):
        one call per task at first, then as many as take about 20 ms on an
        engine, so tiny calls go in a few large tasks and long ones one per
        engine; ``fn`` is pickled once.  ``chunksize=N`` sends N calls per task,
        every task submitted now (with ``buffersize``, at most that many ahead
        of the consumer; ``buffersize`` alone means ``chunksize=1``).  ``timeout`` counts from this call: ``next()`` raises TimeoutError
        once it passed.  A task's exception is raised when its result is
        reached.  When the iterator stops early, the tasks not yet started
        are cancelled.  ``options`` are submit's (engines, retries, timeout
        is map's own: use ``client.options(timeout=...).map`` for the tasks').
        ``progress=True`` shows a tqdm bar (``tqdm.auto``: a widget in a notebook)
        as results are consumed.

        Every keyword is map's or submit's, never ``fn``'s (``Executor.map``
        passes none): bind ``fn``'s own, one called ``progress`` included, with
        ``functools.partial(fn, progress=...)``.
        """
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(
                f"map() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: map passes no keyword "
                "arguments to the function; bind them with functools.partial(fn, name=value)"
            )
        return self._map(fn, iterables, submit_options(**options), timeout=timeout, chunksize=chunksize,
                         buffersize=buffersize, progress=progress)

    def _map(self, fn: Callable, iterables: tuple, options: dict, timeout: Optional[float] = None,
             chunksize: Optional[int] = None, buffersize: Optional[int] = None, progress: bool = False):
        # The bar's total only when it is known without consuming the iterables (buffersize stays lazy).
        total = min(map(len, iterables), default=0) if all(hasattr(it, "__len__") for it in iterables) else None
        results = self._map_results(fn, iterables, options, timeout, chunksize, buffersize)
        return progress_bar(results, total, unit="task") if progress else results

    def _map_results(self, fn: Callable, iterables: tuple, options: dict, timeout: Optional[float],
                     chunksize: Optional[int], buffersize: Optional[int]):
        def submit(f: Callable, args: tuple) -> TaskFuture:
            return self._submit(f, args, {}, options)

        if chunksize is None and buffersize is None:
            if self._shutdown:
                raise RuntimeError("cannot submit tasks after the client was shut down")

            def submit_chunk(f: Callable, args: tuple) -> TaskFuture:
                return self._submit(f, args, {}, options, mapping=True)

            return adaptive_results(submit_chunk, self._cancel_soon, fn, iterables, timeout,
                                    self._engine_count(options), self._maps.add)
        return map_results(submit, self._cancel_soon, fn, iterables, timeout, chunksize or 1, buffersize)

    def _engine_count(self, options: dict) -> int:
        """How many engines a map's tasks may run on now (0 if the controller cannot say)."""
        try:
            live = [e["id"] for e in self.engines() if e.get("state") in ("alive", "busy")]
        except errors.ClusterError:
            return 0
        allowed = options.get("engines") or ([options["engine"]] if "engine" in options else None)
        return len(live) if allowed is None else len(set(live) & set(allowed))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Executor API: take no new tasks, and close once this client's pending futures are done.

        ``cancel_futures`` first cancels, on the cluster, the tasks that have
        not started.  ``wait=True`` returns once every pending future is done,
        its done-callbacks have run and the connection is closed; ``wait=False``
        returns at once, and the client closes itself when they are done (a
        non-daemon thread waits for them, so the program does not exit before).
        Further ``submit``/``map`` raise RuntimeError.  ``close()`` is the
        immediate way out.
        """
        with self._pending_lock:
            self._shutdown = True
        if cancel_futures:
            for run in list(self._maps):
                run.stop()
        with self._pending_lock:
            pending = list(self._pending.values())
        if cancel_futures and not self._closed:
            self._cancel_tasks([f for f in pending if not (f.running() or f.done())])
        if wait:
            self._close_when_done()
        else:
            threading.Thread(target=self._close_when_done, name="ipcluster-shutdown").start()

    def _close_when_done(self) -> None:
        for run in list(self._maps):  # adaptive maps first submit what they have left
            run.wait_submitted()
        with self._pending_lock:
            pending = list(self._pending.values())
        concurrent.futures.wait(pending)
        self._close(wait_for_callbacks=True)

    # -- plumbing ------------------------------------------------------------------

    def _cancel_tasks(self, futures: list) -> list[bool]:
        """Ask the controller to cancel each future's task (all requests at once); its answers.

        The controller decides; a task it cancels is reported (a TaskCancelled
        result, before the reply) and its future is cancelled.  No answer in
        ``timeout`` counts as False.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("cancel() would block the client's I/O thread")
        asked = []
        for future in futures:
            reply: Future = Future()
            msg_id, frames = self._core.request("cancel", {"task": future.task_id}, settle_reply(reply))
            try:
                self._send(frames)
            except errors.NoController:
                self._core.forget(msg_id=msg_id)
                reply.set_result(False)
            asked.append((future, msg_id, reply))
        deadline = time.monotonic() + self.timeout
        answers = []
        for future, msg_id, reply in asked:
            try:
                removed = reply.result(max(0.0, deadline - time.monotonic())) is True
            except (TimeoutError, errors.ClusterError):
                self._core.forget(msg_id=msg_id)
                removed = False
            if removed:
                future._cancelled_by_controller()  # (its TaskCancelled result came first, normally)
                self._core.forget(task_id=future.task_id, on_result=future._deliver)
            answers.append(removed)
        return answers

    def _cancel_unstarted(self) -> None:
        """Cancel, on the cluster, this client's tasks that have not started (``close``)."""
        with self._pending_lock:
            unstarted = [f for f in self._pending.values() if not (f.running() or f.done())]
        if unstarted and not self._closed and threading.current_thread() is not self._thread:
            self._cancel_tasks(unstarted)

    def _cancel_soon(self, futures: list) -> None:
        """Ask the controller to cancel these tasks, without waiting (a map that stopped early):
        their futures follow its answers."""
        if threading.current_thread() is self._thread:
            return  # (a map iterator collected on the I/O thread) it must never block there
        for future in futures:
            _, frames = self._core.request("cancel", {"task": future.task_id}, lambda ok, value: None)
            try:
                self._send(frames)
            except errors.NoController:
                return

    def _settled(self, future: TaskFuture) -> None:
        """``future`` is done: it is no longer pending (and has no more output to hear of)."""
        with self._pending_lock:
            if self._pending.get(future.task_id) is future:
                del self._pending[future.task_id]

    def __exit__(self, exc_type, exc, tb) -> None:
        """``with Client() as c:`` ends with ``c.shutdown(wait=True)``: it waits for the client's
        tasks.  Left by an exception, it first cancels those not started (``cancel_futures``)."""
        self.shutdown(wait=True, cancel_futures=exc_type is not None)


def settle_reply(reply: Future):
    def on_reply(ok: bool, value: Any) -> None:
        if ok:
            reply.set_result(value)
        else:
            reply.set_exception(value)

    return on_reply
