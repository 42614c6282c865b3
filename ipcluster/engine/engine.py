"""The engine process: three threads.

* **main thread** -- runs tasks one at a time from the local queue, so that a
  signal (SIGINT) can interrupt the running task;
* **control thread** (``ipcluster-io``) -- owns the control and task sockets:
  registers, answers the monitor's pings, runs control commands (they never
  wait behind queued tasks), queues incoming tasks and forwards results;
* **heart thread** -- the native, GIL-free echo (see ``heart.py``).

If the controller goes silent (or forgets the engine) the control thread
re-registers, re-reading the connection file, for ``reconnect_timeout``
seconds; then the engine exits with a clear message and exit code 3.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from contextlib import redirect_stderr, redirect_stdout
from typing import Optional

import cloudpickle
import zmq

from ipcluster import connection, errors
from ipcluster.engine import namespace
from ipcluster.engine.heart import Heart
from ipcluster.engine.taskqueue import QueuedTask, TaskQueue
from ipcluster.transport.wire import MAX_REPLY_HEADER_BYTES, BadMessage, Codec, Message
from ipcluster.transport.zmqfast import recv_frames, send_frames

EXIT_OK = 0
EXIT_CONTROLLER_LOST = 3


class EngineStop(BaseException):
    """Raised in the main thread to stop the engine (SIGTERM, exit command)."""


def _say(text: str) -> None:
    # sys.__stderr__: a running task's stderr is redirected into its captured output.
    print(f"ipcluster-engine: {text}", file=sys.__stderr__, flush=True)


#: A task is reported ``started`` to the controller only once it has run this
#: long (by the control thread): most small tasks finish first, and their
#: result alone is a third less traffic than started + result.
ANNOUNCE_AFTER = 0.02


def _describe(e: BaseException) -> dict:
    """A task's exception as text; never raises, even if the exception's __str__ does."""
    try:
        message = str(e)
    except Exception:
        message = f"<{type(e).__name__}: str() failed>"
    try:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    except Exception:
        tb = ""
    return {"type": type(e).__name__, "message": message, "traceback": tb}


class _Running:
    __slots__ = ("id", "started", "announced")

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.started = time.monotonic()
        self.announced = False


class Engine:
    """One engine; call :meth:`run` from the process's main thread."""

    def __init__(
        self,
        connection_file: Optional[str] = None,
        engine_id: Optional[str] = None,
        reconnect_timeout: float = 60.0,
        controller_timeout: Optional[float] = None,
        register_attempt_timeout: float = 2.0,
    ) -> None:
        self.connection_file = connection_file
        self.id = engine_id or f"{socket.gethostname()}-{os.getpid()}"
        self.identity = self.id.encode()
        self.instance = uuid.uuid4().hex
        self.reconnect_timeout = reconnect_timeout
        self.controller_timeout = controller_timeout
        self.register_attempt_timeout = register_attempt_timeout
        self.context = zmq.Context()
        self.queue = TaskQueue()
        self.current: Optional[_Running] = None
        self.exit_code = EXIT_OK
        self.exit_reason = ""
        self._wake_address = f"inproc://ipcluster-engine-{self.instance}"
        self._stop = threading.Event()
        self._io = threading.Thread(target=self._io_main, name="ipcluster-io", daemon=True)
        self._io_ready = threading.Event()
        self._main_codecs: dict[bytes, Codec] = {}
        self._key: Optional[bytes] = None
        self._control_signal: Optional[tuple] = None  # (signum, task) set before os.kill
        self._exit_deadline: Optional[float] = None
        self._stopping = False
        self._last_complaint = ""

    # ======================================================================
    # main thread
    # ======================================================================

    def run(self) -> int:
        """Run until told to stop; returns the process exit code."""
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigint)
        self._io.start()
        self._io_ready.wait()
        out = self.context.socket(zmq.PAIR)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self._wake_address)
        try:
            while True:
                task = self.queue.get()
                if task is None:
                    break
                try:
                    self._execute(task, out)
                except KeyboardInterrupt:
                    # Arrived just outside the task it was meant for.
                    _say(f"an interrupt arrived after task {task.id} ended; ignored")
                except Exception:
                    # A bug here must cost one task, not the engine (and then the next engine).
                    _say(f"could not report task {task.id}:\n{traceback.format_exc()}")
        except EngineStop as e:
            if not self.exit_reason:
                self.exit_reason = str(e) or "stopped"
        finally:
            self._stopping = True
            self.queue.close()
            self._stop.set()
            try:
                # NOBLOCK: the control thread may be gone already (PAIR would block).
                out.send_multipart([b"stop"], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._io.join(10.0)
            out.close(0)
            self.context.destroy(linger=0)
        if self.exit_reason:
            _say(f"engine {self.id} exiting: {self.exit_reason}")
        return self.exit_code

    def _on_sigterm(self, signum, frame) -> None:
        if self._stopping:
            return
        self._stopping = True
        raise EngineStop("SIGTERM")

    def _on_sigint(self, signum, frame) -> None:
        requested, self._control_signal = self._control_signal, None
        current = self.current
        if requested is not None:
            target = requested[1]
            if current is not None and (target is None or target == current.id):
                raise KeyboardInterrupt(f"interrupted by the signal command (task {current.id})")
            return  # the targeted task already finished: the signal is void
        if current is not None:
            raise KeyboardInterrupt
        if not self._stopping:
            self._stopping = True
            raise EngineStop("SIGINT")

    def _main_codec(self) -> Codec:
        key = self._key  # set at registration, before any task can arrive
        assert key is not None
        codec = self._main_codecs.get(key)
        if codec is None:
            self._main_codecs = {key: Codec(key)}
            codec = self._main_codecs[key]
        return codec

    def _execute(self, task: QueuedTask, out: zmq.Socket) -> None:
        codec = self._main_codec()
        stdout, stderr = io.StringIO(), io.StringIO()
        started = time.time()
        fields: dict = {"task": task.id, "started": started}
        try:
            try:
                # Inside the try: an interrupt from here on is this task's error, never lost.
                self.current = _Running(task.id)
                with redirect_stdout(stdout), redirect_stderr(stderr):
                    fn, args, kwargs = cloudpickle.loads(task.payload)
                    value = fn(*args, **kwargs)
            finally:
                self.current = None
            payload = cloudpickle.dumps(value)
            fields["ok"] = True
        except EngineStop:
            raise
        except BaseException as e:  # the task's own failure, KeyboardInterrupt included
            fields["ok"] = False
            fields["error"] = _describe(e)
            try:
                payload = cloudpickle.dumps(e)
            except Exception:
                payload = b""
        fields["finished"] = time.time()
        send_frames(
            out,
            [
                b"send",
                *codec.encode(
                    "result", fields, [payload, stdout.getvalue().encode("utf-8", "replace"), stderr.getvalue().encode("utf-8", "replace")]
                ),
            ],
            0,
        )

    # ======================================================================
    # control thread
    # ======================================================================

    def _io_main(self) -> None:
        wake = self.context.socket(zmq.PAIR)
        wake.setsockopt(zmq.LINGER, 0)
        wake.bind(self._wake_address)
        self._io_ready.set()
        link: Optional[_Link] = None
        lost_since = time.monotonic()
        try:
            while not self._stop.is_set():
                if link is None:
                    link = self._register(wake)
                    if link is None:
                        waited = time.monotonic() - lost_since
                        if waited > self.reconnect_timeout:
                            self._give_up(f"no controller accepted this engine for {waited:.0f} s")
                            break
                        continue
                    lost_since = None
                problem = self._serve(link, wake)
                if problem is not None:
                    _say(f"{problem}; re-registering")
                    link.close(bye=None)
                    link = None
                    lost_since = time.monotonic()
                    for dropped in self.queue.clear():
                        _say(f"dropped queued task {dropped.id}")
        except Exception:
            _say("control thread failed:\n" + traceback.format_exc())
            self.exit_code = 1
            self._request_main_exit("control thread failed")
        finally:
            if link is not None:
                self._on_wake(wake, link)  # forward the last results before saying bye
                link.close(bye=self.exit_reason or "stopped")
            wake.close(0)

    def _give_up(self, why: str) -> None:
        where = self.connection_file or connection.default_connection_file()
        self.exit_code = EXIT_CONTROLLER_LOST
        self._request_main_exit(f"{why} (connection file {where}); giving up after --reconnect-timeout")

    def _request_main_exit(self, reason: str) -> None:
        if not self.exit_reason:
            self.exit_reason = reason
        self.queue.close()

    def _register(self, wake: zmq.Socket) -> Optional["_Link"]:
        """One registration attempt; a connected link, or None (after a short wait)."""
        deadline = time.monotonic() + self.register_attempt_timeout
        try:
            info = connection.read(self.connection_file)
        except errors.NoController as e:
            self._wait(wake, deadline, str(e))
            return None
        codec = Codec(info.key, max_header=MAX_REPLY_HEADER_BYTES)
        reg = self.context.socket(zmq.DEALER)
        reg.setsockopt(zmq.LINGER, 0)
        reg.connect(info.address("registration"))
        try:
            request = codec.new_id()
            reg.send_multipart(
                codec.encode(
                    "register",
                    {"engine": self.id, "instance": self.instance, "host": socket.gethostname(), "pid": os.getpid()},
                    msg_id=request,
                )
            )
            poller = zmq.Poller()
            poller.register(reg, zmq.POLLIN)
            poller.register(wake, zmq.POLLIN)
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                events = dict(poller.poll(left * 1000))
                if wake in events:
                    self._on_wake(wake, None)
                if reg not in events:
                    continue
                try:
                    msg = codec.decode(reg.recv_multipart(zmq.NOBLOCK))
                except (BadMessage, zmq.Again):
                    continue
                if msg.get("ref") != request:
                    continue
                if msg.type == "rejected":
                    self._wait(wake, deadline, f"registration refused: {msg['reason']}")
                    return None
                if msg.type == "registered":
                    return self._connect(info, codec, float(msg["heartbeat_period"]))
            return None
        finally:
            reg.close(0)

    def _wait(self, wake: zmq.Socket, until: float, why: str) -> None:
        if why != self._last_complaint:
            self._last_complaint = why
            _say(f"{why} (will keep trying for {self.reconnect_timeout:g} s)")
        left = until - time.monotonic()
        if left > 0 and wake.poll(left * 1000):
            self._on_wake(wake, None)

    def _connect(self, info: connection.ConnectionInfo, codec: Codec, period: float) -> "_Link":
        self._key = info.key
        self._last_complaint = ""
        link = _Link(self, info, codec, period)
        _say(f"engine {self.id} registered with controller at {info.ip}")
        return link

    def _serve(self, link: "_Link", wake: zmq.Socket) -> Optional[str]:
        """Serve until stopped (None) or the link is lost (the reason)."""
        poller = zmq.Poller()
        poller.register(link.control, zmq.POLLIN)
        poller.register(link.task, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        silence_limit = self.controller_timeout or max(5.0, 10 * link.period)
        while not self._stop.is_set():
            current = self.current
            wait = 250.0
            if current is not None and not current.announced:
                wait = max(0.0, (current.started + ANNOUNCE_AFTER - time.monotonic()) * 1000)
            events = dict(poller.poll(wait))
            if link.control in events:
                problem = self._drain(link.control, link, self._on_control)
                if problem:
                    return problem
            if link.task in events:
                self._drain(link.task, link, self._on_task)
            if wake in events:
                self._on_wake(wake, link)
            now = time.monotonic()
            current = self.current
            if current is not None and not current.announced and now - current.started >= ANNOUNCE_AFTER:
                current.announced = True
                started = {"task": current.id, "instance": self.instance, "running_for": now - current.started}
                send_frames(link.task, link.codec.encode("started", started), 0)
            if self._exit_deadline is not None and now > self._exit_deadline and self.current is not None:
                self._exit_deadline = None
                _say("exit timeout passed with a task still running; interrupting it")
                os.kill(os.getpid(), signal.SIGTERM)
            if now - link.last_contact > silence_limit and not link.control.poll(0):
                # (poll: after a long GIL hold by the main thread, read what waits before judging)
                return f"no word from the controller for {now - link.last_contact:.1f} s"
        return None

    def _drain(self, sock: zmq.Socket, link: "_Link", handler) -> Optional[str]:
        while True:
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                return None
            try:
                msg = link.codec.decode(frames)
            except BadMessage as e:
                _say(f"dropped a bad message from the controller: {e}")
                continue
            link.last_contact = time.monotonic()
            problem = handler(link, msg)
            if problem:
                return problem

    def _on_wake(self, wake: zmq.Socket, link: Optional["_Link"]) -> None:
        while True:
            try:
                frames = recv_frames(wake)
            except zmq.Again:
                return
            if frames[0] == b"send" and link is not None:
                send_frames(link.task, frames[1:], 0)

    # -- control -------------------------------------------------------------

    def _on_control(self, link: "_Link", msg: Message) -> Optional[str]:
        if msg.type == "ping":
            current = self.current
            status = {"beat": msg["beat"], "instance": self.instance, "queued": len(self.queue)}
            if current is not None:
                status.update(task=current.id, running_for=time.monotonic() - current.started)
            send_frames(link.control, link.codec.encode("pong", status), 0)
        elif msg.type == "command":
            try:
                value = self._command(link, msg["verb"], msg["args"])
                reply = {"ref": msg.id, "ok": True, "value": value}
            except errors.ClusterError as e:
                reply = {"ref": msg.id, "ok": False, "error": errors.to_wire(e)}
            except Exception as e:  # a bad argument must not take the control thread down
                error = errors.BadRequest(f"{msg['verb']} failed on engine {self.id}: {e!r}")
                reply = {"ref": msg.id, "ok": False, "error": errors.to_wire(error)}
            send_frames(link.control, link.codec.encode("reply", reply), 0)
        elif msg.type == "unknown":
            return f"the controller does not know this engine ({msg['reason']})"
        return None

    def _command(self, link: "_Link", verb: str, args: dict):
        if verb == "beat":
            return None
        if verb == "abort":
            task_id = args.get("task")
            if self.queue.remove(task_id):
                if args.get("release"):
                    return "released"  # the controller runs it elsewhere
                self._report_dropped(link, task_id, errors.TaskAborted(f"task {task_id} aborted before it ran"))
                return "aborted"
            current = self.current
            return "running" if current is not None and current.id == task_id else "unknown"
        if verb == "signal":
            signum, task_id = args.get("signum"), args.get("task")
            current = self.current
            if task_id is not None and (current is None or current.id != task_id):
                return False
            if signum == signal.SIGINT:
                self._control_signal = (signum, task_id)
            os.kill(os.getpid(), signum)
            return True
        if verb == "reset":
            dropped = self.queue.clear()
            for task in dropped:
                self._report_dropped(link, task.id, errors.TaskAborted(f"task {task.id} dropped by reset"))
            namespace.clear()
            return len(dropped)
        if verb == "exit":
            timeout = float(args.get("timeout", 5.0))
            self.exit_reason = self.exit_reason or "exit command"
            self.queue.close()
            if self.current is not None:
                self._exit_deadline = time.monotonic() + timeout
            return None
        raise errors.BadRequest(f"unknown control verb {verb!r}")

    def _report_dropped(self, link: "_Link", task_id: str, error: errors.ClusterError) -> None:
        fields = {"task": task_id, "ok": False, "error": errors.to_wire(error)}
        send_frames(link.task, link.codec.encode("result", fields, [b"", b"", b""]), 0)

    def _on_task(self, link: "_Link", msg: Message) -> Optional[str]:
        if msg.type == "task":
            if not self.queue.put(QueuedTask(msg["task"], msg.payloads[0])):
                self._report_dropped(link, msg["task"], errors.EngineDied(f"engine {self.id} is exiting"))
        return None


class _Link:
    """The sockets of one registration: heart, control and task."""

    def __init__(self, engine: Engine, info: connection.ConnectionInfo, codec: Codec, period: float) -> None:
        self.engine = engine
        self.codec = codec
        self.period = period
        self.last_contact = time.monotonic()
        ctx = engine.context
        self.heart = Heart(ctx, info.address("heartbeat"), engine.identity)
        self.heart.start()
        self.control = self._dealer(ctx, info.address("control"), engine.identity)
        self.task = self._dealer(ctx, info.address("task"), engine.identity)

    @staticmethod
    def _dealer(ctx: zmq.Context, address: str, identity: bytes) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        return sock

    def close(self, bye: Optional[str]) -> None:
        if bye is not None:
            # On the task socket, so that it arrives after the last result.
            try:
                self.task.setsockopt(zmq.LINGER, 1000)
                self.task.send_multipart(
                    self.codec.encode("bye", {"instance": self.engine.instance, "reason": bye}), zmq.NOBLOCK
                )
            except zmq.ZMQError:
                pass
        if not self.heart.stop():
            _say("heart thread did not stop in time")
        self.control.close(0)
        self.task.close()
