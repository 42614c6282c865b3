"""A task, and its lifecycle as an Automat machine.

::

    waiting --dependencies_met--> ready --assign--> assigned --start--> running
                                    ^                 |   ^               ^
                                    |         release |   | kept          | start
                                    |                 v   |               |
                                    +---released--- releasing ------------+

    ``retry`` (from assigned, releasing, running) --> ready, one retry fewer
    ``put_back`` (from assigned, releasing) --> ready, retries intact
    Into done: result (assigned, releasing, running), cancel (waiting, ready; releasing when
    its engine gave it back for a cancel), dependency_failed (waiting), stranded (waiting, ready),
    engine_lost (assigned, releasing, running), time_out (running), abandon (all but done)

Every input is a method of :class:`TaskInputs`, called on ``task.lifecycle``;
an input that makes no sense in the task's state raises
``automat.NoTransition`` (the scheduler turns that into a logged drop).
Outputs only keep the task's own fields; what the world sees (queues, the
store, clients) is the scheduler's business.

``releasing`` is a state of the machine (a release request is out to the
engine: stealing, or cancelling a prefetched task) but not a public state:
``task.state`` reads ``assigned`` then, and ``task.releasing`` is True.  The
task's timeout timer is the ``running`` state's data: armed on entry, cancelled
on every way out.
"""
from __future__ import annotations

import weakref
from typing import Callable, Optional, Protocol

import attr
from automat import NoTransition, TypeMachineBuilder
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = [
    "WAITING", "READY", "ASSIGNED", "RUNNING", "DONE", "RELEASING", "RECOVERING",
    "DEFAULT_RETRIES", "NoTransition", "Task", "TaskInputs",
]

DEFAULT_RETRIES = 1

#: The public states of a task, as counted and shown.
WAITING, READY, ASSIGNED, RUNNING, DONE = "waiting", "ready", "assigned", "running", "done"
#: The machine's one state that is not public: assigned, with a release request out.
RELEASING = "releasing"
#: What a recovered task waits on (in ``unmet``) until the engines reported it or the recovery
#: grace is over (``scheduler/recovery.py``); no task id can be this (ids are printable).
RECOVERING = "\x00recovering"


class TaskInputs(Protocol):
    """What can happen to a task: the inputs of its lifecycle."""

    def dependencies_met(self) -> None:
        """Every task it depends on succeeded (or counts as met): it may run."""

    def assign(self, engine_id: str) -> None:
        """It was sent to engine ``engine_id``."""

    def start(self, started_at: float) -> None:
        """Its engine reported that it started (at ``started_at``, controller time)."""

    def release(self) -> None:
        """Its engine is asked to give it back unstarted (to move it, or to cancel it)."""

    def released(self) -> None:
        """Its engine gave it back unstarted; it is ready to go elsewhere."""

    def kept(self) -> None:
        """Its engine did not give it back (it had started, or did not answer)."""

    def retry(self) -> None:
        """Its engine died or left while running it; it runs again elsewhere, one retry fewer."""

    def put_back(self) -> None:
        """Its engine died or left with it queued behind another: it waits again, retries intact."""

    def result(self) -> None:
        """Its engine sent its result."""

    def cancel(self) -> None:
        """A client withdrew it before it started."""

    def dependency_failed(self) -> None:
        """A task it depends on failed (and it does not run after failures)."""

    def stranded(self) -> None:
        """Every engine it may run on is gone."""

    def engine_lost(self) -> None:
        """Its engine died or left and it may not run again (no retries, or nowhere to go)."""

    def time_out(self) -> None:
        """It ran past its timeout."""

    def abandon(self) -> None:
        """The controller stops: the task will not finish here."""


def _no_deadline(task: "Task") -> None:
    raise RuntimeError(f"task {task.id} timed out with nobody to tell")


