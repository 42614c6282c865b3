"""The client's protocol logic, free of I/O: both clients drive it.

``ClientCore`` builds signed requests, remembers what waits for which reply
or result, and turns incoming messages into calls of those callbacks with a
value or an exception.  The blocking :class:`~ipcluster.client.Client` runs it
on a background thread with pyzmq; :class:`~ipcluster.client.TwistedClient`
runs it on the reactor with txZMQ.
"""
from __future__ import annotations

import itertools
import os
import pickle
import threading
from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence


from ipcluster import errors, futureinputs
from ipcluster.client.checks import (  # noqa: F401 (the names clients import from here)
    OPTION_NAMES, ChunkCall, _name, submit_options, take_options,
)
from ipcluster.client.fnpickle import FunctionPickles
from ipcluster.client.inputs import input_options
from ipcluster.client.output import OutputWatch
from ipcluster.sourcelines import task_extras
from ipcluster.transport import DEFAULT_MAX_MESSAGE_SIZE, batch, buffers
from ipcluster.transport.replay import ReplayWindow
from ipcluster.transport.wire import MAX_REPLY_HEADER_BYTES, PEER_ACCEPTS, BadMessage, Codec, Message

__all__ = ["ClientCore", "TaskResult", "OPTION_NAMES", "ChunkCall", "submit_options", "take_options", "_name"]

#: Sessions whose messages a client still takes (the current one and those before it).
KEEP_SESSIONS = 8
#: Bytes of pending tasks' payloads a client keeps to submit them again to a restarted
#: controller that does not know them (the oldest kept are let go first).
KEEP_PAYLOAD_BYTES = 64 * 1024 * 1024

#: ``callback(ok, value)``: value is the reply's value, or an exception when not ok.
Callback = Callable[[bool, Any], None]


class TaskResult:
    """What came back for a task: value or exception, captured output, engine."""

    __slots__ = ("task_id", "engine", "ok", "value", "stdout", "stderr", "started", "finished")

    def __init__(self, msg: Message) -> None:
        self.task_id = msg["task"]
        self.engine = msg.get("engine")
        self.ok = bool(msg["ok"])
        self.started = msg.get("started")
        self.finished = msg.get("finished")
        payload, out, err = msg.payloads
        self.stdout = bytes(out).decode("utf-8", "replace")
        self.stderr = bytes(err).decode("utf-8", "replace")
        self.value = buffers.loads(payload, msg.buffers) if self.ok else _remote_exception(msg.get("error"), payload)


def _remote_exception(error: Any, payload: bytes) -> BaseException:
    """The exception to raise in the client for a failed task."""
    if not isinstance(error, dict):
        return errors.ClusterError(f"malformed error report: {error!r}")
    ename = str(error.get("type", "Exception"))
    evalue = str(error.get("message", ""))
    tb = str(error.get("traceback", "") or "")
    if error.get("origin") == "ipcluster":  # made by the controller or engine, not by the task
        return errors.from_wire(error)
    if not payload:
        return errors.remote_error(ename, evalue, tb, error.get("module"))
    try:
        exc = pickle.loads(payload)
    except Exception:
        return errors.remote_error(ename, evalue, tb, error.get("module"))
    if not isinstance(exc, Exception):
        # KeyboardInterrupt, SystemExit, ...: raising those here would stop the client.
        return errors.TaskInterrupted(ename, evalue, tb)
    if tb:
        exc.__cause__ = errors.RemoteTraceback(tb)
    return exc


