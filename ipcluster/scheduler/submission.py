"""What a submit may ask for: every option checked before anything is queued.

A refused submit raises a :class:`~ipcluster.errors.ClusterError` saying which
option is wrong (``BadRequest``), or why no engine can take the task
(``UnknownEngine``, ``EngineDead``).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Optional

from ipcluster import errors
from ipcluster.controller.registry import ACTIVE_STATES, Registry

MAX_TASK_ID = 200
AFTER_FAILED = ("fail", "run")


def _is_task_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TASK_ID


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_timeout(value: object) -> bool:
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value and math.isfinite(value)


#: ``(option, check, what the client is told)``, in the order they are checked.
FIELD_CHECKS: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("task_id", _is_task_id, f"task id must be a non-empty string of at most {MAX_TASK_ID} characters"),
    ("retries", _is_count, "retries must be a whole number >= 0"),
    ("timeout", _is_timeout, "timeout must be a positive number of seconds"),
    ("after_failed", lambda value: value in AFTER_FAILED, "after_failed must be 'fail' or 'run'"),
)


def check_fields(options: Mapping[str, object]) -> None:
    """Raise BadRequest for the first option of ``FIELD_CHECKS`` that ``options`` gets wrong."""
    for name, ok, message in FIELD_CHECKS:
        if not ok(options[name]):
            raise errors.BadRequest(message)


def check_engines(registry: Registry, engines: Optional[Iterable[str]]) -> Optional[frozenset]:
    """The engines a task may run on (None: any); at least one of them must be known and alive."""
    if engines is None:
        return None
    allowed = frozenset(engines)
    if not allowed:
        raise errors.BadRequest("engines must name at least one engine")
    records = [registry.get(e) for e in allowed]
    if all(r is None for r in records):
        raise errors.UnknownEngine(f"no engine {', '.join(sorted(map(repr, allowed)))}")
    if not any(r is not None and r.state in ACTIVE_STATES for r in records):
        states = ", ".join(f"{e} is {r.state if r else 'unknown'}" for e, r in zip(allowed, records))
        raise errors.EngineDead(f"no engine the task may run on is alive ({states})")
    return allowed