@attr.s(slots=True, eq=False)
class Task:
    """One task in the controller: what was asked, and where it is in its life.

    ``phase`` (the machine's state), ``engine``, ``attempts``, ``started_at``
    and ``retries`` are written only by the lifecycle's outputs; ``unmet`` by
    the dependency graph; ``clients`` by the scheduler.
    """

    id: str = attr.ib()
    payload: bytes = attr.ib(repr=False)
    submitted_at: float = attr.ib()
    name: str = attr.ib(default="")
    engines: Optional[frozenset] = attr.ib(default=None)
    retries: int = attr.ib(default=DEFAULT_RETRIES)
    timeout: Optional[float] = attr.ib(default=None)
    run_after_failed: bool = attr.ib(default=False)
    clients: list = attr.ib(factory=list)
    unmet: set = attr.ib(factory=set)
    #: Tasks whose results this one takes as arguments (``scheduler/inputs.py``), and their
    #: value payloads until it is ready, then packed into one frame for its engine.
    inputs: tuple = attr.ib(default=())
    input_values: dict = attr.ib(factory=dict, repr=False)
    input_frame: Optional[bytes] = attr.ib(default=None, repr=False)
    #: The payload's out-of-band buffers (``transport.buffers``): routed as received, never copied.
    buffers: tuple = attr.ib(default=(), repr=False)
    #: Arms the timeout timer (needed with a ``timeout``).
    clock: Optional[IReactorTime] = attr.ib(default=None, repr=False)
    #: Called with the task when its timeout timer fires (it still runs: the caller sends ``time_out``).
    on_timeout: Callable[["Task"], None] = attr.ib(default=_no_deadline, repr=False)
    phase: str = attr.ib(default=WAITING, init=False)
    engine: Optional[str] = attr.ib(default=None, init=False)
    started_at: Optional[float] = attr.ib(default=None, init=False)
    attempts: int = attr.ib(default=0, init=False)
    lifecycle: TaskInputs = attr.ib(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.timeout is not None and self.clock is None:
            raise ValueError(f"task {self.id} has a timeout but no clock to time it")
        # The machine holds the task through a weak proxy: a task and its machine would
        # otherwise be a reference cycle, and finished tasks would wait for the cyclic
        # garbage collector instead of leaving memory when the scheduler lets go of them.
        self.lifecycle = _TaskMachine(weakref.proxy(self))

    @property
    def state(self) -> str:
        """The public state: waiting, ready, assigned (releasing included), running or done."""
        return ASSIGNED if self.phase == RELEASING else self.phase

    @property
    def releasing(self) -> bool:
        """Whether a release request for this task is out to its engine."""
        return self.phase == RELEASING

    def may_run_on(self, engine_id: str) -> bool:
        return self.engines is None or engine_id in self.engines

    def _deadline_passed(self) -> None:
        self.on_timeout(self)


@attr.s(slots=True)
class Deadline:
    """The running state's data: the call that reports the task's timeout (None: no timeout)."""

    call: Optional[IDelayedCall] = attr.ib(default=None)

    def cancel(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


def _arm(lifecycle: TaskInputs, task: Task, started_at: float) -> Deadline:
    """Entering ``running``: the timeout counts from the start."""
    if task.timeout is None:
        return Deadline()
    remaining = max(0.0, task.timeout - (task.clock.seconds() - started_at))
    # (task is the machine's proxy; the bound method is the task's own.)
    return Deadline(task.clock.callLater(remaining, task._deadline_passed))


# -- outputs: each keeps the task's fields true to the state it enters -------------------


def _ready(lifecycle: TaskInputs, task: Task) -> None:
    task.phase = READY


def _assigned(lifecycle: TaskInputs, task: Task, engine_id: str) -> None:
    task.phase = ASSIGNED
    task.engine = engine_id
    task.attempts += 1


def _started(lifecycle: TaskInputs, task: Task, started_at: float) -> None:
    task.phase = RUNNING
    task.started_at = started_at


def _releasing(lifecycle: TaskInputs, task: Task) -> None:
    task.phase = RELEASING


def _given_back(lifecycle: TaskInputs, task: Task) -> None:
    task.phase = READY
    task.engine = None


def _kept(lifecycle: TaskInputs, task: Task) -> None:
    task.phase = ASSIGNED


def _retried(lifecycle: TaskInputs, task: Task) -> None:
    task.phase = READY
    task.engine = None
    task.started_at = None
    task.retries -= 1


def _retried_running(lifecycle: TaskInputs, task: Task, deadline: Deadline) -> None:
    deadline.cancel()
    _retried(lifecycle, task)


def _done(lifecycle: TaskInputs, task: Task) -> None:
    task.phase = DONE


def _done_running(lifecycle: TaskInputs, task: Task, deadline: Deadline) -> None:
    deadline.cancel()
    task.phase = DONE


def _build():
    builder = TypeMachineBuilder(TaskInputs, Task)
    waiting = builder.state(WAITING)
    ready = builder.state(READY)
    assigned = builder.state(ASSIGNED)
    releasing = builder.state(RELEASING)
    running = builder.state(RUNNING, _arm)
    done = builder.state(DONE)
    i = TaskInputs
    transitions = [
        (waiting, i.dependencies_met, ready, _ready),
        (ready, i.assign, assigned, _assigned),
        (assigned, i.start, running, _started),
        (releasing, i.start, running, _started),  # it started before the release reached it
        (assigned, i.release, releasing, _releasing),
        (releasing, i.released, ready, _given_back),
        (releasing, i.kept, assigned, _kept),
        (assigned, i.retry, ready, _retried),
        (releasing, i.retry, ready, _retried),
        (running, i.retry, ready, _retried_running),
        (assigned, i.put_back, ready, _given_back),
        (releasing, i.put_back, ready, _given_back),
        (waiting, i.cancel, done, _done),
        (ready, i.cancel, done, _done),
        (releasing, i.cancel, done, _done),  # given back for a cancel
        (waiting, i.dependency_failed, done, _done),
        (waiting, i.stranded, done, _done),
        (ready, i.stranded, done, _done),
        (assigned, i.result, done, _done),  # finished before it was reported started
        (releasing, i.result, done, _done),
        (running, i.result, done, _done_running),
        (assigned, i.engine_lost, done, _done),
        (releasing, i.engine_lost, done, _done),
        (running, i.engine_lost, done, _done_running),
        (running, i.time_out, done, _done_running),
    ]
    for state in (waiting, ready, assigned, releasing):
        transitions.append((state, i.abandon, done, _done))
    transitions.append((running, i.abandon, done, _done_running))
    for source, event, target, output in transitions:
        source.upon(event).to(target)(output)
    return _indexed(builder.build())


def _indexed(machine):
    """Look transitions up by (state, input) instead of Automat's scan of all of them.

    Automat 25 finds a transition by walking its whole set and comparing
    states field by field: about 6 us an input for this machine, and a task
    takes four or five inputs while the controller runs thousands of tasks a
    second.  The table holds the very transitions Automat built; an input it
    lacks still raises ``NoTransition``.
    """
    automaton = machine.__automat_automaton__
    # Keyed by the state's identity: hashing Automat's state dataclasses costs more than the lookup.
    table = {(id(old), event): (new, tuple(outputs)) for old, event, new, outputs in automaton.allTransitions()}

    def output_for_input(state, event):
        try:
            return table[id(state), event]
        except KeyError:
            raise NoTransition(state=state, symbol=event) from None

    automaton.outputForInput = output_for_input
    return machine


_TaskMachine = _build()
