"""The channels of one registration: the heart, and the control and task sockets."""
from __future__ import annotations

from typing import Optional

import zmq

from ipcluster import connection, errors
from ipcluster.engine.diagnostics import say
from ipcluster.engine.heart import Heart
from ipcluster.transport.replay import ReplayWindow
from ipcluster.transport.security import configure_client
from ipcluster.transport.wire import Codec, Message
from ipcluster.transport.zmqfast import send_frames

#: Refused controller messages printed one by one before they are only counted.
SAY_REFUSED = 10


class Channels:
    """Connected to the controller that registered this engine; owned by the control thread.

    Every socket's identity is this registration's routing ``token``, which is
    also the session the controller labels its messages to this engine with.
    A new heart thread starts with every registration; :meth:`close` stops it.
    """

    def __init__(
        self,
        context: zmq.Context,
        info: connection.ConnectionInfo,
        codec: Codec,
        period: float,
        token: bytes,
        instance: str,
    ) -> None:
        self.codec = codec
        #: The key the controller signs with (the main thread encodes its results with it).
        self.key = info.key
        #: This registration's session: the routing token, as text.
        self.session = token.decode()
        #: The largest message the controller takes (the main thread checks results against it).
        self.max_message_size = info.max_message_size
        #: The controller's heartbeat period, from its ``registered`` reply.
        self.period = period
        self.controller = info.ip
        self.instance = instance
        self.windows = {"control": ReplayWindow(), "task": ReplayWindow()}
        self.refused = 0
        self.heart = Heart(context, info.address("heartbeat"), token, lambda sock: configure_client(sock, info))
        self.heart.start()
        #: Pings the heart had echoed at the control thread's last look (``ControlThread._heart_heard``).
        self.heart_echoed = 0
        self.control = self._dealer(context, info, "control", token)
        self.task = self._dealer(context, info, "task", token)

    @staticmethod
    def _dealer(context: zmq.Context, info: connection.ConnectionInfo, channel: str, token: bytes) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, token)
        sock.setsockopt(zmq.LINGER, 0)
        configure_client(sock, info)
        sock.connect(info.address(channel))
        return sock

    def accept(self, channel: str, msg: Message) -> bool:
        """Whether a decoded controller message is for this registration and new (not a replay)."""
        if msg.session == self.session and self.windows[channel].accept(msg.seq):
            return True
        self.refused += 1
        if self.refused <= SAY_REFUSED:
            why = "replayed" if msg.session == self.session else "for another session"
            say(f"dropped a {why} {msg.type!r} message from the controller ({self.refused} so far)")
        return False

    def report_dropped(self, task_id: str, error: errors.ClusterError) -> None:
        """Tell the controller that ``task_id`` will not run here: its result is ``error``."""
        fields = {"task": task_id, "ok": False, "error": errors.to_wire(error)}
        send_frames(self.task, self.codec.encode("result", fields, [b"", b"", b""]), 0)

    def close(self, bye: Optional[str]) -> None:
        """Close the sockets and stop the heart; say ``bye`` (with this reason) first unless None."""
        if bye is not None:
            # On the task socket, so that it arrives after the last result.
            try:
                self.task.setsockopt(zmq.LINGER, 1000)
                self.task.send_multipart(self.codec.encode("bye", {"instance": self.instance, "reason": bye}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if not self.heart.stop():
            say("heart thread did not stop in time")
        self.control.close(0)
        self.task.close()
