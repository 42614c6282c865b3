"""``ipcluster-engine``: run one engine process."""
from __future__ import annotations

import argparse
import sys

from ipcluster.connection import default_connection_file


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipcluster-engine",
        description=(
            "Run an ipcluster engine: it registers with the controller named in the connection "
            "file, answers its heartbeat from a GIL-free native thread, obeys control commands "
            "(beat, abort, signal, exit, reset) while busy, and runs tasks on its main thread. "
            "It exits cleanly on SIGTERM or the exit command."
        ),
    )
    p.add_argument(
        "--connection-file", "-f", default=None,
        help=f"the controller's connection file (default: {default_connection_file()})",
    )
    p.add_argument(
        "--id", default=None,
        help="this engine's id (default: HOSTNAME-PID). A restarted engine may reuse its id once "
        "the old process is gone.",
    )
    p.add_argument(
        "--reconnect-timeout", type=float, default=60.0, metavar="SECONDS",
        help="how long to keep trying to reach the controller, at start and after losing it, "
        "before exiting with code 3 (default: 60)",
    )
    p.add_argument(
        "--controller-timeout", type=float, default=None, metavar="SECONDS",
        help="silence from the controller after which it counts as gone and the engine "
        "re-registers (default: 10 heartbeat periods, at least 5 s)",
    )
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from ipcluster.engine.engine import Engine

    engine = Engine(
        connection_file=args.connection_file,
        engine_id=args.id,
        reconnect_timeout=args.reconnect_timeout,
        controller_timeout=args.controller_timeout,
    )
    return engine.run()


if __name__ == "__main__":
    sys.exit(main())
