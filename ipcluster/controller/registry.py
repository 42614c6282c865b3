"""The Registry: which engines exist, and the one place their state changes.

States::

    registering --first pong--> alive <--> busy
         |                        |         |
         +--purged (no pong)      +--> dead <+  (record kept for ``dead_ttl`` s, or until replaced)
                                  +--> left (clean exit, record removed)

``busy`` means the heart (native, GIL-free) answers but the Python control
channel does not: the engine's interpreter is held.  A busy engine is alive and
is never failed for being busy.
"""
from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Callable, Iterator, Optional

import attr
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

REGISTERING = "registering"
ALIVE = "alive"
BUSY = "busy"
DEAD = "dead"
LEFT = "left"
ACTIVE_STATES = frozenset({REGISTERING, ALIVE, BUSY})
LIVE_STATES = frozenset({ALIVE, BUSY})
#: Seconds a dead engine's record stays (``--dead-engine-ttl``).
DEFAULT_DEAD_ENGINE_TTL = 300.0


class EngineEvent(str, enum.Enum):
    """What the registry announces to its listeners (a ``str``: ``EngineEvent.DEAD == "dead"``)."""

    REGISTERING = "registering"  # phase one of registration: recorded, not yet counted
    JOINED = "joined"  # first heart pong: the engine counts
    BUSY = "busy"  # heart answers, interpreter silent
    ALIVE = "alive"  # busy no more
    DEAD = "dead"  # heart silent, or its process ended
    LEFT = "left"  # said bye (clean exit), or re-registered by the same process
    PURGED = "purged"  # registration never completed

    def __str__(self) -> str:
        return self.value


#: The events after which an engine is gone (its tasks and commands fail or move).
GONE_EVENTS = frozenset({EngineEvent.DEAD, EngineEvent.LEFT, EngineEvent.PURGED})


class DuplicateEngine(Exception):
    """Another live engine process already holds this engine id."""


