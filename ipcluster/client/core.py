"""The client's protocol logic, free of I/O: both clients drive it.

``ClientCore`` builds signed requests, remembers what waits for which reply
or result, and turns incoming messages into calls of those callbacks with a
value or an exception.  The blocking :class:`~ipcluster.client.Client` runs it
on a background thread with pyzmq; :class:`~ipcluster.client.TwistedClient`
runs it on the reactor with txZMQ.
"""
from __future__ import annotations

import pickle
import threading
import uuid
from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence

import cloudpickle

from ipcluster import errors, futureinputs
from ipcluster.client.inputs import input_options
from ipcluster.client.output import OutputWatch
from ipcluster.sourcelines import task_extras
from ipcluster.limits import MAX_NAME, MAX_RETRIES, MAX_SECONDS, is_retries, is_seconds, is_text
from ipcluster.transport import DEFAULT_MAX_MESSAGE_SIZE, batch
from ipcluster.transport.replay import ReplayWindow
from ipcluster.transport.wire import MAX_REPLY_HEADER_BYTES, PEER_ACCEPTS, BadMessage, Codec, Message

#: Sessions whose messages a client still takes (the current one and those before it).
KEEP_SESSIONS = 8

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
        self.value = pickle.loads(payload) if self.ok else _remote_exception(msg.get("error"), payload)


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
    """

    def __init__(self, key: bytes, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        # The controller's replies can be large (engines() of a big cluster).
        self.codec = Codec(key, max_header=MAX_REPLY_HEADER_BYTES)
        #: The largest message the controller takes (``--max-message-size``, from the connection file).
        self.max_message_size = max_message_size
        self._lock = threading.Lock()
        self._replies: dict[str, Callback] = {}
        self._results: dict[str, list] = {}  # task id -> callbacks waiting for its result
        self._running: dict[str, list] = {}  # task id -> callbacks waiting to hear it started
        self._windows: OrderedDict[str, ReplayWindow] = OrderedDict()
        self._reconnecting = False
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

    def submit(
        self,
        fn: Callable,
        args: tuple,
        kwargs: dict,
        options: dict,
        on_result: Callable[[TaskResult], None],
        on_running: Optional[Callable[[str], None]] = None,
    ) -> tuple[str, list]:
        """``(task_id, frames)`` for a task; the payload is cloudpickled here.

        ``options`` are the scheduling fields checked by :func:`submit_options`.
        There is no reply: a refused task fails through ``on_result``.
        ``on_running(engine)`` is called if the controller says it started.
        """
        extras = task_extras(fn)  # source lines for the remote traceback, if fn's are not in a file
        with futureinputs.collecting() as inputs:  # futures in the arguments: the engine gets their results
            payload = cloudpickle.dumps((fn, args, kwargs, extras) if extras else (fn, args, kwargs))
        task_id = uuid.uuid4().hex
        fields = dict(options, task=task_id, name=_name(fn), **input_options(options, inputs))
        frames = self.codec.encode("submit", fields, [payload])
        size = sum(len(frame) for frame in frames)
        if size > self.max_message_size:
            raise errors.PayloadTooLarge(
                f"the task's pickled function and arguments make a {size}-byte message (payload "
                f"{len(payload)} bytes), over the controller's limit of {self.max_message_size} bytes "
                "(--max-message-size)"
            )
        self.expect(task_id, on_result, on_running)
        return task_id, frames

    def waiting(self) -> bool:
        """Whether anything waits for the controller (a reply or a task's result)."""
        with self._lock:
            return bool(self._replies or self._results)

    def expect(self, task_id: str, on_result: Callable[[TaskResult], None],
               on_running: Optional[Callable[[str], None]] = None) -> None:
        """Route the result of ``task_id`` to ``on_result`` too (submit and any fetches), and
        the news that it started to ``on_running``."""
        with self._lock:
            self._results.setdefault(task_id, []).append(on_result)
            if on_running is not None:
                self._running.setdefault(task_id, []).append(on_running)

    def forget(self, msg_id: Optional[str] = None, task_id: Optional[str] = None, on_result=None) -> None:
        """Stop waiting for a reply, or for a task's result (only ``on_result``'s wait, if given)."""
        with self._lock:
            if msg_id is not None:
                self._replies.pop(msg_id, None)
            if task_id is not None:
                waiting = self._results.get(task_id, [])
                if on_result is not None and on_result in waiting:
                    waiting.remove(on_result)
                if on_result is None or not waiting:
                    self._results.pop(task_id, None)
                    self._running.pop(task_id, None)

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
        self.codec.session = msg.session
        callback(True, msg.fields)

    def _session_lost(self, msg: Message) -> None:
        """The controller does not know our session: fail that request, open a new session."""
        error = errors.UnknownSession(
            "the controller no longer knows this client's session (it restarted, or forgot the session "
            "to bound its memory); the request was not run: send it again"
        )
        task_id, ref = msg.get("task"), msg.get("ref")
        if isinstance(task_id, str):
            with self._lock:
                waiting = self._results.pop(task_id, [])
                self._running.pop(task_id, None)
            for on_result in waiting:
                on_result(_Failed(task_id, error))
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

    def __init__(self, task_id: str, error: BaseException) -> None:
        self.task_id = task_id
        self.engine = None
        self.ok = False
        self.value = error
        self.stdout = self.stderr = ""
        self.started = self.finished = None


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
