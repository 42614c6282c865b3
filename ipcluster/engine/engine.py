"""The engine process: three threads.

* **main thread** -- runs tasks one at a time from the local queue
  (``ipcluster.engine.runner``), so that a signal (SIGINT) can interrupt the running task,
  and sends each result itself on the task socket (``ControlThread.send_result``, under
  the sockets' lock) before it starts the next task;
* **control thread** (``ipcluster-io``, ``ipcluster.engine.control``) -- owns the control
  and task sockets: registers, answers the monitor's pings, runs control commands (they
  never wait behind queued tasks), queues incoming tasks and keeps the results to send
  again after a new registration; its link to the controller is a state machine
  (``ipcluster.engine.link``);
* **heart thread** -- the native, GIL-free echo (``ipcluster.engine.heart``).

If the controller goes silent (or forgets the engine) the control thread re-registers,
re-reading the connection file, for ``reconnect_timeout`` seconds; then the engine exits
with a clear message and exit code 3.
"""
from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import traceback
from typing import Optional

import zmq

from ipcluster import connection, errors, faults
from ipcluster.engine.control import ControlThread
from ipcluster.engine.diagnostics import say
from ipcluster.engine.parent import follow_parent
from ipcluster.engine.runner import EngineStop, Runner
from ipcluster.engine.taskqueue import QueuedTask, TaskQueue
from ipcluster.transport.wire import Codec
from ipcluster.transport.zmqfast import send_frames

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONTROLLER_LOST = 3


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
        self.instance = os.urandom(16).hex()  # (not uuid: one import less at start-up)
        #: The numbers of every message this engine signs (``n``), shared by its threads.
        self.sequence = itertools.count(1)
        self.reconnect_timeout = reconnect_timeout
        self.controller_timeout = controller_timeout
        self.register_attempt_timeout = register_attempt_timeout
        self.context = zmq.Context()
        self.queue = TaskQueue()
        self.runner = Runner()
        self.exit_code = EXIT_OK
        self.exit_reason = ""
        #: Set when the engine leaves: the control thread says ``bye`` and ends.
        self.leaving = threading.Event()
        self.control = ControlThread(self)
        self._main_codecs: dict[tuple, Codec] = {}
        #: (signum, task) of the signal command's SIGINT, set just before it is sent.
        self._control_signal: Optional[tuple] = None
        #: The main thread is on its way out: signals no longer raise EngineStop.
        self._stopping = False
        #: The main thread is sending a result: a signal's EngineStop waits until it is sent
        #: (raised between two frames, it would leave half a message on the task socket).
        self._sending = False
        self._deferred: Optional[EngineStop] = None

    # -- main thread -------------------------------------------------------------------

    def run(self) -> int:
        """Run until told to stop; returns the process exit code."""
        faults.enable()  # a task that segfaults leaves every thread's traceback in the engine's log
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigint)
        self.control.start()
        try:
            if not follow_parent():
                raise EngineStop("the controller that started this engine is gone")
            self._run_tasks()
        except EngineStop as e:
            if not self.exit_reason:
                self.exit_reason = str(e) or "stopped"
        finally:
            self._stopping = True
            self.queue.close()
            self.leaving.set()
            self.control.wake.set()
            self.control.join(10.0)
            self.context.destroy(linger=0)
        if self.exit_reason:
            say(f"engine {self.id} exiting: {self.exit_reason}")
        return self.exit_code

    def _run_tasks(self) -> None:
        while True:
            task = self.queue.get()
            if task is None:
                return
            try:
                self._run_one(task)
            except KeyboardInterrupt:
                # Arrived just outside the task it was meant for.
                say(f"an interrupt arrived after task {task.id} ended; ignored")
            except Exception:
                # A bug here must cost one task, not the engine (and then the next engine).
                say(f"could not report task {task.id}:\n{traceback.format_exc()}")

    def _run_one(self, task: QueuedTask, out: Optional[zmq.Socket] = None) -> None:
        """Run ``task`` and send its result; to ``out`` instead, if given, as ``[b"send", *frames]``
        (how results left the main thread before it sent them itself: tests of the size limit
        read them there)."""
        fields, payloads = self.runner.run(task)
        codec, limit = self._main_codec()
        frames = codec.encode("result", fields, payloads)
        size = sum(len(frame) for frame in frames)
        if size > limit:
            # Sent, it would cost the controller its link to this engine (and the client its result).
            error = errors.PayloadTooLarge(
                f"the result of task {task.id} is {size} bytes, over the controller's limit of {limit} bytes "
                "(--max-message-size)"
            )
            fields = {"task": task.id, "ok": False, "error": errors.to_wire(error), "started": fields.get("started"),
                      "finished": fields.get("finished")}
            payloads = [b"", b"", b""]
            frames = codec.encode("result", fields, payloads)
        if out is not None:
            send_frames(out, [b"send", *frames], 0)
            return
        # Sent before the next task starts: if that task kills the process at once (a segfault),
        # the result must not die with it, or the controller would take this finished task for
        # the one that killed its engine.
        self._sending = True
        try:
            self.control.send_result(task.id, fields, payloads, frames, codec.session)
        finally:
            self._sending = False
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            raise deferred

    def _main_codec(self) -> tuple[Codec, int]:
        """The codec of the registration now (set before any task can arrive), and its size limit."""
        sealing = self.control.sealing
        assert sealing is not None
        codec = self._main_codecs.get(sealing)
        if codec is None:
            key, session, _ = sealing
            self._main_codecs = {sealing: Codec(key, session=session, sequence=self.sequence)}
            codec = self._main_codecs[sealing]
        return codec, sealing[2]

    def _on_sigterm(self, signum, frame) -> None:
        if self._stopping:
            return
        self._stop("SIGTERM")

    def _stop(self, reason: str) -> None:
        self._stopping = True
        if self._sending:
            self._deferred = EngineStop(reason)  # raised once the result is sent (_run_one)
            return
        raise EngineStop(reason)

    def _on_sigint(self, signum, frame) -> None:
        requested, self._control_signal = self._control_signal, None
        current = self.runner.current
        if requested is not None:
            target = requested[1]
            if current is not None and (target is None or target == current.id):
                raise KeyboardInterrupt(f"interrupted by the signal command (task {current.id})")
            return  # the targeted task already finished: the signal is void
        if current is not None:
            raise KeyboardInterrupt
        if not self._stopping:
            self._stop("SIGINT")

    # -- asked by the control thread -----------------------------------------------------

    def expect_interrupt(self, task_id: Optional[str]) -> None:
        """The signal command is about to send SIGINT for ``task_id`` (None: whatever runs)."""
        self._control_signal = (signal.SIGINT, task_id)

    def request_exit(self, reason: str) -> None:
        """Take no more tasks and leave once the running one ends."""
        if not self.exit_reason:
            self.exit_reason = reason
        self.queue.close()

    def fail(self, reason: str) -> None:
        """The control thread failed: leave with exit code 1."""
        self.exit_code = EXIT_FAILED
        self.request_exit(reason)

    def give_up(self, why: str) -> None:
        """No controller accepted this engine for ``reconnect_timeout``: leave with exit code 3."""
        where = self.connection_file or connection.default_connection_file()
        self.exit_code = EXIT_CONTROLLER_LOST
        self.request_exit(f"{why} (connection file {where}); giving up after --reconnect-timeout")
        self.leaving.set()  # the control thread ends now; the main thread follows

    def drop_queued(self) -> None:
        """The link was lost: drop the queued tasks (the controller retries or fails them)."""
        for dropped in self.queue.clear():
            say(f"dropped queued task {dropped.id}")

    def interrupt(self) -> None:
        """The exit command's timeout passed with a task running: SIGTERM this process."""
        os.kill(os.getpid(), signal.SIGTERM)
