"""The engine's link to the controller, as a state machine.

The control thread owns the sockets and feeds this machine what happens on them; the
machine decides what it means, on its own clock: when a silent controller counts as gone,
when to give up looking for one, when an exit command's grace for the running task is over.

=============  ===================================================  ==============
state          input                                                next state
=============  ===================================================  ==============
idle           start                                                registering
registering,   registered                                           connected
lost           attempt_failed (for ``reconnect_timeout``: give up)  (same), gave_up
connected      contact; tick (silent for the limit: lost)           connected, lost
connected      forgotten                                            lost
connected      exit_requested                                       exiting
exiting        contact, exit_requested; tick (also: the deadline)   exiting, lost
exiting        forgotten                                            lost
any but        stop                                                 stopped
stopped
=============  ===================================================  ==============

* **registering** / **lost**: looking for a controller (at start / after losing one). Each
  failed attempt is fed in with its reason; a reason is printed once, not at every attempt.
  After ``reconnect_timeout`` seconds of this the machine gives up (``gave_up``).
* **connected**: every message from the controller is ``contact``; ``tick`` (fed on every
  turn of the control thread's loop) judges silence: no word for the silence limit means the
  controller is gone, and so does ``forgotten`` (it answered ``unknown``).  Losing the
  controller closes the channels without ``bye`` and drops the queued tasks.
* **exiting**: as connected, after an ``exit`` command; ``tick`` also interrupts a task still
  running when the command's timeout has passed.  Losing the controller here goes to ``lost``
  like anywhere else (the engine re-registers; its queue stays closed, so it leaves once the
  running task ends).
* **stopped**: the engine is leaving; no input makes sense any more.

``channels()`` answers in every state but stopped.  An input that makes no sense in a state
raises ``automat.NoTransition``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from automat import TypeMachineBuilder, pep614

#: The silence limit when ``--controller-timeout`` is not given: this many heartbeat periods...
SILENT_PERIODS = 10
#: ...but at least this many seconds.
MIN_SILENCE_LIMIT = 5.0


class Clock(Protocol):
    """What the link needs of a clock: ``twisted.internet.task.Clock`` provides it."""

    def seconds(self) -> float:
        """The current time, in seconds."""


class MonotonicClock:
    """The production clock: ``time.monotonic``."""

    def seconds(self) -> float:
        return time.monotonic()


class LinkChannels(Protocol):
    """What the link needs of the channels of one registration (``channels.Channels``)."""

    #: The controller's heartbeat period, from its ``registered`` reply.
    period: float
    #: Where the controller is (for the diagnostics).
    controller: str

    def close(self, bye: Optional[str]) -> None:
        """Close the channels; say ``bye`` with this reason first, unless it is None."""


class Link(Protocol):
    """The inputs of the link machine."""

    def start(self) -> None:
        """The control thread begins: look for a controller."""

    def registered(self, channels: LinkChannels) -> None:
        """A controller accepted this engine; ``channels`` are connected to it."""

    def attempt_failed(self, why: Optional[str]) -> None:
        """A registration attempt failed: refused, or no connection file (``why``), or no answer (None)."""

    def contact(self) -> None:
        """A valid message arrived from the controller."""

    def forgotten(self, reason: str) -> None:
        """The controller answered ``unknown``: it has no active record of this engine."""

    def tick(self, running: bool) -> None:
        """Time has passed (with a task ``running`` or not): judge silence and the exit deadline."""

    def exit_requested(self, timeout: float, running: bool) -> None:
        """The ``exit`` command: a task ``running`` now is interrupted after ``timeout`` seconds."""

    def stop(self, reason: str) -> None:
        """The engine is leaving (for ``reason``, sent in the ``bye``)."""

    def channels(self) -> Optional[LinkChannels]:
        """The channels to serve while connected (or exiting); None while looking for a controller."""

    def _silence(self, reason: str) -> None:
        """(Internal, from ``tick``.) The controller has been silent for the limit."""

    def _give_up(self, why: str) -> None:
        """(Internal, from ``attempt_failed``.) No controller accepted this engine in time."""


@dataclass
class LinkCore:
    """What the link machine is given, and the registration it is connected through."""

    engine_id: str
    clock: Clock
    #: How long to look for a controller (at start, or after losing one) before giving up.
    reconnect_timeout: float
    #: Silence after which the controller counts as gone (None: from its heartbeat period).
    controller_timeout: Optional[float]
    say: Callable[[str], None]
    #: The link was lost: drop the queued tasks (the controller retries or fails them).
    drop_queued: Callable[[], None]
    #: No controller accepted this engine in time: leave (exit code 3), for this reason.
    give_up: Callable[[str], None]
    #: The exit command's timeout passed with a task still running: interrupt it.
    interrupt: Callable[[], None]
    #: Set in connected and exiting only, by ``registered``; cleared when the link ends.
    session: Optional[Session] = None


@dataclass
class Session:
    """One registration, while connected or exiting."""

    channels: LinkChannels
    last_contact: float
    silence_limit: float


@dataclass
class Search:
    """Looking for a controller: since when, and the last reason printed."""

    since: float
    complaint: Optional[str] = None


@dataclass
class ExitDeadline:
    """When the running task is interrupted (None: no task ran at the command, or done)."""

    at: Optional[float]


def _search_from_start(link: Link, core: LinkCore) -> Search:
    return Search(core.clock.seconds())


def _search_after_loss(link: Link, core: LinkCore, reason: str) -> Search:
    return Search(core.clock.seconds())


def _deadline(link: Link, core: LinkCore, timeout: float, running: bool) -> ExitDeadline:
    return ExitDeadline(core.clock.seconds() + timeout if running else None)


def _judge_silence(link: Link, core: LinkCore) -> None:
    session = core.session
    assert session is not None
    waited = core.clock.seconds() - session.last_contact
    if waited > session.silence_limit:
        link._silence(f"no word from the controller for {waited:.1f} s")


def _lose(core: LinkCore, reason: str) -> None:
    session, core.session = core.session, None
    assert session is not None
    core.say(f"{reason}; re-registering")
    session.channels.close(None)
    core.drop_queued()


def _say_bye(core: LinkCore, reason: str) -> None:
    session, core.session = core.session, None
    assert session is not None
    session.channels.close(reason)


def _build():
    builder = TypeMachineBuilder(Link, LinkCore)
    idle = builder.state("idle")
    registering = builder.state("registering", _search_from_start)
    lost = builder.state("lost", _search_after_loss)
    connected = builder.state("connected")
    exiting = builder.state("exiting", _deadline)
    gave_up = builder.state("gave_up")
    stopped = builder.state("stopped")

    idle.upon(Link.start).to(registering).returns(None)

    # -- looking for a controller ------------------------------------------------------

    # (Automat hands a state's data to every output leaving it for a state without data.)
    @pep614(registering.upon(Link.registered).to(connected))
    @pep614(lost.upon(Link.registered).to(connected))
    def accepted(link: Link, core: LinkCore, search: Search, channels: LinkChannels) -> None:
        limit = core.controller_timeout or max(MIN_SILENCE_LIMIT, SILENT_PERIODS * channels.period)
        core.session = Session(channels, core.clock.seconds(), limit)
        core.say(f"engine {core.engine_id} registered with controller at {channels.controller}")

    @pep614(registering.upon(Link.attempt_failed).loop())
    @pep614(lost.upon(Link.attempt_failed).loop())
    def failed(link: Link, core: LinkCore, search: Search, why: Optional[str]) -> None:
        if why is not None and why != search.complaint:
            search.complaint = why
            core.say(f"{why} (will keep trying for {core.reconnect_timeout:g} s)")
        waited = core.clock.seconds() - search.since
        if waited > core.reconnect_timeout:
            link._give_up(f"no controller accepted this engine for {waited:.0f} s")

    @pep614(registering.upon(Link._give_up).to(gave_up))
    @pep614(lost.upon(Link._give_up).to(gave_up))
    def giving_up(link: Link, core: LinkCore, search: Search, why: str) -> None:
        core.give_up(why)

    # -- connected ---------------------------------------------------------------------

    @pep614(connected.upon(Link.contact).loop())
    @pep614(exiting.upon(Link.contact, nodata=True).loop())
    def heard(link: Link, core: LinkCore) -> None:
        assert core.session is not None
        core.session.last_contact = core.clock.seconds()

    @pep614(connected.upon(Link.tick).loop())
    def judged(link: Link, core: LinkCore, running: bool) -> None:
        _judge_silence(link, core)

    @pep614(exiting.upon(Link.tick).loop())
    def judged_exiting(link: Link, core: LinkCore, deadline: ExitDeadline, running: bool) -> None:
        if deadline.at is not None and core.clock.seconds() > deadline.at and running:
            deadline.at = None
            core.say("exit timeout passed with a task still running; interrupting it")
            core.interrupt()
        _judge_silence(link, core)

    @pep614(connected.upon(Link.forgotten).to(lost))
    @pep614(exiting.upon(Link.forgotten, nodata=True).to(lost))
    def forgotten(link: Link, core: LinkCore, reason: str) -> None:
        _lose(core, f"the controller does not know this engine ({reason})")

    @pep614(connected.upon(Link._silence).to(lost))
    @pep614(exiting.upon(Link._silence, nodata=True).to(lost))
    def silent(link: Link, core: LinkCore, reason: str) -> None:
        _lose(core, reason)

    connected.upon(Link.exit_requested).to(exiting).returns(None)

    @pep614(exiting.upon(Link.exit_requested).loop())
    def exit_again(link: Link, core: LinkCore, deadline: ExitDeadline, timeout: float, running: bool) -> None:
        if running:
            deadline.at = core.clock.seconds() + timeout

    @pep614(connected.upon(Link.channels).loop())
    @pep614(exiting.upon(Link.channels, nodata=True).loop())
    def serving(link: Link, core: LinkCore) -> Optional[LinkChannels]:
        assert core.session is not None
        return core.session.channels

    # -- leaving -----------------------------------------------------------------------

    @pep614(connected.upon(Link.stop).to(stopped))
    def leaving(link: Link, core: LinkCore, reason: str) -> None:
        _say_bye(core, reason)

    @pep614(exiting.upon(Link.stop).to(stopped))
    def leaving_after_exit(link: Link, core: LinkCore, deadline: ExitDeadline, reason: str) -> None:
        _say_bye(core, reason)

    for plain in (idle, gave_up):
        plain.upon(Link.stop).to(stopped).returns(None)
        plain.upon(Link.channels).loop().returns(None)
    for searching in (registering, lost):
        searching.upon(Link.stop, nodata=True).to(stopped).returns(None)
        searching.upon(Link.channels, nodata=True).loop().returns(None)

    return builder.build()


_machine = _build()


def new_link(
    engine_id: str,
    clock: Clock,
    reconnect_timeout: float,
    controller_timeout: Optional[float],
    say: Callable[[str], None],
    drop_queued: Callable[[], None],
    give_up: Callable[[str], None],
    interrupt: Callable[[], None],
) -> Link:
    """A link machine, idle until :meth:`Link.start`."""
    return _machine(
        LinkCore(engine_id, clock, reconnect_timeout, controller_timeout, say, drop_queued, give_up, interrupt)
    )
