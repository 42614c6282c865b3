"""The live status page: ``/`` (HTML), ``/status.json`` and ``/metrics`` (Prometheus).

``web_service(controller, "tcp:8080:interface=127.0.0.1")`` is a Twisted
service that serves, from twisted.web:

``/``
    a self-contained page (no external assets) that fetches ``status.json``
    every second and shows the engines (id, host, pid, state, heartbeat RTT,
    running task, busy-for, queued tasks), the number of engines in each state,
    tasks in flight, queued in the controller, completed, failed and per
    second, engines that died or whose registration was purged, and dropped
    messages by socket and reason.  Each engine row carries
    ``data-engine-id`` and ``data-state`` attributes.
``/status.json``
    the same data as JSON (see :meth:`StatusView.status`).
``/metrics``
    the same numbers in the Prometheus text exposition format (0.0.4):
    ``ipcluster_engines{state}``, ``ipcluster_engine_state{engine,state}``,
    ``ipcluster_engine_heartbeat_rtt_seconds{engine}``,
    ``ipcluster_engine_busy_seconds{engine}``,
    ``ipcluster_engine_queued_tasks{engine}``, ``ipcluster_tasks{state}``,
    ``ipcluster_tasks_in_flight``, ``ipcluster_tasks_queued_on_engines``,
    ``ipcluster_tasks_completed_total``, ``ipcluster_tasks_failed_total``,
    ``ipcluster_tasks_retried_total``, ``ipcluster_tasks_stolen_total``,
    ``ipcluster_tasks_per_second``, ``ipcluster_engine_failures_total{event}``,
    ``ipcluster_dropped_messages_total{socket,reason}``.

Security: these pages are **read-only and unauthenticated**.  They answer only
GET and HEAD, run no control verb and never show the cluster's key or
connection file, but anyone who can reach the port can read engine hosts,
pids, task ids and failure reasons.  The service binds exactly what its
endpoint says, so bind it to loopback (``tcp:8080:interface=127.0.0.1``) and
reach it from elsewhere through an SSH tunnel or an authenticating reverse
proxy; binding another interface is logged as a warning.

Tasks per second are measured on the controller with the reactor's clock:
the finished (completed + failed) count is sampled every second and the rate is
taken over the last ``rate_window`` (10 s).  "Recent" dropped messages are
those of the last ``drops_window`` (60 s).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
from collections import Counter, deque
from typing import Optional

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from ipcluster.listening import ConnectionTracker, is_loopback
from ipcluster.controller.registry import ALIVE, BUSY, DEAD, LIVE_STATES, REGISTERING

STATES = (REGISTERING, ALIVE, BUSY, DEAD)
FAILURE_EVENTS = ("dead", "purged")
TASK_STATES = ("waiting", "ready", "assigned", "running")  # the scheduler's unfinished states
SAMPLE_PERIOD = 1.0

__all__ = ["web_service", "WebService", "StatusView"]


# -- the data ------------------------------------------------------------------


class StatusView:
    """What the pages show, computed from a live controller.

    ``controller`` needs ``.registry``, ``.scheduler`` or ``.router`` (with
    ``.tasks``, ``.completed``, ``.failed``; ``.assigned``, ``.retried``,
    ``.stolen`` and task states when it has them), ``.drops`` (``.totals``)
    and ``.config``;
    ``clock`` is an ``IReactorTime`` (the times in the registry come from it).
    Call :meth:`sample` every second (``WebService`` does) and :meth:`watch`
    to record engine failures as they happen.
    """

    def __init__(self, controller, clock, rate_window: float = 10.0, drops_window: float = 60.0, keep_failures: int = 50) -> None:
        self.controller = controller
        self.clock = clock
        self._cached: Optional[tuple] = None  # (when, status)
        self.rate_window = rate_window
        self.drops_window = drops_window
        self.failures: deque = deque(maxlen=keep_failures)
        self.failure_counts: Counter = Counter({event: 0 for event in FAILURE_EVENTS})
        self._samples: deque = deque()  # (time, finished tasks, drop totals)
        self._watching = False
        self.sample()

    # -- feeding -----------------------------------------------------------------

    def watch(self) -> None:
        """Start recording engine failures (registry ``dead`` and ``purged`` events)."""
        if not self._watching:
            self.controller.registry.subscribe(self._registry_event)
            self._watching = True

    def unwatch(self) -> None:
        if self._watching:
            self.controller.registry.unsubscribe(self._registry_event)
            self._watching = False

    def _registry_event(self, event: str, record, reason: str) -> None:
        if event not in FAILURE_EVENTS:
            return
        self.failure_counts[event] += 1
        self.failures.appendleft(
            {
                "time": self.clock.seconds(),
                "engine": record.id,
                "host": record.host,
                "pid": record.pid,
                "event": event,
                "reason": reason,
            }
        )

    @property
    def tasks(self):
        """The controller's task keeper: its scheduler, or (before it had one) its router."""
        scheduler = getattr(self.controller, "scheduler", None)
        return scheduler if scheduler is not None else self.controller.router

    def _finished(self) -> int:
        return self.tasks.completed + self.tasks.failed

    def sample(self) -> None:
        """Remember the task and drop counters now (for rates and recent drops)."""
        now = self.clock.seconds()
        self._samples.append((now, self._finished(), Counter(self.controller.drops.totals)))
        horizon = now - max(self.rate_window, self.drops_window) - SAMPLE_PERIOD
        while len(self._samples) > 1 and self._samples[0][0] < horizon:
            self._samples.popleft()

    def _since(self, start: float):
        """The oldest sample taken at or after ``start`` (or the newest one)."""
        for sample in self._samples:
            if sample[0] >= start - 1e-9:
                return sample
        return self._samples[-1]

    def tasks_per_second(self, now: Optional[float] = None) -> float:
        now = self.clock.seconds() if now is None else now
        then, finished, _ = self._since(now - self.rate_window)
        elapsed = now - then
        if elapsed <= 0:
            return 0.0
        return max(0, self._finished() - finished) / elapsed

    # -- reading -----------------------------------------------------------------

    #: Requests within this many seconds share one computed status: polling the page
    #: (or /metrics) hard must not cost the reactor a walk over every engine and task each time.
    cache_seconds = 0.25

    def status(self) -> dict:
        """Everything the page shows, as plain JSON-able data (cached for ``cache_seconds``).

        Times are the reactor clock's seconds (Unix time on a real reactor);
        durations and RTTs are in seconds.
        """
        now = self.clock.seconds()
        cached = self._cached
        if cached is not None and 0 <= now - cached[0] < self.cache_seconds:
            return cached[1]
        status = self._compute_status()
        self._cached = (now, status)
        return status

    def _compute_status(self) -> dict:
        controller = self.controller
        now = self.clock.seconds()
        counts = dict.fromkeys(STATES, 0)
        engines = []
        queued = 0
        for record in sorted(controller.registry, key=lambda r: _natural(r.id)):
            info = record.describe(now)
            info["last_task"] = record.running_task
            if record.state == DEAD:
                # Its task failed when it died: it runs nothing any more.
                info["running_task"] = info["task_running_for"] = None
            info["local"] = record.local
            info["joined_at"] = record.joined_at
            info["ended_at"] = record.ended_at
            info["last_pong_ago"] = (now - record.last_pong_at) if record.last_pong_at is not None else None
            engines.append(info)
            counts[record.state] = counts.get(record.state, 0) + 1
            if record.state in LIVE_STATES:
                queued += record.queued
        router = self.tasks
        assigned = getattr(router, "assigned", None) or {}
        for info in engines:
            info["assigned"] = len(assigned.get(info["id"], ())) if info["state"] != DEAD else 0
        drops_then = self._since(now - self.drops_window)[2]
        totals = controller.drops.totals
        drops = [
            {"socket": socket, "reason": reason, "total": total, "recent": max(0, total - drops_then.get((socket, reason), 0))}
            for (socket, reason), total in sorted(totals.items())
        ]
        config = getattr(controller, "config", None)
        return {
            "time": now,
            "controller": {
                "pid": os.getpid(),
                "ip": getattr(config, "ip", None),
                "heartbeat_period": getattr(config, "heartbeat_period", None),
                "heartbeat_misses": getattr(config, "heartbeat_misses", None),
            },
            "engines": engines,
            "counts": counts,
            "tasks": {
                **self._task_states(router),
                "queued_on_engines": queued,
                "completed": router.completed,
                "failed": router.failed,
                "retried": getattr(router, "retried", 0),
                "stolen": getattr(router, "stolen", 0),
                "per_second": self.tasks_per_second(now),
                "rate_window": self.rate_window,
            },
            "failures": list(self.failures),
            "failure_counts": dict(self.failure_counts),
            "drops": drops,
            "drops_total": sum(totals.values()),
            "drops_window": self.drops_window,
        }

    @staticmethod
    def _task_states(router) -> dict:
        """Unfinished tasks: ``in_flight`` (sent to an engine) and, with the scheduler,
        ``waiting`` (dependencies unmet) and ``ready`` (queued in the controller)."""
        by_state = Counter(getattr(task, "state", "in_flight") for task in router.tasks.values())
        states = {state: by_state.get(state, 0) for state in TASK_STATES}
        in_flight = by_state.get("in_flight", 0) + states["assigned"] + states["running"]
        return {"in_flight": in_flight, "waiting": states["waiting"], "ready": states["ready"], "by_state": states}

    def metrics(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        status = self.status()
        live = [e for e in status["engines"] if e["state"] != DEAD]
        tasks = status["tasks"]
        out = _Exposition()
        out.family("ipcluster_engines", "gauge", "Engines known to the controller, by state.",
                   [({"state": state}, status["counts"].get(state, 0)) for state in STATES])
        out.family("ipcluster_engine_state", "gauge", "1 for each engine, labelled with its current state.",
                   [({"engine": e["id"], "state": e["state"]}, 1) for e in status["engines"]])
        out.family("ipcluster_engine_heartbeat_rtt_seconds", "gauge",
                   "Round trip of the engine's last answered heartbeat (engines not dead).",
                   [({"engine": e["id"]}, e["rtt"]) for e in live if e["rtt"] is not None])
        out.family("ipcluster_engine_busy_seconds", "gauge",
                   "How long a busy engine's interpreter has been silent while its heart answers.",
                   [({"engine": e["id"]}, e["busy_for"]) for e in live if e["busy_for"] is not None])
        out.family("ipcluster_engine_queued_tasks", "gauge", "Tasks queued on each engine (engines not dead).",
                   [({"engine": e["id"]}, e["queued"]) for e in live])
        out.family("ipcluster_tasks_in_flight", "gauge", "Tasks sent to engines whose results have not come back.",
                   [({}, tasks["in_flight"])])
        out.family("ipcluster_tasks", "gauge",
                   "Unfinished tasks by state: waiting (dependencies unmet), ready (queued in the controller), "
                   "assigned (sent to an engine), running.",
                   [({"state": state}, n) for state, n in tasks["by_state"].items()])
        out.family("ipcluster_tasks_queued_on_engines", "gauge", "Tasks queued on engines, as they last reported, "
                   "summed over live engines.", [({}, tasks["queued_on_engines"])])
        out.family("ipcluster_tasks_completed_total", "counter", "Tasks that returned a result.",
                   [({}, tasks["completed"])])
        out.family("ipcluster_tasks_failed_total", "counter",
                   "Tasks that raised, or failed because their engine died.", [({}, tasks["failed"])])
        out.family("ipcluster_tasks_retried_total", "counter", "Tasks rerun because their engine died.",
                   [({}, tasks["retried"])])
        out.family("ipcluster_tasks_stolen_total", "counter", "Prefetched tasks moved to an idle engine.",
                   [({}, tasks["stolen"])])
        out.family("ipcluster_tasks_per_second", "gauge",
                   f"Tasks finished (completed or failed) per second over the last {self.rate_window:g} s.",
                   [({}, tasks["per_second"])])
        out.family("ipcluster_engine_failures_total", "counter",
                   "Engines declared dead, or whose registration was purged, since the status service started.",
                   [({"event": event}, n) for event, n in sorted(status["failure_counts"].items())])
        out.family("ipcluster_dropped_messages_total", "counter", "Bad messages dropped, by socket and reason.",
                   [({"socket": d["socket"], "reason": d["reason"]}, d["total"]) for d in status["drops"]])
        return out.text()


def _natural(text: str) -> list:
    """A sort key that puts e2 before e10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


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
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples) -> None:
        self.lines.append(f"# HELP {name} " + help_text.replace("\\", "\\\\").replace("\n", "\\n"))
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{key}="{_label_value(v)}"' for key, v in labels.items())
            self.lines.append(f"{name}{{{rendered}}} {_number(value)}" if rendered else f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# -- the page ------------------------------------------------------------------

_STYLE = """
:root {
  --bg: #f5f6f8; --card: #ffffff; --line: #d9dde3; --text: #1f2328; --muted: #636c76;
  --alive: #1a7f37; --alive-bg: #dafbe1; --busy: #9a6700; --busy-bg: #fff1c2;
  --dead: #c4232d; --dead-bg: #ffe4e2; --reg: #57606a; --reg-bg: #eaeef2;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "Liberation Sans", "DejaVu Sans", sans-serif; }
header { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px;
  background: #24292f; color: #f6f8fa; }
header h1 { margin: 0; font-size: 18px; font-weight: 600; }
header .meta { color: #b6bec8; font-size: 13px; }
header .conn { margin-left: auto; font-size: 13px; }
.conn::before { content: ""; display: inline-block; width: 9px; height: 9px; border-radius: 50%;
  margin-right: 6px; background: #8c959f; }
.conn.ok::before { background: #3fb950; }
.conn.lost { color: #ffb3ad; }
.conn.lost::before { background: #f85149; }
main { padding: 18px 24px 28px; max-width: 1400px; }
.cards { display: grid; grid-template-columns: 2.3fr repeat(5, 1fr); gap: 12px; margin-bottom: 20px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 12px 12px 14px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .sub { color: var(--muted); font-size: 12px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.card.failed .value.nonzero { color: var(--dead); }
.chips { display: flex; flex-wrap: wrap; gap: 5px; margin-top: 6px; }
.chips .state { font-size: 11.5px; padding: 1px 8px 1px 6px; gap: 5px; }
section { margin-bottom: 22px; }
h2 { font-size: 15px; margin: 0 0 8px; font-weight: 600; }
h2 .hint { color: var(--muted); font-weight: 400; font-size: 12px; margin-left: 6px; }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line);
  border-radius: 8px; overflow: hidden; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 7px 12px; border-bottom: 1px solid #eef0f3; white-space: nowrap; }
th { background: #f0f2f5; color: var(--muted); font-size: 12px; font-weight: 600; text-transform: uppercase;
  letter-spacing: .03em; }
tbody tr:last-child td { border-bottom: none; }
td.num, th.num { text-align: right; }
td.task { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12px;
  max-width: 220px; overflow: hidden; text-overflow: ellipsis; }
td.reason { white-space: normal; min-width: 240px; }
td.id { font-weight: 600; }
tr.state-dead td { color: var(--muted); }
tr.state-dead td.id { text-decoration: line-through; text-decoration-color: var(--dead); }
td.empty { color: var(--muted); text-align: center; padding: 14px; }
.state { display: inline-flex; align-items: center; gap: 6px; padding: 1px 9px 1px 7px; border-radius: 999px;
  font-size: 12px; font-weight: 600; }
.state::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: currentColor; }
.state.alive { color: var(--alive); background: var(--alive-bg); }
.state.busy { color: var(--busy); background: var(--busy-bg); }
.state.dead { color: var(--dead); background: var(--dead-bg); }
.state.registering, .state.other { color: var(--reg); background: var(--reg-bg); }
.cols { display: grid; grid-template-columns: 3fr 2fr; gap: 16px; }
footer { color: var(--muted); font-size: 12px; padding: 0 24px 20px; }
footer a { color: inherit; }
@media (max-width: 1000px) { .cards { grid-template-columns: 1fr 1fr 1fr; } .cols { grid-template-columns: 1fr; } }
"""

_SCRIPT = """
"use strict";
const STATES = ["alive", "busy", "registering", "dead"];
const REFRESH = (() => {
  const v = Number(new URLSearchParams(location.search).get("refresh"));
  return v >= 200 && v <= 60000 ? v : 1000;
})();
let updates = 0;

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child === null || child === undefined ? "" : child);
  return node;
}
function dur(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " m " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
  return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " m";
}
function ms(s) {
  if (s === null || s === undefined) return "\\u2014";
  const v = s * 1000;
  return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " ms";
}
function clock(t) { return new Date(t * 1000).toLocaleTimeString([], {hour12: false}); }
function badge(state) {
  return el("span", {class: "state " + (STATES.includes(state) ? state : "other")}, state);
}
function fill(id, rows, columns, empty) {
  const body = document.getElementById(id);
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {class: "empty", colspan: columns}, empty))]));
}
function text(id, value) { document.getElementById(id).textContent = value; }

function render(s) {
  const c = s.controller;
  text("meta", "controller pid " + c.pid + (c.ip ? " on " + c.ip : "") +
       (c.heartbeat_period ? " \\u00b7 heartbeat " + c.heartbeat_period + " s" : ""));
  const counts = s.counts;
  text("engines-total", s.engines.length);
  document.getElementById("engine-counts").replaceChildren(
    ...STATES.map(st => el("span", {class: "state " + st, data: {count: st}}, counts[st] + " " + st)));
  const t = s.tasks;
  text("tasks-in-flight", t.in_flight);
  text("tasks-retried", t.retried ? t.retried + " retried after an engine died" : "errors, dead engines");
  text("tasks-on-engines", t.queued_on_engines + " queued on engines");
  text("tasks-queued", t.ready + t.waiting);
  text("tasks-waiting", t.ready + " ready \u00b7 " + t.waiting + " waiting");
  text("tasks-completed", t.completed);
  text("tasks-failed", t.failed);
  document.getElementById("tasks-failed").classList.toggle("nonzero", t.failed > 0);
  text("tasks-rate", t.per_second.toFixed(t.per_second < 10 ? 2 : 1));
  text("rate-window", "over the last " + t.rate_window + " s");

  fill("engine-rows", s.engines.map(e => el("tr", {class: "state-" + e.state, data: {engineId: e.id, state: e.state}},
    el("td", {class: "id"}, e.id),
    el("td", {}, e.host),
    el("td", {class: "num"}, e.pid),
    el("td", {class: "state-cell"}, badge(e.state)),
    el("td", {class: "num"}, e.state === "dead" ? "\\u2014" : ms(e.rtt)),
    el("td", {class: "task", title: e.running_task || ""}, e.running_task || ""),
    el("td", {class: "num"}, dur(e.task_running_for)),
    el("td", {class: "num"}, dur(e.busy_for)),
    el("td", {class: "num"}, e.state === "dead" ? "" : e.queued))), 9, "No engines have registered yet.");

  fill("failure-rows", s.failures.map(f => el("tr", {data: {failedEngine: f.engine, event: f.event}},
    el("td", {}, clock(f.time)),
    el("td", {class: "id"}, f.engine),
    el("td", {}, f.host + " / " + f.pid),
    el("td", {}, badge(f.event === "dead" ? "dead" : f.event)),
    el("td", {class: "reason"}, f.reason))), 5, "No engine has died.");

  text("drops-window", "recent = last " + s.drops_window + " s");
  fill("drop-rows", s.drops.map(d => el("tr", {data: {socket: d.socket}},
    el("td", {}, d.socket),
    el("td", {class: "reason"}, d.reason),
    el("td", {class: "num"}, d.recent),
    el("td", {class: "num"}, d.total))), 4, "No message has been dropped.");

  updates += 1;
  document.documentElement.dataset.updates = updates;
  text("updated", "updated " + clock(s.time));
}

function connection(ok, why) {
  const node = document.getElementById("conn");
  node.className = "conn " + (ok ? "ok" : "lost");
  node.textContent = ok ? "live" : "no answer from the controller (" + why + ")";
  document.documentElement.dataset.connection = ok ? "ok" : "lost";
}

async function tick() {
  try {
    const response = await fetch("status.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    connection(true);
  } catch (e) {
    connection(false, e.message || String(e));
  } finally {
    setTimeout(tick, REFRESH);
  }
}
tick();
"""

_BODY = """
<header>
  <h1>ipcluster status</h1>
  <span class="meta" id="meta"></span>
  <span class="meta" id="updated"></span>
  <span class="conn" id="conn">connecting\u2026</span>
</header>
<main>
  <div class="cards">
    <div class="card"><div class="label">Engines</div><div class="value" id="engines-total">\u2013</div>
      <div class="chips" id="engine-counts"></div></div>
    <div class="card"><div class="label">Tasks in flight</div><div class="value" id="tasks-in-flight">\u2013</div>
      <div class="sub" id="tasks-on-engines"></div></div>
    <div class="card" title="tasks in the controller: ready to run, or waiting for the tasks they depend on"><div class="label">Queued</div><div class="value" id="tasks-queued">\u2013</div>
      <div class="sub" id="tasks-waiting"></div></div>
    <div class="card"><div class="label">Completed</div><div class="value" id="tasks-completed">\u2013</div>
      <div class="sub">tasks that returned</div></div>
    <div class="card failed"><div class="label">Failed</div><div class="value" id="tasks-failed">\u2013</div>
      <div class="sub" id="tasks-retried">errors, dead engines</div></div>
    <div class="card"><div class="label">Tasks / s</div><div class="value" id="tasks-rate">\u2013</div>
      <div class="sub" id="rate-window"></div></div>
  </div>
  <section>
    <h2>Engines</h2>
    <table id="engines">
      <thead><tr><th>Engine</th><th>Host</th><th class="num">PID</th><th>State</th><th class="num">Heartbeat RTT</th>
        <th>Running task</th><th class="num">Task for</th><th class="num">Busy for</th><th class="num">Queued</th></tr></thead>
      <tbody id="engine-rows"></tbody>
    </table>
  </section>
  <div class="cols">
    <section>
      <h2>Recent failures<span class="hint">engines declared dead or purged</span></h2>
      <table id="failures">
        <thead><tr><th>Time</th><th>Engine</th><th>Host / PID</th><th>Event</th><th>Reason</th></tr></thead>
        <tbody id="failure-rows"></tbody>
      </table>
    </section>
    <section>
      <h2>Dropped messages<span class="hint" id="drops-window"></span></h2>
      <table id="drops">
        <thead><tr><th>Socket</th><th>Reason</th><th class="num">Recent</th><th class="num">Total</th></tr></thead>
        <tbody id="drop-rows"></tbody>
      </table>
    </section>
  </div>
</main>
<footer>Read-only view. Data: <a href="status.json">status.json</a> \u00b7
  Prometheus: <a href="metrics">metrics</a></footer>
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


PAGE = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<title>ipcluster status</title>\n<link rel="icon" href="data:,">\n'
    f"<style>{_STYLE}</style>\n</head>\n<body>{_BODY}<script>{_SCRIPT}</script>\n</body>\n</html>\n"
).encode("utf-8")

PAGE_CSP = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
).encode("ascii")


