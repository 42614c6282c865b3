"""Processes the heartbeat benchmarks start, a controller subprocess, and small helpers.

Everything started through :data:`PROCS` is ended (SIGCONT, then SIGTERM/SIGKILL) at exit.
"""
from __future__ import annotations

import os
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from benchstats import pct  # bench/ is on sys.path

VENV_BIN = Path(sys.executable).parent
TWISTD = VENV_BIN / "twistd"
ENGINE = VENV_BIN / "ipcluster-engine"
SCRIPT = Path(__file__).resolve().parent.parent / "heartbeat.py"  # its helper mode runs simulated engines
IP = "127.0.0.1"
BOUND = 60.0  # seconds: generous bound on every wait for an event


class Procs:
    """Every process this script started (and the controllers' children), ended at exit."""

    def __init__(self) -> None:
        self.items: list = []  # (Popen, kind)
        self.stopped: set = set()  # pids we SIGSTOPped
        self.extra: list = []  # psutil.Process of controllers' children
        self.done = False

    def spawn(self, argv, kind: str, **kw) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(kw.pop("env", {}))
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen([str(a) for a in argv], env=env, **kw)
        self.items.append((proc, kind))
        return proc

    def note_children(self, proc: subprocess.Popen) -> None:
        try:
            import psutil

            self.extra.extend(psutil.Process(proc.pid).children(recursive=True))
        except Exception:
            pass

    def signal(self, proc: subprocess.Popen, signum: int) -> None:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass

    def end(self, proc: subprocess.Popen, kind: str, grace: float = 10.0) -> None:
        """SIGCONT if we stopped it; SIGTERM (controllers, helpers) or SIGKILL; reap."""
        if proc.pid in self.stopped:
            self.signal(proc, signal.SIGCONT)
            self.stopped.discard(proc.pid)
        if proc.poll() is None:
            if kind in ("controller", "helper"):
                self.note_children(proc)
                self.signal(proc, signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            self.signal(proc, signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            print(f"warning: pid {proc.pid} ({kind}) did not end", file=sys.stderr)

    def cleanup(self) -> None:
        if self.done:
            return
        self.done = True
        order = {"engine": 0, "helper": 1, "controller": 2}
        for proc, kind in sorted(self.items, key=lambda item: order.get(item[1], 0)):
            self.end(proc, kind)
        for child in self.extra:  # local engines of a controller that did not stop them
            try:
                if child.is_running():
                    child.kill()
            except Exception:
                pass


PROCS = Procs()


# =============================================================================
# a controller subprocess
# =============================================================================


class Controller:
    """``twistd -n --pidfile= ipcluster`` in a subprocess, and a Client on it."""

    def __init__(self, root: Path, name: str, engines: int = 0, timed: bool = False, options=()) -> None:
        self.dir = root / name
        #: Run twistd through ``hb/timed.py``: the heart monitor's slices are timed in the controller.
        self.timed = timed
        self.options = list(options)
        self.dir.mkdir(parents=True)
        self.engines_n = engines
        self.connection_file = self.dir / "connection.json"
        self.log_path = self.dir / "controller.log"
        self.proc: Optional[subprocess.Popen] = None
        self.client = None

    def start(self, timeout: float = BOUND) -> "Controller":
        import ipcluster

        argv = [
            TWISTD, "-n", "--pidfile=", "ipcluster",
            "--data-dir", self.dir, "--ip", IP, "--engines", self.engines_n, *self.options,
        ]
        if self.timed:
            argv = [sys.executable, Path(__file__).resolve().parent / "timed.py", self.dir / "slices.json", *argv[1:]]
        with open(self.log_path, "wb") as log:
            self.proc = PROCS.spawn(
                argv, "controller", stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                env={"IPCLUSTER_DIR": str(self.dir)},
            )
        deadline = time.monotonic() + timeout
        while not self.connection_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no connection file after {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.02)
        self.client = ipcluster.Client(str(self.connection_file), timeout=10.0)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def engines(self) -> dict:
        return {e["id"]: e for e in self.client.engines()}

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_text(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
        if self.proc is not None:
            PROCS.end(self.proc, "controller", grace=15.0)



def summary(values) -> dict:
    values = list(values)
    return {
        "n": len(values),
        "median": statistics.median(values) if values else float("nan"),
        "p99": pct(values, 99),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """The predicate's first truthy value, polled; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads, not its children)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def helper_split(total: int, procs: int) -> list:
    procs = max(1, min(procs, total))
    base, extra = divmod(total, procs)
    return [base + (1 if i < extra else 0) for i in range(procs)]


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line from the helper's stdout, or '' at EOF / timeout."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return ""
    return proc.stdout.readline().decode("utf-8", "replace").strip()

