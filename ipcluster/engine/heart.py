"""The engine's heart: a GIL-free echo of heartbeat pings in a native thread.

One DEALER socket (identity = the engine's routing token) connected to the controller's
heartbeat ROUTER, and ``zmq.proxy_steerable(sock, sock, None, ctl)``: libzmq's
proxy loop, run by pyzmq with the GIL released, sends every ping it receives
straight back.  So the heart answers even while the engine's main thread holds
the GIL in a long C call.  ``stop`` sends ``TERMINATE`` on the control socket;
the loop returns at once and the thread closes its sockets and ends.

:meth:`pings` asks the loop (``STATISTICS`` on the same control socket) how many pings it
has echoed: the control thread counts a new one as word from the controller, which pings
only the hearts of engines it knows, so the engine's silence limit needs no control traffic.
"""
from __future__ import annotations

import os
import struct
import threading
from typing import Callable, Optional

import zmq


class Heart:
    """Starts and stops the echo thread cleanly.

    ``configure`` sets up the socket before it connects (the connection's
    security options, ``transport.security.configure_client``).
    """

    def __init__(
        self, context: zmq.Context, address: str, identity: bytes,
        configure: Optional[Callable[[zmq.Socket], None]] = None,
    ) -> None:
        self.context = context
        self.address = address
        self.identity = identity
        self.configure = configure
        self._ctl_address = f"inproc://ipcluster-heart-{os.urandom(8).hex()}"
        self._ctl: Optional[zmq.Socket] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._ctl_lock = threading.Lock()  # pings() and stop() share the control socket
        self.error: Optional[BaseException] = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            raise RuntimeError("heart already started")
        self._ctl = self.context.socket(zmq.PAIR)
        self._ctl.setsockopt(zmq.LINGER, 0)
        self._ctl.bind(self._ctl_address)
        self._thread = threading.Thread(target=self._run, name="ipcluster-heart", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("heart thread did not start")
        if self.error is not None:
            raise RuntimeError(f"heart failed to start: {self.error!r}")

    def _run(self) -> None:
        sock = ctl = None
        try:
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, self.identity)
            sock.setsockopt(zmq.LINGER, 0)
            if self.configure is not None:
                self.configure(sock)
            sock.connect(self.address)
            ctl = self.context.socket(zmq.PAIR)
            ctl.setsockopt(zmq.LINGER, 0)
            ctl.connect(self._ctl_address)
        except BaseException as e:  # reported to start()
            self.error = e
            self._ready.set()
            for s in (sock, ctl):
                if s is not None:
                    s.close(0)
            return
        self._ready.set()
        try:
            zmq.proxy_steerable(sock, sock, None, ctl)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as e:
            self.error = e
        finally:
            sock.close(0)
            ctl.close(0)

    def pings(self, timeout_ms: int = 100) -> Optional[int]:
        """Pings echoed so far (None: the loop did not answer within ``timeout_ms``, or is not running)."""
        with self._ctl_lock:
            if self._thread is None or self._ctl is None:
                return None
            try:
                self._ctl.send(b"STATISTICS", zmq.NOBLOCK)
                if not self._ctl.poll(timeout_ms):
                    return None
                counters = self._ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return None
        # Eight counters (messages, bytes; in, out; frontend, backend): the frontend's messages in.
        return struct.unpack("=Q", counters[0])[0] if counters and len(counters[0]) == 8 else None

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the echo loop and join the thread; True if it ended in time."""
        with self._ctl_lock:
            if self._thread is None:
                return True
            try:
                self._ctl.send(b"TERMINATE", zmq.NOBLOCK)  # never block: the thread may be gone
            except zmq.ZMQError:
                pass
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
            self._ctl.close(0)
            self._thread = None
            return ended
