"""The engine's control verbs, without sockets: one handler per verb, every failure a reply."""
from __future__ import annotations

import signal
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from ipcluster import errors, verbs
from ipcluster.engine import commands, namespace
from ipcluster.engine.commands import HANDLERS, ControlCommands
from ipcluster.engine.runner import Running, Runner
from ipcluster.engine.taskqueue import QueuedTask, TaskQueue
from ipcluster.transport.wire import Message


class FakeEngine:
    """What the commands use of ``Engine``: queue, runner, and the exit and signal requests."""

    id = "e0"

    def __init__(self) -> None:
        self.queue = TaskQueue()
        self.runner = Runner()
        self.exits: list[str] = []
        self.interrupts: list[Optional[str]] = []

    def request_exit(self, reason: str) -> None:
        self.exits.append(reason)
        self.queue.close()

    def expect_interrupt(self, task_id: Optional[str]) -> None:
        self.interrupts.append(task_id)


class FakeLink:
    def __init__(self) -> None:
        self.exits: list[tuple] = []

    def exit_requested(self, timeout: float, running: bool) -> None:
        self.exits.append((timeout, running))


class FakeChannels:
    def __init__(self) -> None:
        self.dropped: list[tuple[str, errors.ClusterError]] = []

    def report_dropped(self, task_id: str, error: errors.ClusterError) -> None:
        self.dropped.append((task_id, error))


class FakeOs:
    """Stands in for ``os`` in the commands module: signals are recorded, not sent."""

    def __init__(self) -> None:
        self.killed: list[tuple[int, int]] = []

    def getpid(self) -> int:
        return 4242

    def kill(self, pid: int, signum: int) -> None:
        self.killed.append((pid, signum))


class Fixture(SynchronousTestCase):
    def setUp(self):
        self.engine = FakeEngine()
        self.link = FakeLink()
        self.channels = FakeChannels()
        self.commands = ControlCommands(self.engine, self.link)
        self.os = FakeOs()
        self.patch(commands, "os", self.os)
        self.n = 0

    def command(self, verb, args=None):
        """The reply to a ``command`` message; its value, or its error as a ClusterError."""
        self.n += 1
        msg = Message("command", f"m.{self.n}", {"verb": verb, "args": {} if args is None else args})
        reply = self.commands.answer(msg, self.channels)
        self.assertEqual(reply["ref"], msg.id)
        return reply["value"] if reply["ok"] else errors.from_wire(reply["error"])

    def queue(self, *ids):
        for task_id in ids:
            self.engine.queue.put(QueuedTask(task_id, b""))

    def running(self, task_id):
        self.engine.runner.current = Running(task_id)


class Verbs(Fixture):
    def test_a_handler_for_every_verb_and_no_other(self):
        self.assertEqual(set(HANDLERS), set(verbs.VERBS))

    def test_beat(self):
        self.assertIsNone(self.command("beat"))
        self.assertIsNone(self.command("beat", {"timeout": 2.0}))

    def test_abort(self):
        self.queue("t1", "t2")
        self.running("t0")
        self.assertEqual(self.command("abort", {"task": "t1"}), "aborted")
        self.assertEqual(self.command("abort", {"task": "t2", "release": True}), "released")
        self.assertEqual(self.command("abort", {"task": "t0"}), "running")
        self.assertEqual(self.command("abort", {"task": "t1"}), "unknown")
        [(task_id, error)] = self.channels.dropped  # released: no result, it runs elsewhere
        self.assertEqual(task_id, "t1")
        self.assertIsInstance(error, errors.TaskAborted)
        self.assertEqual(len(self.engine.queue), 0)

    def test_release_is_released_exactly_when_the_task_will_not_run_here(self):
        self.queue("t1", "t2")
        self.assertEqual(self.engine.queue.get().id, "t1")  # taken by the main thread
        self.assertEqual(self.command("abort", {"task": "t1", "release": True}), "unknown")
        self.running("t1")
        self.assertEqual(self.command("abort", {"task": "t1", "release": True}), "running")
        self.assertEqual(self.command("abort", {"task": "t2", "release": True}), "released")
        # The release overtook its task (another socket): released, and the task never queues.
        self.assertEqual(self.command("abort", {"task": "t3", "release": True}), "released")
        self.queue("t3")
        self.assertEqual(len(self.engine.queue), 0)
        self.assertEqual(self.channels.dropped, [])
        # A user's abort of a task not seen is just "unknown": no tombstone.
        self.assertEqual(self.command("abort", {"task": "t4"}), "unknown")
        self.queue("t4")
        self.assertEqual(len(self.engine.queue), 1)

    def test_signal(self):
        self.running("t0")
        self.assertFalse(self.command("signal", {"signum": int(signal.SIGINT), "task": "other"}))
        self.assertEqual((self.os.killed, self.engine.interrupts), ([], []))
        self.assertTrue(self.command("signal", {"signum": int(signal.SIGINT), "task": "t0"}))
        self.assertTrue(self.command("signal", {"signum": "usr1"}))
        self.assertEqual(self.os.killed, [(4242, signal.SIGINT), (4242, signal.SIGUSR1)])
        self.assertEqual(self.engine.interrupts, ["t0"])

    def test_signal_names_a_task_when_none_runs(self):
        self.assertFalse(self.command("signal", {"signum": int(signal.SIGINT), "task": "t0"}))
        self.assertEqual(self.os.killed, [])

    def test_exit(self):
        self.queue("t1")
        self.assertIsNone(self.command("exit"))
        self.running("t0")
        self.assertIsNone(self.command("exit", {"timeout": 1.5}))
        self.assertEqual(self.link.exits, [(verbs.DEFAULT_EXIT_TIMEOUT, False), (1.5, True)])
        self.assertEqual(self.engine.exits, ["exit command", "exit command"])
        self.assertTrue(self.engine.queue.closed)

    def test_reset(self):
        namespace["x"] = 1
        self.addCleanup(namespace.clear)
        self.queue("t1", "t2")
        self.assertEqual(self.command("reset"), 2)
        self.assertEqual(namespace, {})
        self.assertEqual([(t, type(e)) for t, e in self.channels.dropped], [("t1", errors.TaskAborted), ("t2", errors.TaskAborted)])
        self.assertEqual(self.command("reset"), 0)


class BadCommands(Fixture):
    """Every one is answered with an error reply; none escapes to the control thread."""

    def test_unknown_verb(self):
        self.assertIsInstance(self.command("explode"), errors.BadRequest)

    def test_bad_arguments_are_checked_with_the_verbs_table(self):
        for verb, args in [
            ("abort", {}),
            ("abort", {"task": ""}),
            ("abort", {"task": "t1", "release": "yes"}),
            ("signal", {"signum": 0}),
            ("signal", {"signum": "SIGNOPE"}),
            ("signal", {"signum": 2, "task": 7}),
            ("exit", {"timeout": -1}),
            ("beat", {"timeout": "soon"}),
            ("reset", {"everything": True}),
        ]:
            self.assertIsInstance(self.command(verb, args), errors.BadRequest, f"{verb} {args}")
        self.assertEqual((self.os.killed, self.link.exits), ([], []))

    def test_a_failing_handler_is_a_bad_request_naming_the_engine(self):
        self.patch(commands, "os", None)  # os.kill -> AttributeError
        error = self.command("signal", {"signum": 100})
        self.assertIsInstance(error, errors.BadRequest)
        self.assertIn("signal failed on engine e0", str(error))

    def test_arguments_that_are_not_a_map(self):
        self.assertIsInstance(self.command("beat", ["timeout"]), errors.BadRequest)
