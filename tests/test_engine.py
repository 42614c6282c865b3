"""Engine pieces without a controller: the runner, the local queue, diagnostics, signals."""
import io
import signal
import subprocess
import sys
import threading

import cloudpickle
import zmq
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.engine.diagnostics import say
from ipcluster.engine.engine import Engine
from ipcluster.engine.runner import EngineStop, Runner, Running
from ipcluster.engine.runner import describe as _describe
from ipcluster.engine import taskqueue
from ipcluster.engine.taskqueue import QueuedTask, TaskQueue
from ipcluster.transport.wire import Codec


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")


class Describe(SynchronousTestCase):
    def test_plain_exception(self):
        try:
            raise ValueError("bad value")
        except ValueError as e:
            described = _describe(e)
        self.assertEqual((described["type"], described["message"]), ("ValueError", "bad value"))
        self.assertIn("raise ValueError", described["traceback"])

    def test_exception_whose_str_raises(self):
        """Used to escape the engine's task loop and end the engine (and then the next one)."""
        described = _describe(Unprintable())
        self.assertEqual(described["type"], "Unprintable")
        self.assertIn("str() failed", described["message"])


class Queue(SynchronousTestCase):
    def test_fifo_remove_clear_close(self):
        q = TaskQueue()
        for name in "abc":
            q.put(QueuedTask(name, b""))
        self.assertTrue(q.remove("b"))
        self.assertFalse(q.remove("b"))
        self.assertEqual(q.get().id, "a")
        self.assertEqual([t.id for t in q.close()], ["c"])
        self.assertIsNone(q.get())
        self.assertFalse(q.put(QueuedTask("d", b"")))

    def test_withdraw_decides_whether_a_task_runs_here(self):
        now = [0.0]
        q = TaskQueue(clock=lambda: now[0])
        q.put(QueuedTask("queued", b""))
        q.put(QueuedTask("taken", b""))
        self.assertEqual(q.withdraw("queued"), taskqueue.QUEUED)
        self.assertEqual(q.get().id, "taken")
        self.assertEqual(q.withdraw("taken"), taskqueue.TAKEN)
        # Withdrawn before it arrived (the release overtook the task): discarded when it comes.
        self.assertEqual(q.withdraw("late"), taskqueue.NOT_SEEN)
        self.assertTrue(q.put(QueuedTask("late", b"")))
        self.assertEqual((len(q), q.discarded), (0, 1))
        # Only once: the same id sent again (moved back here later) is queued.
        self.assertTrue(q.put(QueuedTask("late", b"")))
        self.assertEqual(len(q), 1)

    def test_a_tombstone_expires(self):
        now = [0.0]
        q = TaskQueue(clock=lambda: now[0])
        q.withdraw("lost")  # its task message was lost with its connection
        now[0] = taskqueue.TOMBSTONE_SECONDS + 1
        q.put(QueuedTask("lost", b""))
        self.assertEqual((len(q), q.discarded), (1, 0))

    def test_memory_is_bounded(self):
        q = TaskQueue()
        for i in range(taskqueue.REMEMBER + 10):
            q.withdraw(f"t{i}")
        self.assertEqual(len(q._tombstones), taskqueue.REMEMBER)
        q.put(QueuedTask("t0", b""))  # its tombstone was forgotten first
        self.assertEqual(len(q), 1)


# -- the runner ---------------------------------------------------------------------------

#: The runner whose task is running, for tasks that look at it (cloudpickle pickles the
#: functions below by reference, so they see this module's globals).
RUNNER = None


def chatty(x):
    import sys

    print("out", x)
    print("err", file=sys.stderr)
    return RUNNER.current.id


def failing():
    raise ValueError("no")


def interrupted():
    raise KeyboardInterrupt


def stopped():
    raise EngineStop("SIGTERM")


def unpicklable():
    return threading.Lock()


class Runs(SynchronousTestCase):
    def setUp(self):
        global RUNNER
        RUNNER = self.runner = Runner()
        self.addCleanup(setattr, sys.modules[__name__], "RUNNER", None)

    def run_task(self, fn, *args):
        fields, payloads = self.runner.run(QueuedTask("t1", cloudpickle.dumps((fn, args, {}))))
        self.assertIsNone(self.runner.current)
        self.assertEqual(fields["task"], "t1")
        self.assertLessEqual(fields["started"], fields["finished"])
        return fields, payloads

    def test_value_and_captured_output(self):
        fields, (value, out, err) = self.run_task(chatty, 7)
        self.assertTrue(fields["ok"])
        self.assertEqual(cloudpickle.loads(value), "t1")  # current was set while it ran
        self.assertEqual((out, err), (b"out 7\n", b"err\n"))

    def test_failure_is_described_and_pickled(self):
        fields, (value, _, _) = self.run_task(failing)
        self.assertFalse(fields["ok"])
        self.assertEqual((fields["error"]["type"], fields["error"]["message"]), ("ValueError", "no"))
        self.assertIsInstance(cloudpickle.loads(value), ValueError)

    def test_keyboard_interrupt_is_the_tasks_failure(self):
        fields, _ = self.run_task(interrupted)
        self.assertEqual((fields["ok"], fields["error"]["type"]), (False, "KeyboardInterrupt"))

    def test_a_value_that_cannot_be_pickled_fails_the_task(self):
        fields, _ = self.run_task(unpicklable)
        self.assertFalse(fields["ok"])

    def test_engine_stop_goes_through(self):
        with self.assertRaises(EngineStop):
            self.runner.run(QueuedTask("t1", cloudpickle.dumps((stopped, (), {}))))
        self.assertIsNone(self.runner.current)


