"""The store's one-batch journal: what a client may see before SQLite has committed it.

A result goes to its clients only once the store holds it (``results.py``).  SQLite's
commit of a small batch costs 0.1-0.2 ms on the reactor thread, and for a lone task that
wait sat in the round trip.  So a small batch is first written here -- one ``pwrite`` of
the batch's writes, framed and checksummed, into ``<store>-batch`` at offset 0 -- then the
``committed()`` Deferreds fire (the results go out), then SQLite commits the same batch
and the journal is marked empty.  Both happen in one call on the reactor thread: the
journal holds at most the one batch of that call.

After a crash, :func:`replay` applies what the journal holds before anything reads the
store: a batch that SQLite had not committed yet is committed then; one it had (the crash
fell between the commit and the mark) is applied again, which leaves the same rows (every
write is an insert-or-replace or an update of the values it names).  A torn write --
the process killed inside ``pwrite`` -- fails its checksum and is ignored: nothing of that
batch had been sent to anyone.

It is as durable as the store's commits (``synchronous=NORMAL``): the data is in the
operating system's cache when the call returns, so it survives the controller being
killed, not a power loss.
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Optional

import msgpack

from ipcluster.store.sqlitedb import WRITES

#: The journal's file next to the store's (``tasks.sqlite-batch``).
SUFFIX = "-batch"
#: ``magic, body length, crc32 of the body``.
_HEADER = struct.Struct("<4sII")
_MAGIC = b"IPJ1"
_EMPTY = b"\0" * _HEADER.size


class BatchJournal:
    """The one-slot journal file of a store; used on the reactor thread only."""

    def __init__(self, store_path: str) -> None:
        self.path = store_path + SUFFIX
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.fchmod(self.fd, 0o600)  # (a file left by an older umask)
        #: What the slot holds now: True from :meth:`hold` to :meth:`clear`.
        self.holding = False

    def hold(self, writes: list) -> None:
        """Put ``writes`` (``(op, args)`` of :data:`~ipcluster.store.sqlitedb.WRITES`) in the slot."""
        body = msgpack.packb(writes, use_bin_type=True, default=memoryview)
        os.pwrite(self.fd, _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body, 0)
        self.holding = True

    def clear(self) -> None:
        """The slot's batch is committed to SQLite (or was given up): nothing to replay."""
        if self.holding:
            os.pwrite(self.fd, _EMPTY, 0)
            self.holding = False

    def close(self, remove: bool = False) -> None:
        """Close the file; ``remove`` it too (the store closed cleanly) if it holds nothing."""
        os.close(self.fd)
        if remove and not self.holding:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def held(store_path: str) -> Optional[list]:
    """The batch a journal holds (``[(op, args), ...]``), or None: empty, torn or absent."""
    try:
        with open(store_path + SUFFIX, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data)
    body = data[_HEADER.size:_HEADER.size + length]
    if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
        return None
    try:
        writes = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError):
        return None
    if not all(isinstance(w, list) and len(w) == 2 and w[0] in WRITES for w in writes):
        return None
    return [(op, tuple(args)) for op, args in writes]
