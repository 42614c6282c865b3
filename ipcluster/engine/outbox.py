"""The results an engine sent lately, kept to send again after it registers anew.

A controller may die between receiving a result and committing it, and a
result the main thread finishes while the engine has no controller (it lost
the old one, and has not registered with the new one yet) has nowhere to go.
So the control thread keeps the last results it handled -- at most
:data:`KEEP_RESULTS` of them, :data:`KEEP_BYTES` together; a result it sent
for :data:`KEEP_SECONDS` (the controller has long committed it, or died with
it), one it could not send until it is sent -- and, once it has registered again and the controller
has spoken on the control socket (so it is joined), sends them all again under
the new registration.  The controller takes a re-sent result for a task it
recovered once, whichever engine sends it, and drops every other copy
(counted: ``result of a finished task (a resend)``).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Sequence

import msgpack

from ipcluster.transport.wire import Codec

KEEP_RESULTS = 256
KEEP_BYTES = 64 * 1024 * 1024
KEEP_SECONDS = 60.0

#: Header keys of the envelope itself; the rest are the message's fields.
_ENVELOPE = ("v", "type", "id", "s", "n")


class Outbox:
    """The last results, by task id, each as its fields and payloads (signed again when re-sent)."""

    def __init__(self, max_results: int = KEEP_RESULTS, max_bytes: int = KEEP_BYTES, max_age: float = KEEP_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_results = max_results
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        # task id -> (kept until, fields, payloads, size); ``until`` is None for a result never sent
        self._kept: "OrderedDict[str, tuple]" = OrderedDict()
        self.size = 0
        self.resent = 0

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, frames: Sequence[bytes], sent: bool = True) -> None:
        """Keep a ``result`` message (``[signature, header, *payloads]``, as the main thread signed it),
        ``sent`` to a controller or not (then it is kept until it is sent again)."""
        try:
            header = msgpack.unpackb(frames[1], raw=False)
        except Exception:
            return
        if not isinstance(header, dict) or header.get("type") != "result" or not isinstance(header.get("task"), str):
            return
        fields = {k: v for k, v in header.items() if k not in _ENVELOPE}
        self.keep_result(header["task"], fields, frames[2:], sent)

    def keep_result(self, task_id: str, fields: dict, payloads: Sequence[bytes], sent: bool = True) -> None:
        """Keep the ``fields`` and ``payloads`` of the result of ``task_id`` (as :meth:`keep`, unparsed)."""
        payloads = list(payloads)  # as received from the main thread: large ones are views, not copies
        size = sum(len(p) for p in payloads)
        self._forget(task_id)
        if size > self.max_bytes:
            return
        self._kept[task_id] = (self.clock() + self.max_age if sent else None, fields, payloads, size)
        self.size += size
        self._trim()

    def _forget(self, task_id: str) -> None:
        old = self._kept.pop(task_id, None)
        if old is not None:
            self.size -= old[3]

    def _trim(self) -> None:
        # Sent results are kept in the order of their deadlines (each is kept, or sent again by
        # again(), with the latest deadline, at the end), so the expired ones come first: the
        # scan stops at the first one sent that is still due (unsent ones are skipped).
        now = self.clock()
        expired = []
        for task_id, (until, _, _, _) in self._kept.items():
            if until is not None:
                if until >= now:
                    break
                expired.append(task_id)
        for task_id in expired:
            self._forget(task_id)
        while len(self._kept) > self.max_results or self.size > self.max_bytes:
            self._forget(next(iter(self._kept)))

    def again(self, codec: Codec) -> list[list[bytes]]:
        """Every kept result, signed anew with ``codec`` (the registration now), oldest first."""
        self._trim()
        messages = []
        until = self.clock() + self.max_age
        for task_id, (_, fields, payloads, size) in list(self._kept.items()):
            messages.append(codec.encode("result", fields, payloads))
            self._kept[task_id] = (until, fields, payloads, size)  # sent now
        self.resent += len(messages)
        return messages
