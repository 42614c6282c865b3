#!/usr/bin/env python
"""Where one small task's time goes: CPU per task in each process, and sampled profiles.

Starts ``twistd -n ipcluster --engines 2`` (as bench/compare.py does), connects
a Client, and runs one phase -- ``many`` (N no-ops submitted one by one, then
collected), ``rtt`` (N sequential round trips) or ``map`` (a default map of N
items) -- while ``py-spy record`` samples the controller and both engines.
Prints each process's CPU seconds per task (psutil, robust on a noisy machine)
and the top functions by own time and by inclusive time in each process::

    .venv/bin/python bench/profile_tasks.py --phase many --tasks 20000
    .venv/bin/python bench/profile_tasks.py --phase rtt --tasks 2000 --no-spy

Needs psutil, and py-spy (``pip install py-spy``) unless ``--no-spy``.
Everything runs on 127.0.0.1 in a temporary directory and is stopped on exit.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent


def noop(x=None):
    return x


def start(tmp: Path) -> subprocess.Popen:
    argv = [str(VENV_BIN / "twistd"), "-n", "--pidfile=", "ipcluster", "--engines", "2", "--data-dir", str(tmp)]
    log = open(tmp / "controller.log", "wb")
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                            env=dict(os.environ, IPCLUSTER_DIR=str(tmp)))


def phase(client, name: str, n: int) -> None:
    if name == "many":
        futures = [client.submit(noop, i) for i in range(n)]
        assert [f.result(timeout=120) for f in futures] == list(range(n))
    elif name == "rtt":
        for i in range(n):
            client.submit(noop, i).result(timeout=30)
    elif name == "map":
        assert list(client.map(noop, range(n))) == list(range(n))
    else:
        raise SystemExit(f"unknown phase {name!r}")


def top(raw: Path, k: int) -> tuple[list, list, int]:
    """The ``k`` functions with most own samples and most inclusive samples in py-spy's raw output."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        c = int(count)
        total += c
        own[_short(frames[-1])] += c
        for name in {_short(f) for f in frames}:
            incl[name] += c
    return own.most_common(k), incl.most_common(k), total


def _short(frame: str) -> str:
    # "fn (path/to/module.py:123)" -> "fn (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    return f"{name} ({'/'.join(parts[-2:])})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", default="many", choices=("many", "rtt", "map"))
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-spy", action="store_true", help="CPU per task only, no sampling profiler")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--client-profile", metavar="PATH", help="also cProfile the client into PATH")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from ipcluster import Client

    tmp = Path(tempfile.mkdtemp(prefix="ipc-prof-"))
    proc = start(tmp)
    spies: list = []
    client = None
    try:
        conn = tmp / "connection.json"
        deadline = time.monotonic() + 60
        while not conn.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((tmp / "controller.log").read_text())
            time.sleep(0.01)
        client = Client(str(conn))
        client.wait_for_engines(2, timeout=60)
        controller = psutil.Process(proc.pid)
        engines = controller.children(recursive=True)
        procs = {"controller": controller, **{f"engine{i}": e for i, e in enumerate(engines)}}
        phase(client, args.phase, min(args.tasks, 200))  # warm-up
        me = psutil.Process()
        before = {name: p.cpu_times() for name, p in procs.items()}
        before["client"] = me.cpu_times()
        if not args.no_spy:
            spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
            for name, p in procs.items():
                out = tmp / f"{name}.raw"
                spies.append((name, out, subprocess.Popen(
                    [spy, "record", "--pid", str(p.pid), "--rate", str(args.rate), "--format", "raw", "-o", str(out),
                     "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            time.sleep(1.0)  # let py-spy attach
        profiler = None
        if args.client_profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        phase(client, args.phase, args.tasks)
        wall = time.perf_counter() - t0
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.client_profile)
        after = {name: p.cpu_times() for name, p in procs.items()}
        after["client"] = me.cpu_times()
        print(f"{args.phase}: {args.tasks} tasks in {wall:.3f} s = {args.tasks / wall:,.0f} /s; "
              f"load {os.getloadavg()[0]:.2f}")
        print("CPU per task (user+system, µs):")
        for name in after:
            cpu = (after[name].user + after[name].system) - (before[name].user + before[name].system)
            print(f"  {name:<11} {cpu / args.tasks * 1e6:8.1f}")
        for name, out, spyproc in spies:
            spyproc.send_signal(signal.SIGINT)
            try:
                spyproc.wait(20)
            except subprocess.TimeoutExpired:
                spyproc.kill()
            if not out.exists():
                print(f"\n[{name}] no py-spy output")
                continue
            own, incl, total = top(out, args.top)
            print(f"\n[{name}] {total} samples; top by own time:")
            for fn, c in own:
                print(f"  {100 * c / total:5.1f}%  {fn}")
            print(f"[{name}] top by inclusive time:")
            for fn, c in incl:
                print(f"  {100 * c / total:5.1f}%  {fn}")
    finally:
        for _, _, spyproc in spies:
            if spyproc.poll() is None:
                spyproc.kill()
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
