"""Engines as Slurm jobs: ``sbatch`` a job array (one engine per array task) or one job of
``srun`` tasks; ``scancel`` on stop; job state polled and reported.

The engines the supervisors start in one reactor turn go into one ``sbatch``:

* ``mode = "array"`` (default): ``--array=0-(N-1)``; array task ``i`` runs engine ``ids[i]``
  (``SLURM_ARRAY_TASK_ID``), so each engine is a job of its own to Slurm: queued, started,
  signalled (``scancel --signal``) and ended one by one.
* ``mode = "srun"``: one job of ``--ntasks=N``, whose batch script runs ``srun`` once: task
  ``r`` (``SLURM_PROCID``) runs engine ``ids[r]``.  The job lives and ends as a whole.

Every command runs through ``reactor.spawnProcess`` (``getProcessOutputAndValue``): the
reactor never waits for Slurm.  A ``LoopingCall`` polls every ``poll`` seconds: ``squeue``
for queued and running jobs (state and reason: ``PENDING (Resources)``), then, for jobs that
left the queue, ``sacct`` or, without accounting, ``scontrol show job`` (state, reason, exit
code).  A job that ends is reported ended (``on_ended``), with that state in the reason:
``slurm job 42_3 FAILED (NonZeroExitCode, exit code 1:0)``.  The jobs' output files (in
``log_dir``) are read as they grow: engine announcements give their pids, other lines go to
the controller's log.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Callable, Iterable, Optional, Sequence

from twisted.internet import defer, task, utils
from twisted.logger import Logger
from zope.interface import implementer

from ipcluster.interfaces import ILauncher
from ipcluster.launchers.local import CLEAN_EXIT
from ipcluster.launchers.remote import OnEnded, batched
from ipcluster.launchers.shim import parse_announcement

DEFAULT_POLL = 5.0
#: Slurm job states in which the engine's process may yet run.
QUEUED = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"})
_FIELD = re.compile(r"(\w+)=(\S*)")


def _scontrol_jobs(text: str) -> dict[str, tuple[str, str, str]]:
    """``{job id: (state, reason, exit code)}`` from ``scontrol -o show job`` lines (array tasks as ``A_i``)."""
    jobs = {}
    for line in text.splitlines():
        f = dict(_FIELD.findall(line))
        if "JobId" not in f:
            continue
        job = f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if f.get("ArrayTaskId", "").isdigit() else f["JobId"]
        jobs[job] = (f.get("JobState", "?"), f.get("Reason", "None"), f.get("ExitCode", "?"))
    return jobs


def _sacct_jobs(text: str) -> dict[str, tuple[str, str, str]]:
    """The same from ``sacct -n -P -X -o JobID,State,Reason,ExitCode``."""
    jobs = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 4:
            jobs[parts[0]] = (parts[1].split()[0] if parts[1] else "?", parts[2] or "None", parts[3])
    return jobs


@implementer(ILauncher)
class SlurmLauncher:
    """Starts engines with ``sbatch``; ``settings`` are the profile's ``[slurm]`` table."""

    log = Logger()

    def __init__(self, reactor, connection_file: str, on_ended: OnEnded = lambda e, p, w: None,
                 settings: Optional[dict] = None, log_dir: Optional[str] = None,
                 run: Optional[Callable[[list], defer.Deferred]] = None) -> None:
        self.reactor = reactor
        self.connection_file = os.path.abspath(connection_file)  # the jobs may start in another directory
        self.on_ended = on_ended
        self.settings = {k: v for k, v in (settings or {}).items() if v is not None}
        self.mode = self.settings.get("mode", "array")
        if self.mode not in ("array", "srun"):
            raise ValueError("slurm mode must be 'array' or 'srun'")
        self.log_dir = os.path.abspath(log_dir or os.path.dirname(self.connection_file))
        self.run = run or self._run
        self.job_of: dict[str, str] = {}  # engine id -> Slurm job id (``42_3`` for an array task)
        self.state: dict[str, tuple[str, str]] = {}  # engine id -> (state, reason), while queued
        self.pids: dict[str, int] = {}
        self._ended: dict[str, str] = {}
        self._offsets: dict[str, int] = {}
        self._polling: Optional[defer.Deferred] = None
        self._start = batched(reactor, self._submit)
        self.poller = task.LoopingCall(self.poll)
        self.poller.clock = reactor

    # -- commands ---------------------------------------------------------------------------

    def _run(self, argv: list) -> defer.Deferred:
        env = dict(os.environ)
        if self.settings.get("conf"):
            env["SLURM_CONF"] = str(self.settings["conf"])
        return utils.getProcessOutputAndValue(argv[0], argv[1:], env=env, reactor=self.reactor)

    def sbatch_argv(self, engine_ids: Sequence[str]) -> list[str]:
        s = self.settings
        python = s.get("python", sys.executable)
        argv = [s.get("sbatch", "sbatch"), "--parsable", "--job-name", s.get("job_name", "ipcluster-engines")]
        for option, key in (("--partition", "partition"), ("--account", "account"), ("--time", "time")):
            if s.get(key):
                argv += [option, str(s[key])]
        shim = [python, "-m", "ipcluster.launchers.shim", "--connection-file", self.connection_file,
                "--ids", ",".join(engine_ids)]
        if self.mode == "array":
            argv += [f"--array=0-{len(engine_ids) - 1}", "--output", os.path.join(self.log_dir, "slurm-%A_%a.log")]
            shim.append("--array")
        else:
            argv += [f"--ntasks={len(engine_ids)}", "--output", os.path.join(self.log_dir, "slurm-%j.log")]
            shim = ["srun", "--kill-on-bad-exit=0", *shim]
        return argv + list(s.get("options", ())) + ["--wrap", "exec " + shlex.join(shim)]

    # -- ILauncher --------------------------------------------------------------------------

    def start(self, engine_ids: Iterable[str]) -> defer.Deferred:
        return self._start(list(engine_ids))

    @defer.inlineCallbacks
    def _submit(self, engine_ids: list):
        if not engine_ids:
            return []
        out, err, code = yield self.run(self.sbatch_argv(engine_ids))
        if code != 0:
            raise RuntimeError(f"sbatch failed (exit code {code}): {err.decode('utf-8', 'replace').strip()}")
        job = out.decode().strip().split(";")[0]
        for i, engine_id in enumerate(engine_ids):
            self.job_of[engine_id] = f"{job}_{i}" if self.mode == "array" else job
            self.state[engine_id] = ("PENDING", "submitted")
            self._ended.pop(engine_id, None)
            self.pids.pop(engine_id, None)
        self.log.info("slurm job {job}: {n} engine(s) {ids} submitted", job=job, n=len(engine_ids), ids=",".join(engine_ids))
        if not self.poller.running:
            self.poller.start(float(self.settings.get("poll", DEFAULT_POLL)), now=False)
        return engine_ids

    def poll(self) -> Optional[defer.Deferred]:
        """One poll of the jobs' state (skipped while the previous one runs)."""
        if self._polling is not None or not self.state:
            return None
        self._polling = self._poll()
        self._polling.addErrback(lambda f: self.log.failure("polling Slurm failed", f))
        self._polling.addBoth(lambda _: setattr(self, "_polling", None))
        return self._polling

    @defer.inlineCallbacks
    def _poll(self):
        self._read_output()
        jobs = sorted({self.job_of[e].split("_")[0] for e in self.state})
        out, err, code = yield self.run(["squeue", "-h", "-r", "-j", ",".join(jobs), "-o", "%i|%T|%r"])
        queued = {}
        if code == 0:
            for line in out.decode().splitlines():
                parts = line.strip().split("|")
                if len(parts) == 3:
                    queued[parts[0]] = (parts[1], parts[2])
        left = sorted({self.job_of[e] for e in self.state} - set(queued))
        finished = (yield self._finished(left)) if left and code == 0 else {}
        for engine_id in list(self.state):
            job = self.job_of[engine_id]
            if job in queued:
                self._update(engine_id, *queued[job])
            elif job in finished and finished[job][0] in QUEUED:  # not listed by squeue yet (a new array)
                self._update(engine_id, *finished[job][:2])
            elif job in finished:
                self._job_ended(engine_id, job, *finished[job])

    @defer.inlineCallbacks
    def _finished(self, jobs: list):
        """States of jobs that left the queue: ``sacct`` if accounting runs, else ``scontrol``."""
        out, _, code = yield self.run(["sacct", "-n", "-P", "-X", "-j", ",".join(jobs), "-o", "JobID,State,Reason,ExitCode"])
        found = _sacct_jobs(out.decode()) if code == 0 else {}
        if not all(job in found for job in jobs):
            bases = sorted({j.split("_")[0] for j in jobs})
            out, _, code = yield self.run(["scontrol", "-o", "show", "job", ",".join(bases)])
            found.update(_scontrol_jobs(out.decode()) if code == 0 else {})
        # A job neither knows any more (purged): it ended, how is lost.
        return {job: found.get(job, ("ENDED", "no longer known to Slurm", "?")) for job in jobs}

    def _update(self, engine_id: str, state: str, reason: str) -> None:
        if self.state.get(engine_id) != (state, reason):
            self.log.info("engine {engine}: slurm job {job} {state} ({reason})", engine=engine_id,
                          job=self.job_of[engine_id], state=state, reason=reason)
        self.state[engine_id] = (state, reason)

    def _job_ended(self, engine_id: str, job: str, state: str, reason: str, exit_code: str) -> None:
        del self.state[engine_id]
        self._read_output()
        why = CLEAN_EXIT if state == "COMPLETED" and exit_code == "0:0" else \
            f"slurm job {job} {state} ({reason}, exit code {exit_code})"
        self._ended[engine_id] = why
        self.log.info("engine {engine}: {why}", engine=engine_id, why=why)
        self.on_ended(engine_id, self.pids.pop(engine_id, 0), why)

    def _read_output(self) -> None:
        """Forward what the jobs' output files gained since the last read; learn pids from announcements."""
        for job in sorted(set(self.job_of.values())):
            path = os.path.join(self.log_dir, f"slurm-{job}.log")
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets.get(path, 0))
                    data = f.read(1 << 20)
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[path] = self._offsets.get(path, 0) + len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                announced = parse_announcement(line)
                if announced is not None and self.job_of.get(announced[0], "").split("_")[0] == job.split("_")[0]:
                    self.pids[announced[0]] = announced[1]
                else:
                    self.log.info("[slurm {job}] {line}", job=job, line=line)

    def stop(self, timeout: float = 5.0) -> defer.Deferred:
        """``scancel`` every job; after ``timeout`` ``scancel --signal=KILL``; fires once none is queued."""
        return self._stop(timeout)

    @defer.inlineCallbacks
    def _stop(self, timeout: float):
        jobs = sorted({self.job_of[e] for e in self.state})
        if jobs:
            yield self.run(["scancel", *jobs])
            deadline = self.reactor.seconds() + timeout
            killed = False
            while self.state:
                if self.reactor.seconds() > deadline and not killed:
                    killed = True
                    yield self.run(["scancel", "--signal=KILL", "--full", *jobs])
                    deadline = self.reactor.seconds() + timeout
                elif self.reactor.seconds() > deadline:
                    self.log.warn("slurm jobs {jobs} still queued after scancel", jobs=" ".join(jobs))
                    break
                yield task.deferLater(self.reactor, 0.5, lambda: None)
                yield self._poll()
        if self.poller.running:
            self.poller.stop()

    def signal(self, engine_id: str, signum: int) -> bool:
        """``scancel --signal=N --full`` the engine's job: its array task (whose batch shell is the
        engine), or in ``srun`` mode the whole job (``srun`` forwards the signal to every task)."""
        if engine_id not in self.state:
            return False
        argv = ["scancel", f"--signal={int(signum)}", "--full", self.job_of[engine_id]]
        self.run(argv).addErrback(lambda f: self.log.failure("scancel failed", f))
        return True

    def running(self) -> dict:
        """Engines whose jobs are queued or running: ``{engine_id: pid}`` (0 until the engine announced itself)."""
        return {e: self.pids.get(e, 0) for e in self.state}

    def ended(self, engine_id: str) -> Optional[str]:
        return self._ended.get(engine_id)

    def is_local(self, engine_id: str) -> bool:
        return engine_id in self.state

    def describe(self, engine_id: str) -> Optional[str]:
        """``slurm job 42_3 PENDING (Resources)`` while the engine's job is queued, else None."""
        if engine_id not in self.state:
            return None
        state, reason = self.state[engine_id]
        return f"slurm job {self.job_of[engine_id]} {state} ({reason})"