# -- diagnostics ----------------------------------------------------------------------------


class BrokenPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


class Say(SynchronousTestCase):
    """Issue 8: a diagnostic on a dead controller's stderr pipe killed the control thread."""

    def test_writes_a_line_on_the_real_stderr(self):
        stream = io.StringIO()
        self.patch(sys, "__stderr__", stream)
        say("hello")
        self.assertEqual(stream.getvalue(), "ipcluster-engine: hello\n")

    def test_never_raises(self):
        closed = io.StringIO()
        closed.close()
        for stream in (BrokenPipe(), closed, None):
            self.patch(sys, "__stderr__", stream)
            say("nobody listens")  # no exception

    def test_the_control_thread_drops_a_bad_message_with_a_broken_stderr(self):
        """The control thread's own handlers print; with stderr gone they go on serving."""
        self.patch(sys, "__stderr__", BrokenPipe())
        engine = Engine(engine_id="e0")
        self.addCleanup(engine.context.destroy, 0)
        control = engine.control
        channels = FakeChannels()
        control.link.start()
        control.link.registered(channels)
        sender, receiver = engine.context.socket(zmq.PAIR), engine.context.socket(zmq.PAIR)
        for sock in (sender, receiver):
            sock.setsockopt(zmq.LINGER, 0)
            self.addCleanup(sock.close)
        receiver.bind("inproc://test-drain")
        sender.connect("inproc://test-drain")
        sender.send_multipart([b"not", b"signed"])
        sender.send_multipart(channels.codec.encode("ping", {"beat": 1}))
        self.assertTrue(receiver.poll(5000))
        handled = []
        channels.control = receiver
        self.assertTrue(control._drain("control", channels, lambda ch, msg: handled.append(msg.type) or True))
        self.assertEqual(handled, ["ping"])


class FakeChannels:
    period = 0.5
    controller = "127.0.0.1"

    def __init__(self):
        self.codec = Codec(b"k" * 32)

    def accept(self, channel, msg):
        return True

    def close(self, bye):
        pass


# -- the engine's signals ---------------------------------------------------------------------


class Signals(SynchronousTestCase):
    """The main thread's handlers: what SIGINT and SIGTERM mean, idle or running a task."""

    def setUp(self):
        self.engine = Engine(engine_id="e0")
        self.addCleanup(self.engine.context.destroy, 0)

    def test_sigint_while_idle_stops_the_engine_once(self):
        with self.assertRaises(EngineStop):
            self.engine._on_sigint(signal.SIGINT, None)
        self.engine._on_sigint(signal.SIGINT, None)  # on the way out already

    def test_sigint_interrupts_the_running_task(self):
        self.engine.runner.current = Running("t1")
        with self.assertRaises(KeyboardInterrupt):
            self.engine._on_sigint(signal.SIGINT, None)

    def test_signal_command_interrupts_only_its_task(self):
        self.engine.runner.current = Running("t2")
        self.engine.expect_interrupt("t1")
        self.engine._on_sigint(signal.SIGINT, None)  # t1 is over: void
        self.engine.expect_interrupt("t2")
        with self.assertRaises(KeyboardInterrupt):
            self.engine._on_sigint(signal.SIGINT, None)
        self.engine.runner.current = None
        self.engine.expect_interrupt(None)
        self.engine._on_sigint(signal.SIGINT, None)  # nothing runs: void, the engine stays
        self.assertFalse(self.engine._stopping)

    def test_sigterm_stops_once(self):
        with self.assertRaises(EngineStop):
            self.engine._on_sigterm(signal.SIGTERM, None)
        self.engine._on_sigterm(signal.SIGTERM, None)

    def test_give_up_leaves_with_exit_code_3(self):
        self.engine.give_up("no controller accepted this engine for 61 s")
        self.assertEqual(self.engine.exit_code, 3)
        self.assertIn("giving up after --reconnect-timeout", self.engine.exit_reason)
        self.assertTrue(self.engine.leaving.is_set())
        self.assertIsNone(self.engine.queue.get())


class ImportGraph(SynchronousTestCase):
    def test_the_engine_does_not_import_the_controller(self):
        code = (
            "import sys, ipcluster.engine.main, ipcluster.engine.engine; "
            "print(sorted(m for m in sys.modules if m.startswith('ipcluster.controller')))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        self.assertEqual(out.strip(), "[]")
