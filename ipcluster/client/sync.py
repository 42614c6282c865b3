"""The blocking client: ``from ipcluster import Client``.

A background I/O thread reads the ZeroMQ socket and sends what the calling
threads hand it; a lone request is sent by its caller, a burst goes through
the I/O thread in batches (``iothread.py``).  ``submit`` returns a
``concurrent.futures.Future``; the control verbs block and return their value.
Done-callbacks run on a second thread of the client's (``callbacks.py``), so
the I/O thread never runs user code.
"""
from __future__ import annotations

import threading
import time
import concurrent.futures
from concurrent.futures import Future
from typing import Any, Optional

import zmq

from ipcluster import connection, errors
from ipcluster.client.executor import TaskExecutor, settle_reply
from ipcluster.client.iothread import Closed, SharedDealer
from ipcluster.client.future import TaskFuture
from ipcluster.client.progress import progress_bar
from ipcluster.client.verbs import ControlVerbs
from ipcluster.client.views import EngineViews
from ipcluster.client.core import KEEP_PAYLOAD_BYTES, ClientCore
from ipcluster.client.watch import DEFAULT_GIVE_UP_AFTER, DEFAULT_RESTART_WAIT, ControllerWatch
from ipcluster.transport.security import configure_client
from ipcluster.transport.zmqfast import readable, recv_frames, send_frames

LIVE = ("alive", "busy")


