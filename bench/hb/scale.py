"""``bench/heartbeat.py --engines N``: N simulated hearts at the default period, and hung engines.

The controller runs under ``hb/timed.py`` (every heart-monitor slice and every socket event
it handles is timed inside it); ``--procs`` helper processes share the N simulated engines
(``hb/sim.py``: real native Hearts, or with ``--light-hearts`` DEALERs echoed in the helper's
poll loop), registering at most ``--in-flight`` at a time each, and
``--hung`` real engine processes (``ipcluster-engine``) join them.  Once every engine is alive:
a steady window (controller CPU, its open files, slice hold, heart rtt, false deaths), then
each real engine in turn is SIGSTOPped at a random phase of the period and timed until the
controller's log says it is dead (the log is read, not ``engines()``: a 10,000-row table
polled every 20 ms would load the controller being measured).

Fitting 10,000 under the open-file limit: the controller holds 2 connections per simulated
engine (heartbeat, control) and RLIMIT_NOFILE is 20,000 here (hard; root cannot raise it), so
just enough simulated engines (``heart_only_needed``: 359 of 10,000 with 3 real) keep only their
heart after registering.  The controller hears nothing on their control channel: they are
``busy`` (not counted as false), never dead; its control pings to them are refused by the
ROUTER and held off for 2 s each time.
"""
from __future__ import annotations

import json
import os
import resource
import random
import re
import signal
import subprocess
import time
from pathlib import Path

from hb.cpu import EVENT_RE, spawn_helpers, stop_helpers, steady_window, await_line
from hb.procs import BOUND, ENGINE, PROCS, Controller, pct, summary, wait_for


class Hold:
    """Brackets a window of ``hb/timed.py``'s turn timings (SIGUSR1 at its start and end)."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.path = ctl.dir / "slices.json"
        self.seq = 0

    def _dump(self) -> dict:
        os.kill(self.ctl.pid, signal.SIGUSR1)
        self.seq += 1

        def written():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return None
            return data if data["seq"] >= self.seq else None

        return wait_for(written, BOUND, "the controller's turn timings")

    def __call__(self, when: str):
        data = self._dump()
        if when == "start":
            return None
        return {kind: turns(values) for kind, values in data.items() if kind != "seq"}


def turns(values: list) -> dict:
    return {
        "n": len(values),
        "max": max(values) if values else 0.0,
        "p99": pct(values, 99) if values else 0.0,
        "median": sorted(values)[len(values) // 2] if values else 0.0,
        "over_5ms": sum(1 for v in values if v > 0.005),
    }


def dead_in_log(ctl: Controller, start: int, engine_id: str):
    return re.search(rf"engine {re.escape(engine_id)} dead\b", ctl.log_text(start))


def hung_engines(ctl: Controller, procs: dict, period: float, rng: random.Random) -> dict:
    """SIGSTOP each real engine in turn; seconds until the controller logs it dead (inf: not in BOUND s)."""
    values = []
    for engine_id, proc in procs.items():
        start = ctl.log_size()
        time.sleep(rng.uniform(0.0, period))  # a random phase of the period
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGSTOP)
        PROCS.stopped.add(proc.pid)
        try:
            wait_for(lambda: dead_in_log(ctl, start, engine_id), BOUND, f"{engine_id} to be reported dead", 0.02)
            values.append(time.monotonic() - t0)
        except TimeoutError:
            values.append(float("inf"))  # not reported within BOUND s
        PROCS.end(proc, "engine")
    return dict(summary(values), samples=values)


def start_hung(ctl: Controller, count: int) -> dict:
    procs = {}
    for k in range(count):
        log = open(ctl.dir / f"hung-{k}.log", "wb")
        procs[f"hung-{k}"] = PROCS.spawn([ENGINE, "--connection-file", ctl.connection_file, "--id", f"hung-{k}"],
                                         "engine", stdout=log, stderr=subprocess.STDOUT)
        log.close()
    return procs


#: Ids of the simulated engines that keep only their heart (``hb/sim.py --heart-only``).
HEART_ONLY_RE = re.compile(r"sim\d+-h\d+")
#: Open files the controller needs beside its engines' connections (its own sockets, the
#: bench's client, the log, some spare).
FD_RESERVE = 350


def is_heart_only(engine_id: str) -> bool:
    return HEART_ONLY_RE.fullmatch(engine_id) is not None


def heart_only_needed(n: int, hung: int, limit=None) -> int:
    """How many of ``n`` simulated engines must drop their control connection for the controller
    to fit its open-file limit: a full engine costs it 2 files, a heart-only one 1, a real one 3."""
    limit = limit if limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(0, min(n, 2 * n + 3 * hung + FD_RESERVE - limit))


def false_deaths(log: str, real: dict) -> dict:
    """Dead, purged and busy events of engines never stopped (a heart-only engine's busy is expected)."""
    events: dict = {}
    for m in EVENT_RE.finditer(log):
        if m.group(2) == "busy" and is_heart_only(m.group(1)):
            continue
        if m.group(1) not in real and m.group(2) in ("dead", "purged", "busy"):
            events[m.group(2)] = events.get(m.group(2), 0) + 1
    return events


def count_up(ctl: Controller, n: int) -> bool:
    """Every engine alive or busy (busy: its heart answers; at scale a late control pong makes it so)."""
    return sum(1 for e in ctl.engines().values() if e["state"] in ("alive", "busy")) >= n


def scale_level(root: Path, n: int, procs: int, window: float, warmup: float, hung: int,
                period: float, rng: random.Random, in_flight: int, busy_after=None, heart_only=None,
                light: bool = False) -> dict:
    options = ["--busy-after", busy_after] if busy_after else []
    ctl = Controller(root, f"scale-{n}-{busy_after or 'default'}", engines=0, timed=True, options=options).start()
    helpers: list = []
    try:
        started = time.monotonic()
        log_start = ctl.log_size()
        if heart_only is None:
            heart_only = heart_only_needed(n, hung)
        extra = ["--in-flight", in_flight, "--register-timeout", 2 * BOUND, *(["--light"] if light else [])]
        helpers = spawn_helpers(ctl, n, procs, extra=extra, heart_only=heart_only)
        await_line(helpers, "READY", bound=5 * BOUND)
        real = start_hung(ctl, hung)
        wait_for(lambda: count_up(ctl, n + hung), 2 * BOUND, f"{n + hung} engines to be up", interval=1.0)
        ready_s = time.monotonic() - started
        import psutil

        fds = psutil.Process(ctl.pid).num_fds()
        res = steady_window(ctl, helpers, n + hung, window, warmup, hold=Hold(ctl) if ctl.timed else None,
                            strict=False, heart_only=is_heart_only)
        res["hung"] = hung_engines(ctl, real, period, rng) if real else None
        res.update(
            simulated=n, real=hung, heart_only=heart_only, light_hearts=light,
            seconds_to_all_alive=ready_s, controller_open_files=fds,
            false_deaths_whole_run=false_deaths(ctl.log_text(log_start), real),
        )
        counters = stop_helpers(helpers)
        res["helper_pongs"] = sum(c.get("pongs", 0) for c in counters)
        res["busy_after"] = busy_after
        res["ok"] = res["ok"] and not res["false_deaths_whole_run"] and all(
            x != float("inf") for x in (res["hung"] or {}).get("samples", []))
        return res
    finally:
        for helper in helpers:
            PROCS.end(helper, "helper")
        ctl.stop()
