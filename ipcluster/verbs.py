"""The control verbs -- beat, abort, signal, exit, reset -- defined once.

:data:`VERBS` is the one table the controller's ``EngineControl`` and client
front end, the engine, both clients and the manhole take their verbs from:
each verb's arguments (and how they are checked), its reply, and how long a
client waits for that reply.  ``IEngineControl`` (``ipcluster.interfaces``)
documents the same verbs as Deferred-returning methods.
"""
from __future__ import annotations

import signal as _signal
from typing import Any, Callable, Mapping, Optional

import attr

from ipcluster import errors, limits

Check = Callable[[str, Any], Any]


def seconds(name: str, value: Any) -> Optional[float]:
    """A non-negative number of seconds, at most ``limits.MAX_SECONDS`` (or None)."""
    if value is None:
        return None
    if not limits.is_seconds(value):
        raise errors.BadRequest(f"{name} must be a number of seconds from 0 to {limits.MAX_SECONDS:.0f}")
    return float(value)


def task_id(name: str, value: Any) -> str:
    """A task id: printable text of 1-200 characters."""
    if not limits.is_task_id(value):
        raise errors.BadRequest(f"{name} must be a task id (printable text of 1-{limits.MAX_TASK_ID} characters)")
    return value


def optional_task_id(name: str, value: Any) -> Optional[str]:
    return None if value is None else task_id(name, value)


def signum(name: str, value: Any) -> int:
    """A signal number (1-127), or a signal's name (``"SIGINT"``, ``"int"``)."""
    if isinstance(value, str):
        upper = value.upper()
        try:
            return int(getattr(_signal.Signals, upper if upper.startswith("SIG") else "SIG" + upper))
        except AttributeError:
            raise errors.BadRequest(f"no signal named {value!r}") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 128:
        raise errors.BadRequest(f"{name} must be a signal number")
    return int(value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise errors.BadRequest(f"{name} must be true or false")
    return value


_REQUIRED = object()


@attr.s(frozen=True, slots=True)
class Arg:
    """One argument of a verb: its name, its check, its default (``_REQUIRED`` if none)."""

    name: str = attr.ib()
    check: Check = attr.ib()
    default: Any = attr.ib(default=None)
    #: Internal arguments are the controller's own (the scheduler's ``release``): a client
    #: may not send them.
    internal: bool = attr.ib(default=False)
    #: The name of the matching ``IEngineControl`` parameter, where it differs.
    param: Optional[str] = attr.ib(default=None)
    #: Whether the controller passes it on to the engine (a reply timeout stays with the controller).
    to_engine: bool = attr.ib(default=True)

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@attr.s(frozen=True, slots=True)
class Verb:
    """A control verb: its arguments, its reply, and how a client waits for it."""

    name: str = attr.ib()
    args: tuple = attr.ib()
    reply: str = attr.ib()
    #: ``exit``'s ``timeout`` is the time a running task is given before the engine
    #: interrupts it, and the reply comes once the engine has left; every other verb's
    #: ``timeout`` is how long the controller waits for the engine's reply.
    waits_for_exit: bool = attr.ib(default=False)

    def parse(self, given: Mapping[str, Any], internal: bool = False) -> dict:
        """The checked arguments, defaults filled in; BadRequest for unknown or bad ones."""
        known = {a.name: a for a in self.args if internal or not a.internal}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise errors.BadRequest(f"{self.name}: unknown argument(s) {', '.join(map(repr, unknown))}")
        out = {}
        for arg in known.values():
            if arg.name in given:
                out[arg.name] = arg.check(f"{self.name}: {arg.name}", given[arg.name])
            elif arg.required:
                raise errors.BadRequest(f"{self.name}: {arg.name} is required")
            else:
                out[arg.name] = arg.default
        return out

    def call(self, control: Any, args: Mapping[str, Any]) -> Any:
        """Call this verb's ``IEngineControl`` method with parsed ``args``: a Deferred."""
        return getattr(control, self.name)(**{a.param or a.name: args[a.name] for a in self.args if a.name in args})

    def engine_args(self, args: Mapping[str, Any]) -> dict:
        """What the controller sends the engine of parsed ``args`` (unset options left out)."""
        return {
            a.name: args[a.name]
            for a in self.args
            if a.to_engine and args.get(a.name) is not None and not (a.default is False and args[a.name] is False)
        }

    def wire_args(self, **given: Any) -> dict:
        """The arguments a client sends: checked, with the unset optional ones left out."""
        checked = self.parse({k: v for k, v in given.items() if v is not None})
        return {k: v for k, v in checked.items() if k in given and given[k] is not None}

    def client_wait(self, args: Mapping[str, Any], client_timeout: float) -> float:
        """How long a client waits for the reply: the engine's time plus one round of slack."""
        timeout = args.get("timeout")
        if self.waits_for_exit:
            # the ack (controller's default timeout), then up to ``timeout`` for the task, then
            # the controller's wait for the engine to leave.
            return 2 * (timeout if timeout is not None else DEFAULT_EXIT_TIMEOUT) + 3 * client_timeout
        return (timeout if timeout is not None else client_timeout) + client_timeout


DEFAULT_EXIT_TIMEOUT = 5.0

_TIMEOUT = Arg("timeout", seconds, to_engine=False)

#: Every control verb, by name, in the order they are documented.
VERBS: dict[str, Verb] = {
    v.name: v
    for v in (
        Verb("beat", (_TIMEOUT,), reply="round-trip time in seconds (float)"),
        Verb(
            "abort",
            (Arg("task", task_id, _REQUIRED, param="task_id"), _TIMEOUT, Arg("release", flag, False, internal=True)),
            reply='"aborted", "running" or "unknown" ("released" for the scheduler\'s release)',
        ),
        Verb(
            "signal",
            (Arg("signum", signum, _REQUIRED), Arg("task", optional_task_id, param="task_id"), _TIMEOUT),
            reply="True if the signal was sent, False if the task was not running",
        ),
        Verb("exit", (Arg("timeout", seconds, DEFAULT_EXIT_TIMEOUT),), reply="None, once the engine has left",
             waits_for_exit=True),
        Verb("reset", (_TIMEOUT,), reply="the number of queued tasks dropped (int)"),
    )
}


def verb(name: Any) -> Verb:
    """The verb called ``name``; BadRequest naming the known ones otherwise."""
    found = VERBS.get(name) if isinstance(name, str) else None
    if found is None:
        raise errors.BadRequest(f"unknown control verb {name!r}; known: {', '.join(VERBS)}")
    return found
