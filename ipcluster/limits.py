"""The largest values a request may carry: ids, names, retries, timeouts.

The controller refuses anything beyond these with ``BadRequest`` (and an
engine id beyond them with ``rejected``); the clients check the same limits at
``submit`` so that the error comes at once.  Ids and names must be printable
text (``str.isprintable``: no control characters, no bidirectional overrides),
so that they can be logged and shown as they are.
"""
from __future__ import annotations

import math

#: An engine id: 1-128 bytes of UTF-8.
MAX_ENGINE_ID_BYTES = 128
#: A task id (client-chosen): 1-200 characters.
MAX_TASK_ID = 200
#: A task's name (its function's ``__name__``): at most 200 characters.
MAX_NAME = 200
#: Retries of a task whose engine dies.
MAX_RETRIES = 1000
#: A timeout (task or control verb), in seconds: 365 days.
MAX_SECONDS = 365 * 24 * 3600.0


def is_text(value: object, most: int, empty: bool = False) -> bool:
    """Printable text of at most ``most`` characters (non-empty unless ``empty``)."""
    return isinstance(value, str) and (empty or bool(value)) and len(value) <= most and value.isprintable()


def is_engine_id(value: object) -> bool:
    return is_text(value, MAX_ENGINE_ID_BYTES) and len(value.encode()) <= MAX_ENGINE_ID_BYTES


def is_task_id(value: object) -> bool:
    return is_text(value, MAX_TASK_ID)


def is_retries(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RETRIES


def is_seconds(value: object) -> bool:
    """A finite, non-negative number of seconds no greater than :data:`MAX_SECONDS`."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and 0 <= value <= MAX_SECONDS
    )
