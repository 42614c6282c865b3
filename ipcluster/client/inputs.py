"""The client's half of futures as inputs (``ipcluster.futureinputs``): the submit's options,
and a DependencyError's cause."""
from __future__ import annotations

from typing import Any, Sequence

from ipcluster import errors


def input_options(options: dict, futures: Sequence[Any]) -> dict:
    """``inputs`` (the futures' task ids) and ``after`` with them, for a submit; ``{}`` for none."""
    if not futures:
        return {}
    ids = [f.task_id for f in futures]
    return {"inputs": ids, "after": list(dict.fromkeys([*options.get("after", ()), *ids]))}


def with_cause(error: BaseException, inputs: Sequence[Any]) -> BaseException:
    """A DependencyError with the exception of the input that failed as its ``__cause__``."""
    if isinstance(error, errors.DependencyError) and error.__cause__ is None:
        for future in inputs:
            if future.done() and not future.cancelled() and future.exception() is not None:
                error.__cause__ = future.exception()
                break
    return error
