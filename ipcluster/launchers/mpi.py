"""Engines as the ranks of one ``mpiexec -n N``: each records its MPI rank in its registration.

The engines the supervisors start in one reactor turn become one job
(``mpiexec [args] -n N PYTHON -m ipcluster.launchers.shim --ids e0,...,eN-1``): rank ``r``
runs engine ``ids[r]`` and registers with ``rank`` ``r`` (shown by ``engines()``), so code in a
task can use ``mpi4py`` (``MPI.COMM_WORLD``) with its peers of the same job, when installed.
An engine restarted alone is a job of its own (``-n 1``, rank 0).

MPI jobs live and die together: when one rank exits, ``mpiexec`` ends the others, and every
engine of the job is reported ended (and restarted by its supervisor).  Signals go to
``mpiexec``, which forwards SIGTERM, SIGINT and SIGUSR1/2 to every rank of the job.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Iterable, Sequence

from twisted.internet import defer
from zope.interface import implementer

from ipcluster.interfaces import ILauncher
from ipcluster.launchers.remote import OnEnded, ProcessLauncher, batched


@implementer(ILauncher)
class MPILauncher(ProcessLauncher):
    """Starts engines as MPI jobs with ``mpiexec`` (Open MPI, MPICH, Intel MPI)."""

    def __init__(self, reactor, connection_file: str, on_ended: OnEnded = lambda e, p, w: None,
                 mpiexec: str = "mpiexec", args: Sequence[str] = (), python: str = sys.executable,
                 engine_options: Sequence[str] = ()) -> None:
        super().__init__(reactor, connection_file, on_ended)
        self.mpiexec = mpiexec
        self.args = list(args)
        self.python = python
        self.engine_options = list(engine_options)
        self._start = batched(reactor, self._launch)
        self.jobs = 0

    def argv(self, engine_ids: Sequence[str]) -> list[str]:
        return [*shlex.split(self.mpiexec), *self.args, "-n", str(len(engine_ids)), self.python, "-m", "ipcluster.launchers.shim",
                "--connection-file", self.connection_file, "--ids", ",".join(engine_ids), *self.engine_options]

    def start(self, engine_ids: Iterable[str]) -> defer.Deferred:
        return self._start(list(engine_ids))

    def _launch(self, engine_ids: list) -> None:
        if engine_ids:
            self.jobs += 1
            self.spawn(f"mpi job {self.jobs}", engine_ids, self.argv(engine_ids), env=dict(os.environ))

    def deliver(self, engine_ids: Sequence[str], signum: int) -> None:
        """Signal the ``mpiexec`` of each engine's job (it forwards the signal to all its ranks)."""
        for proc in {id(p): p for p in (self.processes.get(e) for e in engine_ids) if p is not None}.values():
            proc.kill(signum)
