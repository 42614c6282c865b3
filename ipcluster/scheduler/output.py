"""Live output: a running task's ``output`` messages, relayed from its engine to its clients.

The engine sends what a task prints while it runs (``ipcluster.engine.liveoutput``
bounds and paces it); the scheduler has checked that the task is assigned to
that engine.  Each of the task's clients (its submitter, and any that
``fetch``ed it) gets an ``output`` message with the same text payload and the
engine's id.  Nothing is stored: the whole output is in the task's result.
The text stays bytes here, as every payload does.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ipcluster.scheduler.task import Task
from ipcluster.transport.wire import Codec, Message

#: The streams an engine may name.
STREAMS = ("stdout", "stderr")
#: The largest ``output`` text relayed, in bytes (an engine sends at most 16 Ki characters, 64 KiB).
MAX_OUTPUT_BYTES = 256 * 1024


class OutputRelay:
    """Relays ``output`` from engines to the clients of the task."""

    def __init__(self, codec: Codec, send_client: Callable[[Sequence[bytes]], Any],
                 session_of: Callable[[bytes], str], drop: Callable[..., None]) -> None:
        self.codec = codec
        self.send_client = send_client
        self.session_of = session_of
        self.drop = drop
        #: ``output`` messages relayed (each to every client of its task).
        self.relayed = 0

    def relay(self, identity: bytes, engine_id: str, record: Any, task: Task, msg: Message) -> None:
        """The scheduler's handler of an ``output`` for ``task``, assigned to ``engine_id``."""
        if msg["stream"] not in STREAMS:
            self.drop("task", "output of an unknown stream", engine_id.encode(), repr(msg["stream"])[:40])
            return
        if len(msg.payloads[0]) > MAX_OUTPUT_BYTES:  # not from our engine code: clients are not flooded
            self.drop("task", "oversize output", engine_id.encode(), f"{len(msg.payloads[0])} bytes")
            return
        fields = {"task": task.id, "stream": msg["stream"], "engine": engine_id}
        for client in task.clients:
            self.send_client([client, *self.codec.encode("output", fields, msg.payloads, session=self.session_of(client))])
        self.relayed += 1
