"""ZeroMQ ROUTER sockets on the reactor, with a bounded read loop.

txZMQ's ``doRead`` reads until the socket is empty: a flood of 300,000
messages on one socket held a 10 ms timer back for 2.1 s.  ``RouterSocket``
reads at most ``max_batch`` messages per call and then yields to the reactor
(``callLater(0, doRead)``), so timers and the other sockets -- the heartbeat
above all -- are served while one socket is flooded.

Import this module only once a reactor is installed: txZMQ imports the global
reactor when it is first imported.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import zmq
from twisted.logger import Logger
from txzmq import ZmqConnection, ZmqEndpoint, ZmqEndpointType, ZmqFactory

from ipcluster.transport import DEFAULT_MAX_BATCH, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_RCVHWM, DEFAULT_SNDHWM
from ipcluster.transport.zmqfast import Oversize, readable, recv_bounded, send_frames

#: Set up a socket before it binds or connects (security options: ``transport.security``).
Configure = Callable[[zmq.Socket], None]
#: ``on_oversize(message)``: a message over the socket's limits was thrown away.
OnOversize = Callable[[Oversize], None]

_UNLIMITED = 2**62


def make_factory(reactor) -> ZmqFactory:
    """A txZMQ factory (one ZeroMQ context) bound to ``reactor``; sockets never linger."""
    factory = ZmqFactory()
    factory.reactor = reactor
    factory.lingerPeriod = 0
    return factory


class RouterSocket(ZmqConnection):
    """A bound ROUTER socket that hands each message to ``on_message(frames)``.

    ROUTER_MANDATORY makes sends to an unknown identity fail at once (we
    learn an engine is not connected instead of dropping silently) and
    ROUTER_HANDOVER lets a restarted engine take over its identity from a
    connection that is stale (its old process hung or gone).

    ``configure`` runs before the bind (the socket's security options).  A
    message with more than ``max_frames`` frames or ``max_size`` bytes in all
    (the identity frame included) is thrown away before anything looks at it,
    and reported to ``on_oversize``; ``max_message_size`` is libzmq's
    ``MAXMSGSIZE``, a limit per frame.  ``after_read()`` is called when a read
    that handled messages found the socket empty (the controller runs its
    end-of-turn pass there: ``transport.soon``).
    """

    socketType = zmq.ROUTER
    log = Logger()
    _held = 0  # hold_reads() calls not yet released

    def __init__(
        self,
        factory: ZmqFactory,
        address: str,
        on_message: Callable[[list], None],
        max_batch: int = DEFAULT_MAX_BATCH,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        name: str = "router",
        configure: Optional[Configure] = None,
        max_frames: int = _UNLIMITED,
        max_size: int = _UNLIMITED,
        on_oversize: Optional[OnOversize] = None,
        after_read: Optional[Callable[[], None]] = None,
    ) -> None:
        self.on_message = on_message
        #: Called when a read that handled messages found the socket empty.
        self.after_read = after_read
        self.max_batch = max_batch
        self.name = name
        #: Reactor time at which a read last found the socket empty.
        self.emptied_at = float("-inf")
        self.batches_cut = 0
        self.received = 0
        self.max_frames = max_frames
        self.max_size = max_size
        self.on_oversize = on_oversize
        self._reading = False  # inside doRead's loop (which looks at the socket again itself)
        super().__init__(factory)
        if configure is not None:
            configure(self.socket)
        # Bounded queues (txZMQ leaves them unlimited): a flooding peer is throttled by TCP
        # back-pressure, and a peer that does not read gets EAGAIN, not all our memory.
        self.socket.setsockopt(zmq.RCVHWM, DEFAULT_RCVHWM)
        self.socket.setsockopt(zmq.SNDHWM, DEFAULT_SNDHWM)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.addEndpoints([ZmqEndpoint(ZmqEndpointType.bind, address)])
        endpoint = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.address = endpoint
        self.port = int(endpoint.rsplit(":", 1)[1]) if endpoint.startswith("tcp://") else 0

    def logPrefix(self) -> str:
        return f"ZMQ:{self.name}"

    def doRead(self, limit: Optional[int] = None) -> None:
        """Read at most ``limit`` (default ``max_batch``) messages, then yield."""
        if self.read_scheduled is not None:
            if self.read_scheduled.active():
                self.read_scheduled.cancel()
            self.read_scheduled = None
        limit = self.max_batch if limit is None else limit
        self._reading = True
        try:
            self._read(limit)
        finally:
            self._reading = False

    def _read(self, limit: int) -> None:
        # ZMQ_EVENTS (2 us) says whether a message waits before the first two; past them, receive
        # until EAGAIN (4-8 us once, and it re-arms the descriptor's edge as ZMQ_EVENTS does),
        # not 2 us a message: a wake-up with nothing (common: the descriptor also signals
        # commands) or one message costs what it did, a burst of pongs less.
        n = 0
        after = self.after_read
        while self.factory is not None:
            if n < limit:
                frames = self._receive(n)
            elif readable(self.socket):
                self.batches_cut += 1
                if self.read_scheduled is None:  # a reply sent meanwhile may have scheduled one
                    self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)
                return
            else:
                frames = None
            if frames is None:  # empty
                if n and after is not None:
                    # (Its sends may take this socket's edge: so look again after it, once.)
                    after = None
                    try:
                        self.after_read()
                    except Exception:
                        self.log.failure("error after a read on the {name} socket", name=self.name)
                    continue
                self.emptied_at = self.factory.reactor.seconds()
                return
            n += 1
            self.received += 1
            try:
                if type(frames) is not list:
                    self._oversize(frames)
                else:
                    self.on_message(frames)
            except Exception:
                # A handler bug must not take the socket off the reactor.
                self.log.failure("error handling a message on the {name} socket", name=self.name)

    def _receive(self, n: int):
        """The next message (frames, or Oversize) of a read that has had ``n``; None if none waits."""
        if n > 1 or readable(self.socket):
            try:
                return recv_bounded(self.socket, self.max_frames, self.max_size)
            except zmq.Again:
                pass
        return None

    def _oversize(self, message: Oversize) -> None:
        if self.on_oversize is not None:
            self.on_oversize(message)

    def drain(self, limit: int = 10_000, since: Optional[float] = None) -> bool:
        """Read what is waiting now, at most ``limit`` messages (e.g. pongs before judging
        liveness).  True if the socket is empty now or, with ``since`` (reactor time), if it
        was found empty at or after ``since``: everything that arrived before ``since`` is read."""
        if self.factory is None:
            return True
        self.doRead(limit)
        if since is not None and self.emptied_at >= since:
            return True
        return self.factory is None or not readable(self.socket)

    def send_frames(self, frames: Sequence[bytes]) -> bool:
        """Send one message; False if the peer is not connected or its queue is full."""
        if self.factory is None:
            return False
        try:
            send_frames(self.socket, frames)
        except zmq.ZMQError as e:
            if e.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise
        finally:
            self._read_soon()
        return True

    def hold_reads(self) -> None:
        """Sends skip their look for waiting messages (2 us each) until :meth:`release_reads`,
        which looks once: a burst of sends (a heart-monitor slice) pays for one look."""
        self._held += 1

    def release_reads(self) -> None:
        self._held -= 1
        if not self._held:
            self._read_soon()

    def _read_soon(self) -> None:
        """After any send, whether it went out or failed: schedule a read if messages wait.

        ZeroMQ's descriptor is edge-triggered, and every send -- a failed one
        too (EHOSTUNREACH to a peer that left, EAGAIN) -- processes the
        socket's pending commands, which clears the descriptor's readable edge
        for messages that had already arrived.  Without this read the reactor
        would never hear of them: the socket would go deaf until some other
        peer's traffic made a new edge.  When ``ZMQ_EVENTS`` says nothing
        waits, the next message makes a new edge, and no read is needed (most
        sends: a DelayedCall and an empty read saved); a send made by a
        handler inside the read loop needs none either, as the loop looks
        again before it returns.
        """
        if self.read_scheduled is None and self.factory is not None and not self._reading and not self._held:
            if readable(self.socket):
                self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)

    def send(self, message) -> None:  # txZMQ's API, routed through send_frames
        self.send_frames(message if isinstance(message, (list, tuple)) else [message])


class DealerSocket(RouterSocket):
    """A connecting DEALER on the reactor (the Twisted-native client's socket)."""

    socketType = zmq.DEALER

    def __init__(self, factory: ZmqFactory, address: str, on_message: Callable[[list], None],
                 max_batch: int = DEFAULT_MAX_BATCH, name: str = "dealer",
                 configure: Optional[Configure] = None) -> None:
        self.on_message = on_message
        self.max_batch = max_batch
        self.name = name
        #: Reactor time at which a read last found the socket empty.
        self.emptied_at = float("-inf")
        self.batches_cut = 0
        self.received = 0
        self.max_frames = self.max_size = _UNLIMITED
        self.on_oversize = self.after_read = None
        ZmqConnection.__init__(self, factory)
        if configure is not None:
            configure(self.socket)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.addEndpoints([ZmqEndpoint(ZmqEndpointType.connect, address)])
        self.address = address
        # An inproc connect attaches its pipe at once, marked readable: until someone finds it
        # empty, the peer's writes raise no readiness edge.  So look now.
        self.doRead()


class PairSocket(DealerSocket):
    """A connecting PAIR on the reactor: reads a socket monitor's events (``zmq_socket_monitor``)."""

    socketType = zmq.PAIR
