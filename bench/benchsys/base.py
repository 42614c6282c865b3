"""What every compared system shares: the Runner interface, bounded phases, ending processes.

Imported by ``bench/compare.py`` (the parent) and ``bench/comparechild.py``
(one system's child process) under either interpreter (the project's or the
peers'): standard library and psutil only, and psutil only inside functions.
"""
from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

perf = time.perf_counter
ENGINES = 2


class NotAvailable(Exception):
    """The system does not offer this operation (yet): the cell says ``n/a``."""


class Absent(Exception):
    """The system cannot run here (its package is not installed): its column says ``absent``."""


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


def descendants() -> list:
    """psutil.Process objects of every live descendant of this process."""
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def is_helper(proc) -> bool:
    """multiprocessing's resource tracker / forkserver: they live as long as their parent."""
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return False
    return "multiprocessing.resource_tracker" in cmd or "multiprocessing.forkserver" in cmd


def end_processes(procs, grace: float = 5.0) -> list:
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


def pss_sum(pids) -> int:
    """Proportional set size: shared pages (fork, libraries) split among their users (Linux)."""
    import psutil

    return sum(psutil.Process(pid).memory_full_info().pss for pid in pids)


def rss_sum(pids) -> int:
    import psutil

    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


def rss_here() -> int:
    """This process's RSS (run remotely on dask's scheduler)."""
    import psutil

    return psutil.Process().memory_info().rss


class Runner:
    """One system behind one small interface.

    ``prepare()`` (imports, untimed), ``start()`` (timed: until 2 engines are
    ready), ``warm()``, ``one()`` (one round trip), ``many(n)`` (n submits, then
    the results), ``map(n)`` (the system's map with its defaults),
    ``map_chunked(n, chunksize)``, ``echo(array)`` (the array there and back),
    ``controller_rss()``, ``engines_rss()``, ``shutdown()``; ``stop()`` ends
    everything.  ``fn`` is the task (``noop``, defined in the child's
    ``__main__`` so that every system ships it by value).
    """

    name = ""
    #: What "start-up" means for this system, when it is not "2 engines ready".
    startup_means = ""

    def __init__(self, args, res: dict, fn: Callable) -> None:
        self.args = args
        self.res = res
        self.fn = fn
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.watch: list = []  # psutil.Process objects to make sure are gone at the end

    def note(self, text: str) -> None:
        if text not in self.res["notes"]:
            self.res["notes"].append(text)

    def remember_descendants(self) -> None:
        seen = {p.pid for p in self.watch}
        self.watch.extend(p for p in descendants() if p.pid not in seen)

    def prepare(self) -> None: ...

    def start(self) -> None: ...

    def warm(self) -> None:
        self.one()

    def one(self) -> Any: ...

    def many(self, n: int) -> list: ...

    def map(self, n: int) -> list: ...

    def map_chunked(self, n: int, chunksize: int) -> list:
        raise NotAvailable(f"{self.name}'s map has no chunksize")

    def echo(self, array) -> Any: ...

    def controller_rss(self) -> tuple:
        """(RSS of the controller/scheduler process, pids of every process that is the controller)."""
        raise NotAvailable("no controller")

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
        # follow their engines, ray's raylet its workers), then end the rest.
        with contextlib.suppress(Exception):
            psutil.wait_procs(self.watch, timeout=5)
        procs = self.watch + descendants()
        quiet = [p for p in procs if is_helper(p)]
        end_processes(quiet)
        left = end_processes([p for p in procs if p not in quiet])
        if left:
            self.note(f"{self.name}: had to end {len(left)} leftover process(es) after shutdown: {left}")
        shutil.rmtree(self.tmp, ignore_errors=True)