class ClientCore:
    """Requests, replies and results, correlated by message and task id.

    The controller gives the client a session in its ``welcome``; every later
    request carries it, and the controller's messages are taken only from the
    sessions it gave and only once each (a replay window per session).  When
    the controller answers ``unknown`` (it no longer knows the session), the
    request fails with :class:`~ipcluster.errors.UnknownSession` and a
    ``connect`` that opens a new session goes to :attr:`send_back`.

    **Resuming.**  A new session from a controller that gave us another one
    before means it restarted (or forgot us): every pending task is announced
    again (``fetch``: the controller adds us to its clients, or sends its
    stored result), and a task it does not know is submitted again from its
    kept payload -- payloads of pending tasks are kept up to ``keep_bytes``
    (64 MiB), the oldest let go first; a task whose payload was let go fails
    then with :class:`~ipcluster.errors.TaskLost`.  A ``submit`` answered
    ``unknown`` waits for that, instead of failing, when its payload is kept.
    """

    def __init__(self, key: bytes, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 keep_bytes: int = KEEP_PAYLOAD_BYTES) -> None:
        # The controller's replies can be large (engines() of a big cluster).
        self.codec = Codec(key, max_header=MAX_REPLY_HEADER_BYTES)
        #: The largest message the controller takes (``--max-message-size``, from the connection file).
        self.max_message_size = max_message_size
        self._lock = threading.Lock()
        self._task_prefix = os.urandom(8).hex()
        self._task_numbers = itertools.count()
        self._functions = FunctionPickles()  # the pickles of functions submitted again and again
        self._replies: dict[str, Callback] = {}
        # (Tuples, not lists: the garbage collector visits each object of a pending task.)
        self._results: dict[str, tuple] = {}  # task id -> callbacks waiting for its result
        self._running: dict[str, tuple] = {}  # task id -> callbacks waiting to hear it started
        self._windows: OrderedDict[str, ReplayWindow] = OrderedDict()
        self._reconnecting = False
        #: Pending tasks' submit fields and payloads, to submit again (``keep_bytes`` at most).
        self.keep_bytes = keep_bytes
        self._kept: OrderedDict[str, tuple] = OrderedDict()
        self._kept_size = 0
        #: Times this client re-announced its pending tasks to a restarted controller; tasks resubmitted.
        self.resumed = self.resubmitted = 0
        #: How the driver sends frames from within :meth:`received` (its I/O thread, or the reactor).
        self.send_back: Callable[[list], object] = lambda frames: None
        self.dropped = 0
        #: Live output of running tasks, to the futures that watch it (``client/output.py``).
        self.output = OutputWatch()
        #: Controller messages refused as replays or from a session this client was not given.
        self.refused = 0

    @property
    def session(self) -> str:
        """The session this client's requests carry ("" until the first ``welcome``)."""
        return self.codec.session

    def request(self, mtype: str, fields: dict, on_reply: Callback, payloads: Sequence[bytes] = ()) -> tuple[str, list]:
        """Frames for a request, with ``on_reply`` registered for its reply."""
        msg_id = self.codec.new_id()
        with self._lock:
            self._replies[msg_id] = on_reply
        return msg_id, self.codec.encode(mtype, fields, payloads, msg_id=msg_id)

    def new_task_id(self) -> str:
        """32 hex digits: this client's random half and a counter (no system call: no GIL hand-off)."""
        return f"{self._task_prefix}{next(self._task_numbers):016x}"

    def submit(
        self,
        fn: Callable,
        args: tuple,
        kwargs: dict,
        options: dict,
        on_result: Callable[[TaskResult], None],
        on_running: Optional[Callable[[str], None]] = None,
        task_id: Optional[str] = None,
    ) -> tuple[str, list]:
        """``(task_id, frames)`` for a task; the payload is cloudpickled here, its large buffers
        (numpy arrays, bytes, ...) kept out of band and sent uncopied (``transport.buffers``).

        ``options`` are the scheduling fields checked by :func:`submit_options`.
        There is no reply: a refused task fails through ``on_result``.
        ``on_running(engine)`` is called if the controller says it started.
        ``task_id`` is the task's id if the caller took one already (:meth:`new_task_id`).
        """
        extras = task_extras(fn)  # source lines for the remote traceback, if fn's are not in a file
        with futureinputs.collecting() as inputs:  # futures in the arguments: the engine gets their results
            payload, bufs = buffers.dumps((fn, args, kwargs, extras) if extras else (fn, args, kwargs),
                                          self._functions.known(fn))
        task_id = task_id or self.new_task_id()
        fields = dict(options, task=task_id, name=_name(fn), **input_options(options, inputs))
        payloads = (payload, *bufs)  # (kept: a tuple of bytes is no work for the garbage collector)
        frames = self.codec.encode("submit", fields, payloads)
        size = sum(len(frame) for frame in frames)
        if size > self.max_message_size:
            raise errors.PayloadTooLarge(
                f"the task's pickled function and arguments make a {size}-byte message (payload "
                f"{len(payload)} bytes and {len(bufs)} buffer(s)), over the controller's limit of "
                f"{self.max_message_size} bytes (--max-message-size)"
            )
        self.expect(task_id, on_result, on_running)
        self._keep(task_id, fields, payloads)
        return task_id, frames

    def _keep(self, task_id: str, fields: dict, payloads: tuple) -> None:
        size = sum(len(p) for p in payloads)
        with self._lock:
            if size > self.keep_bytes:
                return
            self._kept[task_id] = (fields, payloads, size)
            self._kept_size += size
            while self._kept_size > self.keep_bytes:
                _, (_, _, old) = self._kept.popitem(last=False)
                self._kept_size -= old

    def _let_go(self, task_id: str) -> None:
        """(Under the lock.)  The task's payload need not be kept any more."""
        kept = self._kept.pop(task_id, None)
        if kept is not None:
            self._kept_size -= kept[2]

    def waiting(self) -> bool:
        """Whether anything waits for the controller (a reply or a task's result)."""
        with self._lock:
            return bool(self._replies or self._results)

    def expect(self, task_id: str, on_result: Callable[[TaskResult], None],
               on_running: Optional[Callable[[str], None]] = None) -> None:
        """Route the result of ``task_id`` to ``on_result`` too (submit and any fetches), and
        the news that it started to ``on_running``."""
        with self._lock:
            self._results[task_id] = self._results.get(task_id, ()) + (on_result,)
            if on_running is not None:
                self._running[task_id] = self._running.get(task_id, ()) + (on_running,)

    def forget(self, msg_id: Optional[str] = None, task_id: Optional[str] = None, on_result=None) -> None:
        """Stop waiting for a reply, or for a task's result (only ``on_result``'s wait, if given)."""
        with self._lock:
            if msg_id is not None:
                self._replies.pop(msg_id, None)
            if task_id is not None:
                waiting = self._results.get(task_id, ())
                if on_result is not None and on_result in waiting:
                    at = waiting.index(on_result)
                    waiting = self._results[task_id] = waiting[:at] + waiting[at + 1:]
                if on_result is None or not waiting:
                    self._results.pop(task_id, None)
                    self._running.pop(task_id, None)
                    self._let_go(task_id)

    def expire(self, msg_id: str, error: BaseException) -> None:
        """No reply came in time: fail the waiter."""
        with self._lock:
            callback = self._replies.pop(msg_id, None)
        if callback is not None:
            callback(False, error)

    def fail_all(self, error: BaseException) -> None:
        with self._lock:
            replies, self._replies = self._replies, {}
            results, self._results = self._results, {}
            self._running = {}
            self._kept.clear()
            self._kept_size = 0
        for callback in replies.values():
            callback(False, error)
        for task_id, waiting in results.items():
            for on_result in waiting:
                on_result(_Failed(task_id, error))

    def received(self, frames: Sequence[bytes]) -> None:
        """Handle one message from the controller (a batch: each of its envelopes, in order)."""
        if frames and batch.is_batch(frames[0]):
            try:
                envelopes = batch.unpack(frames)
            except BadMessage:
                self.dropped += 1
                return
            for envelope in envelopes:
                self._received(envelope)
            return
        self._received(frames)

    def _received(self, frames: Sequence[bytes]) -> None:
        try:
            msg = self.codec.decode(frames, PEER_ACCEPTS["client"])
        except BadMessage:
            self.dropped += 1
            return
        if msg.type == "welcome":
            self._welcome(msg)
            return
        window = self._windows.get(msg.session)
        if window is None or not window.accept(msg.seq):
            self.refused += 1
        elif msg.type == "unknown":
            self._session_lost(msg)
        elif msg.type == "reply":
            with self._lock:
                callback = self._replies.pop(msg["ref"], None)
            if callback is None:
                return
            if msg["ok"]:
                callback(True, msg.get("value"))
            else:
                callback(False, errors.from_wire(msg.get("error")))
        elif msg.type == "output":
            self.output.received(msg)
        elif msg.type == "running":
            with self._lock:
                waiting = self._running.pop(msg["task"], ())
            for on_running in waiting:
                on_running(str(msg.get("engine") or ""))
        else:
            self._result(msg)

    def _welcome(self, msg: Message) -> None:
        """The answer to one of our ``connect`` requests: its session is ours from now on."""
        with self._lock:
            callback = self._replies.pop(msg["ref"], None)
        if callback is None:
            return  # not ours, or answered already (a replay)
        window = self._windows.pop(msg.session, None) or ReplayWindow()
        window.accept(msg.seq)
        self._windows[msg.session] = window
        while len(self._windows) > KEEP_SESSIONS:
            self._windows.popitem(last=False)
        before, self.codec.session = self.codec.session, msg.session
        callback(True, msg.fields)
        if before and before != msg.session:
            self._resume()

    def _resume(self) -> None:
        """A new session after another one: announce every pending task again (``fetch``)."""
        with self._lock:
            pending = list(self._results)
        if pending:
            self.resumed += 1
        for task_id in pending:
            _, frames = self.request("fetch", {"task": task_id}, lambda ok, value, t=task_id: self._refetched(t, ok, value))
            self.send_back(frames)

    def _refetched(self, task_id: str, ok: bool, value: Any) -> None:
        """The answer to a re-announcing ``fetch``: resubmit a task the controller does not know."""
        if ok or isinstance(value, errors.UnknownSession):
            return  # pending (or done: its result came first); or yet another session: resumed again then
        with self._lock:
            kept = self._kept.get(task_id) if isinstance(value, errors.BadRequest) else None
        if kept is not None:
            fields, payloads, _ = kept
            self.resubmitted += 1
            self.send_back(self.codec.encode("submit", fields, payloads))
            return
        if isinstance(value, errors.BadRequest):
            value = errors.TaskLost(
                f"the restarted controller does not know task {task_id} (it had not stored it) and this client "
                f"did not keep its payload (it keeps {self.keep_bytes} bytes of payloads): submit it again"
            )
        self._fail_task(task_id, value)

    def _fail_task(self, task_id: str, error: BaseException) -> None:
        with self._lock:
            waiting = self._results.pop(task_id, ())
            self._running.pop(task_id, None)
            self._let_go(task_id)
        for on_result in waiting:
            on_result(_Failed(task_id, error))

    def _session_lost(self, msg: Message) -> None:
        """The controller does not know our session: fail that request, open a new session."""
        error = errors.UnknownSession(
            "the controller no longer knows this client's session (it restarted, or forgot the session "
            "to bound its memory); the request was not run: send it again"
        )
        task_id, ref = msg.get("task"), msg.get("ref")
        if isinstance(task_id, str):
            with self._lock:
                kept = task_id in self._kept
            if not kept:  # (a kept one is re-announced, and submitted again, with the new session)
                self._fail_task(task_id, error)
        elif isinstance(ref, str):
            self.expire(ref, error)
        if self._reconnecting or msg.session != self.codec.session:
            return
        self._reconnecting = True
        msg_id = self.codec.new_id()
        with self._lock:
            self._replies[msg_id] = self._reconnected
        self.send_back(self.codec.encode("connect", {}, msg_id=msg_id, session=""))

    def _reconnected(self, ok: bool, value: Any) -> None:
        self._reconnecting = False

    def _result(self, msg: Message) -> None:
        with self._lock:
            waiting = self._results.pop(msg["task"], None)
            self._running.pop(msg["task"], None)
            self._let_go(msg["task"])
        if not waiting:
            self.dropped += 1
            return
        try:
            result = TaskResult(msg)
        except Exception as e:
            result = _Failed(msg["task"], errors.ClusterError(f"could not decode the result: {e!r}"))
        for on_result in waiting:
            on_result(result)


class _Failed:
    """A TaskResult made on this side (controller gone, undecodable result)."""

    engine = started = finished = None
    ok = False
    stdout = stderr = ""

    def __init__(self, task_id: str, error: BaseException) -> None:
        self.task_id, self.value = task_id, error
