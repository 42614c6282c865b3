"""Garbage-collector settings for the long-running processes we own (the controller).

CPython's cyclic collector runs a young-generation pass every 700 net allocations
of container objects; a small task makes a few dozen (its record, its lifecycle
machine, Deferreds, decoded headers), so the controller ran a collection every
few tasks, and each older pass walked every object made at start-up (Twisted,
the plugin, the service tree).  Measured back to back on the 2-core box, 5,000
pipelined no-op tasks: controller reactor 316 and 280 µs of CPU per task with
the defaults, 254 and 224 with :func:`tune` -- about a fifth.

:func:`tune` freezes what exists (start-up objects leave the collector's view
for good: they live as long as the process) and collects the young generation
every :data:`YOUNG` allocations.  Cycles are still found and freed, only in
larger batches; the controller's memory stays flat (``bench/memory.py``).
Client processes are the user's: their collector is left alone.
"""
from __future__ import annotations

import gc

#: Net container allocations between two young-generation collections (CPython: 700).
YOUNG = 50_000
#: Young (then middle) collections between two of the next generation (CPython: 10, 10).
OLDER = 50


def tune(young: int = YOUNG, older: int = OLDER) -> None:
    """Freeze the objects made so far and space collections out (see the module docstring)."""
    gc.freeze()  # (no collection first: it would cost start-up ~10 ms for a few cycles)
    gc.set_threshold(young, older, older)
