"""The engine's control thread (``ipcluster-io``): registration and the control and task sockets.

It owns every network socket of the engine.  It registers (and re-registers), answers the
monitor's control ``ping`` with ``pong``, runs control commands at once (they never wait
behind queued tasks), queues incoming tasks, reports a task ``started`` once it has run
:data:`ANNOUNCE_AFTER`, and says ``bye`` on the way out.

The main thread sends its results itself (:meth:`ControlThread.send_result`), on the task
socket, before it starts its next task: a task that kills the process at once cannot take
a finished task's result with it, and no thread waits for another for each task.  The
sockets are shared under :attr:`ControlThread.lock` (ZeroMQ allows a socket to move between
threads behind a full memory barrier): this thread holds it except while it sleeps, and it
sleeps in ``select.poll`` on the sockets' file descriptors -- never inside ZeroMQ, which
would use the socket while the main thread sends.

What the traffic means -- registered or not, the controller silent or gone, the exit
deadline -- is decided by the link machine (``ipcluster.engine.link``); this thread feeds it.
"""
from __future__ import annotations

import os
import select
import socket
import threading
import time
import traceback
from typing import TYPE_CHECKING, Callable, Optional, Union

import zmq

from ipcluster import connection, errors
from ipcluster.engine import liveoutput
from ipcluster.engine.channels import Channels
from ipcluster.engine.commands import ControlCommands
from ipcluster.engine.diagnostics import say
from ipcluster.engine.link import Link, MonotonicClock, new_link
from ipcluster.engine.outbox import Outbox
from ipcluster.engine.taskqueue import QueuedTask
from ipcluster.transport.wake import Wake
from ipcluster.launchers.shim import engine_rank
from ipcluster.transport.security import configure_client, engine_token
from ipcluster.transport.wire import MAX_REPLY_HEADER_BYTES, PEER_ACCEPTS, BadMessage, Codec, Message
from ipcluster.transport.zmqfast import readable, recv_frames, send_frames

if TYPE_CHECKING:
    from ipcluster.engine.engine import Engine

#: A task is reported ``started`` to the controller only once it has run this long: most
#: small tasks finish first, and their result alone is a third less traffic than
#: started + result.
ANNOUNCE_AFTER = 0.02

#: How long the loop sleeps with nothing to do, in milliseconds.
IDLE_POLL_MS = 250.0

#: How often, at most, the loop tells the link that time has passed (``tick``) or that the
#: controller was heard from (``contact``), in seconds: often enough for the silence limit
#: and the exit deadline, seldom enough that a busy engine does not pay a machine input for
#: every message and every turn of the loop.
TICK_INTERVAL = 0.05

#: How often the loop asks the heart how many pings it echoed (a new one is word from the
#: controller: ``Heart.pings``), in seconds.
HEART_CHECK = 0.5

#: What one registration attempt comes to: the channels, a reason it failed, or no answer.
Attempt = Union[Channels, str, None]


