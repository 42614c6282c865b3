"""What a remote launcher runs on the far side: announce the engine, then become it.

    python -m ipcluster.launchers.shim --connection-file FILE --ids e0,e1,e2 [-- ENGINE OPTIONS]

Started once per engine (SSH) or once per rank (``mpiexec``, ``srun``, a Slurm job array),
it picks its engine id from ``--ids`` by its rank (:func:`rank_of`: the MPI or Slurm rank in
the environment, 0 without one), prints :data:`ANNOUNCE` ``<id> <pid> <host> <rank>`` on
stdout and ``exec``\\ s the engine in the same process, so the pid it printed is the
engine's own (the one it registers with) and a signal sent to it reaches the engine.
The engine records the rank in its registration (``engine.control``: ``IPCLUSTER_RANK``).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Mapping, Optional, Sequence

#: The first line a shim prints: ``ipcluster-launched <id> <pid> <host> <rank>``.
ANNOUNCE = "ipcluster-launched"

#: Where MPI implementations and Slurm put a process's rank, in the order they are read.
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")


def rank_of(environ: Mapping[str, str], array: bool = False) -> Optional[int]:
    """This process's rank: a Slurm array task's index (``array``), else the MPI/Slurm rank; None if none."""
    names = ("SLURM_ARRAY_TASK_ID",) if array else RANK_VARIABLES
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


def engine_rank(environ: Mapping[str, str]) -> Optional[int]:
    """The rank an engine records in its registration: ``IPCLUSTER_RANK`` (set by this shim), else
    its MPI or Slurm rank (an engine started by ``mpiexec`` directly); None outside MPI and Slurm."""
    value = environ.get("IPCLUSTER_RANK", "")
    return int(value) if value.isdigit() else rank_of(environ)


def parse_announcement(line: str) -> Optional[tuple[str, int, str, Optional[int]]]:
    """``(engine id, pid, host, rank)`` from a shim's announcement line, None for any other line."""
    words = line.strip().split()
    if len(words) != 5 or words[0] != ANNOUNCE or not words[2].isdigit():
        return None
    rank = int(words[4]) if words[4].isdigit() else None
    return words[1], int(words[2]), words[3], rank


def main(argv: Optional[Sequence[str]] = None, environ: Mapping[str, str] = os.environ, execv=os.execve) -> int:
    p = argparse.ArgumentParser(prog="python -m ipcluster.launchers.shim", description=__doc__.split("\n\n")[0])
    p.add_argument("--connection-file", required=True)
    p.add_argument("--ids", required=True, help="comma-separated engine ids, one per rank")
    p.add_argument("--array", action="store_true", help="the rank is the Slurm array task id")
    p.add_argument("engine_options", nargs="*")
    args = p.parse_args(argv)
    ids = [i for i in args.ids.split(",") if i]
    rank = rank_of(environ, args.array)
    index = rank if rank is not None else 0
    if not ids or index >= len(ids):
        print(f"ipcluster shim: rank {index} has no engine id among {ids}", file=sys.stderr, flush=True)
        return 2
    engine_id = ids[index]
    print(f"{ANNOUNCE} {engine_id} {os.getpid()} {socket.gethostname()} {'-' if rank is None else rank}", flush=True)
    env = dict(environ, PYTHONUNBUFFERED="1")
    if rank is not None:
        env["IPCLUSTER_RANK"] = str(rank)
    argv = [sys.executable, "-m", "ipcluster.engine", "--connection-file", args.connection_file, "--id", engine_id,
            *args.engine_options]
    execv(sys.executable, argv, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
