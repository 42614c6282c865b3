"""The channels of one registration: the heart, and the control and task sockets."""
from __future__ import annotations

from typing import Optional

import zmq

from ipcluster import connection, errors
from ipcluster.engine.diagnostics import say
from ipcluster.engine.heart import Heart
from ipcluster.transport.wire import Codec
from ipcluster.transport.zmqfast import send_frames


class Channels:
    """Connected to the controller that registered this engine; owned by the control thread.

    A new heart thread starts with every registration; :meth:`close` stops it.
    """

    def __init__(
        self,
        context: zmq.Context,
        info: connection.ConnectionInfo,
        codec: Codec,
        period: float,
        identity: bytes,
        instance: str,
    ) -> None:
        self.codec = codec
        #: The key the controller signs with (the main thread encodes its results with it).
        self.key = info.key
        #: The controller's heartbeat period, from its ``registered`` reply.
        self.period = period
        self.controller = info.ip
        self.instance = instance
        self.heart = Heart(context, info.address("heartbeat"), identity)
        self.heart.start()
        self.control = self._dealer(context, info.address("control"), identity)
        self.task = self._dealer(context, info.address("task"), identity)

    @staticmethod
    def _dealer(context: zmq.Context, address: str, identity: bytes) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        return sock

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
