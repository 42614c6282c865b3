#!/usr/bin/env python
"""Heartbeat benchmark for ipcluster: round-trip time, time to detect death, controller cost.

Run it from the project root with the project's virtualenv::

    .venv/bin/python bench/heartbeat.py                 # full run, about 2-3 minutes
    .venv/bin/python bench/heartbeat.py --quick         # shorter windows, fewer trials (~1.5 min)
    .venv/bin/python bench/heartbeat.py --json bench/results/heartbeat.json

It needs psutil (in the project's ``test`` extras): ``.venv/bin/pip install psutil``.
Everything listens on 127.0.0.1 and lives in a temporary directory; every
process it starts is ended (SIGCONT, then SIGTERM/SIGKILL) on exit, failure
or Ctrl-C.

What is measured
----------------
1. **Heartbeat round-trip time.**

   * *raw heart*: a plain pyzmq ROUTER pings an in-process
     ``ipcluster.engine.heart.Heart`` (the native ``zmq.proxy_steerable`` echo)
     2,000 times, one at a time, after a warm-up; each ping is a real
     ``PingCodec`` ping.  Median and p99 of ``perf_counter`` round trips.
   * *via the controller*: ``twistd -n --pidfile= ipcluster --engines 2`` is
     started as a subprocess; once ``Client.wait_for_engines(2)`` returns,
     ``client.engines()`` is sampled every 50 ms for ``--rtt-seconds``.  Each
     sample's ``rtt`` field is the latest heart round trip the controller
     measured (reactor clock, from the start of the monitor's tick to the
     reactor handling the pong, so it includes reactor latency).  One value
     per engine per change is kept (one per heartbeat), so the median/p99
     weigh each beat once.

2. **Time to report an engine dead**, with the controller's DEFAULT settings
   (period and misses from ``ipcluster.controller.heartmonitor``).
   External engines (``ipcluster-engine --connection-file F --id bK``, started
   by this script, so the controller does not see their process exit) are
   brought up together and waited for; then, for each trial, after a random
   delay in ``[0, period)`` (so the kills fall at random phases of the
   monitor's tick -- without it, each trial would start right after the
   previous death was reported, i.e. always at the same phase), ``t0`` is read
   just before ``os.kill`` and ``client.engines()`` is polled every 20 ms until
   the engine's state is ``dead``.  SIGKILL (process gone, connection closed)
   and SIGSTOP (process frozen, connection open, heart silent) are measured,
   ``--trials`` each (default 5); stopped engines get SIGCONT then SIGKILL right
   after their trial.  For comparison, engines the controller started itself
   (``--engines N``) are SIGKILLed: they are reported through
   ``processEnded``, without waiting for missed beats.

3. **Controller CPU per second** at 0 (idle baseline), 100 and 1,000
   engines.  The engines are simulated, "many hearts in a few processes": the
   script re-runs itself in helper mode
   (``bench/heartbeat.py --hearts N --connection-file F``), ``--procs``
   processes (default 4).  Each helper registers its N engines with distinct
   ids exactly as ``ipcluster/engine/engine.py`` does (a DEALER on the
   registration socket sends ``register`` via ``ipcluster.transport.wire.Codec`` and
   waits for ``registered``), then starts one real ``Heart`` per engine (native
   echo thread) and one DEALER per engine on the control socket, which a single
   ``zmq.Poller`` loop serves: ``ping`` -> ``pong {beat, instance, queued}``.
   Each level gets a fresh controller (``--engines 0``).  Once every engine is
   alive, after a short warm-up, the controller process's CPU time
   (user+system, all its threads, via psutil) is read over ``--cpu-window``
   seconds (default 10) and reported as CPU seconds per second (100% = one
   core).  Nothing talks to the controller during the window.  Before and
   after it, ``client.engines()`` is checked, and the controller's log for the
   window is scanned: no simulated engine may be declared dead, purged, busy,
   or re-registered, and late monitor ticks are counted.

Scale modes (instead of the parts; ``bench/hb/scale.py`` and ``bench/hb/storm.py`` say more)::

    .venv/bin/python bench/heartbeat.py --engines 1000,5000,9900 --hung 3
    .venv/bin/python bench/heartbeat.py --storm 1000 --storm-real 40

``--engines N``: N simulated hearts plus ``--hung`` real engines, the controller's reactor
turns timed inside it (``bench/hb/timed.py``), a steady window, then each real engine
SIGSTOPped and timed until it is reported dead.  ``--storm N``: N engines (``--storm-real`` of
them real processes) released at the same moment; time until all are alive, controller CPU,
refusals, second registrations, purges and deaths.

Helper mode (used by part 3 and the scale modes, can be run by hand against a running controller)::

    .venv/bin/python bench/heartbeat.py --hearts 250 --connection-file ~/.ipcluster/connection.json

It prints ``READY <n>`` once every engine is registered and its heart runs,
answers control pings until SIGTERM/SIGINT (or its parent exits), then prints
one JSON line of counters and exits.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from hb.cpu import cpu_level  # bench/ is on sys.path
from hb.procs import BOUND, ENGINE, PROCS, TWISTD, Controller
from hb.report import environment, print_report
from hb.rttdeath import controller_rtt, external_deaths, local_deaths, raw_heart_rtt
from hb.scale import scale_level
from hb.sim import run_hearts
from hb.storm import storm


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help="shorter run: 3 s of RTT sampling, 3 trials, 5 s CPU windows, no idle baseline")
    p.add_argument("--only", default="rtt,death,cpu", help="comma-separated parts to run (rtt, death, cpu)")
    p.add_argument("--raw-pings", type=int, default=2000, help="pings to the in-process heart (default 2000)")
    p.add_argument("--rtt-seconds", type=float, default=None, help="seconds of engines() rtt sampling (default 8)")
    p.add_argument("--trials", type=int, default=None, help="kills per kind (default 5)")
    p.add_argument("--cpu-engines", default=None, help="simulated engine counts (default 0,100,1000)")
    p.add_argument("--cpu-window", type=float, default=None, help="CPU measurement window in s (default 10)")
    p.add_argument("--cpu-warmup", type=float, default=2.0, help="steady-state seconds before the window (default 2)")
    p.add_argument("--procs", type=int, default=4, help="helper processes for simulated engines (default 4)")
    p.add_argument("--seed", type=int, default=None, help="seed for the random kill phases")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--engines", default=None, metavar="N[,N...]",
                   help="scale mode instead of the parts: N simulated hearts (up to ~9,900 here) plus --hung "
                   "real engines that are SIGSTOPped in turn; slice hold, CPU, rtt, false deaths, detection")
    p.add_argument("--hung", type=int, default=3, help="scale mode: real engines SIGSTOPped in turn (default 3)")
    p.add_argument("--in-flight", type=int, default=None,
                   help="scale mode: registrations each helper keeps outstanding (default 100)")
    p.add_argument("--heart-only", type=int, default=None, metavar="K",
                   help="scale mode: K of the simulated engines keep only their heart connection after registering "
                   "(they show busy, never dead); default: just enough to fit the controller's open-file limit")
    p.add_argument("--light-hearts", action="store_true",
                   help="scale mode: simulated hearts echo in their helper's poll loop instead of one native Heart "
                   "thread each (same wire behaviour; 10,000 heart threads starve a 2-core machine)")
    p.add_argument("--light", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile", metavar="PATH", default=None,
                   help="scale mode: cProfile the controller over the steady window into PATH (slows it down)")
    p.add_argument("--busy-after", type=float, default=None, metavar="S",
                   help="scale mode: the controller's --busy-after (default: its own, 3 periods, at least 1 s)")
    p.add_argument("--storm", type=int, default=None, metavar="N",
                   help="registration storm instead of the parts: N engines registering at the same moment")
    p.add_argument("--storm-real", type=int, default=40,
                   help="storm: how many of them are real engine processes (default 40)")
    p.add_argument("--runs", type=int, default=1, help="scale and storm modes: runs of each (default 1)")
    # helper mode
    p.add_argument("--go", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hearts", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--connection-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--id-prefix", default=None, help=argparse.SUPPRESS)
    p.add_argument("--register-timeout", type=float, default=BOUND, help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=900.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    if args.rtt_seconds is None:
        args.rtt_seconds = 3.0 if q else 8.0
    if args.trials is None:
        args.trials = 3 if q else 5
    if args.cpu_window is None:
        args.cpu_window = 5.0 if q else 10.0
    if args.cpu_engines is None:
        args.cpu_engines = "100,1000" if q else "0,100,1000"
    return args


def scale_modes(args, res: dict, root: Path, rng: random.Random, period: float) -> None:
    for run in range(args.runs):
        for n in [int(x) for x in (args.engines or "").split(",") if x.strip()]:
            procs = max(args.procs, -(-n // 1000))
            print(f"scale: {n} simulated engines in {procs} helpers + {args.hung} real (run {run + 1}) ...",
                  file=sys.stderr, flush=True)
            try:
                res.setdefault("scale", []).append(
                    scale_level(root / f"run{run}", n, procs, args.cpu_window, args.cpu_warmup, args.hung, period,
                                rng, args.in_flight or 100, args.busy_after, args.heart_only, args.light_hearts))
            except (RuntimeError, TimeoutError) as e:  # one level failing is a figure, not the end of the run
                print(f"scale: {n} engines failed: {e}", file=sys.stderr, flush=True)
                res.setdefault("scale_failed", []).append({"engines": n, "busy_after": args.busy_after,
                                                           "error": str(e)})
        if args.storm:
            print(f"storm: {args.storm} engines ({args.storm_real} real) register at once (run {run + 1}) ...",
                  file=sys.stderr, flush=True)
            res.setdefault("storm", []).append(storm(root, args.storm, args.storm_real, args.procs, run))


def run_parts(args, parts: set, res: dict, root: Path, rng: random.Random, period: float) -> None:
    """Parts 1-3 (``--only``)."""
    if parts & {"rtt", "death"}:
        print("starting controller with 2 local engines ...", file=sys.stderr, flush=True)
        ctl = Controller(root, "main", engines=2).start()
        try:
            ctl.client.wait_for_engines(2, timeout=BOUND)
            PROCS.note_children(ctl.proc)
            if "rtt" in parts:
                print(f"measuring RTT ({args.raw_pings} raw pings, {args.rtt_seconds:g} s of engines()) ...",
                      file=sys.stderr, flush=True)
                res["rtt"] = {
                    "raw_heart": raw_heart_rtt(args.raw_pings),
                    "controller": controller_rtt(ctl, args.rtt_seconds),
                }
            if "death" in parts:
                print(f"death detection: {args.trials} SIGKILL + {args.trials} SIGSTOP external engines ...",
                      file=sys.stderr, flush=True)
                external = external_deaths(ctl, root, args.trials, period, rng)
        finally:
            ctl.stop()
        if "death" in parts:
            print(f"death detection: {args.trials} SIGKILL controller-started engines ...",
                  file=sys.stderr, flush=True)
            res["death"] = {"external": external, "local_sigkill": local_deaths(root, args.trials, period, rng)}
    if "cpu" in parts:
        res["cpu"] = []
        for n in [int(x) for x in args.cpu_engines.split(",") if x.strip()]:
            print(f"controller CPU with {n} simulated engines ({args.cpu_window:g} s window) ...",
                  file=sys.stderr, flush=True)
            res["cpu"].append(cpu_level(root, n, args.procs, args.cpu_window, args.cpu_warmup))


def preflight() -> None:
    try:
        import psutil  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs psutil: .venv/bin/pip install psutil")
    for tool in (TWISTD, ENGINE):
        if not tool.exists():
            sys.exit(f"{tool} not found: run this with the project's venv python (.venv/bin/python)")


def helper(args) -> int:
    if not args.connection_file:
        sys.exit("--hearts needs --connection-file")
    prefix = args.id_prefix or f"sim-{os.getpid()}-"
    return run_hearts(args.hearts, args.connection_file, prefix, args.register_timeout, args.max_seconds,
                      go=args.go, in_flight=args.in_flight or 0, heart_only=args.heart_only or 0, light=args.light)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.hearts is not None:
        return helper(args)
    preflight()
    from ipcluster.controller.heartmonitor import DEFAULT_MISSES, DEFAULT_PERIOD

    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="ipcluster-bench-"))
    atexit.register(PROCS.cleanup)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    if args.profile:
        os.environ["HB_PROFILE"] = str(Path(args.profile).resolve())  # read by hb/timed.py in the controller
    started = time.monotonic()
    res: dict = {
        "environment": environment(),
        "settings": {"heartbeat_period": DEFAULT_PERIOD, "heartbeat_misses": DEFAULT_MISSES},
        "args": {k: v for k, v in vars(args).items() if k not in ("hearts", "connection_file", "id_prefix")},
    }
    failed = False
    try:
        if args.engines or args.storm:
            scale_modes(args, res, root, rng, DEFAULT_PERIOD)
        else:
            run_parts(args, {x.strip() for x in args.only.split(",") if x.strip()}, res, root, rng, DEFAULT_PERIOD)
    except BaseException:
        failed = True
        print(f"benchmark failed; logs in {root}", file=sys.stderr)
        raise
    finally:
        PROCS.cleanup()
        if not failed and not args.keep_tmp:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep_tmp:
            print(f"logs kept in {root}", file=sys.stderr)
    res["runtime_s"] = time.monotonic() - started
    res["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(res)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
