#!/usr/bin/env python
"""One system of ``bench/compare.py``, in its own fresh process: every phase, bounded.

Started by compare.py, never by hand::

    INTERPRETER bench/comparechild.py SYSTEM OUT.json PARAMS-JSON

``INTERPRETER`` is the project's Python for ipcluster and ProcessPool, the
peers' for ipyparallel, dask and ray.  The task ``noop`` is defined here, in
``__main__``, so that every system ships it by value (cloudpickle, or
ipyparallel's canning) and nothing needs to be importable on the engines.
Results (metrics, notes, errors, versions) are written to OUT.json after each
phase, so that whatever was measured survives a later failure.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
import traceback
from types import SimpleNamespace
from typing import Callable

from benchstats import pct  # noqa: E402  (bench/ is on sys.path)
from benchsys import runner_class
from benchsys.base import ENGINES, Absent, NotAvailable, PhaseTimeout, bounded, perf, pss_sum

WARMUP = 20
#: map's chunksize is also tried at these (for systems whose map has one); the best one is reported.
CHUNKSIZES = (10, 100, 1000)


def noop(x=None):
    """The task every system runs (also the payload's echo)."""
    return x


class Phases:
    """The measurements, in order, of one started system (``runner``); fills ``res``."""

    def __init__(self, runner, args, res: dict, say: Callable[[str], None], save: Callable[[], None]) -> None:
        self.runner, self.args, self.res, self.say, self.save = runner, args, res, say, save
        self.m = res["metrics"]
        self.healthy = True

    def phase(self, key: str, what: str, fn: Callable[[], None], bound: float) -> None:
        """Run ``fn`` within ``bound`` seconds; its failure goes into ``errors[key]``, not further."""
        if not self.healthy:
            self.res["errors"][key] = "skipped: an earlier phase timed out"
            return
        gc.collect()
        try:
            with bounded(bound, what):
                fn()
        except NotAvailable as e:
            self.res["errors"][key] = f"n/a: {e}"
            self.say(f"{what}: n/a ({e})")
        except PhaseTimeout as e:
            self.healthy = False
            self.res["errors"][key] = str(e)
            self.say(f"{what}: TIMEOUT ({e})")
        except Exception as e:  # noqa: BLE001 - report it in the table, keep going
            self.res["errors"][key] = f"{type(e).__name__}: {e}"
            self.say(f"{what}: FAILED {type(e).__name__}: {e}")
            traceback.print_exc()
        self.save()

    def run_all(self) -> None:
        a, r = self.args, self.runner
        one_bound = a.phase_timeout
        big_bound = 60.0 + 0.01 * a.map_items  # (gives up below ~100 items/s)
        self.phase("rtt", "round trips", self.rtt, 60 + 0.5 * (a.rtt_samples + WARMUP))
        self.phase("one_by_one", f"{a.tasks} tasks one by one", self.throughput("one_by_one", r.many, a.tasks),
                   one_bound)
        self.phase("map", f"{a.tasks} tasks via map", self.throughput("map", r.map, a.tasks), one_bound)
        for c in CHUNKSIZES:
            self.phase(f"map_c{c}", f"{a.tasks} tasks via map, chunksize={c}",
                       self.throughput(f"map_c{c}", lambda n, c=c: r.map_chunked(n, c), a.tasks), one_bound)
            if self.res["errors"].get(f"map_c{c}", "").startswith("n/a"):
                break  # (its map has no chunksize: once is enough)
        self.pick_best_chunksize()
        healthy, self.healthy = self.healthy, True  # memory is worth reading even after a stuck phase
        self.phase("controller_rss", "RSS", self.rss, 30)
        self.phase("engines_rss", "engines' RSS", self.engines, 30)
        self.healthy = healthy
        self.phase("payload", f"{a.payload_mb:g} MB array there and back", self.payload,
                   60 + 30 * (a.payload_reps + 1))
        self.phase("bigmap", f"{a.map_items:,} items via map", self.throughput("bigmap", r.map, a.map_items),
                   big_bound)
        best = self.m.get("map_best_chunksize")
        if best not in (None, "default"):
            self.phase("bigmap_best", f"{a.map_items:,} items via map, chunksize={best}",
                       self.throughput("bigmap_best", lambda n: r.map_chunked(n, best), a.map_items), big_bound)
        elif best == "default" and "bigmap_tps" in self.m:
            self.m["bigmap_best_tps"] = self.m["bigmap_tps"]
        elif best is None:
            self.res["errors"]["bigmap_best"] = self.res["errors"].get("map_c10", "n/a: no chunksize")
        self.healthy = True
        self.phase("controller_rss_end", "RSS at the end", self.rss_end, 30)

    def rtt(self) -> None:
        self.runner.warm()
        for _ in range(WARMUP - 1):
            self.runner.one()
        samples = []
        for _ in range(self.args.rtt_samples):
            t = perf()
            self.runner.one()
            samples.append(perf() - t)
        m = self.m
        m["rtt_median_s"] = pct(samples, 50)
        m["rtt_p99_s"] = pct(samples, 99)
        m["rtt_min_s"] = min(samples)
        m["rtt_mean_s"] = sum(samples) / len(samples)
        self.say(f"round trip median {m['rtt_median_s'] * 1e3:.3f} ms, p99 {m['rtt_p99_s'] * 1e3:.3f} ms")

    def throughput(self, key: str, fn: Callable[[int], list], n: int) -> Callable[[], None]:
        def run() -> None:
            t = perf()
            out = fn(n)
            dt = perf() - t
            out = list(out)
            if out != list(range(n)):
                bad = next((i for i, v in enumerate(out) if v != i), len(out))
                raise RuntimeError(f"wrong results: {len(out)} of {n}, first mismatch at {bad}")
            self.m[f"{key}_s"] = dt
            self.m[f"{key}_tps"] = n / dt
            self.say(f"{key.replace('_', ' ')}: {n:,} tasks in {dt:.3f} s = {n / dt:,.0f} tasks/s")

        return run

    def pick_best_chunksize(self) -> None:
        """The best of the default map and the chunksizes tried (only if the map has a chunksize)."""
        tried = {c: self.m[f"map_c{c}_tps"] for c in CHUNKSIZES if f"map_c{c}_tps" in self.m}
        if not tried:
            return
        best, rate = max(tried.items(), key=lambda kv: kv[1])
        if self.m.get("map_tps", 0) >= rate:
            best, rate = "default", self.m["map_tps"]
        self.m["map_best_chunksize"] = best
        self.m["map_best_tps"] = rate

    def rss(self) -> None:
        m, r = self.m, self.runner
        m["controller_rss_bytes"], pids = r.controller_rss()
        m["controller_pids"] = pids
        try:
            m["controller_pss_bytes"] = pss_sum(pids)
        except Exception as e:  # noqa: BLE001 - not on every platform
            self.res["errors"]["controller_pss"] = f"{type(e).__name__}: {e}"
        self.say(f"controller/scheduler RSS {m['controller_rss_bytes'] / 2**20:.1f} MiB")

    def engines(self) -> None:
        self.m["engines_rss_bytes"] = self.runner.engines_rss()

    def rss_end(self) -> None:
        self.m["controller_rss_end_bytes"], _ = self.runner.controller_rss()

    def payload(self) -> None:
        try:
            import numpy
        except ImportError:
            raise NotAvailable(f"numpy is not installed for {sys.executable} (pip install numpy)") from None
        a, m = self.args, self.m
        array = numpy.arange(int(a.payload_mb * 1e6) // 8, dtype=numpy.float64)
        samples = []
        for i in range(a.payload_reps + 1):  # the first is a warm-up
            t = perf()
            out = self.runner.echo(array)
            dt = perf() - t
            if not (isinstance(out, numpy.ndarray) and numpy.array_equal(out, array)):
                raise RuntimeError(f"the array came back wrong: {type(out).__name__}")
            del out
            if i:
                samples.append(dt)
        m["payload_bytes"] = array.nbytes
        m["payload_s"] = pct(samples, 50)
        m["payload_gbps"] = 2 * array.nbytes / m["payload_s"] / 1e9
        self.say(f"payload: {array.nbytes / 1e6:g} MB there and back in {m['payload_s']:.3f} s "
                 f"(median of {len(samples)}) = {m['payload_gbps']:.3f} GB/s")


def main(argv) -> int:
    system, out_path, params = argv[1], argv[2], json.loads(argv[3])
    args = SimpleNamespace(**params)
    res: dict = {"system": system, "metrics": {}, "notes": [], "errors": {}, "versions": {},
                 "python": sys.executable, "absent": None}
    stopping = [False]

    def on_term(signum, frame):
        if stopping[0]:
            return
        stopping[0] = True
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def save() -> None:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, out_path)

    def say(text: str) -> None:
        print(f"  [{system}] {text}", flush=True)

    try:
        import psutil  # noqa: F401  (every runner needs it to find and end what it started)
    except ImportError:
        res["absent"] = f"psutil is not installed for {sys.executable}"
        save()
        return 0
    runner = runner_class(system)(args, res, noop)
    res["startup_means"] = runner.startup_means
    try:
        runner.prepare()
        say(f"starting {ENGINES} engines/workers ...")
        with bounded(args.start_timeout, "start-up"):
            t0 = perf()
            runner.start()
            res["metrics"]["startup_s"] = perf() - t0
        say(f"ready in {res['metrics']['startup_s']:.3f} s; {WARMUP} warm-up tasks, "
            f"{args.rtt_samples} round trips ...")
        save()
        phases = Phases(runner, args, res, say, save)
        phases.run_all()
    except Absent as e:
        res["absent"] = str(e)
        say(f"absent: {e}")
    except BaseException as e:  # noqa: BLE001 - start-up failures, Ctrl-C, SIGTERM
        why = "interrupted" if isinstance(e, (SystemExit, KeyboardInterrupt)) else f"{type(e).__name__}: {e}"
        res["errors"].setdefault("startup" if "startup_s" not in res["metrics"] else "run", why)
        say(f"FAILED: {why}")
        if not isinstance(e, (SystemExit, KeyboardInterrupt)):
            traceback.print_exc()
        if hasattr(runner, "log_tail") and getattr(runner, "proc", None) is not None:
            print(f"--- twistd log tail ---\n{runner.log_tail()}", file=sys.stderr)
    finally:
        stopping[0] = True  # a second SIGTERM must not interrupt the cleanup
        say("stopping ...")
        runner.stop()
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
