"""``ipcluster engines remove`` and ``ipcluster engines scale``: fewer (or a set number of) engines.

Both go through the ``exit`` control verb: the engine drops its queue (those
tasks go back to the controller's queue, they are not lost), lets a running
task finish for ``--exit-timeout`` seconds, and leaves with exit code 0.  An
engine that left on purpose is not restarted by the controller's supervisor,
whether the controller started it (``-n``) or ``ipcluster engines`` did.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence, TextIO

from ipcluster import errors
from ipcluster.cli.errors import CLIError
from ipcluster.textstatus import LIVE, natural_key

#: Seconds a running task gets before a removed engine is stopped (the exit verb's timeout).
DEFAULT_EXIT_TIMEOUT = 5.0


def live_engines(client) -> list[dict]:
    return [e for e in client.engines() if e["state"] in LIVE]


def remove(client, ids: Sequence[str], exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
           stream: TextIO = sys.stdout) -> list[str]:
    """Ask each engine of ``ids`` to exit; returns once all have left. Unknown or dead ids are refused first."""
    live = {e["id"] for e in live_engines(client)}
    unknown = [eid for eid in dict.fromkeys(ids) if eid not in live]
    if unknown:
        raise CLIError(
            f"no live engine {', '.join(unknown)} (live: {', '.join(sorted(live, key=natural_key)) or 'none'})"
        )
    removed = []
    for engine_id in dict.fromkeys(ids):
        try:
            client.exit(engine_id, timeout=exit_timeout)
        except errors.ClusterError as e:  # it died or left meanwhile: it is gone all the same
            print(f"{engine_id}: {e}", file=stream)
        else:
            print(f"{engine_id} left", file=stream)
        removed.append(engine_id)
    return removed


def removal_order(engines: Sequence[dict]) -> list[str]:
    """Which engines to remove first: idle before working, then the newest ids (``x3`` before ``x1``, ``e9`` before ``e2``)."""
    newest_first = sorted(engines, key=lambda e: natural_key(e["id"]), reverse=True)
    idle_first = sorted(newest_first, key=lambda e: e.get("running_task") is not None or bool(e.get("queued")))
    return [e["id"] for e in idle_first]


def scale(client, count: int, add: Callable[[int], None], exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
          stream: TextIO = sys.stdout) -> int:
    """Bring the live engines to ``count``: ``add(n)`` starts n more, or the surplus is removed. The change."""
    if count < 0:
        raise CLIError("scale: the engine count must be 0 or more")
    engines = live_engines(client)
    change = count - len(engines)
    if change > 0:
        add(change)
    elif change < 0:
        remove(client, removal_order(engines)[:-change], exit_timeout, stream)
    else:
        print(f"{count} engine(s) live already", file=stream)
    return change
