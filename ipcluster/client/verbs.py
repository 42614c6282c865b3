"""The control verbs as client methods, for both clients, from the one table in ``ipcluster.verbs``.

A client mixes in :class:`ControlVerbs` and provides ``timeout`` and
``_call(mtype, fields, wait)``: the blocking client's returns the reply's
value, the Twisted client's a Deferred of it.
"""
from __future__ import annotations

from typing import Any, Optional

from ipcluster.verbs import DEFAULT_EXIT_TIMEOUT, VERBS


def task_id_of(task: Any) -> str:
    """A task id from a future (anything with ``task_id``) or an id."""
    return str(getattr(task, "task_id", task))


class ControlVerbs:
    """beat, abort, signal, exit and reset, sent through the controller to one engine (and
    ``tasks``, the controller's own listing of what it holds)."""

    timeout: float

    def _call(self, mtype: str, fields: dict, wait: float) -> Any:  # pragma: no cover - provided by the client
        raise NotImplementedError

    def _verb(self, engine: str, name: str, **given: Any) -> Any:
        verb = VERBS[name]
        args = verb.wire_args(**given)
        fields = {"engine": str(engine), "verb": name, "args": args}
        return self._call("control", fields, verb.client_wait(args, self.timeout))

    def tasks(self, limit: int = 20):
        """What the controller holds: ``{"counts": {waiting, ready, assigned, running, completed,
        failed, retried, stolen}, "queued": [{task, name, state, submitted_at, engines}, ...]
        (the first ``limit`` tasks waiting or ready in the controller), "queued_total": n}``."""
        return self._call("tasks", {"limit": int(limit)}, self.timeout)

    def beat(self, engine: str, timeout: Optional[float] = None):
        """Round trip through the engine's Python control thread, in seconds."""
        return self._verb(engine, "beat", timeout=timeout)

    def abort(self, engine: str, task, timeout: Optional[float] = None):
        """Remove a queued task (a future or an id): ``"aborted"``, ``"running"`` or ``"unknown"``."""
        return self._verb(engine, "abort", task=task_id_of(task), timeout=timeout)

    def signal(self, engine: str, signum, task=None, timeout: Optional[float] = None):
        """Send a signal (a number or a name such as ``"INT"``); with ``task``, only while it runs."""
        return self._verb(engine, "signal", signum=signum, task=None if task is None else task_id_of(task),
                          timeout=timeout)

    def exit(self, engine: str, timeout: float = DEFAULT_EXIT_TIMEOUT):
        """Ask an engine to exit (a running task gets ``timeout`` s); returns once it has left."""
        return self._verb(engine, "exit", timeout=float(timeout))

    def reset(self, engine: str, timeout: Optional[float] = None):
        """Clear the engine's namespace and queue; the number of queued tasks dropped."""
        return self._verb(engine, "reset", timeout=timeout)
