#!/usr/bin/env python
"""Controller memory over a long run: RSS every 100,000 no-op tasks, 1,000,000 in all.

Run it from the project root with the project's virtualenv (needs psutil)::

    .venv/bin/python bench/memory.py                       # 1,000,000 tasks (about 7 min on 2 cores)
    .venv/bin/python bench/memory.py --tasks 200000 --every 50000 --store memory
    .venv/bin/python bench/memory.py --tasks 100000 --snapshot top.txt   # where the memory is

``twistd -n --pidfile= ipcluster --engines 2 --data-dir TMP`` runs as a
subprocess; a blocking ``Client`` maps a no-op over ``--chunk`` items at a time
(``client.map`` with ``chunksize=1``, so every item is one task through the
controller: the default adaptive chunks would make it a few thousand tasks)
and takes every result.  After each
``--every`` tasks the controller's RSS (psutil, its own process only, not its
engines) is printed.  The verdict compares the last reading with the first
one after warm-up: RSS "stays flat" when it grew by less than ``--flat-mib``.

``--snapshot PATH`` runs the controller under ``tracemalloc`` (through
``bench/memtrace.py``) and writes, at the end, the 25 biggest growths between
the first reading and the last, by allocating line: slower, for finding what
is kept per task, not for the RSS figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024


def noop(x=None):
    return x


def start_controller(tmp: Path, store: str, snapshot: bool) -> subprocess.Popen:
    argv = [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "ipcluster", "--engines", "2",
            "--data-dir", str(tmp), "--store", store]
    if snapshot:
        argv = [sys.executable, "-X", "tracemalloc=8", str(HERE / "memtrace.py"), str(tmp / "trace")] + argv[1:]
    log = open(tmp / "controller.log", "wb")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                                env=dict(os.environ, IPCLUSTER_DIR=str(tmp)))
    finally:
        log.close()


def wait_file(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} did not appear (controller exit {proc.poll()})")
        time.sleep(0.01)


def snap(proc: subprocess.Popen, tmp: Path, name: str) -> None:
    """Ask the traced controller for a snapshot (SIGUSR2) and wait until it is written."""
    target = tmp / "trace" / f"{name}.snap"
    (tmp / "trace" / "next").write_text(name)
    proc.send_signal(signal.SIGUSR2)
    wait_file(target, proc, 120)
    time.sleep(0.5)  # the dump is written to a temporary name and renamed: it is complete


def run(args) -> dict:
    import psutil

    from ipcluster import Client

    tmp = Path(tempfile.mkdtemp(prefix="ipcluster-memory-"))
    (tmp / "trace").mkdir()
    proc = start_controller(tmp, args.store, bool(args.snapshot))
    client = None
    readings = []
    try:
        wait_file(tmp / "connection.json", proc, 60)
        client = Client(str(tmp / "connection.json"), timeout=30.0)
        client.wait_for_engines(2, timeout=60)
        me = psutil.Process(proc.pid)
        done, started = 0, time.monotonic()
        readings.append({"tasks": 0, "rss_mib": me.memory_info().rss / MIB, "seconds": 0.0})
        print(f"{0:>10,} tasks  {readings[-1]['rss_mib']:7.1f} MiB", flush=True)
        while done < args.tasks:
            n = min(args.chunk, args.tasks - done)
            for _ in client.map(noop, range(n), chunksize=1, timeout=args.chunk_timeout):
                pass
            done += n
            if done % args.every == 0 or done == args.tasks:
                if args.snapshot and len(readings) == 2:
                    snap(proc, tmp, "first")
                rss = me.memory_info().rss / MIB
                readings.append({"tasks": done, "rss_mib": rss, "seconds": time.monotonic() - started})
                print(f"{done:>10,} tasks  {rss:7.1f} MiB  ({done / readings[-1]['seconds']:,.0f} tasks/s)",
                      flush=True)
        if args.snapshot:
            snap(proc, tmp, "last")
            compare_snapshots(tmp / "trace" / "first.snap", tmp / "trace" / "last.snap", Path(args.snapshot))
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    base = readings[1] if len(readings) > 2 else readings[0]  # after the first --every tasks: warmed up
    growth = readings[-1]["rss_mib"] - base["rss_mib"]
    return {"store": args.store, "tasks": args.tasks, "readings": readings, "growth_after_warmup_mib": growth,
            "flat": growth < args.flat_mib, "loadavg": os.getloadavg()}


def compare_snapshots(first: Path, last: Path, out: Path) -> None:
    import tracemalloc

    a, b = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    lines = []
    for stat in b.compare_to(a, "traceback")[:25]:
        lines.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+9d} blocks")
        lines.extend(f"      {frame}" for frame in stat.traceback.format()[-8:])
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1_000_000, help="tasks in all (default 1,000,000)")
    p.add_argument("--every", type=int, default=100_000, help="read RSS after this many tasks (default 100,000)")
    p.add_argument("--chunk", type=int, default=10_000, help="items per client.map call (default 10,000)")
    p.add_argument("--chunk-timeout", type=float, default=300.0, help="bound on one map call, s")
    p.add_argument("--store", default="sqlite", choices=("sqlite", "memory"), help="the controller's --store")
    p.add_argument("--flat-mib", type=float, default=20.0, help="growth after warm-up still called flat")
    p.add_argument("--snapshot", metavar="PATH", help="trace the controller; write its top growths here")
    p.add_argument("--json", metavar="PATH", help="also write the readings here")
    p.add_argument("--keep-tmp", action="store_true", help="keep the controller's directory (log)")
    args = p.parse_args(argv)
    if args.every % args.chunk and args.every > args.chunk:
        p.error("--every must be a multiple of --chunk")
    res = run(args)
    print(f"store {res['store']}: grew {res['growth_after_warmup_mib']:+.1f} MiB after warm-up over "
          f"{res['tasks']:,} tasks -> {'flat' if res['flat'] else 'NOT flat'}; load average {res['loadavg']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
