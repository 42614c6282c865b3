"""The Registry: which engines exist, and the one place their state changes.

States::

    registering --first pong--> alive <--> busy
         |                        |         |
         +--purged (no pong)      +--> dead <+  (record kept for ``dead_ttl`` s, or until replaced)
                                  +--> left (clean exit, record removed)

``busy`` means the heart (native, GIL-free) answers but the Python control
channel does not: the engine's interpreter is held.  A busy engine is alive and
is never failed for being busy.

Engines are listed by id; their sockets are known by their routing token
(``EngineRecord.identity``, ``Registry.by_identity``), which changes with every
registration.  A registration of an engine whose record is still active (the
same process registering again, or a replay of its ``register``) is *pending*:
the active record stays untouched until the new token's first heart pong, and a
pending registration that never pongs is purged without disturbing it.
"""
from __future__ import annotations

import enum
import os
from collections import OrderedDict, defaultdict
from typing import Callable, Iterator, Optional

import attr
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ipcluster.transport.replay import ReplayWindow

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


#: Pending registrations kept per engine id (a replayed ``register`` cannot pile them up).
MAX_PENDING = 4
#: How many condemned engine instances are remembered (each is refused registration).
MAX_CONDEMNED = 1000


class DuplicateEngine(Exception):
    """Another live engine process already holds this engine id."""


class Condemned(DuplicateEngine):
    """The registering process was condemned (its supervisor is stopping it): it may not come back."""


