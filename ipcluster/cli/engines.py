"""``ipcluster engines``: add local engines to the running cluster and wait until they have joined;
``engines remove`` and ``engines scale`` (in :mod:`ipcluster.cli.scale`) take engines away.

They are started through :class:`~ipcluster.launchers.detached.DetachedEngines`
(an ``ILauncher``), detached from this command, and recorded in
``engines.pids`` so that ``ipcluster stop`` stops them with the cluster.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from typing import Collection, Optional, Sequence, TextIO

from ipcluster import errors
from ipcluster.cli import processes, scale
from ipcluster.cli.datadir import DataDir, connect
from ipcluster.cli.errors import CLIError
from ipcluster.cli.progress import Deadline, Progress
from ipcluster.cli.start import DEFAULT_START_TIMEOUT
from ipcluster.launchers.detached import DetachedEngines, fired
from ipcluster.textstatus import LIVE

#: How long engines that failed to join get to exit on SIGTERM before SIGKILL.
ABANDON_TIMEOUT = 10.0

NAME = "engines"
HELP = "add, remove or scale the running cluster's engines"
DESCRIPTION = (
    "ipcluster engines [add] [-n N]   start N more engines on this machine, with fresh ids\n"
    "                                 (x0, x1, ...), and wait until they have joined. Their output\n"
    "                                 goes to DATA_DIR/engine-ID.log; `ipcluster stop` stops them too.\n"
    "ipcluster engines remove ID...   ask those engines to exit (their queued tasks go back to the\n"
    "                                 controller; a running task gets --exit-timeout seconds); an\n"
    "                                 engine that left this way is not restarted.\n"
    "ipcluster engines scale N        add engines, or remove the surplus (idle ones first, newest\n"
    "                                 ids first), until N are live.\n"
    "Exit code 1 if no cluster runs, an id is not a live engine, or an engine does not join."
)
EPILOG = None
ACTIONS = ("add", "remove", "scale")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=ACTIONS, default="add", help="add (the default), remove or scale")
    p.add_argument("targets", nargs="*", metavar="ID|N", help="remove: the engine ids; scale: the engine count")
    p.add_argument("-n", "--engines", type=int, default=1, metavar="N", help="add: how many engines to add (default 1)")
    p.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT, metavar="S",
                   help=f"seconds to wait for added engines to join (default {DEFAULT_START_TIMEOUT:g})")
    p.add_argument("--exit-timeout", type=float, default=scale.DEFAULT_EXIT_TIMEOUT, metavar="S",
                   help="remove/scale: seconds a removed engine's running task gets to finish "
                        f"(default {scale.DEFAULT_EXIT_TIMEOUT:g})")


def run(args: argparse.Namespace) -> int:
    dd = DataDir.from_args(args)
    if args.action == "add" and args.targets:
        raise CLIError(f"engines add takes no ids or counts ({' '.join(args.targets)}): use -n N")
    if args.action == "remove" and not args.targets:
        raise CLIError("engines remove: name the engines to remove (see `ipcluster status`)")
    if args.action == "scale":
        count = _count(args.targets)
    elif args.engines < 1:
        raise CLIError("-n/--engines must be 1 or more")
    client = connect(dd)
    try:
        if args.action == "remove":
            scale.remove(client, args.targets, args.exit_timeout)
        elif args.action == "scale":
            scale.scale(client, count, lambda n: add(dd, client, n, args.timeout), args.exit_timeout)
        else:
            add(dd, client, args.engines, args.timeout)
    except errors.ClusterError as e:
        raise CLIError(f"lost the controller: {e}") from None
    finally:
        client.close()
    return 0


def _count(targets: Sequence[str]) -> int:
    if len(targets) != 1 or not targets[0].isdigit():
        raise CLIError(f"engines scale takes one count, 0 or more (got {' '.join(targets) or 'nothing'})")
    return int(targets[0])


def add(dd: DataDir, client, count: int, timeout: float) -> None:
    """Start ``count`` engines, wait until they have joined, and say where they are."""
    launcher = DetachedEngines(str(dd.connection_file), dd.engine_log)
    try:
        ids, pids = _start(dd, client, launcher, count)
        wait_joined(dd, client, launcher, ids, Deadline(timeout))
    except BaseException as e:
        fired(launcher.stop(timeout=ABANDON_TIMEOUT))
        if isinstance(e, errors.ClusterError):
            raise CLIError(f"lost the controller while starting engines: {e}") from None
        if isinstance(e, OSError):
            raise CLIError(f"cannot start engines in {dd}: {e}") from None
        raise
    for engine_id, pid in pids.items():
        print(f"{engine_id}  pid {pid}  log {dd.engine_log(engine_id)}")
    print(f"Started {len(ids)} engine(s); `ipcluster stop{dd.option()}` stops them with the cluster.")


def fresh_ids(used: Collection[str], count: int, prefix: str = "x") -> list[str]:
    """The first ``count`` ids ``x0``, ``x1``, ... not in ``used``."""
    candidates = (f"{prefix}{i}" for i in itertools.count())
    return list(itertools.islice((eid for eid in candidates if eid not in used), count))


def _start(dd: DataDir, client, launcher: DetachedEngines, count: int) -> tuple[list[str], dict[str, int]]:
    """Start ``count`` engines with fresh ids and record them: their ids, and ``{engine id: pid}`` of those running.

    One that has ended already is not recorded; :func:`wait_joined` reports it.
    """
    with dd.lock():
        used = (
            {e["id"] for e in client.engines()}
            | {eid for _, eid in dd.read_engine_pids()}
            | {eid for eid, _ in processes.engine_processes(dd.connection_file).values()}
        )
        ids = fired(launcher.start(fresh_ids(used, count)))
        running = launcher.running()
        pids = {eid: running[eid] for eid in ids if eid in running}
        dd.record_engines(pids)
    return ids, pids


def wait_joined(dd: DataDir, client, launcher: DetachedEngines, ids: Sequence[str], deadline: Deadline,
                stream: TextIO = sys.stderr) -> None:
    """Return once every engine of ``ids`` is live in ``client.engines()``.

    Raises CLIError when one of them ends first, or at the deadline; either
    way with the tail of the engine's log.
    """
    missing = list(ids)

    def joined() -> Optional[bool]:
        live = {e["id"] for e in client.engines() if e["state"] in LIVE}
        missing[:] = [eid for eid in ids if eid not in live]
        if not missing:
            return True
        for eid in ids:
            why = launcher.ended(eid)
            if why is not None:
                raise CLIError(f"engine {eid} {why} before joining\n{dd.log_tail(dd.engine_log(eid))}")
        return None

    def expired() -> CLIError:
        return CLIError(
            f"engine(s) {', '.join(missing)} did not join within {deadline.seconds:g} s\n"
            f"{dd.log_tail(dd.engine_log(missing[0]))}"
        )

    with Progress(stream, f"Starting {len(ids)} engine(s)", clock=deadline.clock) as bar:
        deadline.wait_until(joined, expired, bar)