@attr.s(slots=True, eq=False)
class EngineRecord:
    """What the controller knows of one engine."""

    id: str = attr.ib()
    instance: str = attr.ib()
    host: str = attr.ib()
    pid: int = attr.ib()
    registered_at: float = attr.ib()
    state: str = attr.ib(default=REGISTERING)
    local: bool = attr.ib(default=False)
    joined_at: Optional[float] = attr.ib(default=None)
    last_pong_beat: int = attr.ib(default=-1)
    last_pong_at: Optional[float] = attr.ib(default=None)
    rtt: Optional[float] = attr.ib(default=None)
    misses: int = attr.ib(default=0)
    last_control_at: Optional[float] = attr.ib(default=None)
    busy_since: Optional[float] = attr.ib(default=None)
    running_task: Optional[str] = attr.ib(default=None)
    task_started_at: Optional[float] = attr.ib(default=None)
    queued: int = attr.ib(default=0)
    ended_at: Optional[float] = attr.ib(default=None)
    reason: str = attr.ib(default="")

    @property
    def identity(self) -> bytes:
        return self.id.encode()

    def describe(self, now: float) -> dict:
        """A plain dict for clients and status views."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "state": self.state,
            "rtt": self.rtt,
            "busy_for": (now - self.busy_since) if self.state == BUSY and self.busy_since is not None else None,
            "running_task": self.running_task,
            "task_running_for": (now - self.task_started_at) if self.task_started_at is not None else None,
            "queued": self.queued,
            "registered_at": self.registered_at,
            "reason": self.reason,
        }


Listener = Callable[[EngineEvent, EngineRecord, str], None]


class Registry:
    """Engines by id, with every state change announced to listeners.

    Listeners are called as ``listener(event, record, reason)`` where event is
    one of ``registering``, ``joined``, ``busy``, ``alive``, ``dead``,
    ``left`` or ``purged``.
    """

    log = Logger()

    def __init__(self, keep_dead: int = 1000, clock: Optional[IReactorTime] = None, dead_ttl: Optional[float] = None) -> None:
        if dead_ttl is not None and clock is None:
            raise ValueError("a dead-engine TTL needs a clock")
        self._engines: OrderedDict[str, EngineRecord] = OrderedDict()
        self._listeners: list[Listener] = []
        self._keep_dead = keep_dead
        self.clock = clock
        self.dead_ttl = dead_ttl
        #: Dead records this says to keep stay past their TTL (a local engine its supervisor gave up on).
        self.keep_dead: Callable[[EngineRecord], bool] = lambda record: False
        self._expiries: dict[EngineRecord, IDelayedCall] = {}

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, event: EngineEvent, record: EngineRecord, reason: str = "") -> None:
        for listener in list(self._listeners):
            try:
                listener(event, record, reason)
            except Exception:
                # One listener's bug must not keep the others (or the caller) from the news.
                self.log.failure("listener failed on {event} of engine {engine}", event=event, engine=record.id)

    # -- queries -------------------------------------------------------------

    def get(self, engine_id: str) -> Optional[EngineRecord]:
        return self._engines.get(engine_id)

    def __iter__(self) -> Iterator[EngineRecord]:
        return iter(list(self._engines.values()))

    def __len__(self) -> int:
        return len(self._engines)

    def active(self) -> list[EngineRecord]:
        """Engines registering, alive or busy (the ones the heart monitor pings)."""
        return [r for r in self._engines.values() if r.state in ACTIVE_STATES]

    def any_active(self) -> bool:
        """Whether some engine is registering, alive or busy."""
        return any(r.state in ACTIVE_STATES for r in self._engines.values())

    def live(self) -> list[EngineRecord]:
        """Engines that joined and are not dead: alive or busy."""
        return [r for r in self._engines.values() if r.state in LIVE_STATES]

    # -- transitions ---------------------------------------------------------

    def register(
        self, engine_id: str, instance: str, host: str, pid: int, now: float, local: bool = False
    ) -> EngineRecord:
        """Begin registering an engine (phase one); it counts once it pongs.

        The same process registering again (same instance) replaces its old
        record, which leaves.  A dead record with the same id is replaced.
        Another process holding a live id raises :class:`DuplicateEngine`.
        """
        old = self._engines.get(engine_id)
        if old is not None:
            if old.state in ACTIVE_STATES and old.instance != instance:
                raise DuplicateEngine(
                    f"engine id {engine_id!r} is held by pid {old.pid} on {old.host} "
                    f"({old.state}); it must exit or be declared dead first"
                )
            if old.state in ACTIVE_STATES:
                self.remove(old, "re-registered by the same process", now)
            else:
                self._cancel_expiry(self._engines.pop(engine_id))
        record = EngineRecord(engine_id, instance, host, pid, registered_at=now, local=local)
        self._engines[engine_id] = record
        self._emit(EngineEvent.REGISTERING, record)
        return record

    def mark_alive(self, record: EngineRecord, now: float) -> None:
        if record.state == REGISTERING:
            record.state = ALIVE
            record.joined_at = now
            self._emit(EngineEvent.JOINED, record)
        elif record.state == BUSY:
            since = record.busy_since
            record.state = ALIVE
            record.busy_since = None
            self._emit(EngineEvent.ALIVE, record, f"after busy {now - since:.1f} s" if since is not None else "")

    def mark_busy(self, record: EngineRecord, since: float, reason: str) -> None:
        if record.state == ALIVE:
            record.state = BUSY
            record.busy_since = since
            self._emit(EngineEvent.BUSY, record, reason)

    def mark_dead(self, record: EngineRecord, reason: str, now: float) -> None:
        """Declare an engine dead; its record stays (state ``dead``) until replaced."""
        if record.state not in ACTIVE_STATES or self._engines.get(record.id) is not record:
            return
        record.state = DEAD
        record.reason = reason
        record.ended_at = now
        record.busy_since = None
        self._emit(EngineEvent.DEAD, record, reason)
        self._trim_dead()
        if self.dead_ttl is not None:
            self._expiries[record] = self.clock.callLater(self.dead_ttl, self._expire, record)

    def _expire(self, record: EngineRecord) -> None:
        """A dead record's TTL passed: forget it (unless it was replaced, or is to be kept)."""
        self._expiries.pop(record, None)
        if self._engines.get(record.id) is not record or record.state != DEAD or self.keep_dead(record):
            return
        del self._engines[record.id]
        self.log.info("forgot dead engine {engine} ({ttl:g} s after it died: --dead-engine-ttl)", engine=record.id, ttl=self.dead_ttl)

    def remove(self, record: EngineRecord, reason: str, now: float, event: EngineEvent = EngineEvent.LEFT) -> None:
        """An engine left cleanly (or its registration was purged): forget it."""
        if self._engines.get(record.id) is not record:
            return
        was_active = record.state in ACTIVE_STATES
        del self._engines[record.id]
        record.reason = reason
        record.ended_at = now
        if was_active:
            record.state = DEAD if event is EngineEvent.PURGED else LEFT
            self._emit(event, record, reason)

    def _cancel_expiry(self, record: EngineRecord) -> None:
        call = self._expiries.pop(record, None)
        if call is not None and call.active():
            call.cancel()

    def stop(self) -> None:
        """Cancel the dead records' expiry timers (the controller stops)."""
        expiries, self._expiries = self._expiries, {}
        for call in expiries.values():
            if call.active():
                call.cancel()

    def _trim_dead(self) -> None:
        dead = sorted((r for r in self._engines.values() if r.state == DEAD), key=lambda r: r.ended_at or 0.0)
        for r in dead[: max(0, len(dead) - self._keep_dead)]:
            self._cancel_expiry(self._engines.pop(r.id))
