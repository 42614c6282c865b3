"""``ipcluster run``: start a private cluster, run a script against it, stop it whatever happens."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from ipcluster.cli import processes
from ipcluster.cli.datadir import DataDir
from ipcluster.cli.errors import CLIError
from ipcluster.cli.start import DEFAULT_START_TIMEOUT, prepare_start, start_daemon
from ipcluster.cli.stop import DEFAULT_STOP_TIMEOUT, stop_cluster

#: How long a script that got the user's Ctrl-C has to finish before it is killed.
INTERRUPT_GRACE = 10.0

NAME = "run"
HELP = "start a cluster, run a script with it, stop it"
DESCRIPTION = (
    "Start a private cluster with N engines (in a fresh temporary data directory,\n"
    "unless --data-dir is given), run `python SCRIPT ARGS...` with IPCLUSTER_DIR set\n"
    "so that `ipcluster.Client()` in the script finds the cluster, then stop the\n"
    "cluster, whatever happened (also on Ctrl-C). The exit code is the script's.\n"
    "Messages about the cluster go to stderr; the script's output is its own."
)
EPILOG = "example:\n  ipcluster run -n 4 job.py --input data.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--engines", type=int, default=2, metavar="N", help="engines to start (default 2)")
    p.add_argument("--ip", default=None, help="interface for the controller to listen on (default 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT, metavar="S",
                   help=f"seconds to wait for the cluster to come up (default {DEFAULT_START_TIMEOUT:g})")
    p.add_argument("--twistd-option", dest="extra_options", action="append", default=[], metavar="OPT",
                   help="an extra `twistd ipcluster` option, e.g. --twistd-option=--store=memory (repeatable)")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")


def run(args: argparse.Namespace) -> int:
    """Run the script with a cluster of its own; the script's exit code."""
    if args.engines < 0:
        raise CLIError("-n/--engines must be 0 or more")
    if not os.path.isfile(args.script):
        raise CLIError(f"no such script: {args.script}")
    temporary = args.data_dir is None
    dd = DataDir(tempfile.mkdtemp(prefix="ipcluster-run-") if temporary else args.data_dir)
    dd.ensure_readable()
    try:
        prepare_start(dd)
        try:
            start_daemon(dd, args.engines, args.timeout, out=None, progress=sys.stderr,
                         ip=args.ip, extra=args.extra_options)
            return run_script(dd, args.script, args.args)
        finally:
            _stop(dd)
    finally:
        if temporary:
            shutil.rmtree(dd.path, ignore_errors=True)


def run_script(dd: DataDir, script: str, script_args: list[str]) -> int:
    """``python SCRIPT ARGS...`` with ``IPCLUSTER_DIR`` set to ``dd``; its exit code as a shell reports it."""
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ, IPCLUSTER_DIR=str(dd.path))
    proc = subprocess.Popen([sys.executable, script, *script_args], env=env)
    try:
        returncode = proc.wait()
    except KeyboardInterrupt:
        # The script got the same Ctrl-C (same process group); give it a moment to finish.
        try:
            returncode = proc.wait(INTERRUPT_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
    return processes.exit_code(returncode)


def _stop(dd: DataDir) -> None:
    """Stop the private cluster; a second Ctrl-C must not skip this."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop_cluster(dd, DEFAULT_STOP_TIMEOUT, out=None)
    except CLIError as e:
        # "no cluster is running" after a failed start is expected: start_daemon stopped it already.
        if dd.controller_pid() is not None or "still running" in str(e):
            print(f"ipcluster: warning: {e}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)
