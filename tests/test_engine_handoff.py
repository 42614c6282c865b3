"""How the engine's main and control threads hand work to each other: the wake, the queue's
wait for the last result's forwarding, the results deque, the outbox's trim, the runner's
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
from ipcluster.engine.runner import Runner, Running
from ipcluster.engine.taskqueue import QueuedTask, TaskQueue
from ipcluster.engine.wake import Wake
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


class ForwardWait(SynchronousTestCase):
    """The main thread's next task waits until the control thread has sent the last result on."""

    def test_a_task_waits_for_the_forwarding(self):
        q = TaskQueue()
        q.put(QueuedTask("t2", b""))
        self.assertIsNone(q.get(timeout=0, after=1, after_wait=BOUND), "result 1 is not sent yet")
        self.assertEqual(len(q), 1, "the task stays queued")
        q.forwarded(1)
        self.assertEqual(q.get(timeout=0, after=1, after_wait=BOUND).id, "t2")

    def test_not_longer_than_after_wait(self):
        q = TaskQueue()
        q.put(QueuedTask("t2", b""))
        self.assertEqual(q.get(timeout=BOUND, after=1, after_wait=0).id, "t2", "the control thread is stuck")

    def test_the_getter_is_woken_by_the_forwarding(self):
        q = TaskQueue()
        got = []
        getter = threading.Thread(target=lambda: got.append(q.get(after=1, after_wait=BOUND)))
        getter.start()
        self.addCleanup(getter.join, BOUND)
        q.put(QueuedTask("t2", b""))
        q.forwarded(1)
        getter.join(BOUND)
        self.assertEqual([t.id for t in got], ["t2"])

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
    def __init__(self, task):
        self.codec = Codec(KEY, session="s")
        self.task = task


class Forwarding(SynchronousTestCase):
    """The control thread sends the main thread's results on, keeps them, and tells the queue."""

    def setUp(self):
        self.engine = Engine(engine_id="e0")
        self.addCleanup(self.engine.context.destroy, 0)
        self.addCleanup(self.engine.control.wake.close)
        self.codec = Codec(KEY, session="s")

    def hand(self, number, task_id):
        fields = {"task": task_id, "ok": True}
        payloads = [pickle.dumps(number), b"", b""]
        self.engine.results.append((number, task_id, fields, payloads, self.codec.encode("result", fields, payloads)))
        self.engine.control.wake.set()

    def test_unregistered_results_are_kept_unsent(self):
        self.hand(1, "t1")
        self.hand(2, "t2")
        self.engine.queue.put(QueuedTask("t3", b""))
        self.engine.control._forward(self.engine.control.wake, None)
        self.assertEqual(len(self.engine.results), 0)
        self.assertFalse(self.engine.control.wake.wait(0), "the wake is cleared")
        self.assertEqual(len(self.engine.control.outbox), 2)
        self.assertEqual(self.engine.queue.get(timeout=0, after=2, after_wait=BOUND).id, "t3", "told: up to result 2")
        [first, _] = self.engine.control.outbox.again(self.codec)
        self.assertEqual(Codec(KEY).decode(first)["task"], "t1", "oldest first")

    def test_registered_results_go_out_on_the_task_socket_in_order(self):
        receiver, sender = self.engine.context.socket(zmq.PAIR), self.engine.context.socket(zmq.PAIR)
        for sock in (receiver, sender):
            sock.setsockopt(zmq.LINGER, 0)
            self.addCleanup(sock.close)
        receiver.bind("inproc://test-forward")
        sender.connect("inproc://test-forward")
        self.hand(1, "t1")
        self.hand(2, "t2")
        self.engine.control._forward(self.engine.control.wake, FakeChannels(sender))
        tasks = []
        for _ in range(2):
            self.assertTrue(receiver.poll(BOUND * 1000))
            tasks.append(Codec(KEY).decode(recv_frames(receiver))["task"])
        self.assertEqual(tasks, ["t1", "t2"])
        self.assertEqual(len(self.engine.control.outbox), 2, "kept too, to send again after a new registration")


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
