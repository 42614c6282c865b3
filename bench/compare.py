#!/usr/bin/env python
"""ipcluster vs what a user would pick instead: ipyparallel, dask.distributed, ProcessPoolExecutor, Ray.

Run it from the project root with the project's virtualenv; the peers
(ipyparallel, dask.distributed, ray) live in a virtualenv of their own, because
ipyparallel installs a console script named ``ipcluster`` that replaces ours::

    .venv/bin/pip install -e '.[bench]'    # psutil and numpy for the project's venv
    python3 -m venv bench/.peers-venv && bench/.peers-venv/bin/pip install ipyparallel distributed ray numpy psutil
    .venv/bin/python bench/compare.py                                   # everything, ~15 minutes
    .venv/bin/python bench/compare.py --quick                           # smaller runs
    .venv/bin/python bench/compare.py --peers-python /work/peers/bin/python --markdown bench/results/run.md

Each system runs in turn, one at a time, each in a fresh Python process
(``bench/comparechild.py SYSTEM``): ipcluster and ProcessPoolExecutor under
this interpreter, ipyparallel, dask and ray under ``--peers-python``.  If that
interpreter is missing, ipcluster and ProcessPool still run and the peers'
columns say ``absent`` (the notes say why).  Every system gets 2 local
engines/workers, one thread each.  bench/README.md says what each row measures.

Ratios: for times and memory, other / ipcluster; for throughput and GB/s,
ipcluster / other.  Either way **> 1 means ipcluster does better**.

Every wait is bounded (per phase in the child, per system here), and every
process started is ended on exit, failure or Ctrl-C; on Linux this process is
a child subreaper, so anything orphaned is found and ended too.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchsys import ALIASES, LABELS, PEERS, SYSTEMS  # noqa: E402  (bench/ is on sys.path)
from benchsys.base import descendants, end_processes
from comparetable import RATIO_MEANING, ROWS, all_versions, markdown, ratio, table

HERE = Path(__file__).resolve().parent
CHILD = HERE / "comparechild.py"
DEFAULT_PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
MAKE_PEERS = ("python3 -m venv bench/.peers-venv && "
              "bench/.peers-venv/bin/pip install ipyparallel distributed ray numpy psutil")


def set_subreaper() -> bool:
    """Make orphaned descendants (ipyparallel's start_new_session engines, ...) our children."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except Exception:
        return False


def child_params(args) -> dict:
    keys = ("tasks", "map_items", "rtt_samples", "payload_mb", "payload_reps", "start_timeout",
            "phase_timeout", "stop_timeout")
    return {k: getattr(args, k) for k in keys}


def child_budget(args) -> float:
    """Every bound of the child's phases added up, plus its start and stop: the child's own bound."""
    big = 60.0 + 0.01 * args.map_items
    return (args.start_timeout + 60 + 0.5 * (args.rtt_samples + 20) + 5 * args.phase_timeout
            + 60 + 30 * (args.payload_reps + 1) + 2 * big + 3 * 30 + 2 * args.stop_timeout + 60)


def interpreter(system: str, args) -> str:
    return args.peers_python if system in PEERS else sys.executable


def empty_result(system: str) -> dict:
    return {"system": system, "metrics": {}, "notes": [], "errors": {}, "versions": {}, "absent": None}


def stop_child(proc, args) -> None:
    """SIGTERM the child's session (it cleans up on SIGTERM), SIGKILL it if it does not end."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(2 * args.stop_timeout + 10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def launch_child(argv: list, args, workdir: Path, errlog) -> tuple:
    """Run the child within its budget: (the process, why it failed or None, whether interrupted)."""
    proc, failure, interrupted = None, None, False
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stderr=errlog if not args.verbose else None,
            start_new_session=True, cwd=workdir,
        )
        budget = child_budget(args)
        try:
            proc.wait(budget)
        except subprocess.TimeoutExpired:
            failure = f"timed out after {budget:.0f} s"
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM of the parent: stop the child, keep what it measured
        failure, interrupted = "interrupted", True
    finally:
        stop_child(proc, args)
    return proc, failure, interrupted


def run_child(system: str, args, workdir: Path) -> tuple:
    """Run one system in a child process: (its results, whether we were interrupted)."""
    python = interpreter(system, args)
    print(f"\n== {LABELS[system]} ({python}) ==", flush=True)
    if not os.access(python, os.X_OK):
        res = empty_result(system)
        res["absent"] = f"the peers' interpreter {python} does not exist (create it: {MAKE_PEERS})"
        print(f"  absent: {res['absent']}", flush=True)
        return res, False
    out = workdir / f"{system}.json"
    log = workdir / f"{system}.log"
    argv = [python, str(CHILD), system, str(out), json.dumps(child_params(args))]
    with open(log, "wb") as errlog:
        try:
            proc, failure, interrupted = launch_child(argv, args, workdir, errlog)
        finally:
            left = end_processes(descendants())
            if left:
                print(f"  warning: ended {len(left)} process(es) left behind by {system}: {left}", flush=True)
    code = proc.returncode if proc is not None else None
    try:
        res = json.loads(out.read_text())
    except (OSError, ValueError):
        res = empty_result(system)
        failure = failure or f"no results (exit status {code})"
    if not failure and code:
        failure = f"the {system} process exited with status {code}"
    if failure:
        res["errors"]["run"] = failure
    if left:
        res["notes"].append(f"{system}: the parent had to end {len(left)} process(es) left behind: {left}")
    if failure:
        tail = log.read_text("utf-8", "replace").splitlines()[-30:] if log.exists() else []
        if tail:
            print(f"  --- {system} stderr (last {len(tail)} lines) ---", flush=True)
            print("\n".join("  " + line for line in tail), flush=True)
    return res, interrupted


def versions() -> dict:
    """Versions under this (the project's) interpreter; the children add their systems' own."""
    from importlib import metadata

    out = {}
    for dist in ("ipcluster", "pyzmq", "Twisted", "cloudpickle", "numpy", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def environment(args) -> dict:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": versions(),
        "project_python": sys.executable,
        "peers_python": args.peers_python,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Compare ipcluster with ipyparallel, dask.distributed, ProcessPoolExecutor and Ray "
                    "(2 local engines/workers each). See bench/README.md.",
    )
    p.add_argument("--tasks", type=int, default=None,
                   help="no-op tasks per throughput run (default 10000; 1000 with --quick)")
    p.add_argument("--map-items", type=int, default=None,
                   help="items of the big map row (default 100000; 10000 with --quick)")
    p.add_argument("--rtt-samples", type=int, default=200, help="sequential round trips measured (default 200)")
    p.add_argument("--payload-mb", type=float, default=100.0,
                   help="size of the numpy array sent there and back, in MB (default 100)")
    p.add_argument("--payload-reps", type=int, default=None,
                   help="measured payload round trips, after one warm-up (default 3; 1 with --quick)")
    p.add_argument("--only", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="smaller runs: 1,000 tasks, 10,000 map items, 1 payload")
    p.add_argument("--peers-python", default=str(DEFAULT_PEERS_PYTHON), metavar="PATH",
                   help=f"the interpreter of the peers' venv (default {DEFAULT_PEERS_PYTHON}; create it: {MAKE_PEERS})")
    p.add_argument("--json", metavar="PATH", help="also write every number, note and error as JSON here")
    p.add_argument("--markdown", metavar="PATH", help="also write the run as a Markdown section here (for bench/README.md)")
    p.add_argument("--verbose", action="store_true", help="show the systems' own stderr/log output")
    p.add_argument("--start-timeout", type=float, default=90.0, help=argparse.SUPPRESS)
    p.add_argument("--phase-timeout", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--stop-timeout", type=float, default=45.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, full, quick in (("tasks", 10000, 1000), ("map_items", 100000, 10000), ("payload_reps", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if min(args.tasks, args.map_items, args.rtt_samples, args.payload_reps) < 1 or args.payload_mb <= 0:
        p.error("--tasks, --map-items, --rtt-samples, --payload-reps and --payload-mb must be positive")
    if args.phase_timeout is None:
        args.phase_timeout = 60.0 + 0.05 * args.tasks  # i.e. it fails below ~20 tasks/s
    only = [ALIASES.get(s.strip().lower(), s.strip().lower()) for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SYSTEMS]
    if bad or not only:
        p.error(f"--only: unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
    args.only = [s for s in SYSTEMS if s in only]
    args.peers_python = str(Path(args.peers_python).expanduser())
    return args


def collect_notes(results: dict, env: dict) -> list:
    notes = []
    for s in SYSTEMS:
        res = results.get(s)
        if not res:
            continue
        if res.get("absent"):
            notes.append(f"{LABELS[s]} absent: {res['absent']}")
        elif res.get("startup_means"):
            notes.append(f"{LABELS[s]}: start-up is {res['startup_means']}")
        notes.extend(res.get("notes", []))
        by_text: dict = {}
        for k, e in res.get("errors", {}).items():
            by_text.setdefault(e, []).append(k)
        notes.extend(f"{s}: {', '.join(keys)}: {e}" for e, keys in by_text.items())
    notes.append(
        f"load average before {', '.join(f'{x:.2f}' for x in env['loadavg_before'] or ())}; "
        f"after {', '.join(f'{x:.2f}' for x in env['loadavg_after'] or ())}"
    )
    return notes


def write_outputs(args, results: dict, env: dict, notes: list) -> None:
    params = child_params(args)
    if args.json:
        doc = {
            "params": dict(params, systems=args.only),
            "environment": env,
            "results": results,
            "ratios": {
                s: {key: ratio(kind, results["ipcluster"]["metrics"].get(key), results[s]["metrics"].get(key))
                    for key, _, kind, _ in ROWS}
                for s in results if s != "ipcluster" and "ipcluster" in results
            },
            "ratio_meaning": RATIO_MEANING,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nJSON written to {path}")
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown(results, params, env, notes))
        print(f"Markdown written to {path}")


def shared_venv_warning() -> Optional[str]:
    """Why the project's venv is not fit to be measured, if a peer was installed into it."""
    import importlib.util

    if importlib.util.find_spec("ipyparallel") is None:
        return None
    return (f"ipyparallel is installed for {sys.executable}: its 'ipcluster' console script replaces "
            f"ipcluster's own there. Uninstall it (pip uninstall ipyparallel; pip install -e . again) and "
            f"keep the peers in their own venv (--peers-python)")


def run_all(args) -> tuple:
    """Each system of ``--only`` in turn: (results by system, whether we were interrupted)."""
    results: dict = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    interrupted = False
    try:
        for system in args.only:
            results[system], interrupted = run_child(system, args, workdir)
            if interrupted:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        left = end_processes(descendants())
        if left:
            print(f"warning: ended {len(left)} leftover process(es): {left}")
        shutil.rmtree(workdir, ignore_errors=True)
    return results, interrupted


def print_header(args, env: dict) -> None:
    names = ", ".join(LABELS[s] for s in args.only)
    print(
        f"{names}: 2 local engines/workers "
        f"each, {args.rtt_samples} round trips, {args.tasks:,} tasks per throughput run, "
        f"{args.map_items:,}-item map, {args.payload_mb:g} MB payload"
    )
    print(
        f"python {env['python']} on {env['platform']}, {env['cpus']} CPUs ({env['cpu']}); "
        f"load average {', '.join(f'{x:.2f}' for x in env['loadavg_before'] or ())}"
    )


def report(args, results: dict, env: dict, warning: Optional[str]) -> None:
    """The table, versions and notes on stdout; --json and --markdown files."""
    print(f"\nRatios ({RATIO_MEANING}).")
    print(table(results, child_params(args)))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in all_versions(results, env).items() if v))
    notes = collect_notes(results, env) + ([f"warning: {warning}"] if warning else [])
    print()
    for n in notes:
        print(f"- {n}")
    write_outputs(args, results, env, notes)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("bench/compare.py needs psutil: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    reaper = set_subreaper()
    env = environment(args)
    print_header(args, env)
    shared = shared_venv_warning()
    if shared:
        print(f"warning: {shared}", flush=True)
    results, interrupted = run_all(args)
    if interrupted:
        print("\ninterrupted; everything started has been stopped", flush=True)
    env["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["subreaper"] = reaper
    report(args, results, env, shared)
    if interrupted:
        return 130
    failed = any(not str(e).startswith("n/a") for r in results.values() for e in r.get("errors", {}).values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