def _random_token() -> bytes:
    return os.urandom(16).hex().encode()


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
    #: The routing token of this registration: the ZeroMQ identity of the engine's sockets and
    #: the session its messages carry.  Secret: never shown (logs and status show ``id``).
    identity: bytes = attr.ib(factory=_random_token, repr=False)
    #: The engine's MPI or Slurm rank (the optional ``rank`` of its ``register``), None outside MPI/Slurm.
    rank: Optional[int] = attr.ib(default=None)
    #: Replay windows of the engine's messages, per socket.
    windows: dict = attr.ib(factory=lambda: defaultdict(ReplayWindow), repr=False)
    #: The heart monitor's last ping to this engine: its beat, when it went out, its bytes.
    ping_beat: int = attr.ib(default=-1, repr=False)
    pinged_at: Optional[float] = attr.ib(default=None, repr=False)
    ping: bytes = attr.ib(default=b"", repr=False)
    #: No control ping before this time: the last one was refused (its control channel is not connected).
    control_ping_due: float = attr.ib(default=0.0, repr=False)
    #: When the heart monitor first asked (a control ping) since the engine's last control traffic.
    control_asked_at: Optional[float] = attr.ib(default=None, repr=False)

    @property
    def session(self) -> str:
        """The session the engine's messages carry (its token)."""
        return self.identity.decode()

    def describe(self, now: float) -> dict:
        """A plain dict for clients and status views."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "rank": self.rank,
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

    def __init__(self, max_dead: int = 1000, clock: Optional[IReactorTime] = None, dead_ttl: Optional[float] = None) -> None:
        if dead_ttl is not None and clock is None:
            raise ValueError("a dead-engine TTL needs a clock")
        self._engines: OrderedDict[str, EngineRecord] = OrderedDict()
        #: Active records and pending registrations, by routing token.
        self._by_identity: dict[bytes, EngineRecord] = {}
        self._listeners: list[Listener] = []
        self._max_dead = max_dead
        self.clock = clock
        self.dead_ttl = dead_ttl
        #: Dead records this says to keep stay past their TTL (a local engine its supervisor gave up on).
        self.keep_dead: Callable[[EngineRecord], bool] = lambda record: False
        self._expiries: dict[EngineRecord, IDelayedCall] = {}
        #: Instances declared dead because they are being stopped (recycled): refused if they register again.
        self._condemned: OrderedDict[str, str] = OrderedDict()

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

    def by_identity(self, identity: bytes) -> Optional[EngineRecord]:
        """The registering, alive or busy record (or pending registration) with this routing token."""
        return self._by_identity.get(identity)

    def listed(self, record: EngineRecord) -> bool:
        """Whether ``record`` is the one listed for its engine id (not a pending registration)."""
        return self._engines.get(record.id) is record

    def __iter__(self) -> Iterator[EngineRecord]:
        return iter(list(self._engines.values()))

    def __len__(self) -> int:
        return len(self._engines)

    def active(self) -> list[EngineRecord]:
        """Engines registering, alive or busy, then pending registrations (the heart monitor pings them all)."""
        listed = [r for r in self._engines.values() if r.state in ACTIVE_STATES]
        return listed + [r for r in self._by_identity.values() if not self.listed(r)]

    def any_active(self) -> bool:
        """Whether some engine is registering, alive or busy."""
        return any(r.state in ACTIVE_STATES for r in self._engines.values())

    def live(self) -> list[EngineRecord]:
        """Engines that joined and are not dead: alive or busy."""
        return [r for r in self._engines.values() if r.state in LIVE_STATES]

    # -- transitions ---------------------------------------------------------

    def register(
        self,
        engine_id: str,
        instance: str,
        host: str,
        pid: int,
        now: float,
        local: bool = False,
        identity: Optional[bytes] = None,
        rank: Optional[int] = None,
    ) -> EngineRecord:
        """Begin registering an engine (phase one); it counts once it pongs.

        ``identity`` is the registration's routing token (the Registrar derives a
        fresh one each time; a random one if not given).  When the same process
        (same instance) already holds an active record, the new registration is
        *pending*: known by its token only, it takes the record over at its first
        pong (:meth:`mark_alive`); at most :data:`MAX_PENDING` are kept per id.
        A dead record with the same id is replaced at once.  Another process
        holding an active id raises :class:`DuplicateEngine`.
        """
        if instance in self._condemned:
            raise Condemned(
                f"engine {engine_id!r} (instance {instance}) is being stopped ({self._condemned[instance]}); "
                "that process may not register again"
            )
        old = self._engines.get(engine_id)
        if old is not None and old.state in ACTIVE_STATES and old.instance != instance:
            raise DuplicateEngine(
                f"engine id {engine_id!r} is held by pid {old.pid} on {old.host} "
                f"({old.state}); it must exit or be declared dead first"
            )
        record = EngineRecord(engine_id, instance, host, pid, registered_at=now, local=local, rank=rank)
        if identity is not None:
            record.identity = identity
        self._by_identity[record.identity] = record
        if old is not None and old.state in ACTIVE_STATES:
            self._pend(record, now)
            return record
        if old is not None:
            self._cancel_expiry(self._engines.pop(engine_id))
        self._engines[engine_id] = record
        self._emit(EngineEvent.REGISTERING, record)
        return record

    def _pend(self, record: EngineRecord, now: float) -> None:
        """Keep ``record`` pending (the engine's listed record stays), the latest few per id."""
        pending = [r for r in self._by_identity.values() if r.id == record.id and not self.listed(r)]
        for superseded in pending[: max(0, len(pending) - MAX_PENDING)]:
            self._forget(superseded, "superseded by a later registration", now)
        self.log.info(
            "engine {engine} registering again ({where}); its record stays until the new registration's "
            "first heartbeat", engine=record.id, where=f"{record.host} pid {record.pid}",
        )

    def _forget(self, record: EngineRecord, reason: str, now: float) -> None:
        """Drop a pending registration: no listener was told of it, so none is told of its end."""
        self._by_identity.pop(record.identity, None)
        record.state, record.reason, record.ended_at = DEAD, reason, now

    def _take_over(self, record: EngineRecord, now: float) -> None:
        """A pending registration's first pong: it replaces the record listed for its id (which leaves)."""
        old = self._engines.get(record.id)
        if old is not None and old.state in ACTIVE_STATES:
            self.remove(old, "re-registered by the same process", now)
        replaced = self._engines.pop(record.id, None)
        if replaced is not None:
            self._cancel_expiry(replaced)
        for other in [r for r in self._by_identity.values() if r.id == record.id and r is not record]:
            self._forget(other, "superseded by a later registration", now)
        self._engines[record.id] = record

    def mark_alive(self, record: EngineRecord, now: float) -> None:
        if record.state == REGISTERING:
            if self._by_identity.get(record.identity) is not record:
                return  # purged or superseded meanwhile
            if not self.listed(record):
                self._take_over(record, now)
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
        if record.state not in ACTIVE_STATES or not self.listed(record):
            return
        self._by_identity.pop(record.identity, None)
        record.state = DEAD
        record.reason = reason
        record.ended_at = now
        record.busy_since = None
        self._emit(EngineEvent.DEAD, record, reason)
        self._trim_dead()
        if self.dead_ttl is not None:
            self._expiries[record] = self.clock.callLater(self.dead_ttl, self._expire, record)

    def condemn(self, record: EngineRecord, reason: str, now: float) -> None:
        """Declare an engine dead because it is being stopped: its process may not register again.

        (An engine declared dead for silence may come back, a thawed process for
        one; a process its supervisor recycles is on its way out, and its link
        could otherwise register it again in the moment before its SIGTERM lands.)
        """
        self._condemned[record.instance] = reason
        while len(self._condemned) > MAX_CONDEMNED:
            self._condemned.popitem(last=False)
        self.mark_dead(record, reason, now)

    def _expire(self, record: EngineRecord) -> None:
        """A dead record's TTL passed: forget it (unless it was replaced, or is to be kept)."""
        self._expiries.pop(record, None)
        if self._engines.get(record.id) is not record or record.state != DEAD or self.keep_dead(record):
            return
        del self._engines[record.id]
        self.log.info("forgot dead engine {engine} ({ttl:g} s after it died: --dead-engine-ttl)", engine=record.id, ttl=self.dead_ttl)

    def remove(self, record: EngineRecord, reason: str, now: float, event: EngineEvent = EngineEvent.LEFT) -> None:
        """An engine left cleanly (or its registration was purged): forget it.

        A pending registration goes quietly (nobody was told of it).
        """
        if not self.listed(record):
            if self._by_identity.get(record.identity) is record:
                self._forget(record, reason, now)
                self.log.warn("engine {engine}: pending registration dropped: {reason}", engine=record.id, reason=reason)
            return
        was_active = record.state in ACTIVE_STATES
        del self._engines[record.id]
        if self._by_identity.get(record.identity) is record:
            del self._by_identity[record.identity]
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
        for r in dead[: max(0, len(dead) - self._max_dead)]:
            self._cancel_expiry(self._engines.pop(r.id))
