"""How the engine's main and control threads share work: the wake, the queue's gate, the
main thread's own result sends under the sockets' lock, the outbox's trim, the runner's
stdout/stderr and its plain pickles."""
import itertools
import pickle
import sys
import threading

import cloudpickle
import zmq
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.engine.engine import Engine
from ipcluster.engine.liveoutput import LiveOutput
from ipcluster.engine.outbox import Outbox
from ipcluster.engine.runner import EngineStop, Runner, Running
from ipcluster.engine.taskqueue import QueuedTask, TaskQueue
from ipcluster.transport.wake import Wake
from ipcluster.transport.wire import Codec
from ipcluster.transport.zmqfast import recv_frames

KEY = b"k" * 32
BOUND = 30.0


class Wakes(SynchronousTestCase):
    def setUp(self):
        self.wake = Wake()
        self.addCleanup(self.wake.close)

    def test_set_makes_it_readable_until_cleared(self):
        poller = zmq.Poller()
        poller.register(self.wake.fileno(), zmq.POLLIN)
        self.assertEqual(poller.poll(0), [])
        self.wake.set()
        self.wake.set()
        self.assertEqual(poller.poll(0), [(self.wake.fileno(), zmq.POLLIN)], "named by its number")
        self.assertTrue(self.wake.wait(0))
        self.wake.clear()
        self.assertEqual(poller.poll(0), [], "once cleared, however often it was set")
        self.assertFalse(self.wake.wait(0))
        self.wake.clear()  # nothing set: no error

    def test_set_after_close_does_nothing(self):
        self.wake.close()
        self.wake.set()
        self.wake.close()


class Gate(SynchronousTestCase):
    """The main thread sleeps in TaskQueue.get on a gate; a task or close opens it."""

    def test_a_timeout_returns_none_and_a_later_task_is_still_got(self):
        q = TaskQueue()
        self.assertIsNone(q.get(timeout=0))
        q.put(QueuedTask("t1", b""))  # (opens the gate left by the timed-out wait)
        self.assertEqual(q.get(timeout=0).id, "t1")
        self.assertIsNone(q.get(timeout=0), "the stale opening is not a task")

    def test_the_getter_is_woken_by_a_task_and_by_close(self):
        q = TaskQueue()
        got = []

        def get_twice():
            got.append(q.get())
            got.append(q.get())

        getter = threading.Thread(target=get_twice)
        getter.start()
        self.addCleanup(getter.join, BOUND)
        q.put(QueuedTask("t1", b""))
        q.close()
        getter.join(BOUND)
        self.assertFalse(getter.is_alive())
        self.assertEqual(len(got), 2)
        self.assertIn(got[0], (None, QueuedTask("t1", b"")), "the task, unless close came first")
        self.assertIsNone(got[1])


class FakeChannels:
    def __init__(self, task, session="s"):
        self.codec = Codec(KEY, session=session)
        self.session = session
        self.task = task


class SendResult(SynchronousTestCase):
    """The main thread sends its results itself, under the sockets' lock, and keeps them."""

    def setUp(self):
        self.engine = Engine(engine_id="e0")
        self.addCleanup(self.engine.context.destroy, 0)
        self.addCleanup(self.engine.control.wake.close)
        self.control = self.engine.control
        self.codec = Codec(KEY, session="s")
        self.receiver, self.sender = self.engine.context.socket(zmq.PAIR), self.engine.context.socket(zmq.PAIR)
        for sock in (self.receiver, self.sender):
            sock.setsockopt(zmq.LINGER, 0)
            self.addCleanup(sock.close)
        self.receiver.bind("inproc://test-send-result")
        self.sender.connect("inproc://test-send-result")

    def send(self, task_id, session="s"):
        fields = {"task": task_id, "ok": True}
        payloads = [pickle.dumps(task_id), b"", b""]
        self.control.send_result(task_id, fields, payloads, self.codec.encode("result", fields, payloads), session)

    def received(self):
        self.assertTrue(self.receiver.poll(BOUND * 1000))
        return Codec(KEY).decode(recv_frames(self.receiver))["task"]

    def test_unregistered_results_are_kept_unsent(self):
        self.send("t1")
        self.send("t2")
        self.assertEqual(len(self.control.outbox), 2)
        [first, _] = self.control.outbox.again(self.codec)
        self.assertEqual(Codec(KEY).decode(first)["task"], "t1", "oldest first")
        self.assertFalse(self.receiver.poll(0))

    def test_served_results_go_out_on_the_task_socket_in_order_and_are_kept(self):
        self.control._serving = FakeChannels(self.sender)
        self.send("t1")
        self.send("t2")
        self.assertEqual([self.received(), self.received()], ["t1", "t2"])
        self.assertEqual(len(self.control.outbox), 2, "kept too, to send again after a new registration")
        self.assertFalse(self.control.wake.wait(0), "nothing to read: the control thread sleeps on")

    def test_a_result_signed_for_an_older_registration_is_only_kept(self):
        self.control._serving = FakeChannels(self.sender, session="new")
        self.send("t1", session="s")
        self.assertFalse(self.receiver.poll(0))
        self.assertEqual(len(self.control.outbox), 1, "signed again and sent once the new one is joined")

    def test_a_message_left_readable_by_the_send_wakes_the_control_thread(self):
        self.receiver.send(b"a task for the engine")
        self.assertTrue(self.sender.poll(BOUND * 1000))
        self.control._serving = FakeChannels(self.sender)
        self.send("t1")
        self.assertTrue(self.control.wake.wait(0))

    def test_the_lock_is_waited_for(self):
        self.control._serving = FakeChannels(self.sender)
        self.control.lock.acquire()
        sender = threading.Thread(target=self.send, args=("t1",))
        sender.start()
        self.addCleanup(sender.join, BOUND)
        self.assertFalse(self.receiver.poll(0), "not while the control thread holds the sockets")
        self.control.lock.release()
        self.assertEqual(self.received(), "t1")


