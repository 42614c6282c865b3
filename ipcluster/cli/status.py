"""``ipcluster status``: the engines of the running cluster, as a table or as JSON."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Mapping, Optional, Sequence

from ipcluster import errors
from ipcluster.cli.datadir import DataDir, connect
from ipcluster.cli.errors import CLIError
from ipcluster.textstatus import by_id, engines_table, queued_lines, state_summary, task_summary

NAME = "status"
HELP = "show the engines and their state"
DESCRIPTION = (
    "Show every engine the controller knows: id, host, pid, state (registering,\n"
    "alive, busy, dead), heartbeat round trip in ms, the task it runs and for\n"
    "how long, how long it has been busy (its Python thread not answering), and\n"
    "how many tasks are queued on it; then counts by state, and the tasks\n"
    "queued in the controller (the first 20; --json prints the engines only).\n"
    "Exit code 1 if no cluster runs in the data directory."
)
EPILOG = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the engine list as JSON instead")


def run(args: argparse.Namespace) -> int:
    dd = DataDir.from_args(args)
    client = connect(dd)
    try:
        engines = by_id(client.engines())  # e2 before e10
        pid = client.info.controller_pid
        tasks = None if args.json else client.tasks()
    except errors.ClusterError as e:
        raise CLIError(f"the controller in {dd} did not answer: {e}") from None
    finally:
        client.close()
    if args.json:
        json.dump(engines, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_status(engines, dd, pid, tasks))
    return 0


def format_status(engines: Sequence[Mapping], dd: DataDir, pid: int, tasks: Optional[Mapping] = None) -> str:
    """The text ``ipcluster status`` prints: a header line, the engines table (with each one's
    running task), counts by state, tasks, and the tasks queued in the controller (``tasks``:
    the controller's ``tasks`` reply)."""
    lines = [f"Cluster in {dd}: controller pid {pid}"]
    lines += engines_table(engines) or ["no engines"]
    lines.append(state_summary(engines))
    lines.append(task_summary(engines, tasks["counts"] if tasks else None))
    lines += queued_lines(tasks)
    return "\n".join(lines) + "\n"
