"""What a manhole session finds in its namespace: the live objects and the operator's helpers.

The helpers for the control verbs (``beat``, ``abort``, ``signal``, ``exit``,
``reset``) are made from the one verbs table, :data:`ipcluster.verbs.VERBS`:
their parameters, argument checks and replies come from there.  ``status()``
prints the engines table of :mod:`ipcluster.textstatus`, read through the
controller's ``IStatusSource`` (``controller.status``).
"""
from __future__ import annotations

import inspect
import pydoc
from collections.abc import Mapping
from typing import Callable, Iterator, Optional

from ipcluster.textstatus import LIVE, engines_table
from ipcluster.verbs import VERBS, Verb

#: The console's spelling of the engines table: lower-case titles, the unit on each RTT.
CONSOLE_HEADER = ("id", "host", "pid", "state", "rtt", "task", "running", "busy-for", "queued")

#: What each verb does, for its helper's documentation (the reply comes from the verbs table).
SUMMARIES = {
    "beat": "Round trip through engine ``eid``'s control thread",
    "abort": "Remove queued ``task`` from engine ``eid``",
    "signal": 'Send ``signum`` (a number or a name like "INT") to engine ``eid``; with ``task``, only if it runs it',
    "exit": "Ask engine ``eid`` to exit (a running task gets ``timeout`` s)",
    "reset": "Clear engine ``eid``'s namespace and queue",
}

#: The helpers in the order help() lists them: exit, which ends the engine, last.
HELPER_NAMES = ("help", "status", "task", *sorted(VERBS, key=lambda name: VERBS[name].waits_for_exit))


class LiveEngines(Mapping):
    """Live engines (alive or busy): ``engines["e0"]`` is that engine's ``IEngineControl``.

    An int ``i`` means the engine with id ``e{i}`` (how local engines are named).
    Always current: engines that join later show up, dead ones disappear.
    """

    def __init__(self, registry, control_for: Callable) -> None:
        self._registry = registry
        self._control_for = control_for

    def _live(self) -> dict:
        return {record.id: record for record in self._registry.live()}

    @staticmethod
    def _id(key) -> str:
        return f"e{key}" if isinstance(key, int) and not isinstance(key, bool) else str(key)

    def __getitem__(self, key):
        engine_id = self._id(key)
        if engine_id not in self._live():
            record = self._registry.get(engine_id)
            why = f"it is {record.state}" if record is not None else "no such engine"
            raise KeyError(f"{engine_id!r}: {why}; live engines: {', '.join(self._live()) or 'none'}")
        return self._control_for(engine_id)

    def __contains__(self, key) -> bool:
        return self._id(key) in self._live()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._live()))

    def __len__(self) -> int:
        return len(self._live())

    def __repr__(self) -> str:
        live = self._live()
        inner = ", ".join(f"{eid!r}: <{record.state}>" for eid, record in live.items())
        return f"<live engines {{{inner}}}>"




def _rtt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def verb_helper(verb: Verb, engines: LiveEngines) -> Callable:
    """The console's function for ``verb``: ``beat(eid, timeout=None)`` and so on.

    Its arguments are checked as the verbs table says (``errors.BadRequest``
    otherwise); it returns the Deferred of that engine's ``IEngineControl``.
    """
    public = [arg for arg in verb.args if not arg.internal]
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    signature = inspect.Signature(
        [inspect.Parameter("eid", positional)]
        + [inspect.Parameter(a.name, positional, default=inspect.Parameter.empty if a.required else a.default) for a in public]
    )

    def helper(*args, **kwargs):
        given = signature.bind(*args, **kwargs).arguments  # a TypeError for a wrong call, as for any function
        eid = given.pop("eid")
        checked = verb.parse(given)
        # IEngineControl's methods take the verb's arguments in the table's order.
        return getattr(engines[eid], verb.name)(*(checked[a.name] for a in public))

    helper.__signature__ = signature
    helper.__name__ = helper.__qualname__ = verb.name
    summary = SUMMARIES.get(verb.name, f"The {verb.name} control verb on engine ``eid``")
    helper.__doc__ = f"{summary}; fires with {verb.reply}."
    return helper


def _help_text(helpers: dict) -> str:
    lines = [
        "ipcluster manhole: Python inside the running controller (full access to it).",
        "",
        "  controller  the Controller service (config, registry, control, scheduler, ...)",
        "  registry    every engine's record, dead ones included: registry.get(eid)",
        '  engines     live engines: engines["e0"] (or engines[0]) is its IEngineControl',
        "  tasks       tasks in flight, by id (finished ones are in the store: task(id))",
        "  scheduler   the task scheduler; store: the task store (records of finished tasks)",
        "",
    ]
    for name in HELPER_NAMES:
        fn = helpers[name]
        lines.append(f"  {name}{inspect.signature(fn)}")
        lines.append(f"      {(inspect.getdoc(fn) or '').splitlines()[0]}")
    lines += [
        "",
        'Control verbs return Deferreds: the console shows "<Deferred #n>" and later',
        '"Deferred #n called back: <result>" (or "failed: <error>").  Ctrl-D or quit() leaves.',
    ]
    return "\n".join(lines)


def make_namespace(controller) -> dict:
    """A fresh console namespace for one session on ``controller``."""
    engines = LiveEngines(controller.registry, controller.control.control_for)

    def status():
        """Print a table of engines (id, host, pid, state, heartbeat RTT, running task, busy-for) and queue depths."""
        source = controller.status
        described, tasks = source.engines(), source.tasks()
        for line in engines_table(described, header=CONSOLE_HEADER, rtt=_rtt):
            print(line)
        live = sum(1 for e in described if e["state"] in LIVE)
        print(
            f"{live} live engine(s); {tasks['in_flight']} task(s) in flight; {tasks['ready']} ready to run, "
            f"{tasks['waiting']} waiting; {tasks['completed']} completed, {tasks['failed']} failed, "
            f"{tasks['retried']} retried"
        )

    def task(task_id):
        """The task store's record of ``task_id`` (a Deferred firing with a dict, or None if unknown)."""
        if controller.store is None:
            raise RuntimeError("this controller has no task store (open)")
        return controller.store.get(str(task_id))

    def help(obj=None):
        """List the names and helpers here; help(obj) shows obj's documentation."""
        print(_help_text(helpers) if obj is None else pydoc.render_doc(obj, title="%s", renderer=pydoc.plaintext))

    helpers = {"help": help, "status": status, "task": task}
    for fn in helpers.values():
        fn.__qualname__ = fn.__name__
    helpers.update((name, verb_helper(verb, engines)) for name, verb in VERBS.items())
    return {
        "controller": controller,
        "registry": controller.registry,
        "engines": engines,
        "tasks": controller.scheduler.tasks,
        "scheduler": controller.scheduler,
        "store": controller.store,
        **helpers,
    }