class SignalWhileSending(SynchronousTestCase):
    def test_engine_stop_waits_until_the_result_is_sent(self):
        engine = Engine(engine_id="e0")
        self.addCleanup(engine.context.destroy, 0)
        self.addCleanup(engine.control.wake.close)
        engine.control.sealing = (KEY, "s", 10**6)
        sent = []

        def send_result(*args):
            engine._on_sigterm(15, None)  # arrives between two frames
            sent.append(args[0])

        engine.control.send_result = send_result
        with self.assertRaises(EngineStop):
            engine._run_one(QueuedTask("t1", cloudpickle.dumps((len, ("ab",), {}))))
        self.assertEqual(sent, ["t1"], "the whole result went out first")
        engine._on_sigterm(15, None)  # once only


class OutboxTrim(SynchronousTestCase):
    def test_expired_results_go_past_unsent_ones(self):
        now = [0.0]
        box = Outbox(max_age=60.0, clock=lambda: now[0])
        box.keep_result("unsent", {"task": "unsent", "ok": True}, [b"u", b"", b""], sent=False)
        box.keep_result("a", {"task": "a", "ok": True}, [b"a", b"", b""])
        now[0] = 30.0
        box.keep_result("b", {"task": "b", "ok": True}, [b"b", b"", b""])
        now[0] = 61.0
        box.keep_result("c", {"task": "c", "ok": True}, [b"c", b"", b""])
        self.assertEqual(list(box._kept), ["unsent", "b", "c"], "a expired; b and c are due; unsent stays")
        self.assertEqual(box.size, 3)


def prints_and_fails():
    print("to the capture")
    raise ValueError("no")


class RunnerStreams(SynchronousTestCase):
    def test_stdout_and_stderr_come_back_after_each_task(self):
        before = sys.stdout, sys.stderr
        fields, (_, out, _) = Runner().run(QueuedTask("t1", cloudpickle.dumps((prints_and_fails, (), {}))))
        self.assertFalse(fields["ok"])
        self.assertEqual(out, b"to the capture\n")
        self.assertEqual((sys.stdout, sys.stderr), before)

    def test_plain_values_pickle_as_pickle_does(self):
        runner = Runner()
        for value in (None, True, 3, 2.5, 1j, "text", b"bytes", "x" * 5000, [1, 2], {"a": (1,)}):
            fields, (payload, _, _, *buffers) = runner.run(QueuedTask("t", cloudpickle.dumps((lambda v=value: v, (), {}))))
            self.assertTrue(fields["ok"])
            self.assertEqual((pickle.loads(payload), buffers), (value, []))


class LiveOnlyWhileRunning(SynchronousTestCase):
    """What a task printed is streamed only while it runs: once it ended, it goes with its result."""

    def test_no_stream_for_a_finished_task(self):
        engine = Engine(engine_id="e0")
        self.addCleanup(engine.context.destroy, 0)
        self.addCleanup(engine.control.wake.close)
        sent = []
        engine.runner.live = live = LiveOutput("t1", clock=itertools.count(0, 10.0).__next__)  # always due
        live.add("stdout", "printed")
        channels = FakeChannels(task=None)
        self.patch(sys.modules["ipcluster.engine.control"], "send_frames", lambda sock, frames, flags: sent.append(frames))
        engine.control._stream(channels)
        self.assertEqual(sent, [], "t1 is not running")
        engine.runner.current = Running("t1")
        engine.control._stream(channels)
        self.assertEqual(len(sent), 1, "t1 runs: streamed")
