"""The status as Prometheus metrics: the text exposition format, version 0.0.4.

:func:`exposition` renders what :meth:`StatusView.status` returns:
``ipcluster_engines{state}``, ``ipcluster_engine_state{engine,state}``,
``ipcluster_engine_heartbeat_rtt_seconds{engine}``,
``ipcluster_engine_busy_seconds{engine}``,
``ipcluster_engine_queued_tasks{engine}``, ``ipcluster_engine_restarts_total{engine}``,
``ipcluster_tasks{state}``,
``ipcluster_tasks_in_flight``, ``ipcluster_tasks_queued_on_engines``,
``ipcluster_tasks_completed_total``, ``ipcluster_tasks_failed_total``,
``ipcluster_tasks_retried_total``, ``ipcluster_tasks_stolen_total``,
``ipcluster_tasks_per_second``, ``ipcluster_engine_failures_total{event}``,
``ipcluster_dropped_messages_total{socket,reason}``.
"""
from __future__ import annotations

import math
from typing import Iterable

from ipcluster.web.view import STATES

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: Per-engine gauges of engines not dead: (name, field of the engine, help).
_ENGINE_GAUGES = (
    ("ipcluster_engine_heartbeat_rtt_seconds", "rtt", "Round trip of the engine's last answered heartbeat (engines not dead)."),
    ("ipcluster_engine_busy_seconds", "busy_for",
     "How long a busy engine's interpreter has been silent while its heart answers."),
    ("ipcluster_engine_queued_tasks", "queued", "Tasks queued on each engine (engines not dead)."),
)  # fmt: skip

#: Task counters without labels: (name, type, field of the tasks, help).
_TASK_NUMBERS = (
    ("ipcluster_tasks_queued_on_engines", "gauge", "queued_on_engines",
     "Tasks queued on engines, as they last reported, summed over live engines."),
    ("ipcluster_tasks_completed_total", "counter", "completed", "Tasks that returned a result."),
    ("ipcluster_tasks_failed_total", "counter", "failed", "Tasks that raised, or failed because their engine died."),
    ("ipcluster_tasks_retried_total", "counter", "retried", "Tasks rerun because their engine died."),
    ("ipcluster_tasks_stolen_total", "counter", "stolen", "Prefetched tasks moved to an idle engine."),
)  # fmt: skip


def exposition(status: dict) -> str:
    """The Prometheus text exposition of one status (``StatusView.status()``)."""
    out = _Exposition()
    _engines(out, status)
    _tasks(out, status["tasks"])
    out.family("ipcluster_engine_failures_total", "counter",
               "Engines declared dead, or whose registration was purged, since the status service started.",
               [({"event": event}, n) for event, n in sorted(status["failure_counts"].items())])
    out.family("ipcluster_dropped_messages_total", "counter", "Bad messages dropped, by socket and reason.",
               [({"socket": d["socket"], "reason": d["reason"]}, d["total"]) for d in status["drops"]])
    return out.text()


def _engines(out: "_Exposition", status: dict) -> None:
    engines = status["engines"]
    out.family("ipcluster_engines", "gauge", "Engines known to the controller, by state.",
               [({"state": state}, status["counts"].get(state, 0)) for state in STATES])
    out.family("ipcluster_engine_state", "gauge", "1 for each engine, labelled with its current state.",
               [({"engine": e["id"], "state": e["state"]}, 1) for e in engines])
    out.family("ipcluster_engine_restarts_total", "counter",
               "Restarts of each of the controller's own engines by its supervisor.",
               [({"engine": e["id"]}, e["restarts"]) for e in engines if e.get("supervisor")])
    live = [e for e in engines if e["state"] != "dead"]
    for name, key, help_text in _ENGINE_GAUGES:
        out.family(name, "gauge", help_text, [({"engine": e["id"]}, e[key]) for e in live if e[key] is not None])


def _tasks(out: "_Exposition", tasks: dict) -> None:
    out.family("ipcluster_tasks_in_flight", "gauge", "Tasks sent to engines whose results have not come back.",
               [({}, tasks["in_flight"])])
    out.family("ipcluster_tasks", "gauge",
               "Unfinished tasks by state: waiting (dependencies unmet), ready (queued in the controller), "
               "assigned (sent to an engine), running.",
               [({"state": state}, n) for state, n in tasks["by_state"].items()])
    for name, kind, key, help_text in _TASK_NUMBERS:
        out.family(name, kind, help_text, [({}, tasks[key])])
    out.family("ipcluster_tasks_per_second", "gauge",
               f"Tasks finished (completed or failed) per second over the last {tasks['rate_window']:g} s.",
               [({}, tasks["per_second"])])


def _label_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Exposition:
    """Metric families, written out in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple]) -> None:
        self.lines.append(f"# HELP {name} " + help_text.replace("\\", "\\\\").replace("\n", "\\n"))
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{key}="{_label_value(v)}"' for key, v in labels.items())
            self.lines.append(f"{name}{{{rendered}}} {_number(value)}" if rendered else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
