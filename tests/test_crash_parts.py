"""The small parts of crash safety: the client's ControllerWatch, the engine's Outbox, the
engine's parent check, and the controller's identity across restarts."""
import os

from twisted.trial.unittest import SynchronousTestCase

from ipcluster import connection
from ipcluster.client.watch import ControllerWatch, is_local
from ipcluster.connection import ConnectionInfo
from ipcluster.controller.identity import kept_ports, previous_identity, sequence
from ipcluster.engine.outbox import Outbox
from ipcluster.engine.parent import PARENT_ENV, follow_parent, parent_to_follow
from ipcluster.errors import NoController
from ipcluster.transport.wire import Codec

KEY = b"k" * 32
PORTS = {"registration": 1, "heartbeat": 2, "control": 3, "task": 4, "client": 5}


def info(pid=100, key=KEY, ip="127.0.0.1"):
    return ConnectionInfo(ip=ip, ports=PORTS, key=key, controller_pid=pid)


class WatchTests(SynchronousTestCase):
    def watch(self, files, alive=(), **kw):
        """``files``: what each read of the connection file gives (an info, or None: no file)."""
        reads = iter(files)

        def read(path):
            found = next(reads)
            if found is None:
                raise NoController("gone")
            return found

        return ControllerWatch(info(), silence_limit=5.0, read=read, alive=lambda pid: pid in alive, local=True, **kw)

    def test_silence_under_the_limit_is_nothing(self):
        self.assertIsNone(self.watch([]).verdict(4.9, 100.0))

    def test_a_paused_controller_is_waited_for(self):
        watch = self.watch([info()] * 3, alive={100})
        for t in (10, 100, 500):
            self.assertIsNone(watch.verdict(t, t))

    def test_but_not_forever(self):
        watch = self.watch([info()], alive={100}, give_up_after=600.0)
        self.assertIn("gives up after 600 s", watch.verdict(601, 601))

    def test_a_stopped_controller_is_gone(self):
        self.assertIn("connection file is gone", self.watch([None]).verdict(6, 6))

    def test_another_key_is_gone(self):
        self.assertIn("another key", self.watch([info(key=b"x" * 32)]).verdict(6, 6))

    def test_a_dead_pid_waits_for_an_heir(self):
        watch = self.watch([info()] * 3 + [info(pid=200)], alive={200}, restart_wait=60.0)
        self.assertIsNone(watch.verdict(6, 10))
        self.assertIsNone(watch.verdict(50, 69))
        self.assertIn("no controller took over within 60 s", watch.verdict(80, 71))
        self.assertIsNone(watch.verdict(81, 72), "an heir came")

    def test_a_remote_controller_only_times_out(self):
        watch = ControllerWatch(info(ip="10.1.2.3"), silence_limit=5.0, give_up_after=600.0,
                                read=lambda p: self.fail("no file to read"), local=None)
        self.assertFalse(watch.local)
        self.assertIsNone(watch.verdict(599, 599))
        self.assertIsNotNone(watch.verdict(601, 601))

    def test_is_local(self):
        self.assertTrue(is_local("127.0.0.1"))
        self.assertTrue(is_local("localhost"))
        self.assertFalse(is_local("192.0.2.1"))


class OutboxTests(SynchronousTestCase):
    def setUp(self):
        self.now = 0.0
        self.old = Codec(KEY, session="old")

    def result(self, task, size=10):
        return self.old.encode("result", {"task": task, "ok": True, "started": 1.0}, [b"v" * size, b"", b""])

    def test_kept_results_are_signed_again(self):
        box = Outbox(clock=lambda: self.now)
        box.keep(self.result("t1"))
        new = Codec(KEY, session="new")
        [frames] = box.again(new)
        msg = Codec(KEY).decode(frames)
        self.assertEqual((msg.type, msg["task"], msg["ok"], msg["started"], msg.session), ("result", "t1", True, 1.0, "new"))
        self.assertEqual(msg.payloads[0], b"v" * 10)

    def test_bounded_by_count_bytes_and_age(self):
        box = Outbox(max_results=3, max_bytes=1000, max_age=60.0, clock=lambda: self.now)
        for i in range(5):
            box.keep(self.result(f"t{i}"))
        self.assertEqual(len(box), 3)
        box.keep(self.result("big", size=2000))
        self.assertEqual(len(box), 3, "a result larger than the bound is not kept")
        box.keep(self.result("unsent"), sent=False)
        self.now = 61.0
        self.assertEqual([Codec(KEY).decode(f)["task"] for f in box.again(Codec(KEY))], ["unsent"],
                         "sent results are kept for max_age, unsent ones until they are sent")
        self.now = 122.0
        self.assertEqual(box.again(Codec(KEY)), [])

    def test_other_messages_are_not_kept(self):
        box = Outbox()
        box.keep(self.old.encode("bye", {"instance": "i", "reason": "r"}))
        box.keep([b"sig", b"\xff not msgpack"])
        self.assertEqual(len(box), 0)


class ParentTests(SynchronousTestCase):
    def test_no_parent_to_follow(self):
        self.assertIsNone(parent_to_follow({}))
        self.assertIsNone(parent_to_follow({PARENT_ENV: "nonsense"}))
        self.assertTrue(follow_parent({}))

    def test_a_parent_that_is_gone(self):
        self.assertFalse(follow_parent({PARENT_ENV: str(os.getppid() + 1)}))


class IdentityTests(SynchronousTestCase):
    def test_a_dead_controllers_identity_is_taken_over(self):
        path = os.path.join(self.mktemp(), "connection.json")
        self.assertIsNone(previous_identity(path))
        dead = 2**22 + 12345  # (above the default pid_max)
        connection.write(info(pid=dead), path)
        previous = previous_identity(path)
        self.assertEqual(previous.key, KEY)
        self.assertEqual(kept_ports(previous, {"client": 9000}), {k: v for k, v in PORTS.items() if k != "client"})

    def test_a_live_controllers_is_not(self):
        path = os.path.join(self.mktemp(), "connection.json")
        connection.write(info(pid=os.getppid()), path)
        self.assertIsNone(previous_identity(path))

    def test_an_heirs_numbers_are_above(self):
        from ipcluster.controller import identity

        now = [1000.0]
        self.patch(identity.time, "time", lambda: now[0])
        first = sequence()
        numbers = [next(first) for _ in range(5000)]  # 5,000 messages ...
        now[0] += 0.01  # ... in the 10 ms before it was killed and its heir started
        self.assertGreater(next(sequence()), numbers[-1])
