"""``bench/heartbeat.py --storm N``: N engines registering with one controller at the same moment.

``--storm-real R`` of them are real engine processes, ``python -m ipcluster.engine`` run by
``hb/gate.py`` (which imports the engine's modules, says it is ready, and waits for a line
on stdin before running the module as ``-m`` would); the rest are simulated engines in
``--procs`` helpers started with ``--go`` (``hb/sim.py``: each builds its registration DEALER,
its native Heart and its control DEALER only after the go, and registers all at once).  When
every process is waiting, the go line is written to all of them; the clock starts there and
stops when ``engines()`` (polled every 0.2 s) lists N engines alive.  Counted from the
controller's log over the whole storm: refused registrations, purges, deaths, second
registrations of one id (an engine whose attempt timed out registers again), late slices.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from hb.cpu import LATE_RE, await_line, count_alive, spawn_helpers, stop_helpers
from hb.procs import BOUND, PROCS, Controller, cpu_seconds, wait_for
from hb.scale import Hold

GATE = Path(__file__).resolve().parent / "gate.py"
REGISTERING_RE = re.compile(r"engine (\S+) registering \(")


def start_real(ctl: Controller, count: int) -> list:
    procs = []
    for k in range(count):
        log = open(ctl.dir / f"real-{k}.log", "wb")
        procs.append(PROCS.spawn(
            [sys.executable, GATE, ctl.dir / f"real-{k}.waiting", "--connection-file", ctl.connection_file,
             "--id", f"real-{k}"],
            "engine", stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
        ))
        log.close()
    wait_for(lambda: all((ctl.dir / f"real-{k}.waiting").exists() for k in range(count)), 4 * BOUND,
             f"{count} real engines to be waiting")
    return procs


def go(procs: list) -> None:
    for proc in procs:
        proc.stdin.write(b"GO\n")
        proc.stdin.flush()


def storm_log(log: str) -> dict:
    per_id: dict = {}
    for m in REGISTERING_RE.finditer(log):
        per_id[m.group(1)] = per_id.get(m.group(1), 0) + 1
    return {
        "registered_ids": len(per_id),
        "registered_twice": sum(1 for c in per_id.values() if c > 1),
        "registering_again": len(re.findall(r"registering again", log)),
        "refused": len(re.findall(r"refused registration", log)),
        "purged": len(re.findall(r"registration purged", log)),
        "dead": len(re.findall(r"engine \S+ dead\b", log)),
        "late_slices": len(LATE_RE.findall(log)),
    }


def storm(root: Path, n: int, real: int, procs: int, run: int = 0) -> dict:
    ctl = Controller(root, f"storm-{n}-{run}", engines=0, timed=True).start()
    helpers: list = []
    engines: list = []
    hold = Hold(ctl)
    try:
        real = min(real, n)
        helpers = spawn_helpers(ctl, n - real, procs, extra=["--go"], stdin=subprocess.PIPE)
        await_line(helpers, "WAITING")
        engines = start_real(ctl, real)
        log_start = ctl.log_size()
        hold("start")
        c0, t0 = cpu_seconds(ctl.pid), time.monotonic()
        go(helpers + engines)
        wait_for(lambda: count_alive(ctl, n), 4 * BOUND, f"{n} engines to be alive", interval=0.2)
        t1, c1 = time.monotonic(), cpu_seconds(ctl.pid)
        held = hold("end")
        await_line(helpers, "READY")
        counters = stop_helpers(helpers)
        replies = [c["last_reply"] for c in counters if c.get("last_reply")]
        res = {
            "engines": n, "real": real, "simulated": n - real, "helper_processes": len(helpers),
            "seconds_to_all_alive": t1 - t0,
            "seconds_to_last_sim_reply": (max(replies) - t0) if replies else None,
            "controller_cpu_s": c1 - c0,
            "controller_percent_core": 100.0 * (c1 - c0) / (t1 - t0),
            "hold": held,
            "helper_rejected": sum(c.get("rejected", 0) for c in counters),
            **storm_log(ctl.log_text(log_start)),
        }
        res["ok"] = (res["registered_ids"] == n and not res["registered_twice"] and not res["refused"]
                     and not res["purged"] and not res["dead"] and not res["helper_rejected"])
        return res
    finally:
        for proc in helpers + engines:
            PROCS.end(proc, "helper" if proc in helpers else "engine")
        ctl.stop()
