"""Part 3 of bench/heartbeat.py: controller CPU with many simulated engines, and what it shares
with the scale modes: starting helper processes and measuring one steady window."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from hb.procs import BOUND, PROCS, SCRIPT, Controller, cpu_seconds, helper_split, read_line, summary, wait_for

EVENT_RE = re.compile(r"engine (\S+) (dead|purged|busy|registering|left|alive again)\b")
LATE_RE = re.compile(r"heart monitor ran [0-9.]+ s late")


def spawn_helpers(ctl: Controller, n: int, procs: int, extra=(), stdin=None, heart_only: int = 0) -> list:
    """``procs`` helper processes (``heartbeat.py --hearts``) sharing ``n`` simulated engines,
    ``heart_only`` of them without a control channel (spread like the engines)."""
    helpers = []
    counts = helper_split(n, procs) if n else []
    shares = helper_split(heart_only, len(counts)) if heart_only else [0] * len(counts)
    for p, count in enumerate(counts):
        err = open(ctl.dir / f"helper-{p}.log", "wb")
        helpers.append(
            PROCS.spawn(
                [sys.executable, SCRIPT, "--hearts", count, "--connection-file", ctl.connection_file,
                 "--id-prefix", f"sim{p}-", *extra, *(["--heart-only", shares[p]] if shares[p] else [])],
                "helper", stdout=subprocess.PIPE, stderr=err, **({"stdin": stdin} if stdin else {}),
            )
        )
        err.close()
    return helpers


def await_line(helpers: list, word: str, bound: float = 2 * BOUND) -> None:
    """Wait until every helper printed a line starting with ``word``."""
    for p, helper in enumerate(helpers):
        deadline = time.monotonic() + bound
        while True:
            line = read_line(helper, max(0.0, deadline - time.monotonic()))
            if line.startswith(word):
                break
            if line.startswith("FAILED"):
                raise RuntimeError(f"helper {p}: {line}")
            if not line and (helper.poll() is not None or time.monotonic() > deadline):
                raise RuntimeError(f"helper {p} did not print {word} (exit {helper.poll()})")


def stop_helpers(helpers: list) -> list:
    """SIGTERM every helper; their counters (the last JSON line each prints)."""
    counters = []
    for helper in helpers:
        PROCS.signal(helper, signal.SIGTERM)
    for helper in helpers:
        try:
            out, _ = helper.communicate(timeout=60)
            lines = out.decode().strip().splitlines()
            counters.append(json.loads(lines[-1]) if lines else {})
        except Exception:
            counters.append({})
    return counters


def count_alive(ctl: Controller, n: int):
    engines = ctl.engines()
    alive = [e for e in engines.values() if e["state"] == "alive"]
    return (engines,) if len(alive) >= n else None


def tally(values) -> dict:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def changed_since(before: dict, after, busy_ok: bool = False) -> bool:
    """Not alive (nor busy, if ``busy_ok``) after the window, or registered again during it."""
    ok = ("alive", "busy") if busy_ok else ("alive",)
    return after is None or after["state"] not in ok or after["registered_at"] != before["registered_at"]


def window_events(log: str, before: dict, after: dict, heart_only) -> tuple:
    """The engine events in the window's log (a heart-only engine's busy is expected) and the
    engines that changed over it."""
    events = tally(m.group(2) for m in EVENT_RE.finditer(log) if not (m.group(2) == "busy" and heart_only(m.group(1))))
    changed = [eid for eid, e in before.items() if changed_since(e, after.get(eid), heart_only(eid))]
    return events, changed


def measured(ctl: Controller, helpers: list, window: float, hold) -> tuple:
    """(controller CPU s, wall s, helpers' CPU s) at the window's start and end, and ``hold``'s value."""
    if hold is not None:
        hold("start")
    helper_cpu0 = sum(cpu_seconds(h.pid) for h in helpers)
    c0, t0 = cpu_seconds(ctl.pid), time.monotonic()
    time.sleep(window)  # the measurement window: nothing talks to the controller
    c1, t1 = cpu_seconds(ctl.pid), time.monotonic()
    helper_cpu1 = sum(cpu_seconds(h.pid) for h in helpers)
    return (c0, c1), (t0, t1), (helper_cpu0, helper_cpu1), hold("end") if hold is not None else None


def steady_window(ctl: Controller, helpers: list, n: int, window: float, warmup: float, hold=None,
                  strict: bool = True, heart_only=lambda engine_id: False) -> dict:
    """Controller CPU, events and heart rtt over ``window`` seconds in which nothing talks to it.

    ``hold`` (a callable) is called at the window's start and end (``hold("start")``,
    ``hold("end")``); its value at the end is kept as ``hold``.  ``strict``: raise unless every
    engine is alive before the window (else their states are kept as ``states_before``).
    """
    time.sleep(warmup)  # a few beats of steady state before the window
    before = ctl.engines()
    states = tally(e["state"] for e in before.values())
    if strict and (len(before) < n or states.get("alive", 0) < len(before)):
        raise RuntimeError(f"not steady before the window: {states}")
    log_start = ctl.log_size()
    (c0, c1), (t0, t1), (helper_cpu0, helper_cpu1), held = measured(ctl, helpers, window, hold)
    log = ctl.log_text(log_start)
    after = ctl.engines()
    events, changed = window_events(log, before, after, heart_only)
    rtts = [e["rtt"] for e in after.values() if e["rtt"] is not None]
    cpu = (c1 - c0) / (t1 - t0)
    return {
        "engines": n,
        "helper_processes": len(helpers),
        "window_s": t1 - t0,
        "controller_cpu_s": c1 - c0,
        "controller_cpu_per_s": cpu,
        "controller_percent_core": 100.0 * cpu,
        "helpers_percent_core": 100.0 * (helper_cpu1 - helper_cpu0) / (t1 - t0),
        "not_alive_after_window": len(changed),
        "events_in_window": events,
        "late_ticks_in_window": len(LATE_RE.findall(log)),
        "rtt_after_window": summary(rtts) if rtts else None,
        "late_tick_lines": [line for line in log.splitlines() if LATE_RE.search(line)][:5],
        "hold": held,
        "states_before": states,
        # liveness only: late ticks are reported (a column) but are the controller's lag, not a false death
        "ok": not changed and not events,
    }


def cpu_level(root: Path, n: int, procs: int, window: float, warmup: float) -> dict:
    ctl = Controller(root, f"cpu-{n}", engines=0).start()
    helpers: list = []
    try:
        started = time.monotonic()
        helpers = spawn_helpers(ctl, n, procs)
        await_line(helpers, "READY")
        wait_for(lambda: count_alive(ctl, n), BOUND, f"{n} simulated engines to be alive", interval=0.25)
        ready_s = time.monotonic() - started
        res = steady_window(ctl, helpers, n, window, warmup)
        counters = stop_helpers(helpers)
        res.pop("hold")
        res.update(
            seconds_to_all_alive=ready_s,
            helper_unknown_msgs=sum(c.get("unknown", 0) for c in counters),
            helper_pongs=sum(c.get("pongs", 0) for c in counters),
        )
        return res
    finally:
        for helper in helpers:
            PROCS.end(helper, "helper")
        ctl.stop()