def _common_headers(request, content_type: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-frame-options", b"DENY")


class _ReadOnly(resource.Resource):
    """A leaf that answers GET and HEAD, and 405 to any other method."""

    isLeaf = True

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            _common_headers(request, b"text/plain; charset=utf-8")
            return b"read-only: GET or HEAD\n"
        return super().render(request)


class _Page(_ReadOnly):
    def render_GET(self, request):
        _common_headers(request, b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", PAGE_CSP)
        return PAGE


class _Json(_ReadOnly):
    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self.view = view

    def render_GET(self, request):
        _common_headers(request, b"application/json")
        return json.dumps(self.view.status(), allow_nan=False, default=str).encode("utf-8")


class _Metrics(_ReadOnly):
    def __init__(self, view: StatusView) -> None:
        super().__init__()
        self.view = view

    def render_GET(self, request):
        _common_headers(request, b"text/plain; version=0.0.4; charset=utf-8")
        return self.view.metrics().encode("utf-8")


def _root(view: StatusView) -> resource.Resource:
    root = resource.Resource()
    root.putChild(b"", _Page())
    root.putChild(b"status.json", _Json(view))
    root.putChild(b"metrics", _Metrics(view))
    return root


class _Site(server.Site):
    noisy = False

    def log(self, request) -> None:
        """No access log: an open page polls twice a second."""


# -- the service ---------------------------------------------------------------


class WebService(service.Service):
    """Serves the status pages on one Twisted server endpoint.

    ``port`` is the bound port number once listening (``None`` before and
    after); ``listening`` gives a new Deferred that fires with it (or fails
    if the endpoint cannot listen).  Binding happens in
    ``privilegedStartService`` (so ``twistd`` fails at once on a port in
    use) or, if that was not called, in ``startService``.
    """

    name = "web"
    log = Logger()

    def __init__(self, controller, endpoint: str, reactor) -> None:
        self.controller = controller
        self.endpoint_description = endpoint
        self.reactor = reactor
        self.endpoint = serverFromString(reactor, endpoint)  # a bad description fails here, at once
        self.view = StatusView(controller, reactor)
        self.site = _Site(_root(self.view))
        self.site.displayTracebacks = False
        self.factory = ConnectionTracker(self.site)
        self.port: Optional[int] = None
        self.address = None
        self._listening_port = None
        self._starting: Optional[defer.Deferred] = None
        self._outcome = None  # the port number or a Failure, once listen() has answered
        self._waiters: list = []
        self._sampler = LoopingCall(self.view.sample)
        self._sampler.clock = reactor

    @property
    def listening(self) -> defer.Deferred:
        if self._outcome is not None:
            return defer.fail(self._outcome) if isinstance(self._outcome, Failure) else defer.succeed(self._outcome)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def _answer(self, outcome) -> None:
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            (d.errback if isinstance(outcome, Failure) else d.callback)(outcome)

    def _listen(self) -> None:
        self._outcome = None

        def listened(port):
            self._starting = None
            self._listening_port = port
            self.address = port.getHost()
            self.port = getattr(self.address, "port", None)
            host = getattr(self.address, "host", None)
            self.log.info("status page on {endpoint} (http://{host}:{port}/)", endpoint=self.endpoint_description,
                          host=host, port=self.port)
            if host is not None and not is_loopback(host):
                self.log.warn("the status page is unauthenticated and listens on {host}, not on loopback", host=host)
            self._answer(self.port)

        def failed(failure):
            self._starting = None
            if not failure.check(defer.CancelledError):
                self.log.failure("status page could not listen on {endpoint}", failure, endpoint=self.endpoint_description)
            self._answer(failure)

        self._starting = self.endpoint.listen(self.factory)
        self._starting.addCallbacks(listened, failed)
        if isinstance(self._outcome, Failure) and not self._outcome.check(defer.CancelledError):
            self._outcome.raiseException()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._listening_port is None and self._starting is None:
            self._listen()
        self.view.watch()
        if not self._sampler.running:
            self._sampler.start(SAMPLE_PERIOD, now=False)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.view.unwatch()
        if self._sampler.running:
            self._sampler.stop()
        if self._starting is not None:
            self._starting.cancel()
        stopping = []
        if self._listening_port is not None:
            stopping.append(defer.maybeDeferred(self._listening_port.stopListening))
        self._listening_port = None
        self.port = None
        self._outcome = None
        stopping.append(self.factory.disconnect_all())
        return defer.gatherResults(stopping, consumeErrors=True).addCallback(lambda _: None)


def web_service(controller, endpoint: str, reactor=None) -> service.IService:
    """The status pages of ``controller`` as a service listening on ``endpoint``.

    ``endpoint`` is a Twisted server endpoint description such as
    ``"tcp:8080:interface=127.0.0.1"`` (``tcp:0:...`` picks a free port: read
    ``.port`` after start, or wait on ``.listening``).  Unauthenticated and
    read-only: bind it to loopback.  ``reactor`` defaults to the
    controller's.
    """
    if reactor is None:
        reactor = getattr(controller, "reactor", None)
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    return WebService(controller, endpoint, reactor)
