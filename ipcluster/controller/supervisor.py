"""Supervision of one of the controller's own engines: restarted when it dies, with
back-off and a restart budget, and recycled when it outgrows its memory limit.

One :class:`EngineSupervisor` per local engine; its life is an Automat machine::

    idle --launch--> running --died--> backing off --due--> running
                      |   |                ^
                      |   +--over_limit--> recycling --died--+
                      |
                      +--exhausted--> given up     (the restart budget is spent)
                      +--exited-----> exited       (exit code 0: it left on purpose)

    recycling --exhausted--> given up
    stop: idle, backing off, given up, exited --> stopped;
          running, recycling --> stopping --died / exhausted / exited--> stopped

*Back-off*: the first restart comes ``first_delay`` seconds after a death, each
quick death after that doubles the wait up to ``max_delay``; an engine that
lived ``stable_after`` seconds starts again from ``first_delay``.  *Budget*: at
most ``limit`` restarts within any ``window`` seconds; the death after that is
final (``given up``).  ``limit`` 0 turns restarting off.  While the controller
stops (``stopping``, ``stopped``) nothing is restarted.

Every input is a method of :class:`SupervisorInputs`; an input that makes no
sense in a state raises ``automat.NoTransition``.  The restart timer is the
``backing off`` state's data and the SIGKILL timer the ``recycling`` state's:
armed on entry, cancelled on every way out.  Time comes from the injected clock.
"""
from __future__ import annotations

import signal
from collections import deque
from typing import Callable, Optional, Protocol

import attr
from automat import NoTransition, TypeMachineBuilder
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["RestartPolicy", "DEFAULT_RESTART_LIMIT", "DEFAULT_RESTART_WINDOW", "EngineSupervisor", "SupervisorInputs", "NoTransition", "format_size",
           "IDLE", "RUNNING", "RECYCLING", "BACKING_OFF", "GIVEN_UP", "EXITED", "STOPPING", "STOPPED"]

IDLE, RUNNING, RECYCLING, BACKING_OFF = "idle", "running", "recycling", "backing off"
GIVEN_UP, EXITED, STOPPING, STOPPED = "given up", "exited", "stopping", "stopped"
#: The phases in which the engine is, or will soon be, back (a process runs, or a restart is due).
COMING = frozenset({RUNNING, RECYCLING, BACKING_OFF})

#: At most this many restarts of one engine within ``DEFAULT_RESTART_WINDOW`` seconds.
DEFAULT_RESTART_LIMIT = 10
DEFAULT_RESTART_WINDOW = 300.0

log = Logger(namespace="ipcluster.controller.supervisor")


@attr.s(frozen=True, slots=True)
class RestartPolicy:
    """How a local engine is restarted (see ``twistd ipcluster --help``)."""

    limit: int = attr.ib(default=DEFAULT_RESTART_LIMIT)  # restarts allowed within ``window``; 0: never restart
    window: float = attr.ib(default=DEFAULT_RESTART_WINDOW)
    first_delay: float = attr.ib(default=0.5)
    max_delay: float = attr.ib(default=30.0)
    stable_after: float = attr.ib(default=30.0)  # an engine that lived this long backs off from the start
    memory_limit: Optional[int] = attr.ib(default=None)  # bytes of RSS; None: no limit
    kill_after: float = attr.ib(default=5.0)  # seconds between SIGTERM and SIGKILL when recycling


def format_size(n: float) -> str:
    """``2.15 GB``, ``300 MB``: bytes in decimal units, as ``--engine-memory-limit`` reads them."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


class SupervisorInputs(Protocol):
    """What can happen to a supervised engine."""

    def launch(self) -> None:
        """The controller starts: start the engine's process."""

    def died(self, why: str) -> None:
        """Its process ended badly and the budget allows a restart."""

    def exhausted(self, why: str) -> None:
        """Its process ended badly and the restart budget is spent."""

    def exited(self, why: str) -> None:
        """Its process exited with code 0 (``exit`` verb, SIGTERM): it left on purpose."""

    def due(self) -> None:
        """The back-off is over: start it again."""

    def over_limit(self, rss: int) -> None:
        """Its resident memory (``rss`` bytes) is over the limit."""

    def stop(self) -> None:
        """The controller stops: restart nothing from now on."""


