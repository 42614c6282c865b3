"""What the status page shows: a controller's status as plain data, with rates and recent history.

:class:`StatusView` reads the controller only through an ``IStatusSource``
(``controller.status``) and adds what a single reading cannot tell: tasks
finished per second, dropped messages of the last minute, and the engines
that died (or whose registration was purged) since the view started.
"""
from __future__ import annotations

from collections import Counter, deque
from typing import Optional

from ipcluster.interfaces import IStatusSource

#: Engine states, in the order the page and the metrics list them.
STATES = ("registering", "alive", "busy", "dead")
#: The engine events recorded as failures.
FAILURE_EVENTS = ("dead", "purged")
#: What of the controller the page shows (its ports and data directory stay private).
CONTROLLER_FIELDS = ("pid", "ip", "heartbeat_period", "heartbeat_misses")
SAMPLE_PERIOD = 1.0


class StatusView:
    """What the pages show, computed from an ``IStatusSource``.

    ``clock`` is an ``IReactorTime`` (the source's times come from the same
    one).  Call :meth:`sample` every ``SAMPLE_PERIOD`` seconds (``WebService``
    does) and :meth:`watch` to record engine failures as they happen.  Tasks
    per second are taken over the last ``rate_window`` seconds; "recent"
    dropped messages are those of the last ``drops_window``.
    """

    #: Requests within this many seconds share one computed status: polling the page
    #: (or /metrics) hard must not cost the reactor a walk over every engine and task each time.
    cache_seconds = 0.25

    def __init__(
        self, source: IStatusSource, clock, rate_window: float = 10.0, drops_window: float = 60.0, keep_failures: int = 50
    ) -> None:
        self.source = source
        self.clock = clock
        self.rate_window = rate_window
        self.drops_window = drops_window
        self.failures: deque = deque(maxlen=keep_failures)
        self.failure_counts: Counter = Counter({event: 0 for event in FAILURE_EVENTS})
        self._cached: Optional[tuple] = None  # (when, status)
        self._samples: deque = deque()  # (time, finished tasks, drop totals)
        self._watching = False
        self.sample()

    # -- feeding -----------------------------------------------------------------

    def watch(self) -> None:
        """Start recording engine failures (``dead`` and ``purged`` events)."""
        if not self._watching:
            self.source.subscribe(self._engine_event)
            self._watching = True

    def unwatch(self) -> None:
        """Stop recording engine failures (nothing happens if not watching)."""
        if self._watching:
            self.source.unsubscribe(self._engine_event)
            self._watching = False

    def _engine_event(self, event, engine: dict, reason: str) -> None:
        if event not in FAILURE_EVENTS:
            return
        event = str(event)  # a plain string for the JSON and the metric's label
        self.failure_counts[event] += 1
        self.failures.appendleft(
            {
                "time": self.clock.seconds(),
                "engine": engine["id"],
                "host": engine["host"],
                "pid": engine["pid"],
                "event": event,
                "reason": reason,
            }
        )

    def sample(self) -> None:
        """Remember the task and drop counters now (for rates and recent drops)."""
        now = self.clock.seconds()
        self._samples.append((now, _finished(self.source.tasks()), Counter(self.source.drops())))
        horizon = now - max(self.rate_window, self.drops_window) - SAMPLE_PERIOD
        while len(self._samples) > 1 and self._samples[0][0] < horizon:
            self._samples.popleft()

    def _since(self, start: float) -> tuple:
        """The oldest sample taken at or after ``start`` (or the newest one)."""
        for sample in self._samples:
            if sample[0] >= start - 1e-9:
                return sample
        return self._samples[-1]

    def tasks_per_second(self, now: Optional[float] = None, tasks: Optional[dict] = None) -> float:
        """Tasks finished (completed or failed) per second over the last ``rate_window``."""
        now = self.clock.seconds() if now is None else now
        finished_now = _finished(self.source.tasks() if tasks is None else tasks)
        then, finished, _ = self._since(now - self.rate_window)
        elapsed = now - then
        if elapsed <= 0:
            return 0.0
        return max(0, finished_now - finished) / elapsed

    # -- reading -----------------------------------------------------------------

    def status(self) -> dict:
        """Everything the page shows, as plain JSON-able data (cached for ``cache_seconds``).

        Times are the reactor clock's seconds (Unix time on a real reactor);
        durations and RTTs are in seconds.
        """
        now = self.clock.seconds()
        cached = self._cached
        if cached is not None and 0 <= now - cached[0] < self.cache_seconds:
            return cached[1]
        status = self._compute_status(now)
        self._cached = (now, status)
        return status

    def _compute_status(self, now: float) -> dict:
        source = self.source
        engines = source.engines()
        counts = dict.fromkeys(STATES, 0)
        for engine in engines:
            counts[engine["state"]] = counts.get(engine["state"], 0) + 1
        tasks = source.tasks()
        controller = source.controller()
        return {
            "time": now,
            "controller": {key: controller.get(key) for key in CONTROLLER_FIELDS},
            "engines": engines,
            "counts": counts,
            "tasks": {**tasks, "per_second": self.tasks_per_second(now, tasks), "rate_window": self.rate_window},
            "failures": list(self.failures),
            "failure_counts": dict(self.failure_counts),
            **self._drops(now),
        }

    def _drops(self, now: float) -> dict:
        then = self._since(now - self.drops_window)[2]
        totals = self.source.drops()
        drops = [
            {"socket": socket, "reason": reason, "total": total, "recent": max(0, total - then.get((socket, reason), 0))}
            for (socket, reason), total in sorted(totals.items())
        ]
        return {"drops": drops, "drops_total": sum(totals.values()), "drops_window": self.drops_window}


def _finished(tasks: dict) -> int:
    return tasks["completed"] + tasks["failed"]
