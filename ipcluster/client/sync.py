"""The blocking client: ``from ipcluster import Client``.

A background thread owns the ZeroMQ socket; calls from any thread hand it
frames through a lock-guarded inproc pipe.  ``submit`` returns a
``concurrent.futures.Future``; the control verbs block and return their value.
"""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, Callable, Optional

import zmq

from ipcluster import connection, errors
from ipcluster.client.core import ClientCore, TaskResult

LIVE = ("alive", "busy")


class TaskFuture(Future):
    """A ``concurrent.futures.Future`` for one task, with its id, engine and output."""

    def __init__(self, task_id: str, engine: Optional[str]) -> None:
        super().__init__()
        self.task_id = task_id
        self.engine = engine
        self.stdout = ""
        self.stderr = ""

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id} on {self.engine} {self._state.lower()}>"


class Client:
    """A connection to a running controller.

    ``Client()`` reads the default connection file (``$IPCLUSTER_DIR`` or
    ``~/.ipcluster``/connection.json); ``Client(path)`` reads the given one.
    Raises :class:`~ipcluster.errors.NoController` if there is no file or no
    controller answers within ``timeout`` seconds.
    """

    def __init__(self, connection_file: Optional[str] = None, timeout: float = 10.0) -> None:
        self.info = connection.read(connection_file)
        self.timeout = timeout
        self._core = ClientCore(self.info.key)
        self._context = zmq.Context()
        self._pipe_address = f"inproc://ipcluster-client-{uuid.uuid4().hex}"
        self._pipe_in = self._context.socket(zmq.PAIR)
        self._pipe_in.setsockopt(zmq.LINGER, 0)
        self._pipe_in.bind(self._pipe_address)
        self._pipe_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._io_main, name="ipcluster-client", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()
        try:
            self._call("connect", {}, timeout)
        except errors.NoController:
            self.close()
            raise errors.NoController(
                f"no controller answered at {self.info.address('client')} within {timeout:g} s "
                f"(connection file {self.info.path}); is it running?"
            ) from None

    # -- engines -----------------------------------------------------------------

    def engines(self) -> list[dict]:
        """Every engine the controller knows: id, host, pid, state, rtt, busy_for, running_task, ..."""
        return self._call("engines", {}, self.timeout)

    def wait_for_engines(self, n: int, timeout: float = 60.0, interval: float = 0.1) -> list[dict]:
        """Block until at least ``n`` engines are alive (or busy); returns them."""
        deadline = time.monotonic() + timeout
        while True:
            live = [e for e in self.engines() if e["state"] in LIVE]
            if len(live) >= n:
                return live
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:g} s for {n} engines; {len(live)} are up")
            time.sleep(interval)

    # -- tasks ---------------------------------------------------------------------

    def submit(self, fn: Callable, *args: Any, engine: Optional[str] = None, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` on engine ``engine``; a Future of its result.

        The future's ``stdout``/``stderr`` hold what the task printed.  A task
        that raised re-raises its exception (with the remote traceback as its
        ``__cause__``); KeyboardInterrupt and SystemExit arrive as
        :class:`~ipcluster.errors.TaskInterrupted`.
        """
        if engine is None:
            raise TypeError("submit() needs engine=ENGINE_ID (load-balanced submission is not available yet)")
        future: TaskFuture

        def on_result(result: TaskResult) -> None:
            if future.done():
                return
            future.stdout, future.stderr = result.stdout, result.stderr
            if result.ok:
                future.set_result(result.value)
            else:
                future.set_exception(result.value)

        def on_accept(ok: bool, value: Any) -> None:
            if not ok and not future.done():
                self._core.forget(task_id=future.task_id)
                future.set_exception(value)

        task_id, _, frames = self._core.submit(fn, args, kwargs, str(engine), on_accept, on_result)
        future = TaskFuture(task_id, str(engine))
        future.set_running_or_notify_cancel()
        self._send(frames)
        return future

    # -- control verbs ----------------------------------------------------------------

    def beat(self, engine: str, timeout: Optional[float] = None) -> float:
        """Round trip through the engine's Python control thread, in seconds."""
        return self._control(engine, "beat", {}, timeout)

    def abort(self, engine: str, task: "str | TaskFuture", timeout: Optional[float] = None) -> str:
        """Remove a queued task: ``"aborted"``, ``"running"`` or ``"unknown"``."""
        task_id = task.task_id if isinstance(task, TaskFuture) else str(task)
        return self._control(engine, "abort", {"task": task_id}, timeout)

    def signal(self, engine: str, signum: int, task: "str | TaskFuture | None" = None, timeout: Optional[float] = None) -> bool:
        """Send a signal to the engine; with ``task``, only while that task runs."""
        args: dict = {"signum": int(signum)}
        if task is not None:
            args["task"] = task.task_id if isinstance(task, TaskFuture) else str(task)
        return self._control(engine, "signal", args, timeout)

    def exit(self, engine: str, timeout: float = 5.0) -> None:
        """Ask an engine to exit; returns once it has left."""
        return self._control(engine, "exit", {"timeout": float(timeout)}, timeout + 2 * self.timeout)

    def reset(self, engine: str, timeout: Optional[float] = None) -> int:
        """Clear the engine's namespace and queue; the number of queued tasks dropped."""
        return self._control(engine, "reset", {}, timeout)

    def _control(self, engine: str, verb: str, args: dict, timeout: Optional[float]) -> Any:
        if timeout is not None and verb != "exit":
            args = dict(args, timeout=float(timeout))
        wait = (timeout if timeout is not None else self.timeout) + self.timeout
        return self._call("control", {"engine": str(engine), "verb": verb, "args": args}, wait)

    # -- plumbing ---------------------------------------------------------------------

    def _call(self, mtype: str, fields: dict, timeout: float) -> Any:
        future: Future = Future()

        def on_reply(ok: bool, value: Any) -> None:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        msg_id, frames = self._core.request(mtype, fields, on_reply)
        self._send(frames)
        try:
            return future.result(timeout)
        except TimeoutError:
            self._core.forget(msg_id=msg_id)
            raise errors.NoController(
                f"the controller did not answer {mtype!r} within {timeout:g} s"
            ) from None

    def _send(self, frames: list) -> None:
        if self._closed:
            raise errors.NoController("this client is closed")
        with self._pipe_lock:
            self._pipe_in.send_multipart(frames)

    def _io_main(self) -> None:
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.info.address("client"))
        pipe = self._context.socket(zmq.PAIR)
        pipe.setsockopt(zmq.LINGER, 0)
        pipe.connect(self._pipe_address)
        self._ready.set()
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if pipe in events:
                    frames = pipe.recv_multipart()
                    if frames == [b"close"]:
                        break
                    dealer.send_multipart(frames)
                    while True:  # forward everything queued, then read
                        try:
                            frames = pipe.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if frames == [b"close"]:
                            return
                        dealer.send_multipart(frames)
                if dealer in events:
                    while True:
                        try:
                            frames = dealer.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._core.received(frames)
        finally:
            dealer.close(0)
            pipe.close(0)

    def close(self) -> None:
        """Close the connection; pending futures fail with NoController."""
        if self._closed:
            return
        with self._pipe_lock:
            self._pipe_in.send_multipart([b"close"])
        self._closed = True
        self._thread.join(5.0)
        self._pipe_in.close(0)
        self._context.term()
        self._core.fail_all(errors.NoController("client closed"))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
