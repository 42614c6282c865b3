"""The last minutes of a cluster, for the status page's charts: a ring of one-second samples and
a ring of ended task runs.

:class:`History` reads an ``IStatusSource``.  Call :meth:`History.sample`
once a second (``WebService`` does, on the reactor's clock; tests drive a
``task.Clock``): each sample holds the time, tasks finished per second since the
previous sample, the tasks queued in the controller (ready and waiting), those
in flight, and per engine whose process the controller can read (the ones it
started) the RSS in bytes and the CPU used since the previous sample in percent
of one core.  Engines elsewhere report no usage and show none.

:meth:`History.watch` subscribes to the source's task runs; each run (one bar of
the task stream) is kept in a bounded ring and handed to ``on_run``.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Optional

from ipcluster.interfaces import IStatusSource

#: Samples kept: five minutes at one a second.
KEEP_SAMPLES = 300
#: Task runs kept for a page that opens (the newest).
KEEP_RUNS = 2000


class History:
    """A bounded ring of samples and of task runs, fed by :meth:`sample` and the source's runs."""

    def __init__(
        self, source: IStatusSource, clock, keep_samples: int = KEEP_SAMPLES, keep_runs: int = KEEP_RUNS,
        on_run: Callable[[dict], None] = lambda run: None,
    ) -> None:  # fmt: skip
        self.source = source
        self.clock = clock
        self.samples: deque = deque(maxlen=keep_samples)
        self.runs: deque = deque(maxlen=keep_runs)
        self.on_run = on_run
        self._last: Optional[tuple] = None  # (time, finished tasks, {engine: cpu seconds})
        self._watching = False

    def watch(self) -> None:
        """Start keeping task runs (nothing happens if already watching)."""
        if not self._watching:
            self.source.subscribe_runs(self._run)
            self._watching = True

    def unwatch(self) -> None:
        """Stop keeping task runs."""
        if self._watching:
            self.source.unsubscribe_runs(self._run)
            self._watching = False

    def _run(self, run: dict) -> None:
        run = dict(run, outcome=str(run["outcome"]))
        self.runs.append(run)
        self.on_run(run)

    def sample(self) -> dict:
        """Take one sample now, keep it (the oldest beyond ``keep_samples`` goes) and return it."""
        now = self.clock.seconds()
        tasks = self.source.tasks()
        finished = tasks["completed"] + tasks["failed"]
        usage = self.source.usage()
        cpu_now = {eid: u["cpu"] for eid, u in usage.items() if u.get("cpu") is not None}
        rate, cpu = None, {}
        if self._last is not None and now > self._last[0]:
            then, finished_then, cpu_then = self._last
            rate = max(0, finished - finished_then) / (now - then)
            cpu = {
                eid: round(max(0.0, seconds - cpu_then[eid]) / (now - then) * 100, 1)
                for eid, seconds in cpu_now.items() if eid in cpu_then
            }  # fmt: skip
        self._last = (now, finished, cpu_now)
        sample = {
            "time": now,
            "per_second": rate,
            "queued": tasks["ready"] + tasks["waiting"],
            "in_flight": tasks["in_flight"],
            "engines": {eid: {"rss": u.get("rss"), "cpu": cpu.get(eid)} for eid, u in usage.items()},
        }
        self.samples.append(sample)
        return sample

    def snapshot(self) -> dict:
        """Everything kept, as plain data: ``{"samples": [...], "runs": [...]}``, oldest first."""
        return {"samples": list(self.samples), "runs": list(self.runs)}
