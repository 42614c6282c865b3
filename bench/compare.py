#!/usr/bin/env python
"""ipcluster vs ipyparallel vs dask.distributed: start-up, round trip, throughput, memory.

Run it from the project root with the project's virtualenv, as a script (so
that the task function lives in ``__main__`` and every system ships it by
value with cloudpickle / its own function canning)::

    .venv/bin/pip install ipyparallel distributed psutil      # the 'bench' extras + psutil
    .venv/bin/python bench/compare.py                         # 10,000 tasks, 200 round trips
    .venv/bin/python bench/compare.py --quick                 # 1,000 tasks
    .venv/bin/python bench/compare.py --only ipyparallel,dask --json bench/results/compare.json

Each system runs in turn, one cluster at a time, in a fresh Python process
(this script re-run with ``--_child SYSTEM``), so that imports, client-side
state and garbage of one system do not weigh on the next.  Every system gets
two local engines/workers, one thread each, on this machine.

What is measured (the same trivial function ``noop(x=None): return x`` everywhere)
----------------------------------------------------------------------------------
* **start-up**: from starting the cluster to a connected client that sees 2
  engines ready (modules imported beforehand, outside the timing).
  - ipcluster: ``Popen(twistd -n --pidfile= ipcluster --engines 2 --data-dir D)``,
    wait for ``D/connection.json``, ``Client(path)``, ``wait_for_engines(2)``.
  - ipyparallel: ``Cluster(n=2).start_and_connect_sync()`` (+ ``wait_for_engines(2)``).
  - dask: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``,
    ``Client(cluster)``, ``wait_for_workers(2)``.
* **round trip**: ``--rtt-samples`` (200) sequential no-op tasks, each submitted
  only after the previous result arrived (after 20 unmeasured warm-up tasks);
  median and p99.  ipcluster ``submit(noop).result()``, ipyparallel
  ``load_balanced_view().apply_async(noop).get()``, dask
  ``submit(noop, pure=False).result()``.
* **throughput, one by one**: ``--tasks`` (10,000) no-op tasks ``noop(i)``
  submitted one call each, then every result collected; tasks / second from
  the first submit to the last result.
* **throughput, map**: the same through each system's map (ipcluster
  ``list(client.map(noop, range(N)))``, ipyparallel ``view.map_sync``, dask
  ``gather(map(noop, range(N), pure=False))``).
* **controller/scheduler memory** after those runs: the RSS of the
  controller/scheduler process, and the PSS (proportional set size: pages
  shared by forked processes or libraries split between them) summed over
  every process that makes up the controller; for context, the sum of the two
  engines'/workers' RSS.  ipcluster: the twistd process (its engines are its
  children but not counted).  ipyparallel: the ipcontroller process, plus its
  forked subprocesses (schedulers, heart monitor) in the PSS row.  dask:
  ``run_on_scheduler(psutil RSS)``; LocalCluster's scheduler lives in the
  client's own process, so that figure also holds the client, the nannies and
  this script.

Ratios: for times and memory, other / ipcluster; for throughput,
ipcluster / other.  Either way **> 1 means ipcluster does better**.

Fallbacks while the ipcluster scheduler is being built: if ``submit(fn)``
without ``engine=`` raises TypeError, tasks go direct (round trips to ``e0``,
throughput round-robin over both engines) and the cells are marked ``*``; if
the client has no ``map``, that cell is ``n/a``.

Every wait is bounded (per phase in the child, per system in the parent), and
every process started is ended on exit, failure or Ctrl-C; on Linux the parent
is a child subreaper, so anything orphaned is found and ended too.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from benchstats import pct  # noqa: E402  (bench/ is on sys.path)

SYSTEMS = ("ipcluster", "ipyparallel", "dask")
LABELS = {"ipcluster": "ipcluster", "ipyparallel": "ipyparallel", "dask": "dask"}
SHORT = {"ipcluster": "ipc", "ipyparallel": "ipp", "dask": "dask"}
VENV_BIN = Path(sys.executable).parent
SCRIPT = Path(__file__).resolve()
WARMUP = 20
ENGINES = 2

perf = time.perf_counter


def noop(x=None):
    """The task every system runs."""
    return x


def _rss_here() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class NotAvailable(Exception):
    """The system does not offer this operation (yet)."""


class PhaseTimeout(BaseException):
    """A phase ran past its bound (BaseException, so that libraries' ``except Exception`` let it through)."""


@contextlib.contextmanager
def bounded(seconds: float, what: str):
    """Raise PhaseTimeout in the main thread if the block runs longer than ``seconds``.

    Should a library swallow the exception anyway, it is raised again when the
    block ends, so that a late phase is never reported as a measurement.
    """
    fired = []

    def on_alarm(signum, frame):
        fired.append(True)
        raise PhaseTimeout(f"{what} did not finish within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if fired:
        raise PhaseTimeout(f"{what} did not finish within {seconds:g} s")


def _descendants() -> list:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _is_helper(proc) -> bool:
    """multiprocessing's resource tracker / forkserver: they live as long as their parent."""
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return False
    return "multiprocessing.resource_tracker" in cmd or "multiprocessing.forkserver" in cmd


def _end_processes(procs, grace: float = 5.0) -> list:
    """SIGTERM, then SIGKILL, the still-running ones of ``procs``; the pids that were still running."""
    import psutil

    alive, seen = [], set()
    for p in procs:
        try:
            if p.pid not in seen and p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                seen.add(p.pid)
                alive.append(p)
        except psutil.Error:
            pass
    names = []
    for p in alive:
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            names.append(str(p.pid))
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=grace)
    return names


# =============================================================================
# the three systems, behind one small interface
# =============================================================================


class Runner:
    """prepare() (imports, untimed), start() (timed), one(), many(n), map(n), rss, stop()."""

    name = ""

    def __init__(self, args, res: dict) -> None:
        self.args = args
        self.res = res
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.watch: list = []  # psutil.Process objects to make sure are gone at the end

    def note(self, text: str) -> None:
        if text not in self.res["notes"]:
            self.res["notes"].append(text)

    def remember_descendants(self) -> None:
        seen = {p.pid for p in self.watch}
        self.watch.extend(p for p in _descendants() if p.pid not in seen)

    def prepare(self) -> None: ...

    def start(self) -> None: ...

    def warm(self) -> None:
        self.one()

    def one(self) -> Any: ...

    def many(self, n: int) -> list: ...

    def map(self, n: int) -> list: ...

    def controller_rss(self) -> tuple:
        """(RSS of the controller/scheduler process, pids of every process that is the controller)."""

    def engines_rss(self) -> int: ...

    def shutdown(self) -> None: ...

    def stop(self) -> None:
        """shutdown() (bounded), then end whatever is left of what we started."""
        with contextlib.suppress(Exception):
            self.remember_descendants()
        try:
            with bounded(self.args.stop_timeout, "shutdown"):
                self.shutdown()
        except BaseException as e:  # noqa: BLE001 - we are cleaning up; record and go on
            self.res["errors"]["shutdown"] = f"{type(e).__name__}: {e}"
        import psutil

        # Give what we started a few seconds to exit on its own (ipyparallel's nannies
        # follow their engines), then end the rest.
        with contextlib.suppress(Exception):
            psutil.wait_procs(self.watch, timeout=5)
        procs = self.watch + _descendants()
        quiet = [p for p in procs if _is_helper(p)]
        _end_processes(quiet)
        left = _end_processes([p for p in procs if p not in quiet])
        if left:
            self.note(f"{self.name}: had to end {len(left)} leftover process(es) after shutdown: {left}")
        shutil.rmtree(self.tmp, ignore_errors=True)


def _pss_sum(pids) -> int:
    """Proportional set size: shared pages (fork, libraries) split among their users (Linux)."""
    import psutil

    return sum(psutil.Process(pid).memory_full_info().pss for pid in pids)


def _rss_sum(pids) -> int:
    import psutil

    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


class IpclusterRunner(Runner):
    name = "ipcluster"

    def prepare(self) -> None:
        import psutil  # noqa: F401

        import ipcluster
        import ipcluster.client  # noqa: F401  (the lazy import, done before the clock starts)

        self.Client = ipcluster.Client
        self.proc: Optional[subprocess.Popen] = None
        self.client = None
        self.direct = False
        self.log_path = self.tmp / "controller.log"
        self.res["versions"]["ipcluster"] = getattr(ipcluster, "__version__", "?")

    def start(self) -> None:
        argv = [
            str(VENV_BIN / "twistd"), "-n", "--pidfile=", "ipcluster",
            "--engines", str(ENGINES), "--data-dir", str(self.tmp),
        ]
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp,
                env=dict(os.environ, IPCLUSTER_DIR=str(self.tmp)),
            )
        finally:
            log.close()
        import psutil

        self.watch.append(psutil.Process(self.proc.pid))
        conn = self.tmp / "connection.json"
        while not conn.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"twistd exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.002)
        self.client = self.Client(str(conn), timeout=10.0)
        wait = self.client.wait_for_engines
        kw = {"interval": 0.005} if "interval" in inspect.signature(wait).parameters else {}
        live = wait(ENGINES, timeout=60, **kw)
        self.engine_ids = sorted(str(e["id"]) for e in live)
        self.remember_descendants()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def warm(self) -> None:
        try:
            fut = self.client.submit(noop)
        except TypeError as e:
            self.direct = True
            self.res["mode"] = "direct"
            self.note(
                f"ipcluster: load-balanced submit not available ({e}); tasks sent direct: "
                f"round trips to engine={self.engine_ids[0]!r}, throughput round-robin over "
                f"{self.engine_ids} (marked *)"
            )
            fut = self.client.submit(noop, engine=self.engine_ids[0])
        else:
            self.res["mode"] = "load-balanced"
        fut.result(timeout=30)

    def one(self) -> Any:
        if self.direct:
            return self.client.submit(noop, engine=self.engine_ids[0]).result(timeout=30)
        return self.client.submit(noop).result(timeout=30)

    def many(self, n: int) -> list:
        submit = self.client.submit
        if self.direct:
            ids = self.engine_ids
            k = len(ids)
            futs = [submit(noop, i, engine=ids[i % k]) for i in range(n)]
        else:
            futs = [submit(noop, i) for i in range(n)]
        return [f.result(timeout=self.args.phase_timeout) for f in futs]

    def map(self, n: int) -> list:
        try:
            mapper = self.client.map
        except AttributeError:
            raise NotAvailable("Client.map not available yet") from None
        return list(mapper(noop, range(n)))

    def controller_rss(self) -> int:
        import psutil

        me = psutil.Process(self.proc.pid)
        engines = {int(e["pid"]) for e in self.client.engines() if e.get("pid")}
        others = [p.pid for p in me.children(recursive=True) if p.pid not in engines]
        return me.memory_info().rss, [me.pid] + others

    def engines_rss(self) -> int:
        return _rss_sum(int(e["pid"]) for e in self.client.engines() if e.get("state") in ("alive", "busy"))

    def shutdown(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.res["errors"]["shutdown"] = "twistd did not exit within 15 s of SIGTERM; killed"
                self.proc.kill()
                self.proc.wait(5)
            if self.proc.returncode not in (0, -signal.SIGTERM):
                self.note(f"ipcluster: twistd exited with {self.proc.returncode}")
        # engines: children of twistd, in self.watch; Runner.stop() ends any left over.


class IpyparallelRunner(Runner):
    name = "ipyparallel"

    def prepare(self) -> None:
        import psutil  # noqa: F401

        # Keep IPython's and ipyparallel's files (profile, security, logs) in our temp dir.
        os.environ["IPYTHONDIR"] = str(self.tmp / "ipython")
        import ipyparallel

        self.ipp = ipyparallel
        self.cluster = None
        self.rc = None
        self.res["versions"]["ipyparallel"] = ipyparallel.__version__

    def start(self) -> None:
        self.cluster = self.ipp.Cluster(
            n=ENGINES, profile_dir=str(self.tmp / "profile_bench"), log_level=logging.WARNING
        )
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(ENGINES, timeout=60)
        self.view = self.rc.load_balanced_view()
        self.remember_descendants()

    def one(self) -> Any:
        return self.view.apply_async(noop).get(timeout=30)

    def many(self, n: int) -> list:
        apply_async = self.view.apply_async
        ars = [apply_async(noop, i) for i in range(n)]
        return [ar.get(timeout=self.args.phase_timeout) for ar in ars]

    def map(self, n: int) -> list:
        return list(self.view.map_sync(noop, range(n)))

    def controller_rss(self) -> int:
        import psutil

        main = psutil.Process(self.cluster.controller.pid)
        kids = main.children(recursive=True)
        self.note(
            f"ipyparallel: the controller is the ipcontroller process (its RSS is the RSS row) and "
            f"{len(kids)} forked subprocess(es) (schedulers, heart monitor), all in the PSS row"
        )
        return main.memory_info().rss, [main.pid] + [k.pid for k in kids]

    def engines_rss(self) -> int:
        pids = self.rc[:].apply_sync(os.getpid)
        self.note("ipyparallel: engine RSS excludes the per-engine nanny processes")
        return _rss_sum(pids)

    def shutdown(self) -> None:
        if self.rc is not None:
            with contextlib.suppress(Exception):
                self.rc.close()
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()


class DaskRunner(Runner):
    name = "dask"

    def prepare(self) -> None:
        import psutil  # noqa: F401

        import dask
        import distributed

        self.distributed = distributed
        self.cluster = None
        self.client = None
        self.res["versions"]["distributed"] = distributed.__version__
        self.res["versions"]["dask"] = dask.__version__
        dask.config.set({"temporary-directory": str(self.tmp)})

    def start(self) -> None:
        d = self.distributed
        self.cluster = d.LocalCluster(
            n_workers=ENGINES, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = d.Client(self.cluster)
        self.client.wait_for_workers(ENGINES, timeout=60)
        self.remember_descendants()

    def one(self) -> Any:
        return self.client.submit(noop, pure=False).result(timeout=30)

    def many(self, n: int) -> list:
        submit = self.client.submit
        futs = [submit(noop, i, pure=False) for i in range(n)]
        return self.client.gather(futs)

    def map(self, n: int) -> list:
        return self.client.gather(self.client.map(noop, range(n), pure=False))

    def controller_rss(self) -> int:
        rss = self.client.run_on_scheduler(_rss_here)
        where = self.client.run_on_scheduler(os.getpid)
        if where == os.getpid():
            self.note(
                "dask: LocalCluster's scheduler runs in the client's process; its RSS also holds "
                "the client, the 2 nannies and this script"
            )
        return rss, [where]

    def engines_rss(self) -> int:
        return _rss_sum(self.client.run(os.getpid).values())

    def shutdown(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=20)
        if self.cluster is not None:
            self.cluster.close(timeout=20)


RUNNERS = {"ipcluster": IpclusterRunner, "ipyparallel": IpyparallelRunner, "dask": DaskRunner}


# =============================================================================
# child: one system, every metric
# =============================================================================


def child_main(args) -> int:
    system = args._child
    res: dict = {"system": system, "metrics": {}, "notes": [], "errors": {}, "versions": {}, "mode": None}
    stopping = [False]

    def on_term(signum, frame):
        if stopping[0]:
            return
        stopping[0] = True
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def save() -> None:
        tmp = args._out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, args._out)

    def say(text: str) -> None:
        print(f"  [{system}] {text}", flush=True)

    runner = RUNNERS[system](args, res)
    m = res["metrics"]
    try:
        runner.prepare()
        say("starting 2 engines/workers ...")
        with bounded(args.start_timeout, "start-up"):
            t0 = perf()
            runner.start()
            m["startup_s"] = perf() - t0
        say(f"ready in {m['startup_s']:.3f} s; {WARMUP} warm-up tasks, {args.rtt_samples} round trips ...")
        save()

        healthy = True

        def phase(key: str, what: str, fn: Callable[[], None], bound: float) -> None:
            nonlocal healthy
            if not healthy:
                res["errors"][key] = "skipped: an earlier phase timed out"
                return
            gc.collect()
            try:
                with bounded(bound, what):
                    fn()
            except NotAvailable as e:
                res["errors"][key] = f"n/a: {e}"
                say(f"{what}: n/a ({e})")
            except PhaseTimeout as e:
                healthy = False
                res["errors"][key] = str(e)
                say(f"{what}: TIMEOUT ({e})")
            except Exception as e:  # noqa: BLE001 - report it in the table, keep going
                res["errors"][key] = f"{type(e).__name__}: {e}"
                say(f"{what}: FAILED {type(e).__name__}: {e}")
                traceback.print_exc()
            save()

        def rtt() -> None:
            runner.warm()
            for _ in range(WARMUP - 1):
                runner.one()
            samples = []
            for _ in range(args.rtt_samples):
                t = perf()
                runner.one()
                samples.append(perf() - t)
            m["rtt_median_s"] = pct(samples, 50)
            m["rtt_p99_s"] = pct(samples, 99)
            m["rtt_min_s"] = min(samples)
            m["rtt_mean_s"] = sum(samples) / len(samples)
            say(f"round trip median {m['rtt_median_s'] * 1e3:.3f} ms, p99 {m['rtt_p99_s'] * 1e3:.3f} ms")

        def throughput(key: str, fn: Callable[[int], list]) -> Callable[[], None]:
            def run() -> None:
                n = args.tasks
                t = perf()
                out = fn(n)
                dt = perf() - t
                out = list(out)
                if out != list(range(n)):
                    bad = next((i for i, v in enumerate(out) if v != i), len(out))
                    raise RuntimeError(f"wrong results: {len(out)} of {n}, first mismatch at {bad}")
                m[f"{key}_s"] = dt
                m[f"{key}_tps"] = n / dt
                say(f"{key.replace('_', ' ')}: {n} tasks in {dt:.3f} s = {n / dt:,.0f} tasks/s")

            return run

        def rss() -> None:
            m["controller_rss_bytes"], pids = runner.controller_rss()
            m["controller_pids"] = pids
            try:
                m["controller_pss_bytes"] = _pss_sum(pids)
            except Exception as e:  # noqa: BLE001 - not on every platform
                res["errors"]["controller_pss"] = f"{type(e).__name__}: {e}"
            try:
                m["engines_rss_bytes"] = runner.engines_rss()
            except Exception as e:  # noqa: BLE001 - context only
                res["errors"]["engines_rss"] = f"{type(e).__name__}: {e}"
            say(f"controller/scheduler RSS {m['controller_rss_bytes'] / 2**20:.1f} MiB")

        n_bound = args.phase_timeout
        phase("rtt", "round trips", rtt, 60 + 0.5 * (args.rtt_samples + WARMUP))
        phase("one_by_one", f"{args.tasks} tasks one by one", throughput("one_by_one", runner.many), n_bound)
        phase("map", f"{args.tasks} tasks via map", throughput("map", runner.map), n_bound)
        healthy = True  # memory is worth reading even after a stuck phase
        phase("controller_rss", "RSS", rss, 30)
    except BaseException as e:  # noqa: BLE001 - start-up failures, Ctrl-C, SIGTERM
        why = "interrupted" if isinstance(e, (SystemExit, KeyboardInterrupt)) else f"{type(e).__name__}: {e}"
        res["errors"].setdefault("startup_s" if "startup_s" not in m else "run", why)
        say(f"FAILED: {why}")
        if not isinstance(e, (SystemExit, KeyboardInterrupt)):
            traceback.print_exc()
        if isinstance(runner, IpclusterRunner) and getattr(runner, "proc", None) is not None:
            print(f"--- twistd log tail ---\n{runner.log_tail()}", file=sys.stderr)
    finally:
        stopping[0] = True  # a second SIGTERM must not interrupt the cleanup
        say("stopping ...")
        runner.stop()
        save()
    return 0


# =============================================================================
# parent: one child per system, cleanup, table
# =============================================================================


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


def run_child(system: str, args, workdir: Path) -> tuple:
    """Run one system in a child process: (its results, whether we were interrupted)."""
    out = workdir / f"{system}.json"
    log = workdir / f"{system}.log"
    argv = [
        sys.executable, str(SCRIPT), "--_child", system, "--_out", str(out),
        "--tasks", str(args.tasks), "--rtt-samples", str(args.rtt_samples),
        "--start-timeout", str(args.start_timeout), "--phase-timeout", str(args.phase_timeout),
        "--stop-timeout", str(args.stop_timeout),
    ]
    budget = (
        args.start_timeout + 60 + 0.5 * (args.rtt_samples + WARMUP) + 2 * args.phase_timeout
        + 30 + 2 * args.stop_timeout + 60
    )
    print(f"\n== {LABELS[system]} ==", flush=True)
    proc = None
    failure = None
    interrupted = False
    left: list = []
    with open(log, "wb") as errlog:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stderr=errlog if not args.verbose else None,
                start_new_session=True, cwd=workdir,
            )
            try:
                proc.wait(budget)
            except subprocess.TimeoutExpired:
                failure = f"timed out after {budget:.0f} s"
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM of the parent: stop the child, keep what it measured
            failure = "interrupted"
            interrupted = True
        finally:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # the child cleans up on SIGTERM
                try:
                    proc.wait(2 * args.stop_timeout + 10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            left = _end_processes(_descendants())
            if left:
                print(f"  warning: ended {len(left)} process(es) left behind by {system}: {left}", flush=True)
    try:
        res = json.loads(out.read_text())
    except (OSError, ValueError):
        res = {"system": system, "metrics": {}, "notes": [], "errors": {}, "versions": {}, "mode": None}
        failure = failure or f"no results (exit status {proc.returncode if proc else '?'})"
    if not failure and proc is not None and proc.returncode:
        failure = f"the {system} process exited with status {proc.returncode}"
    if failure:
        res["errors"]["run"] = failure
    if left:
        res["notes"].append(f"{system}: the parent had to end {len(left)} process(es) left behind: {left}")
    if failure or (proc is not None and proc.returncode):
        tail = log.read_text("utf-8", "replace").splitlines()[-30:] if log.exists() else []
        if tail:
            print(f"  --- {system} stderr (last {len(tail)} lines) ---", flush=True)
            print("\n".join("  " + line for line in tail), flush=True)
    return res, interrupted


# (key, label, kind): kind 'time' and 'mem' -> ratio other/ours; 'rate' -> ours/other
ROWS = [
    ("startup_s", "start-up to 2 engines ready", "time"),
    ("rtt_median_s", "round trip, median", "time"),
    ("rtt_p99_s", "round trip, p99", "time"),
    ("one_by_one_tps", "throughput, one by one", "rate"),
    ("map_tps", "throughput, map", "rate"),
    ("controller_rss_bytes", "controller/scheduler RSS", "mem"),
    ("controller_pss_bytes", "controller, all its processes, PSS", "mem"),
    ("engines_rss_bytes", "engines/workers RSS (sum of 2)", "mem"),
]
ERROR_KEY = {
    "startup_s": "startup_s", "rtt_median_s": "rtt", "rtt_p99_s": "rtt", "one_by_one_tps": "one_by_one",
    "map_tps": "map", "controller_rss_bytes": "controller_rss",
    "controller_pss_bytes": "controller_pss", "engines_rss_bytes": "engines_rss",
}


def fmt(key: str, v: Optional[float]) -> str:
    if v is None:
        return "-"
    if key == "startup_s":
        return f"{v:.3f} s"
    if key.endswith("_s"):
        return f"{v * 1e3:.3f} ms"
    if key.endswith("_tps"):
        return f"{v:,.0f} /s"
    if key.endswith("_bytes"):
        return f"{v / 2**20:.1f} MiB"
    return f"{v:g}"


def ratio(kind: str, ours: Optional[float], other: Optional[float]) -> Optional[float]:
    if not ours or not other:
        return None
    return other / ours if kind in ("time", "mem") else ours / other


def cell(res: dict, key: str) -> str:
    v = res.get("metrics", {}).get(key)
    if v is not None:
        star = "*" if res.get("system") == "ipcluster" and res.get("mode") == "direct" and key != "startup_s" \
            and not key.endswith("_bytes") else ""
        return fmt(key, v) + star
    errs = res.get("errors", {})
    err = errs.get(ERROR_KEY[key])
    if key == "startup_s":
        err = err or errs.get("run")
    if not err:
        return "-"
    for prefix, word in (("n/a", "n/a"), ("skipped", "skipped")):
        if err.startswith(prefix):
            return word
    return "timeout" if "did not finish" in err or "timed out" in err else "error"


def table(results: dict, args) -> str:
    present = [s for s in SYSTEMS if s in results]
    others = [s for s in present if s != "ipcluster"] if "ipcluster" in present else []
    head = ["metric"] + [LABELS[s] for s in present] + [f"{SHORT[s]}/ipc" for s in others]
    rows = [head]
    for key, label, kind in ROWS:
        if key.startswith("one_by_one") or key.startswith("map"):
            label = f"{label} ({args.tasks:,} tasks)"
        elif key.startswith("rtt"):
            label = f"{label} ({args.rtt_samples} seq.)"
        row = [label] + [cell(results[s], key) for s in present]
        ours = results.get("ipcluster", {}).get("metrics", {}).get(key)
        for s in others:
            r = ratio(kind, ours, results[s].get("metrics", {}).get(key))
            row.append(f"{r:.2f}x" if r is not None else "n/a")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("ipcluster", "ipyparallel", "distributed", "dask", "pyzmq", "Twisted", "tornado",
                 "cloudpickle", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def environment() -> dict:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "versions": versions(),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Compare ipcluster with ipyparallel and dask.distributed (2 local engines/workers each).",
    )
    p.add_argument("--tasks", type=int, default=None, help="no-op tasks per throughput run (default 10000; 1000 with --quick)")
    p.add_argument("--rtt-samples", type=int, default=200, help="sequential round trips measured (default 200)")
    p.add_argument("--only", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="1,000 tasks per throughput run")
    p.add_argument("--json", metavar="PATH", help="also write every number, note and error as JSON here")
    p.add_argument("--verbose", action="store_true", help="show the systems' own stderr/log output")
    p.add_argument("--start-timeout", type=float, default=90.0, help=argparse.SUPPRESS)
    p.add_argument("--phase-timeout", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--stop-timeout", type=float, default=45.0, help=argparse.SUPPRESS)
    p.add_argument("--_child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tasks is None:
        args.tasks = 1000 if args.quick else 10000
    if args.tasks < 1 or args.rtt_samples < 1:
        p.error("--tasks and --rtt-samples must be positive")
    if args.phase_timeout is None:
        args.phase_timeout = 60.0 + 0.05 * args.tasks  # i.e. it fails below ~20 tasks/s
    only = [s.strip().lower() for s in args.only.split(",") if s.strip()]
    aliases = {"ipp": "ipyparallel", "ipc": "ipcluster", "distributed": "dask"}
    only = [aliases.get(s, s) for s in only]
    bad = [s for s in only if s not in SYSTEMS]
    if bad or not only:
        p.error(f"--only: unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
    args.only = [s for s in SYSTEMS if s in only]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._child:
        return child_main(args)
    try:
        import psutil  # noqa: F401
    except ImportError:
        print("bench/compare.py needs psutil: .venv/bin/pip install psutil", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    reaper = set_subreaper()
    env = environment()
    print(
        f"ipcluster vs ipyparallel vs dask.distributed: {ENGINES} local engines/workers each, "
        f"{args.rtt_samples} round trips, {args.tasks:,} tasks per throughput run"
    )
    v = env["versions"]
    print(
        f"python {env['python']} on {env['platform']}, {env['cpus']} CPUs ({env['cpu']}); "
        f"load average {', '.join(f'{x:.2f}' for x in env['loadavg_before'] or ())}"
    )
    print("versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k]))
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
        left = _end_processes(_descendants())
        if left:
            print(f"warning: ended {len(left)} leftover process(es): {left}")
        shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        print("\ninterrupted; everything started has been stopped", flush=True)
    env["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["subreaper"] = reaper

    print()
    print("Ratios: times and memory = other / ipcluster; throughput = ipcluster / other.  > 1 means ipcluster is better.")
    print(table(results, args))
    notes = []
    if results.get("ipcluster", {}).get("mode") == "direct":
        notes.append("* ipcluster ran these tasks direct (engine=...), not load-balanced: see below.")
    for s in SYSTEMS:
        res = results.get(s)
        if not res:
            continue
        notes.extend(res.get("notes", []))
        for k, e in res.get("errors", {}).items():
            notes.append(f"{s}: {k}: {e}")
    notes.append(
        f"load average before {', '.join(f'{x:.2f}' for x in env['loadavg_before'] or ())}; "
        f"after {', '.join(f'{x:.2f}' for x in env['loadavg_after'] or ())}"
    )
    print()
    for n in notes:
        print(f"- {n}")
    if args.json:
        doc = {
            "params": {"tasks": args.tasks, "rtt_samples": args.rtt_samples, "warmup": WARMUP,
                       "engines": ENGINES, "systems": args.only},
            "environment": env,
            "results": results,
            "ratios": {
                s: {key: ratio(kind, results["ipcluster"]["metrics"].get(key), results[s]["metrics"].get(key))
                    for key, _, kind in ROWS}
                for s in results if s != "ipcluster" and "ipcluster" in results
            },
            "ratio_meaning": "times/memory: other/ipcluster; throughput: ipcluster/other; > 1 = ipcluster better",
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nJSON written to {path}")
    if interrupted:
        return 130
    failed = any(not str(e).startswith("n/a") for r in results.values() for e in r.get("errors", {}).values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
