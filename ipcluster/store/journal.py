"""The store's journal: results a client may see before SQLite has committed them.

A result goes to its clients only once the store holds it (``results.py``).  SQLite's
commit of a batch costs 0.1-0.2 ms on the reactor thread; for a lone task that sat in the
round trip, and a commit made just after the result went out still held the reactor when
the client's next request came.  So a small batch someone waits for is appended here --
one ``pwrite`` of its writes, framed and checksummed, into ``<store>-batch`` -- and the
waiters are answered at once.  SQLite commits what the journal holds with the next batch
nobody waits for (the 50 ms timer, a read, a large batch), and that transaction also
records the journal's *epoch* in the ``meta`` table; the journal then starts again, empty,
at the next epoch.

After a crash, :func:`held` reads the journal's records (all of one epoch, in order, up to
the first that is torn or of another epoch) and the store applies them at open unless
SQLite's ``meta`` says that epoch was committed already (the crash fell between the commit
and the new epoch).  A record torn by the process being killed inside ``pwrite`` fails its
checksum: nothing of it had been sent to anyone.

It is as durable as the store's commits (``synchronous=NORMAL``): in the operating
system's cache when the call returns, so it survives the controller being killed, not a
power loss.
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
#: ``magic, epoch, body length, crc32 of the body``.
_HEADER = struct.Struct("<4sQII")
_MAGIC = b"IPJ2"
_EMPTY = b"\0" * _HEADER.size


class Journal:
    """The journal file of a store: appended on the reactor thread, reset by whichever thread
    commits what it holds (never both at once: the store hands nothing to its thread while it
    appends, and appends nothing while its thread works)."""

    def __init__(self, store_path: str, epoch: int) -> None:
        self.path = store_path + SUFFIX
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.fchmod(self.fd, 0o600)  # (a file left by an older umask)
        self.epoch = epoch
        self.offset = 0  # where the next record goes; 0: the journal holds nothing
        os.pwrite(self.fd, _EMPTY, 0)

    def append(self, writes: list) -> None:
        """Add ``writes`` (``(op, args)`` of :data:`~ipcluster.store.sqlitedb.WRITES`)."""
        body = msgpack.packb(writes, use_bin_type=True, default=memoryview)
        record = _HEADER.pack(_MAGIC, self.epoch, len(body), zlib.crc32(body)) + body
        os.pwrite(self.fd, record, self.offset)
        self.offset += len(record)

    def reset(self) -> None:
        """What the journal held is committed (the ``applied`` write of :attr:`epoch` with it):
        start the next epoch, empty."""
        if self.offset:
            os.pwrite(self.fd, _EMPTY, 0)
            self.offset = 0
        self.epoch += 1

    def close(self, remove: bool = False) -> None:
        """Close the file; ``remove`` it too (the store closed cleanly) if it holds nothing."""
        os.close(self.fd)
        if remove and not self.offset:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def held(store_path: str) -> tuple[int, list]:
    """``(epoch, writes)`` of what a journal holds; ``(0, [])`` if empty, torn at its start or absent."""
    try:
        with open(store_path + SUFFIX, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0, []
    epoch, writes, at = 0, [], 0
    while True:
        found = _record(data, at)
        if found is None or (writes and found[0] != epoch):
            return epoch, writes
        epoch, body, at = found
        writes += body


def _record(data: bytes, at: int) -> Optional[tuple[int, list, int]]:
    """``(epoch, writes, next offset)`` of the record at ``at``, or None."""
    if len(data) < at + _HEADER.size:
        return None
    magic, epoch, length, crc = _HEADER.unpack_from(data, at)
    body = data[at + _HEADER.size:at + _HEADER.size + length]
    if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
        return None
    try:
        writes = msgpack.unpackb(body, raw=False)
    except (ValueError, TypeError):
        return None
    if not isinstance(writes, list) or not all(
        isinstance(w, list) and len(w) == 2 and w[0] in WRITES and isinstance(w[1], list) for w in writes
    ):
        return None
    return epoch, [(op, tuple(args)) for op, args in writes], at + _HEADER.size + length
