"""Exceptions that cross the wire by name.

The controller reports errors to clients as ``{"type": name, "message": text}``;
:func:`from_wire` turns that back into one of these classes (or a plain
:class:`ClusterError` for names it does not know).
"""
from __future__ import annotations


class ClusterError(Exception):
    """Base class of every error ipcluster raises on purpose."""


class NoController(ClusterError):
    """No controller could be found or reached."""


class UnknownEngine(ClusterError):
    """The engine id names no engine the controller knows."""


class EngineDead(ClusterError):
    """The engine was declared dead (heartbeat lost or process exited)."""


class EngineDied(ClusterError):
    """A task's engine died or left before the task finished."""


class NoEngines(ClusterError):
    """No engine was alive, and none was coming back, for ``--no-engine-timeout`` seconds."""


class ControlTimeout(ClusterError):
    """A control command got no reply within its timeout."""


class TaskAborted(ClusterError):
    """A queued task was removed by ``abort`` or ``reset`` before it ran."""


class TaskCancelled(TaskAborted):
    """A client cancelled the task before it started; it never runs.

    A client's future for it is *cancelled* (``Future.cancelled()`` is True,
    ``result()`` raises ``concurrent.futures.CancelledError``) rather than
    failed with this error.
    """


class BadRequest(ClusterError):
    """The controller refused a malformed or invalid request."""


class DependencyError(ClusterError):
    """A task's dependency failed, so the task did not run."""


class TaskTimeout(ClusterError):
    """The task ran longer than its ``timeout`` and was interrupted."""


class PayloadTooLarge(ClusterError):
    """A message would be larger than the controller accepts (its ``--max-message-size``).

    Raised by ``submit`` for a task whose pickled function and arguments are too
    large, and the error of a task whose result is: the message names both sizes.
    """


class UnknownSession(ClusterError):
    """The controller no longer knows this client's session, so it did not run the request.

    It restarted, or it forgot the session to bound its memory.  The client opens
    a new session by itself; send the request again.
    """


class TaskLost(ClusterError):
    """The task was in flight when the controller stopped, and cannot be run again.

    No engine reported it within the recovery grace period and its payload was
    too large to be kept in the store (``--store-max-payload``); or, on the
    client's side, the restarted controller did not know it and the client had
    not kept its payload either.
    """


class ResultNotKept(ClusterError):
    """The task finished, but its result was larger than the store keeps (``--store-max-result``).

    It went to the clients waiting for it then; ``fetch`` cannot get it later.
    """


class RemoteError(ClusterError):
    """A task raised on its engine and the exception could not be re-raised as-is.

    ``ename`` is the remote exception's class name, ``evalue`` its message and
    ``traceback`` the remote traceback as text.
    """

    def __init__(self, ename: str, evalue: str, traceback: str = "") -> None:
        super().__init__(f"{ename}: {evalue}" if evalue else ename)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback

    def __str__(self) -> str:
        head = f"{self.ename}: {self.evalue}" if self.evalue else self.ename
        if self.traceback:
            return f"{head}\n\nRemote traceback:\n{self.traceback}"
        return head


_REMOTE_CLASSES: dict = {}


def remote_error(ename: str, evalue: str, traceback: str = "", module: object = None) -> RemoteError:
    """A RemoteError for an exception this side cannot rebuild, of a subclass named after it.

    ``except RemoteError`` still catches it; its class is called ``ename`` (in a
    module named ``ipcluster.errors.remote.<module>``), so the client's traceback
    names the original class, and ``.module`` holds the original's module.
    """
    name = ename if ename.isidentifier() else "RemoteError"
    where = f"ipcluster.errors.remote.{module}" if isinstance(module, str) and module else "ipcluster.errors.remote"
    cls = _REMOTE_CLASSES.get((name, where))
    if cls is None:
        if len(_REMOTE_CLASSES) > 1000:
            _REMOTE_CLASSES.clear()
        cls = _REMOTE_CLASSES[(name, where)] = type(name, (RemoteError,), {"__module__": where})
    error = cls(ename, evalue, traceback)
    error.module = module if isinstance(module, str) else None
    return error


class TaskInterrupted(RemoteError):
    """The task was interrupted on its engine (``KeyboardInterrupt``, ``SystemExit``).

    Re-raising those in the client would look like the user pressed Ctrl-C, so
    they arrive wrapped; ``ename`` says which it was.
    """


class RemoteTraceback(Exception):
    """Carries a remote traceback as the ``__cause__`` of a re-raised exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


_BY_NAME = {
    cls.__name__: cls
    for cls in (
        ClusterError,
        NoController,
        UnknownEngine,
        EngineDead,
        EngineDied,
        NoEngines,
        ControlTimeout,
        TaskAborted,
        TaskCancelled,
        BadRequest,
        DependencyError,
        TaskTimeout,
        PayloadTooLarge,
        UnknownSession,
        TaskLost,
        ResultNotKept,
    )
}


def to_wire(exc: BaseException) -> dict:
    """The wire form of an error: its class name and message."""
    return {"type": type(exc).__name__, "message": str(exc), "origin": "ipcluster"}


def from_wire(error: object) -> ClusterError:
    """Rebuild an error sent by :func:`to_wire`; unknown names become ClusterError."""
    if not isinstance(error, dict):
        return ClusterError(f"malformed error from controller: {error!r}")
    name = str(error.get("type", "ClusterError"))
    message = str(error.get("message", ""))
    cls = _BY_NAME.get(name)
    if cls is None:
        return ClusterError(f"{name}: {message}")
    return cls(message)