@attr.s(slots=True)
class Timer:
    """A state's timer (the restart, or the SIGKILL of a recycled engine)."""

    call: Optional[IDelayedCall] = attr.ib(default=None)

    def cancel(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


@attr.s(eq=False)
class EngineSupervisor:
    """Keeps one local engine running: its hooks start, signal and condemn its process.

    ``start(engine_id)`` returns a Deferred (or raises) as ``ILauncher.start``
    does; ``signal(engine_id, signum)`` signals its process; ``condemn(engine_id,
    reason)`` declares the running engine dead (before it is recycled, so that
    its task fails with the real reason); ``on_change()`` is called when the
    engine stops coming back, or comes back into play.  Call
    :meth:`process_ended` when its process ends.
    """

    engine_id: str = attr.ib()
    policy: RestartPolicy = attr.ib()
    clock: IReactorTime = attr.ib(repr=False)
    start: Callable[[str], defer.Deferred] = attr.ib(repr=False)
    signal: Callable[[str, int], bool] = attr.ib(repr=False)
    condemn: Callable[[str, str], None] = attr.ib(default=lambda engine_id, reason: None, repr=False)
    on_change: Callable[[], None] = attr.ib(default=lambda: None, repr=False)
    # Written by the machine's outputs only:
    phase: str = attr.ib(default=IDLE, init=False)
    restarts: int = attr.ib(default=0, init=False)  # restarts so far
    started_at: Optional[float] = attr.ib(default=None, init=False)
    next_restart_at: Optional[float] = attr.ib(default=None, init=False)
    last_exit: str = attr.ib(default="", init=False)  # why its process last ended
    recycled_for: Optional[str] = attr.ib(default=None, init=False)  # why it is being recycled
    _quick_deaths: int = attr.ib(default=0, init=False, repr=False)
    _recent: deque = attr.ib(factory=deque, init=False, repr=False)  # times of restarts within the window
    lifecycle: SupervisorInputs = attr.ib(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.lifecycle = _SupervisorMachine(self)

    @property
    def coming(self) -> bool:
        """Whether the engine runs or will run again soon (a process, or a restart pending)."""
        return self.phase in COMING

    def budget_left(self) -> int:
        """Restarts still allowed within the window, from now."""
        horizon = self.clock.seconds() - self.policy.window
        while self._recent and self._recent[0] <= horizon:
            self._recent.popleft()
        return max(0, self.policy.limit - len(self._recent))

    def process_ended(self, why: str, clean: bool) -> None:
        """Its process ended (``clean``: exit code 0)."""
        if self.recycled_for is not None:
            why = f"{self.recycled_for} ({why})"
        elif clean:
            self.lifecycle.exited(why)
            return
        if self.budget_left() > 0:
            self.lifecycle.died(why)
        else:
            self.lifecycle.exhausted(why)

    def describe(self) -> dict:
        """What the status source shows of the supervision."""
        return {
            "supervisor": "off" if self.policy.limit == 0 and self.phase == GIVEN_UP else self.phase,
            "restarts": self.restarts,
            "next_restart_at": self.next_restart_at,
            "last_exit": self.last_exit,
        }

    def _spawn(self) -> None:
        self.phase = RUNNING
        self.started_at = self.clock.seconds()
        self.next_restart_at = None
        self.recycled_for = None
        try:
            d = self.start(self.engine_id)
        except Exception as e:  # (ILauncher.start returns a Deferred; a bare raise is handled the same)
            d = defer.fail(e)
        d.addErrback(self._not_started)

    def _not_started(self, failure) -> None:
        log.failure("could not start engine {engine}", failure, engine=self.engine_id)
        self.process_ended(f"could not start it: {failure.getErrorMessage()}", clean=False)


# -- outputs ---------------------------------------------------------------------------


def _launch(lifecycle: SupervisorInputs, sup: EngineSupervisor) -> None:
    sup._spawn()
    sup.on_change()


def _arm_restart(lifecycle: SupervisorInputs, sup: EngineSupervisor, why: str) -> Timer:
    """Entering ``backing off``: count the restart, pick the delay, arm the timer."""
    policy, now = sup.policy, sup.clock.seconds()
    lived = now - (sup.started_at if sup.started_at is not None else now)
    if lived >= policy.stable_after:
        sup._quick_deaths = 0
    delay = min(policy.first_delay * 2 ** sup._quick_deaths, policy.max_delay)
    sup._quick_deaths += 1
    sup._recent.append(now)
    sup.restarts += 1
    sup.phase = BACKING_OFF
    sup.last_exit = why
    sup.next_restart_at = now + delay
    log.warn(
        "engine {engine} died after {lived:.1f} s ({why}); restarting it in {delay:g} s "
        "(restart {n}; {left} more allowed within {window:g} s)",
        engine=sup.engine_id, lived=lived, why=why, delay=delay, n=sup.restarts,
        left=sup.budget_left(), window=policy.window,
    )
    return Timer(sup.clock.callLater(delay, lifecycle.due))


def _restart(lifecycle: SupervisorInputs, sup: EngineSupervisor, timer: Timer) -> None:
    timer.cancel()
    log.info("restarting engine {engine} (restart {n})", engine=sup.engine_id, n=sup.restarts)
    sup._spawn()


def _give_up(lifecycle: SupervisorInputs, sup: EngineSupervisor, why: str) -> None:
    sup.phase = GIVEN_UP
    sup.last_exit = why
    sup.next_restart_at = None
    policy = sup.policy
    if policy.limit == 0:
        because = "supervision is off (--restart-limit 0)"
    else:
        because = (f"{policy.limit} restarts within {policy.window:g} s are used up "
                   "(--restart-limit, --restart-window); it stays down")
    log.error("engine {engine} died ({why}); not restarting it: {because}", engine=sup.engine_id, why=why, because=because)
    sup.on_change()


def _exited(lifecycle: SupervisorInputs, sup: EngineSupervisor, why: str) -> None:
    sup.phase = EXITED
    sup.last_exit = why
    log.info("engine {engine} exited on purpose ({why}); not restarting it", engine=sup.engine_id, why=why)
    sup.on_change()


def _arm_kill(lifecycle: SupervisorInputs, sup: EngineSupervisor, rss: int) -> Timer:
    """Entering ``recycling``: SIGKILL it if SIGTERM has not ended it in time."""
    return Timer(sup.clock.callLater(sup.policy.kill_after, sup.signal, sup.engine_id, signal.SIGKILL))


def _recycle(lifecycle: SupervisorInputs, sup: EngineSupervisor, rss: int) -> None:
    limit = sup.policy.memory_limit or 0
    reason = f"exceeded its memory limit (RSS {format_size(rss)} > {format_size(limit)})"
    sup.phase = RECYCLING
    sup.recycled_for = reason
    log.warn(
        "engine {engine} {reason}: restarting it (SIGTERM, SIGKILL after {grace:g} s)",
        engine=sup.engine_id, reason=reason, grace=sup.policy.kill_after,
    )
    sup.condemn(sup.engine_id, reason)
    sup.signal(sup.engine_id, signal.SIGTERM)


def _died_recycled(lifecycle: SupervisorInputs, sup: EngineSupervisor, timer: Timer, why: str) -> None:
    timer.cancel()  # (the backing-off state's timer is armed by its own factory)


def _given_up_recycled(lifecycle: SupervisorInputs, sup: EngineSupervisor, timer: Timer, why: str) -> None:
    timer.cancel()
    _give_up(lifecycle, sup, why)


def _stopping(lifecycle: SupervisorInputs, sup: EngineSupervisor) -> None:
    sup.phase = STOPPING


def _stopping_recycled(lifecycle: SupervisorInputs, sup: EngineSupervisor, timer: Timer) -> None:
    timer.cancel()  # the launcher's stop SIGTERMs and SIGKILLs every engine now
    sup.phase = STOPPING


def _stopped(lifecycle: SupervisorInputs, sup: EngineSupervisor, *args) -> None:
    sup.phase = STOPPED
    sup.next_restart_at = None


def _stopped_backing_off(lifecycle: SupervisorInputs, sup: EngineSupervisor, timer: Timer) -> None:
    timer.cancel()
    _stopped(lifecycle, sup)


def _build():
    builder = TypeMachineBuilder(SupervisorInputs, EngineSupervisor)
    idle = builder.state(IDLE)
    running = builder.state(RUNNING)
    recycling = builder.state(RECYCLING, _arm_kill)
    backing_off = builder.state(BACKING_OFF, _arm_restart)
    given_up = builder.state(GIVEN_UP)
    exited = builder.state(EXITED)
    stopping = builder.state(STOPPING)
    stopped = builder.state(STOPPED)
    i = SupervisorInputs
    idle.upon(i.launch).to(running)(_launch)
    running.upon(i.died).to(backing_off).returns(None)
    running.upon(i.exhausted).to(given_up)(_give_up)
    running.upon(i.exited).to(exited)(_exited)
    running.upon(i.over_limit).to(recycling)(_recycle)
    running.upon(i.stop).to(stopping)(_stopping)
    recycling.upon(i.over_limit).loop().returns(None)  # still over while SIGTERM takes effect
    recycling.upon(i.died).to(backing_off)(_died_recycled)
    recycling.upon(i.exhausted).to(given_up)(_given_up_recycled)
    recycling.upon(i.stop).to(stopping)(_stopping_recycled)
    backing_off.upon(i.due).to(running)(_restart)
    backing_off.upon(i.stop).to(stopped)(_stopped_backing_off)
    for state in (idle, given_up, exited):
        state.upon(i.stop).to(stopped)(_stopped)
    for event in (i.died, i.exhausted, i.exited):
        stopping.upon(event).to(stopped)(_stopped)
    stopping.upon(i.stop).loop().returns(None)
    stopped.upon(i.stop).loop().returns(None)  # stopping twice is harmless
    return builder.build()


_SupervisorMachine = _build()