class ControlThread:
    """The control thread of one engine; :meth:`start` it from the main thread."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        #: Set by the main thread when it leaves, and when its send left a message readable on the
        #: task socket (the poll would not see it: the send consumed the socket's signal).
        self.wake = Wake()
        #: The sockets' lock: held by this thread but while it sleeps; the main thread takes it
        #: to send a result (:meth:`send_result`).
        self.lock = threading.Lock()
        #: The channels :meth:`_serve` serves now (None: results are only kept), under the lock.
        self._serving: Optional[Channels] = None
        #: ``(key, session, max_message_size)`` of the registration last made (written here, read
        #: by the main thread, which signs its results with them).
        self.sealing: Optional[tuple] = None
        self.link: Link = new_link(
            engine.id,
            MonotonicClock(),
            engine.reconnect_timeout,
            engine.controller_timeout,
            say,
            drop_queued=engine.drop_queued,
            give_up=engine.give_up,
            interrupt=engine.interrupt,
        )
        self.commands = ControlCommands(engine, self.link)
        #: The last results, sent again after every new registration (``outbox.py``).
        self.outbox = Outbox()
        #: The kept results wait to be sent under this registration (once it is joined).
        self._resend_to: Optional[Channels] = None
        self._next_tick = self._next_contact = self._next_heart_check = 0.0
        self._thread = threading.Thread(target=self._main, name="ipcluster-io", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.wake.close()

    def send_result(self, task_id: str, fields: dict, payloads: list, frames: list, session: str) -> None:
        """(Main thread.) Send a result, signed for ``session``, on the task socket now, and keep
        it (``outbox.py``); while unregistered, or registered anew since it was signed, it is
        only kept, and goes out (signed again) after the next registration."""
        with self.lock:
            channels = self._serving
            sent = channels is not None and channels.session == session
            if sent:
                self._stream(channels, final=True)  # the last of a streaming task's output, before its result
                send_frames(channels.task, frames, 0)
                if readable(channels.task):
                    self.wake.set()  # (this send took the signal the control thread sleeps on)
            self.outbox.keep_result(task_id, fields, payloads, sent=sent)

    def _sleeping(self, wait: Callable, *args):
        """``wait(*args)`` with the lock released (the main thread may send meanwhile)."""
        self.lock.release()
        try:
            return wait(*args)
        finally:
            self.lock.acquire()

    def _main(self) -> None:
        with self.lock:
            self._main_locked()

    def _main_locked(self) -> None:
        wake = self.wake
        try:
            self.link.start()
            while not self.engine.leaving.is_set():
                channels = self.link.channels()
                if channels is None:
                    self._register(wake)
                else:
                    self._serve(channels, wake)
        except Exception:
            say("control thread failed:\n" + traceback.format_exc())
            self.engine.fail("control thread failed")
        finally:
            self._leave(wake)

    def _leave(self, wake: Wake) -> None:
        try:
            self.link.stop(self.engine.exit_reason or "stopped")
        except Exception:
            say("could not leave cleanly:\n" + traceback.format_exc())

    # -- registration ------------------------------------------------------------------

    def _register(self, wake: Wake) -> None:
        """One registration attempt, fed to the link; a failed one is waited out."""
        deadline = time.monotonic() + self.engine.register_attempt_timeout
        outcome = self._attempt(wake, deadline)
        if isinstance(outcome, Channels):
            self.sealing = (outcome.key, outcome.session, outcome.max_message_size)
            self.link.registered(outcome)
            self._resend_to = outcome if len(self.outbox) else None
            return
        self.link.attempt_failed(outcome)
        if outcome is not None and not self.engine.leaving.is_set():
            left = deadline - time.monotonic()
            if left > 0 and self._sleeping(wake.wait, left):
                wake.clear()

    def _attempt(self, wake: Wake, deadline: float) -> Attempt:
        engine = self.engine
        try:
            info = connection.read(engine.connection_file)
        except errors.NoController as e:
            return str(e)
        codec = Codec(info.key, max_header=MAX_REPLY_HEADER_BYTES, sequence=engine.sequence)
        reg = engine.context.socket(zmq.DEALER)
        reg.setsockopt(zmq.LINGER, 0)
        configure_client(reg, info)
        reg.connect(info.address("registration"))
        try:
            request = codec.new_id()
            about = {"engine": engine.id, "instance": engine.instance, "host": socket.gethostname(), "pid": os.getpid()}
            rank = engine_rank(os.environ)
            if rank is not None:
                about["rank"] = rank
            reg.send_multipart(codec.encode("register", about, msg_id=request))
            reply = self._await_reply(reg, wake, codec, request, deadline)
        finally:
            reg.close(0)
        if reply is None:
            return None
        if reply.type == "rejected":
            return f"registration refused: {reply['reason']}"
        token = engine_token(info.key, reply["nonce"], engine.instance)
        codec.session = token.decode()
        period = float(reply["heartbeat_period"])
        return Channels(engine.context, info, codec, period, token, engine.instance)

    def _await_reply(
        self, reg: zmq.Socket, wake: Wake, codec: Codec, request: str, deadline: float
    ) -> Optional[Message]:
        """The ``registered`` or ``rejected`` reply to ``request``; None at the deadline."""
        poller = zmq.Poller()
        poller.register(reg, zmq.POLLIN)
        poller.register(wake.fileno(), zmq.POLLIN)  # (the poller names it by its number)
        while not self.engine.leaving.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            events = dict(self._sleeping(poller.poll, left * 1000))
            if wake.fileno() in events:
                wake.clear()
            if reg not in events:
                continue
            try:
                msg = codec.decode(reg.recv_multipart(zmq.NOBLOCK), PEER_ACCEPTS["registration"])
            except (BadMessage, zmq.Again):
                continue
            if msg.get("ref") == request and msg.type in ("registered", "rejected"):
                return msg
        return None

    # -- serving -----------------------------------------------------------------------

    def _serve(self, channels: Channels, wake: Wake) -> None:
        """Serve ``channels`` until the engine leaves or the link loses them."""
        control, task = channels.control, channels.task
        poller = select.poll()
        wake_fd = wake.fileno()
        for fd in (control.getsockopt(zmq.FD), task.getsockopt(zmq.FD), wake_fd):
            poller.register(fd, select.POLLIN)
        runner = self.engine.runner
        self._serving = channels
        try:
            while not self.engine.leaving.is_set():
                # A ZeroMQ socket's descriptor only says "look again": what is readable, ask it.
                readable_control, readable_task = readable(control), readable(task)
                if not (readable_control or readable_task):
                    if any(fd == wake_fd for fd, _ in self._sleeping(poller.poll, self._poll_wait())):
                        wake.clear()
                    readable_control, readable_task = readable(control), readable(task)
                if readable_control and not self._drain("control", channels, self._on_control):
                    return  # the controller forgot this engine: the link is lost
                if readable_task:
                    self._drain("task", channels, self._on_task)
                if runner.current is not None:
                    self._announce(channels)
                    self._stream(channels)
                if not self._tick(channels):
                    return  # the controller is silent: the link is lost
        finally:
            self._serving = None

    def _tick(self, channels: Channels) -> bool:
        """Tell the link that time has passed (now and then); False once it lost ``channels``.

        Judged only with nothing left to read: after a long GIL hold by the main
        thread, what waits is read first, so the hold does not count as silence."""
        now = time.monotonic()
        if now < self._next_tick or readable(channels.control):
            return True
        self._next_tick = now + TICK_INTERVAL
        if now >= self._next_heart_check:
            self._next_heart_check = now + HEART_CHECK
            self._heart_heard(channels)
        self.link.tick(self.engine.runner.current is not None)
        return self.link.channels() is channels

    def _heart_heard(self, channels: Channels) -> None:
        """The heart echoed a ping since the last look: the controller pinged it, so it knows
        this engine (its control pings are paced out to seconds at scale: a quiet channel alone
        is not silence)."""
        echoed = channels.heart.pings()
        if echoed is not None and echoed > channels.heart_echoed:
            channels.heart_echoed = echoed
            self.link.contact()

    def _heard(self) -> None:
        """A valid message arrived: tell the link (now and then)."""
        now = time.monotonic()
        if now >= self._next_contact:
            self._next_contact = now + TICK_INTERVAL
            self.link.contact()

    def _poll_wait(self) -> float:
        current = self.engine.runner.current
        if current is None:
            return IDLE_POLL_MS
        if current.announced:
            return liveoutput.INTERVAL * 1000  # its output is streamed at that pace
        return max(0.0, (current.started + ANNOUNCE_AFTER - time.monotonic()) * 1000)

    def _announce(self, channels: Channels) -> None:
        current = self.engine.runner.current
        if current is None or current.announced:
            return
        running_for = time.monotonic() - current.started
        if running_for >= ANNOUNCE_AFTER:
            current.announced = True
            started = {"task": current.id, "instance": self.engine.instance, "running_for": running_for}
            send_frames(channels.task, channels.codec.encode("started", started), 0)

    def _stream(self, channels: Channels, final: bool = False) -> None:
        """Send what the running task printed since the last time (rate-limited: ``liveoutput``);
        ``final``: the task ended, its result goes next (what a task that never streamed printed
        goes with its result alone)."""
        runner = self.engine.runner
        live, current = runner.live, runner.current
        if live is None or not final and (current is None or current.id != live.task_id):
            return
        for stream, text in live.take(final):
            fields = {"task": live.task_id, "stream": stream}
            send_frames(channels.task, channels.codec.encode("output", fields, [text.encode("utf-8", "replace")]), 0)

    def _drain(self, channel: str, channels: Channels, handler: Callable[[Channels, Message], bool]) -> bool:
        """Handle every message waiting on ``channel``'s socket; False once the link is lost."""
        sock = getattr(channels, channel)
        while readable(sock):  # (cheaper than a recv that raises zmq.Again at the end)
            frames = recv_frames(sock)
            try:
                msg = channels.codec.decode(frames, PEER_ACCEPTS[channel])
            except BadMessage as e:
                say(f"dropped a bad message from the controller: {e}")
                continue
            if not channels.accept(channel, msg):
                continue
            self._heard()
            if channel == "control" and self._resend_to is channels:
                self._resend(channels)
            if not handler(channels, msg):
                return False
        return True

    def _resend(self, channels: Channels) -> None:
        """The controller spoke to this registration: send it the results kept from before."""
        self._resend_to = None
        again = self.outbox.again(channels.codec)
        for frames in again:
            send_frames(channels.task, frames, 0)
        if again:
            say(f"sent {len(again)} recent result(s) again to the controller")

    def _on_control(self, channels: Channels, msg: Message) -> bool:
        if msg.type == "ping":
            current = self.engine.runner.current
            status = {"beat": msg["beat"], "instance": self.engine.instance, "queued": len(self.engine.queue)}
            if current is not None:
                status.update(task=current.id, running_for=time.monotonic() - current.started)
            send_frames(channels.control, channels.codec.encode("pong", status), 0)
        elif msg.type == "command":
            reply = self.commands.answer(msg, channels)
            send_frames(channels.control, channels.codec.encode("reply", reply), 0)
        elif msg.type == "unknown":
            self.link.forgotten(msg["reason"])
            return False
        return True

    def _on_task(self, channels: Channels, msg: Message) -> bool:
        inputs = msg.payloads[1] if msg.type == "task_in" else None  # unpacked by the main thread
        if not self.engine.queue.put(QueuedTask(msg["task"], msg.payloads[0], inputs, msg.buffers)):
            channels.report_dropped(msg["task"], errors.EngineDied(f"engine {self.engine.id} is exiting"))
        return True
