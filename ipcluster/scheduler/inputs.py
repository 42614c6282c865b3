"""Futures as inputs, the controller's half: a task's input results go to its engine with it.

A submit's ``inputs`` names tasks (all of them also in ``after``) whose results
the task takes as arguments (``ipcluster.futureinputs``).  The scheduler keeps,
on the waiting task, the value payload of each input -- handed over when the
input finishes (:meth:`InputValues.finished`), or read from the task store for
one that had finished before (:meth:`InputValues.load`: from a bounded cache of
recent values, else the store) -- and when the task
is ready packs them into one frame (:meth:`InputValues.pack`): a msgpack map of
task id to the result's bytes, as the engine sent them.  Nothing is unpickled.
The dispatcher then sends ``task_in`` (two payloads) instead of ``task``.

Size: the whole ``task_in`` message must fit the controller's
``--max-message-size``, or the task fails with PayloadTooLarge (its inputs are
never cut).  Values are held in memory from the input's end until the task
ends (a retried task is sent them again).  Large data is better left on the
engines (``ipcluster.engine.namespace``, views' ``push``); results are not moved
from engine to engine.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Sequence

import msgpack
from twisted.internet import defer

from ipcluster import errors
from ipcluster.interfaces import ITaskStore
from ipcluster.limits import is_task_id
from ipcluster.scheduler.task import Task
from ipcluster.transport import DEFAULT_MAX_MESSAGE_SIZE
from ipcluster.transport import joined as buffers
from ipcluster.transport.wire import Codec

#: Room kept for the signature, the header and the identity of a ``task_in`` message.
ENVELOPE_ALLOWANCE = 64 * 1024
#: At most this many inputs a task.
MAX_INPUTS = 1000
#: The values of recently finished tasks kept in memory, in bytes at most, so that a task whose
#: input has just finished is accepted at once (without a store read, which a chain submitted
#: in one go would outrun); a value larger than RECENT_ITEM_BYTES is not kept.
RECENT_BYTES = 32 * 1024 * 1024
RECENT_ITEM_BYTES = 4 * 1024 * 1024
#: ... and in number: without it, a million tiny results (a few bytes each, far below the byte
#: bound) kept a million ids and values alive, ~150 bytes of Python objects each.
RECENT_ENTRIES = 10_000


def check_inputs(inputs: object) -> list:
    """The submit's ``inputs``: a list of task ids (BadRequest otherwise)."""
    if inputs is None:
        return []
    if not isinstance(inputs, list) or not all(is_task_id(t) for t in inputs) or len(inputs) > MAX_INPUTS:
        raise errors.BadRequest(f"inputs must be a list of at most {MAX_INPUTS} task ids")
    return list(dict.fromkeys(inputs))


class InputValues:
    """Who waits for whose result as an input, and the values on their way to engines."""

    def __init__(self, tasks: Mapping[str, Task], max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.tasks = tasks  # unfinished tasks by id
        self.max_message_size = max_message_size
        #: input task id -> the tasks (by id) that take its result; a submit not accepted after
        #: all stays until that input finishes.
        self.wanted: dict[str, dict] = {}
        self.recent: "OrderedDict[str, bytes]" = OrderedDict()
        self._recent_bytes = 0

    def load(self, task: Task, store: ITaskStore) -> Optional[defer.Deferred]:
        """Gather the values of ``task``'s inputs, from now on: those in flight hand theirs over
        when they finish; those finished already are read from the store (a Deferred; None if
        there are none)."""
        done = []
        for dep in task.inputs:
            if dep in self.tasks:
                self.wanted.setdefault(dep, {})[task.id] = task
            elif dep in self.recent:
                task.input_values[dep] = self.recent[dep]
            else:
                done.append(dep)
        if not done:
            return None

        def keep(records: list) -> None:
            for dep, record in zip(done, records):
                if dep in self.tasks:  # in flight since the store was asked (recovered at start)
                    self.wanted.setdefault(dep, {})[task.id] = task
                elif record is not None and record.get("status") == "ok" and record.get("result") is not None:
                    task.input_values[dep] = bytes(record["result"])

        return defer.gatherResults([store.get(dep) for dep in done], consumeErrors=True).addCallback(keep)

    def finished(self, task: Task, ok: bool, payloads: Sequence[bytes]) -> None:
        """``task`` is done: its value to the tasks that take it; what it wanted, forgotten."""
        dependents = self.wanted.pop(task.id, {}).values()
        value = payloads[0]
        if ok and len(payloads) > 3 and (dependents or sum(map(len, payloads)) <= RECENT_ITEM_BYTES):
            value = buffers.join(payloads[0], payloads[3:])  # (a copy, for results used as inputs only)
        if ok:
            self._remember(task.id, value)
        for dependent in dependents:
            if ok:
                dependent.input_values[task.id] = value
        for dep in task.inputs:
            waiting = self.wanted.get(dep)
            if waiting is not None:
                waiting.pop(task.id, None)
                if not waiting:
                    del self.wanted[dep]
        task.input_values.clear()

    def _remember(self, task_id: str, value: bytes) -> None:
        if len(value) > RECENT_ITEM_BYTES:
            return
        old = self.recent.pop(task_id, None)  # (an id submitted again)
        self._recent_bytes += len(value) - (len(old) if old is not None else 0)
        self.recent[task_id] = value
        while self._recent_bytes > RECENT_BYTES or len(self.recent) > RECENT_ENTRIES:
            self._recent_bytes -= len(self.recent.popitem(last=False)[1])

    def pack(self, task: Task) -> Optional[errors.ClusterError]:
        """``task`` is ready: its inputs' values in one frame, or the error that fails it."""
        if not task.inputs:
            return None
        missing = [dep for dep in task.inputs if dep not in task.input_values]
        if missing:  # failed (and after_failed="run"), or purged from the store meanwhile
            return errors.DependencyError(
                f"task {task.id} takes the result of {missing[0]} as an argument, and it has none (it failed)"
            )
        frame = msgpack.packb({dep: task.input_values[dep] for dep in task.inputs}, use_bin_type=True)
        size = len(task.payload) + len(frame) + ENVELOPE_ALLOWANCE
        if size > self.max_message_size:
            return errors.PayloadTooLarge(
                f"task {task.id} with the results of its inputs ({', '.join(task.inputs)}) makes a {size}-byte "
                f"message, over the controller's limit of {self.max_message_size} bytes (--max-message-size); "
                "keep large data on the engines (a view's push, ipcluster.engine.namespace) instead"
            )
        task.input_frame = frame
        task.input_values.clear()
        return None


def task_frames(codec: Codec, task: Task, session: str) -> list:
    """The message that sends ``task`` to an engine: ``task``, or ``task_in`` with its inputs."""
    if task.input_frame is None:
        return codec.encode("task", {"task": task.id}, [task.payload, *task.buffers], session=session)
    return codec.encode("task_in", {"task": task.id, "inputs": list(task.inputs)},
                        [task.payload, task.input_frame, *task.buffers], session=session)
