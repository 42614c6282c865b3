"""What a submit may ask for: every option checked before anything is queued.

A refused submit raises a :class:`~ipcluster.errors.ClusterError` saying which
option is wrong (``BadRequest``), or why no engine can take the task
(``UnknownEngine``, ``EngineDead``).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Optional

from ipcluster import errors
from ipcluster.controller.registry import ACTIVE_STATES, Registry
from ipcluster.limits import (
    MAX_ENGINE_ID_BYTES, MAX_NAME, MAX_RETRIES, MAX_SECONDS, MAX_TASK_ID,
    is_engine_id, is_retries, is_seconds, is_task_id, is_text,
)

AFTER_FAILED = ("fail", "run")


def _is_timeout(value: object) -> bool:
    return value is None or (is_seconds(value) and value > 0)


#: ``(option, check, what the client is told)``, in the order they are checked.
FIELD_CHECKS: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    ("task_id", is_task_id, f"task id must be printable text of 1-{MAX_TASK_ID} characters"),
    ("retries", is_retries, f"retries must be a whole number from 0 to {MAX_RETRIES}"),
    ("timeout", _is_timeout, f"timeout must be a positive number of seconds, at most {MAX_SECONDS:.0f}"),
    ("after_failed", lambda value: value in AFTER_FAILED, "after_failed must be 'fail' or 'run'"),
    ("name", lambda value: is_text(value, MAX_NAME, empty=True), f"name must be printable text of at most {MAX_NAME} characters"),
)


def check_fields(options: Mapping[str, object]) -> None:
    """Raise BadRequest for the first option of ``FIELD_CHECKS`` that ``options`` gets wrong."""
    for name, ok, message in FIELD_CHECKS:
        if not ok(options[name]):
            raise errors.BadRequest(message)


def check_engines(registry: Registry, engines: Optional[Iterable[str]]) -> Optional[frozenset]:
    """The engines a task may run on (None: any): every one must be known, one at least alive."""
    if engines is None:
        return None
    allowed = frozenset(engines)
    if not allowed:
        raise errors.BadRequest("engines must name at least one engine")
    if not all(is_engine_id(e) for e in allowed):
        raise errors.BadRequest(f"engines must be engine ids (printable text of 1-{MAX_ENGINE_ID_BYTES} bytes)")
    records = [registry.get(e) for e in allowed]
    unknown = sorted(e for e, r in zip(allowed, records) if r is None)
    if unknown:  # a typo in a list must not pass silently because another name is right
        raise errors.UnknownEngine(f"no engine {', '.join(map(repr, unknown))}")
    if not any(r is not None and r.state in ACTIVE_STATES for r in records):
        states = ", ".join(f"{e} is {r.state if r else 'unknown'}" for e, r in zip(allowed, records))
        raise errors.EngineDead(f"no engine the task may run on is alive ({states})")
    return allowed
