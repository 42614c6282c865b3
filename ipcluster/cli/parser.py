"""The ``ipcluster`` command line: one sub-command per verb module, and ``main``.

A verb module (``start``, ``stop``, ``status``, ``engines``, ``run``) says
what it is with ``NAME``, ``HELP``, ``DESCRIPTION`` and ``EPILOG``, adds its
options in ``add_arguments(parser)`` and does its work in ``run(args)``, which
returns the exit code or raises :class:`~ipcluster.cli.errors.CLIError`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ipcluster import __version__, connection
from ipcluster.cli import engines, run, start, status, stop
from ipcluster.cli.errors import CLIError

#: The verbs, in the order ``ipcluster --help`` lists them.
VERBS = (start, stop, status, engines, run)

DESCRIPTION = (
    "Start, stop, inspect and use an ipcluster cluster: a Twisted controller\n"
    "(`twistd ipcluster`) and engine processes that run Python tasks sent by\n"
    "`ipcluster.Client`."
)
EPILOG = (
    "examples:\n"
    "  ipcluster start --daemon -n 4    start a controller with 4 local engines, in the background\n"
    "  ipcluster status                 show the engines\n"
    "  ipcluster engines -n 2           add 2 more local engines\n"
    "  ipcluster stop                   stop the controller and all its engines\n"
    "  ipcluster run -n 4 job.py ARGS   start a private cluster, run job.py, stop it\n"
    "\n"
    "Each command takes --data-dir (or $IPCLUSTER_DIR); `ipcluster COMMAND --help` says more.\n"
    "Exit codes: 0 success, 1 failure (a bad option included: the reason is one line\n"
    "on stderr), 2 no command given; "
    "`run` returns the script's exit code."
)


def _data_dir_help() -> str:
    return (
        "the cluster's data directory: connection file, pid file, logs "
        f"(default: $IPCLUSTER_DIR or ~/.ipcluster, here {connection.default_data_dir()})"
    )


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line on stderr and exit status 1."""

    def error(self, message: str):
        sys.stdout.flush()
        sys.stderr.write(f"ipcluster: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``ipcluster`` and its sub-commands; each sets ``args.func`` to its verb's ``run``."""
    fmt = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", "-d", metavar="DIR", default=None, help=_data_dir_help())

    parser = _Parser(prog="ipcluster", formatter_class=fmt, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"ipcluster {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb in VERBS:
        p = sub.add_parser(verb.NAME, parents=[common], formatter_class=fmt,
                           help=verb.HELP, description=verb.DESCRIPTION, epilog=verb.EPILOG)
        verb.add_arguments(p)
        p.set_defaults(func=verb.run, verb_parser=p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``ipcluster ARGV`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the verb whose options they are not
        getattr(args, "verb_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except CLIError as e:
        sys.stdout.flush()
        print(f"ipcluster: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ipcluster: interrupted", file=sys.stderr)
        return 130
