"""``/events``: the status page's live updates as server-sent events (``text/event-stream``).

A stream that opens gets, in order:

``event: hello``
    ``{"status": ..., "samples": [...], "runs": [...]}``: the status
    (as ``/status.json``) and everything :class:`~ipcluster.web.history.History`
    keeps (the charts' last minutes and the newest task runs).
``event: tick``
    ``{"status": ..., "sample": {...}}`` once a second, after each sample.
``event: runs``
    ``[run, ...]``: task runs as they end, gathered for at most ``batch``
    seconds (50 ms), so a burst of small tasks costs one write per stream.

Each frame is serialised once and written to every stream.  A stream is a
streaming producer of its request: while the connection's send buffer is full
(the browser is not reading) frames wait in a bounded list (``max_pending``
bytes); a stream that would pass that is aborted, so a slow or dead browser
costs at most that plus the socket's buffers, never the controller's memory,
and a write never blocks the reactor.  At most ``max_streams`` are open at
once; one more is answered 503 (the page falls back to polling
``status.json``).
"""
from __future__ import annotations

import json
import socket
from typing import Optional

from twisted.logger import Logger
from twisted.web import server
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

MAX_STREAMS = 16
MAX_PENDING = 256 * 1024
#: The kernel send buffer of a stream's socket: enough for many seconds of events, and small
#: enough that a browser that stops reading is noticed (and dropped) soon.
SEND_BUFFER = 64 * 1024
RUN_BATCH = 0.05


def frame(event: str, data) -> bytes:
    """One server-sent event: ``event: NAME``, one ``data:`` line of compact JSON, a blank line."""
    text = json.dumps(data, allow_nan=False, default=str, separators=(",", ":"))
    return b"event: " + event.encode("ascii") + b"\ndata: " + text.encode("utf-8") + b"\n\n"


@implementer(IPushProducer)
class EventStream:
    """One open ``/events`` response: writes frames, or holds them (bounded) while paused."""

    def __init__(self, hub: "EventHub", request) -> None:
        self.hub = hub
        self.request = request
        self.paused = False
        self.closed = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.paused:
            self.request.write(data)
            return
        if self.pending_bytes + len(data) > self.hub.max_pending:
            self.hub.too_slow(self)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        for data in pending:
            self.send(data)

    def stopProducing(self) -> None:
        self.closed = True
        self.pending, self.pending_bytes = [], 0

    def abort(self) -> None:
        self.stopProducing()
        transport = self.request.transport
        if transport is not None:
            getattr(transport, "abortConnection", transport.loseConnection)()


class EventHub:
    """The open event streams of one status site, and what is sent to all of them."""

    log = Logger()

    def __init__(self, clock, max_streams: int = MAX_STREAMS, max_pending: int = MAX_PENDING, batch: float = RUN_BATCH) -> None:
        self.clock = clock
        self.max_streams = max_streams
        self.max_pending = max_pending
        self.batch = batch
        self.streams: set[EventStream] = set()
        self.dropped = 0  # streams aborted for not reading
        self.refused = 0  # streams refused for the cap
        self._runs: list[dict] = []
        self._flush = None

    def open(self, request, hello: bytes) -> Optional[EventStream]:
        """Start a stream on ``request`` with ``hello`` first; None (nothing written) if at the cap."""
        if len(self.streams) >= self.max_streams:
            self.refused += 1
            return None
        stream = EventStream(self, request)
        self.streams.add(stream)
        _small_send_buffer(request)
        request.registerProducer(stream, True)
        request.notifyFinish().addBoth(self._finished, stream)
        stream.send(hello)
        return stream

    def _finished(self, result, stream: EventStream) -> None:
        stream.stopProducing()
        self.streams.discard(stream)

    def too_slow(self, stream: EventStream) -> None:
        self.dropped += 1
        self.streams.discard(stream)
        self.log.warn("dropped a status event stream: its reader is {limit} bytes behind", limit=self.max_pending)
        stream.abort()

    def broadcast(self, data: bytes) -> None:
        for stream in list(self.streams):
            stream.send(data)

    def run(self, run: dict) -> None:
        """A task run ended: send it (with the others of the next ``batch`` seconds) to every stream."""
        if not self.streams:
            return
        self._runs.append(run)
        if self._flush is None:
            self._flush = self.clock.callLater(self.batch, self._send_runs)

    def _send_runs(self) -> None:
        self._flush = None
        runs, self._runs = self._runs, []
        if runs:
            self.broadcast(frame("runs", runs))

    def close(self) -> None:
        """End every stream (the service stops)."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush, self._runs = None, []
        for stream in list(self.streams):
            stream.abort()
        self.streams.clear()


def _small_send_buffer(request) -> None:
    try:
        request.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    except (AttributeError, OSError):
        pass  # not a socket (a test's transport): its buffer is whatever it is


def start_stream(hub: EventHub, request, hello) -> bytes:
    """Answer ``request`` as an event stream (``server.NOT_DONE_YET``), or 503 at the cap.

    ``hello()`` makes the first frame, only for a stream that opens.
    """
    if len(hub.streams) >= hub.max_streams:
        hub.refused += 1
        request.setResponseCode(503)
        request.setHeader(b"retry-after", b"10")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"at most {hub.max_streams} status streams are open at once: poll status.json\n".encode()
    request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-accel-buffering", b"no")
    hub.open(request, hello())
    return server.NOT_DONE_YET
