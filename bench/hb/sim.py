"""Helper mode: many simulated engines in one process (``bench/heartbeat.py --hearts N``).

Each simulated engine registers exactly as ``ipcluster/engine/control.py`` does (a DEALER on
the registration socket sends a signed ``register`` and waits for ``registered``), then gets
one real :class:`ipcluster.engine.heart.Heart` (the native echo thread, its routing token
derived from the reply's nonce) and one DEALER on the control socket.  A single
``zmq.Poller`` loop serves registration replies and every control socket: ``ping`` ->
``pong {beat, instance, queued}``, the ``beat`` verb answered, others refused.  No task
socket: a simulated engine takes no tasks.

``--heart-only K``: the last K engines of the helper keep only their heart after registering
(no control DEALER; their ids are ``<prefix>h<k>``).  The controller then hears nothing on
their control channel: it reports them ``busy`` (heart answers, interpreter silent), never
dead, and its control pings to them are refused by the ROUTER (peer not connected).  This is
how ``--engines 10000`` fits the controller's 20,000 open files (2 per full engine, 1 per
heart-only one): ``hb/scale.py`` makes just enough of them heart-only.

``--go`` makes the helper build nothing until a line arrives on stdin (the registration storm
releases every helper at once); ``--in-flight K`` keeps at most K registrations outstanding.
It prints ``READY <n>`` once every engine is registered and its heart runs, answers pings until
SIGTERM/SIGINT (or its parent exits), then prints one JSON line of counters, among them
``first_reply`` / ``last_reply`` (``time.monotonic()`` of the first and last ``registered``,
comparable across processes on Linux) and ``go`` (when registering began).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid

#: Seconds the loop sleeps after serving what was ready: batches the control pings of many
#: engines into one wake-up (a control pong may be this late; judging allows 1.5 s).
SERVE_BATCH = 0.005
#: Seconds a registration attempt waits for its answer before a new attempt replaces it.
ATTEMPT_TIMEOUT = 5.0


def fast_io() -> tuple:
    """``zmqfast``'s readable, recv_frames and send_frames: a third of what pyzmq's
    send/recv_multipart cost a ping (imported late, as the project is)."""
    from ipcluster.transport import zmqfast

    return zmqfast.readable, zmqfast.recv_frames, zmqfast.send_frames


class ReadyPoller:
    """``zmq.Poller``'s register / unregister / poll for POLLIN, in O(ready sockets) a call.

    ``zmq.Poller.poll`` looks at every registered socket each call: at 2,000 sockets a helper
    and a call every few milliseconds, that alone took most of a core per helper.  Here each
    socket's ``zmq.FD`` sits in one epoll set (level-triggered) and a call returns the sockets
    whose descriptor is readable: they *may* have a message (the handlers read with NOBLOCK until
    ``zmq.Again``, which also re-arms the descriptor, so nothing that arrived is left unseen)."""

    def __init__(self) -> None:
        import select

        import zmq

        self.fd_option, self.pollin = zmq.FD, select.EPOLLIN
        self.epoll = select.epoll()
        self.by_fd: dict = {}

    def register(self, sock, _flags=None) -> None:
        fd = sock.getsockopt(self.fd_option)
        self.by_fd[fd] = sock
        self.epoll.register(fd, self.pollin)

    def unregister(self, sock) -> None:
        fd = sock.getsockopt(self.fd_option)
        self.by_fd.pop(fd, None)
        self.epoll.unregister(fd)

    def poll(self, timeout_ms: float) -> list:
        return [(self.by_fd[fd], 1) for fd, _ in self.epoll.poll(timeout_ms / 1000.0) if fd in self.by_fd]


class LightHeart:
    """The heart's wire behaviour without its thread: a DEALER (identity = the routing token)
    on the heartbeat socket whose pings the helper's poll loop sends straight back.  10,000
    native Hearts are 10,000 threads woken 2 times a second each: on 2 cores they starve the
    controller being measured; this costs the helper one recv and one send per ping."""

    def __init__(self, ctx, address: str, identity: bytes, configure) -> None:
        import zmq

        self.zmq, self.fast = zmq, fast_io()
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity)
        self.sock.setsockopt(zmq.LINGER, 0)
        configure(self.sock)
        self.sock.connect(address)

    def echo(self) -> None:
        # zmqfast, not pyzmq's send/recv_multipart: a third of the cost of a ping (10,000
        # simulated engines on 2 cores leave little room for the controller being measured).
        # One ping a period comes: after echoing it, ZMQ_EVENTS (which re-arms the descriptor
        # too) is cheaper than a receive that raises zmq.Again.
        sock, (readable, recv_frames, send_frames) = self.sock, self.fast
        try:
            frames = recv_frames(sock)
        except self.zmq.Again:
            return  # woken by a command, not a ping
        send_frames(sock, frames)
        while readable(sock):
            send_frames(sock, recv_frames(sock))

    def stop(self) -> bool:
        self.sock.close(0)
        return True


class Hearts:
    """The simulated engines of one helper process."""

    def __init__(self, n: int, connection_file: str, prefix: str, heart_only: int = 0, light: bool = False) -> None:
        import zmq

        from ipcluster import connection
        from ipcluster.transport.wire import Codec

        self.zmq, self.fast = zmq, fast_io()
        self.n, self.prefix = n, prefix
        #: Engines from this index on keep only their heart after registering.
        self.full = n - max(0, min(n, heart_only))
        #: Echo the heartbeats in this loop (LightHeart) instead of a native Heart thread each.
        self.light = light
        self.hearts: dict = {}  # a LightHeart's socket -> it
        self.info = connection.read(connection_file)
        self.codec = Codec(self.info.key)
        self.ctx = zmq.Context()
        # Per engine: registration DEALER (temporary), heart DEALER + 2 inproc PAIRs, control DEALER.
        self.ctx.set(zmq.MAX_SOCKETS, 6 * n + 64)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.poller = ReadyPoller()
        self.pending: dict = {}  # registration socket -> (engine id, instance, request id)
        self.engines: list = []  # (heart, control socket)
        self.controls: dict = {}  # control socket -> (instance, session)
        self.next_engine = 0
        self.counters = {"engines": n, "heart_only": n - self.full, "pings": 0, "pongs": 0, "commands": 0,
                         "unknown": 0, "bad": 0, "retries": 0,
                         "rejected": 0, "go": None, "first_reply": None, "last_reply": None}

    def register_more(self, in_flight: int) -> None:
        """Send ``register`` for the next engines, keeping at most ``in_flight`` outstanding."""
        while self.next_engine < self.n and len(self.pending) < in_flight:
            k = self.next_engine
            engine_id = f"{self.prefix}{k}" if k < self.full else f"{self.prefix}h{k}"
            self.next_engine += 1
            self.attempt(engine_id, uuid.uuid4().hex)

    def attempt(self, engine_id: str, instance: str) -> None:
        """One registration attempt: a new DEALER on the registration socket sends ``register``."""
        from ipcluster.transport.security import configure_client

        zmq = self.zmq
        reg = self.ctx.socket(zmq.DEALER)
        reg.setsockopt(zmq.LINGER, 0)
        configure_client(reg, self.info)
        reg.connect(self.info.address("registration"))
        request = self.codec.new_id()
        about = {"engine": engine_id, "instance": instance, "host": self.host, "pid": self.pid}
        reg.send_multipart(self.codec.encode("register", about, msg_id=request))
        self.pending[reg] = (engine_id, instance, request, time.monotonic())
        self.poller.register(reg, zmq.POLLIN)

    def retry_stale(self) -> None:
        """Like a real engine, give up on an attempt unanswered for ATTEMPT_TIMEOUT s and try again
        (a connection whose handshake failed under load is never answered)."""
        now = time.monotonic()
        for reg, (engine_id, instance, _, sent) in list(self.pending.items()):
            if now - sent > ATTEMPT_TIMEOUT:
                self.poller.unregister(reg)
                reg.close(0)
                del self.pending[reg]
                self.counters["retries"] += 1
                self.attempt(engine_id, instance)

    def on_registration(self, reg) -> None:
        """The reply to one ``register``; then the engine's heart and control DEALER."""
        from ipcluster.engine.heart import Heart
        from ipcluster.transport.security import configure_client, engine_token
        from ipcluster.transport.wire import BadMessage

        zmq = self.zmq
        engine_id, instance, request, _ = self.pending[reg]
        while True:  # (until the answer, or nothing more waits: see ReadyPoller)
            try:
                msg = self.codec.decode(reg.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except BadMessage:
                continue
            if msg.get("ref") != request:
                continue
            if msg.type == "rejected":
                self.counters["rejected"] += 1
                raise RuntimeError(f"engine {engine_id} rejected: {msg['reason']}")
            if msg.type == "registered":
                break
        now = time.monotonic()
        self.counters["first_reply"] = self.counters["first_reply"] or now
        self.counters["last_reply"] = now
        token = engine_token(self.info.key, msg["nonce"], instance)
        if self.light:
            heart = LightHeart(self.ctx, self.info.address("heartbeat"), token, lambda sock: configure_client(sock, self.info))
            self.hearts[heart.sock] = heart
            self.poller.register(heart.sock, zmq.POLLIN)
        else:
            heart = Heart(self.ctx, self.info.address("heartbeat"), token, lambda sock: configure_client(sock, self.info))
            heart.start()
        self.poller.unregister(reg)
        reg.close(0)
        del self.pending[reg]
        if engine_id[len(self.prefix)] == "h":  # heart-only: no control channel
            self.engines.append((heart, None))
            return
        ctl = self.ctx.socket(zmq.DEALER)
        ctl.setsockopt(zmq.IDENTITY, token)
        ctl.setsockopt(zmq.LINGER, 0)
        configure_client(ctl, self.info)
        ctl.connect(self.info.address("control"))
        self.engines.append((heart, ctl))
        self.controls[ctl] = (instance, token.decode())
        self.poller.register(ctl, zmq.POLLIN)

    def on_ready(self, sock) -> None:
        """Serve one socket the poller found readable (RuntimeError: a registration was rejected)."""
        if sock in self.pending:
            self.on_registration(sock)
        elif sock in self.hearts:
            self.hearts[sock].echo()
        elif sock in self.controls:
            self.on_control(sock)

    def on_control(self, ctl) -> None:
        """Engine._on_control for one simulated engine: answer what is waiting."""
        from ipcluster.transport.wire import BadMessage

        _, recv_frames, send_frames = self.fast
        zmq, codec, counters = self.zmq, self.codec, self.counters
        instance, session = self.controls[ctl]
        while True:
            try:
                frames = recv_frames(ctl)
            except zmq.Again:
                return
            try:
                msg = codec.decode(frames)
            except BadMessage:
                counters["bad"] += 1
                continue
            if msg.type == "ping":
                counters["pings"] += 1
                pong = codec.encode("pong", {"beat": msg["beat"], "instance": instance, "queued": 0}, session=session)
                send_frames(ctl, pong, 0)
                counters["pongs"] += 1
            elif msg.type == "command":
                counters["commands"] += 1
                if msg["verb"] == "beat":
                    reply = {"ref": msg.id, "ok": True, "value": None}
                else:
                    reply = {"ref": msg.id, "ok": False,
                             "error": {"type": "BadRequest", "message": "simulated engine"}}
                send_frames(ctl, codec.encode("reply", reply, session=session), 0)
            elif msg.type == "unknown":
                counters["unknown"] += 1

    def close(self) -> None:
        for reg in self.pending:
            reg.close(0)
        all_stopped = True
        for heart, ctl in self.engines:
            all_stopped = heart.stop() and all_stopped
            if ctl is not None:
                ctl.close(0)
        if all_stopped:  # a heart thread still running would make term() wait for its sockets
            self.ctx.term()


def run_hearts(n: int, connection_file: str, prefix: str, register_timeout: float, max_seconds: float,
               go: bool = False, in_flight: int = 0, heart_only: int = 0, light: bool = False) -> int:
    """Register ``n`` engines like engine.py does, give each a Heart, answer control pings."""
    stop = [False]

    def on_signal(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.getppid()
    hearts = Hearts(n, connection_file, prefix, heart_only, light)
    in_flight = in_flight or n
    try:
        if go:
            print("WAITING", flush=True)
            if not sys.stdin.readline():
                return 1
        hearts.counters["go"] = time.monotonic()
        hearts.register_more(in_flight)
        return serve(hearts, stop, parent, register_timeout, max_seconds, in_flight)
    finally:
        hearts.close()
        print(json.dumps(hearts.counters), flush=True)


def serve(hearts: Hearts, stop: list, parent: int, register_timeout: float, max_seconds: float,
          in_flight: int) -> int:
    register_by = time.monotonic() + register_timeout
    ends = time.monotonic() + max_seconds
    ready = False
    while not stop[0]:
        if os.getppid() != parent or time.monotonic() > ends:
            break  # orphaned, or running far too long: do not linger
        if hearts.pending and time.monotonic() > register_by:
            print(f"FAILED {len(hearts.pending)} of {hearts.n} registrations unanswered after "
                  f"{register_timeout:g} s", flush=True)
            return 1
        try:
            for sock, _ in hearts.poller.poll(200):
                hearts.on_ready(sock)
        except RuntimeError as e:
            print(f"FAILED {e}", flush=True)
            return 1
        if hearts.pending:
            hearts.retry_stale()
        if hearts.next_engine < hearts.n:
            hearts.register_more(in_flight)
        elif not hearts.pending and not ready:
            ready = True
            print(f"READY {hearts.n}", flush=True)
        if ready:
            time.sleep(SERVE_BATCH)
    return 0
