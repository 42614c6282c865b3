"""The engine's command line: how to run one engine, and how to recognise one.

Every launcher (the controller's ``LocalEngines``, ``ipcluster engines``'
``DetachedEngines``) runs engines with :func:`engine_command`, and
``ipcluster stop`` finds the engines of a cluster in the process list with
:func:`parse_engine_argv`; both sides of that contract live here.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Optional, Sequence

import attr

#: Words in an engine's command line (``python -m ipcluster.engine`` or the
#: ``ipcluster-engine`` script) that tell it from other processes.
ENGINE_MARKERS = (b"ipcluster.engine", b"ipcluster-engine")


@attr.s(frozen=True, slots=True)
class EngineCommand:
    """What to execute for one engine: ``argv`` (``argv[0]`` is the program) and its environment."""

    argv: list[str] = attr.ib()
    env: dict[str, str] = attr.ib()

    @property
    def executable(self) -> str:
        return self.argv[0]


def engine_command(connection_file: str, engine_id: str, environ: Optional[Mapping[str, str]] = None) -> EngineCommand:
    """How to run engine ``engine_id`` of the cluster described by ``connection_file``.

    The engine runs with this interpreter, in ``environ`` (default: this
    process's environment) with unbuffered output so that its log lines
    arrive as they are written.
    """
    argv = [sys.executable, "-m", "ipcluster.engine", "--connection-file", str(connection_file), "--id", engine_id]
    env = dict(os.environ if environ is None else environ, PYTHONUNBUFFERED="1")
    return EngineCommand(argv, env)


def _argument(args: Sequence[str], *names: str) -> Optional[str]:
    """The value of option ``names`` in ``args`` (``--name VALUE``, ``--name=VALUE`` or ``-n VALUE``)."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def parse_engine_argv(args: Sequence[str]) -> Optional[tuple[Optional[str], str]]:
    """``(connection file, engine id)`` if ``args`` is an engine's command line, else None.

    The connection file is None when the engine uses its default one; the
    id is ``"?"`` when the engine picks its own (``HOSTNAME-PID``).
    """
    if not any(marker.decode() in arg for arg in args for marker in ENGINE_MARKERS):
        return None
    return _argument(args, "--connection-file", "-f"), _argument(args, "--id") or "?"
