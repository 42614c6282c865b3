"""The controller as the operator surfaces read it: one ``IStatusSource``.

The status page, the manhole and the client front end's ``engines`` request
read engines, task counters and drops from here, never from the scheduler's
or the registry's internals.
"""
from __future__ import annotations

import os
import socket
from typing import Callable, Optional

from zope.interface import implementer

from ipcluster.controller.memory import read_cpu_seconds, read_rss
from ipcluster.controller.supervisor import BACKING_OFF, EXITED, GIVEN_UP
from ipcluster.controller.registry import DEAD, LIVE_STATES, EngineRecord, Registry
from ipcluster.interfaces import IStatusSource
from ipcluster.textstatus import natural_key


#: The supervision fields of an engine the controller did not start (see LocalEngines.supervision).
DOWN_PHASES = frozenset({BACKING_OFF, GIVEN_UP, EXITED, "off"})
UNSUPERVISED = {"supervisor": None, "restarts": 0, "next_restart_at": None, "last_exit": "", "rss": None}


@implementer(IStatusSource)
class ControllerStatus:
    """Reads a live controller's registry, scheduler, drop log and configuration."""

    def __init__(
        self, clock, registry: Registry, scheduler, drops, config, ports: Callable[[], dict],
        local=None, rss_of: Callable[[int], Optional[int]] = read_rss,
        cpu_of: Callable[[int], Optional[float]] = read_cpu_seconds,
    ) -> None:
        self.clock = clock
        self.registry = registry
        self.scheduler = scheduler
        self._drops = drops
        self.config = config
        self._ports = ports
        self._local = local  # the LocalEngines service (supervision of the controller's own engines)
        self._listeners: dict = {}
        self._rss_of, self._cpu_of = rss_of, cpu_of

    def now(self) -> float:
        return self.clock.seconds()

    def describe(self, record: EngineRecord, now: float) -> dict:
        info = record.describe(now)
        if record.state == DEAD:
            # Its task failed or moved when it died: it runs nothing any more.
            info["running_task"] = info["task_running_for"] = None
        info["local"] = record.local
        info["joined_at"] = record.joined_at
        info["ended_at"] = record.ended_at
        info["last_pong_ago"] = (now - record.last_pong_at) if record.last_pong_at is not None else None
        info["assigned"] = self.scheduler.assigned_to(record.id) if record.state != DEAD else 0
        info.update((self._local.supervision(record.id) if self._local is not None else None) or UNSUPERVISED)
        return info

    def engines(self) -> list:
        now = self.clock.seconds()
        records = list(self.registry) + self._down_unregistered(now)
        return [self.describe(r, now) for r in sorted(records, key=lambda r: natural_key(r.id))]

    def _down_unregistered(self, now: float) -> list:
        """Local engines that are down and have no record (they died before registering, or
        their dead record expired): shown dead, so that a crash loop at start-up is seen."""
        if self._local is None:
            return []
        return [
            EngineRecord(engine_id, "", socket.gethostname(), 0, now, state=DEAD, local=True, reason=info["last_exit"])
            for engine_id in self._local.supervisors
            if self.registry.get(engine_id) is None
            and (info := self._local.supervision(engine_id))["supervisor"] in DOWN_PHASES
        ]

    def tasks(self) -> dict:
        counts = self.scheduler.counts()
        by_state = {state: counts[state] for state in ("waiting", "ready", "assigned", "running")}
        queued = sum(r.queued for r in self.registry if r.state in LIVE_STATES)
        return {
            "in_flight": by_state["assigned"] + by_state["running"],
            "waiting": by_state["waiting"],
            "ready": by_state["ready"],
            "by_state": by_state,
            "queued_on_engines": queued,
            **{k: counts[k] for k in ("completed", "failed", "retried", "stolen")},
        }

    def drops(self) -> dict:
        return dict(self._drops.totals)

    def controller(self) -> dict:
        config = self.config
        return {
            "pid": os.getpid(),
            "ip": config.ip,
            "ports": dict(self._ports()),
            "heartbeat_period": config.heartbeat_period,
            "heartbeat_misses": config.heartbeat_misses,
            "data_dir": str(config.data_dir),
        }

    def usage(self) -> dict:
        """``{engine_id: {"rss": bytes, "cpu": seconds}}`` of the live engines this controller
        started (their processes are on this host: read from ``/proc``); remote engines are left out."""
        usage = {}
        for record in self.registry:
            if record.local and record.state in LIVE_STATES and record.pid:
                rss, cpu = self._rss_of(record.pid), self._cpu_of(record.pid)
                if rss is not None or cpu is not None:
                    usage[record.id] = {"rss": rss, "cpu": cpu}
        return usage

    def subscribe_runs(self, listener) -> None:
        self.scheduler.runs.subscribe(listener)

    def unsubscribe_runs(self, listener) -> None:
        self.scheduler.runs.unsubscribe(listener)

    def subscribe(self, listener) -> None:
        def relay(event, record: EngineRecord, reason: str) -> None:
            listener(event, self.describe(record, self.clock.seconds()), reason)

        self._listeners[listener] = relay
        self.registry.subscribe(relay)

    def unsubscribe(self, listener) -> None:
        relay = self._listeners.pop(listener, None)
        if relay is not None:
            self.registry.unsubscribe(relay)