class Client(ControlVerbs, TaskExecutor, EngineViews):
    """A connection to a running controller; also a ``concurrent.futures.Executor``.

    ``Client()`` reads the default connection file (``$IPCLUSTER_DIR`` or
    ``~/.ipcluster``/connection.json); ``Client(path)`` reads the given one.
    Raises :class:`~ipcluster.errors.NoController` if there is no file or no
    controller answers within ``timeout`` seconds.
    """

    def __init__(
        self, connection_file: Optional[str] = None, timeout: float = 10.0, controller_timeout: float = 20.0,
        restart_wait: float = DEFAULT_RESTART_WAIT, give_up_after: float = DEFAULT_GIVE_UP_AFTER,
        keep_bytes: int = KEEP_PAYLOAD_BYTES,
    ) -> None:
        self.info = connection.read(connection_file)
        self.timeout = timeout
        #: While something waits for the controller, it is probed every few seconds.  After this
        #: long without a word from it, pending futures fail with NoController if the controller is
        #: gone: its connection file removed, or its process gone with no heir within
        #: ``restart_wait``; a paused or restarting controller is waited for, up to
        #: ``give_up_after`` seconds of silence (the only limit for a controller on another host).
        #: See ``client/watch.py``.
        self.controller_timeout = controller_timeout
        self._watch = ControllerWatch(self.info, controller_timeout, restart_wait, give_up_after)
        self._core = ClientCore(self.info.key, self.info.max_message_size, keep_bytes)
        self._context = zmq.Context()
        self._init_executor()
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        # Never block a send on a controller that is gone: the I/O thread must stay free to notice.
        dealer.setsockopt(zmq.SNDHWM, 0)
        configure_client(dealer, self.info)
        self._line = SharedDealer(dealer, self.info.max_message_size)
        self._outbox = self._line.outbox
        # (Called in the I/O thread, which holds the dealer's lock then.)
        self._core.send_back = lambda frames: send_frames(dealer, frames)
        try:
            dealer.connect(self.info.address("client"))
        except zmq.ZMQError as e:
            dealer.close(0)
            self._line.release()
            self._context.term()
            raise errors.NoController(
                f"cannot connect to {self.info.address('client')} (connection file {self.info.path}): {e}"
            ) from None
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

    def as_completed(self, futures, timeout: Optional[float] = None, progress: bool = False):
        """Yield futures as they finish (``concurrent.futures.as_completed``), with a tqdm bar if ``progress``."""
        futures = list(futures)
        done = concurrent.futures.as_completed(futures, timeout)
        if progress:
            done = _progress(done, len(futures))
        return done

    def wait(self, futures, timeout: Optional[float] = None, return_when: str = concurrent.futures.ALL_COMPLETED, progress: bool = False):
        """``concurrent.futures.wait`` on task futures; a tqdm bar if ``progress``."""
        futures = list(futures)
        if not progress:
            return concurrent.futures.wait(futures, timeout, return_when)
        for _ in self.as_completed(futures, timeout, progress=True):
            if return_when == concurrent.futures.FIRST_COMPLETED:
                break
            if return_when == concurrent.futures.FIRST_EXCEPTION and _.exception() is not None:
                break
        return concurrent.futures.wait(futures, 0)

    def fetch(self, task_id: str) -> TaskFuture:
        """A future for a task submitted earlier, by any client: it works after the submitter left
        and after a controller restart (results are kept in the task store)."""
        future = TaskFuture(task_id, self)
        with self._pending_lock:
            if self._shutdown:
                raise RuntimeError("cannot fetch tasks after the client was shut down")
            self._core.expect(task_id, future._deliver, future._started)
            self._pending.setdefault(task_id, future)
        try:
            self._call("fetch", {"task": task_id}, self.timeout)
        except errors.ClusterError:
            self._core.forget(task_id=task_id, on_result=future._deliver)
            self._settled(future)
            raise
        return future

    def purge(self, older_than: Optional[float] = None) -> int:
        """Delete stored finished tasks (finished ``older_than`` seconds ago or more); the count."""
        fields = {} if older_than is None else {"older_than": float(older_than)}
        return self._call("purge", fields, self.timeout)

    # -- plumbing ---------------------------------------------------------------------

    def _call(self, mtype: str, fields: dict, timeout: float) -> Any:
        future: Future = Future()
        msg_id, frames = self._core.request(mtype, fields, settle_reply(future))
        self._send(frames)
        try:
            return future.result(timeout)
        except TimeoutError:
            self._core.forget(msg_id=msg_id)
            raise errors.NoController(
                f"the controller did not answer {mtype!r} within {timeout:g} s"
            ) from None

    @property
    def _closed(self) -> bool:
        return self._outbox.closed

    def _send(self, frames: list) -> None:
        try:
            self._line.send(frames)
        except Closed:
            raise errors.NoController("this client is closed") from None

    def _io_main(self) -> None:
        line = self._line
        with line.lock:  # (released only while it sleeps: see iothread.py)
            try:
                self._ready.set()
                self._serve(line)
            finally:
                line.shut()

    def _serve(self, line: SharedDealer) -> None:
        """Read the dealer, forward the outbox and watch the controller, until the close."""
        dealer = line.dealer
        poller = line.poller()
        heard = probed = time.monotonic()
        probe_every = min(5.0, self.controller_timeout / 3)
        while True:
            if not readable(dealer):  # (nothing to read: sleep until a message or the wake)
                line.sleep(poller, 500)
            received = self._receive(dealer)
            now = time.monotonic()
            gone = None
            if received or not self._core.waiting():
                heard = now
            else:
                gone = self._watch.verdict(now - heard, now)
            if gone is not None:
                self._core.fail_all(errors.NoController(f"the controller at {self.info.address('client')} {gone}"))
                heard = now
            elif now - heard > probe_every and now - probed > probe_every:
                probed = now
                _, frames = self._core.request("connect", {}, lambda ok, value: None)
                send_frames(dealer, frames)
            if not line.forward():
                return  # (what came before the close was sent)

    def _receive(self, dealer: zmq.Socket) -> bool:
        """Hand every message waiting on ``dealer`` to the core; whether there was one."""
        received = False
        while readable(dealer):  # (cheaper than a recv that raises zmq.Again at the end)
            self._core.received(recv_frames(dealer))
            received = True
        return received

    def close(self, cancel: bool = True) -> None:
        """Close the connection now; pending futures fail with NoController.

        With ``cancel`` (the default) this client's tasks that have not started
        are cancelled on the cluster first: nobody would be left to wait for
        them.  Running tasks go on, and so do queued ones with ``cancel=False``
        (``fetch`` gets their results later).  ``shutdown()`` is the
        Executor's way: it waits for them.
        """
        if cancel:
            self._cancel_unstarted()
        self._close(wait_for_callbacks=False)

    def _close(self, wait_for_callbacks: bool) -> None:
        with self._pending_lock:
            self._shutdown = True
        if self._outbox.close():
            self._thread.join(5.0)
            self._line.release()
            self._context.term()
            self._core.fail_all(errors.NoController("client closed"))
        self._callbacks.stop(wait=wait_for_callbacks)

    def __enter__(self) -> "Client":
        return self



def _progress(iterable, total: int):
    return progress_bar(iterable, total, unit="task")
