"""The engine's side of the control verbs: one handler for each verb of ``ipcluster.verbs``.

Commands run on the control thread as they arrive, never behind queued tasks.  The
arguments are checked with the verb's own table (``internal=True``: the controller may send
abort's ``release``); a bad argument, an unknown verb or a handler that fails is answered
with an error reply and never takes the control thread down.
"""
from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any, Callable

from ipcluster import errors, verbs
from ipcluster.engine import namespace, taskqueue
from ipcluster.engine.channels import Channels
from ipcluster.engine.link import Link
from ipcluster.transport.wire import Message

if TYPE_CHECKING:
    from ipcluster.engine.engine import Engine


class ControlCommands:
    """Answers the controller's ``command`` messages for one engine."""

    def __init__(self, engine: "Engine", link: Link) -> None:
        self.engine = engine
        self.link = link

    def answer(self, msg: Message, channels: Channels) -> dict:
        """The fields of the ``reply`` to the ``command`` message ``msg``."""
        try:
            verb = verbs.verb(msg["verb"])
            args = verb.parse(msg["args"], internal=True)
            value = HANDLERS[verb.name](self, channels, args)
            return {"ref": msg.id, "ok": True, "value": value}
        except errors.ClusterError as e:
            return {"ref": msg.id, "ok": False, "error": errors.to_wire(e)}
        except Exception as e:  # a bad argument must not take the control thread down
            error = errors.BadRequest(f"{msg['verb']} failed on engine {self.engine.id}: {e!r}")
            return {"ref": msg.id, "ok": False, "error": errors.to_wire(error)}

    def beat(self, channels: Channels, args: dict) -> None:
        """Nothing to do: the reply itself is the beat (the controller times the round trip)."""
        return None

    def abort(self, channels: Channels, args: dict) -> str:
        """Drop a queued task; a running one goes on (interrupt it with ``signal``).

        With ``release`` (the controller's steal or cancel) the answer is
        ``"released"`` exactly when the task will not run here: also for a task
        that has not arrived yet, which is then discarded when it comes.
        """
        task_id = args["task"]
        current = self.engine.runner.current
        if args["release"]:
            if self.engine.queue.withdraw(task_id) != taskqueue.TAKEN:
                return "released"  # the controller runs it elsewhere, or cancels it
        elif self.engine.queue.remove(task_id):
            channels.report_dropped(task_id, errors.TaskAborted(f"task {task_id} aborted before it ran"))
            return "aborted"
        return "running" if current is not None and current.id == task_id else "unknown"

    def signal(self, channels: Channels, args: dict) -> bool:
        """Send ``signum`` to this process, if the named task (when one is named) is running."""
        signum, task_id = args["signum"], args["task"]
        current = self.engine.runner.current
        if task_id is not None and (current is None or current.id != task_id):
            return False
        if signum == signal.SIGINT:
            self.engine.expect_interrupt(task_id)
        os.kill(os.getpid(), signum)
        return True

    def exit(self, channels: Channels, args: dict) -> None:
        """Leave once the running task ends; interrupt it after ``timeout`` seconds."""
        self.engine.request_exit("exit command")
        self.link.exit_requested(args["timeout"], self.engine.runner.current is not None)
        return None

    def reset(self, channels: Channels, args: dict) -> int:
        """Drop the queued tasks and clear ``ipcluster.engine.namespace``."""
        dropped = self.engine.queue.clear()
        for task in dropped:
            channels.report_dropped(task.id, errors.TaskAborted(f"task {task.id} dropped by reset"))
        namespace.clear()
        return len(dropped)


Handler = Callable[[ControlCommands, Channels, dict], Any]

#: The handler of each verb, by name: exactly the verbs of ``ipcluster.verbs.VERBS``.
HANDLERS: dict[str, Handler] = {
    "beat": ControlCommands.beat,
    "abort": ControlCommands.abort,
    "signal": ControlCommands.signal,
    "exit": ControlCommands.exit,
    "reset": ControlCommands.reset,
}

if set(HANDLERS) != set(verbs.VERBS):
    raise ImportError(f"engine control handlers {sorted(HANDLERS)} do not match the verbs {sorted(verbs.VERBS)}")
