"""Control commands (EngineControl) and the controller's control socket (ControlChannel)."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ipcluster import errors
from ipcluster.scheduler.scheduler import Scheduler
from ipcluster.store.memory import MemoryTaskStore
from ipcluster.controller.control import ControlChannel, EngineControl
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.heartmonitor import HeartMonitor
from ipcluster.controller.registry import ALIVE, BUSY, Registry
from ipcluster.interfaces import IEngineControl
from ipcluster.transport.wire import Codec, PingCodec

KEY = b"k" * 32


class EngineControlTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.codec = Codec(KEY)
        self.sent = []
        self.connected = True
        self.control = EngineControl("e1", self.send, self.codec, self.clock, default_timeout=10.0)

    def send(self, frames):
        if not self.connected:
            return False
        self.sent.append(self.codec.decode(frames))
        return True

    def reply(self, command, ok=True, **fields):
        """The engine answers ``command`` (a decoded message sent to it)."""
        frames = self.codec.encode("reply", dict(fields, ref=command.id, ok=ok))
        self.control.reply_received(self.codec.decode(frames))

    def test_provides_interface(self):
        self.assertTrue(verifyObject(IEngineControl, self.control))
        self.assertEqual(self.control.engine_id, "e1")

    def test_commands_on_the_wire(self):
        self.control.beat()
        self.control.abort("t1")
        self.control.signal(2, "t1")
        self.control.signal(15)
        self.control.reset()
        self.control.exit(timeout=2)
        self.assertEqual([m.type for m in self.sent], ["command"] * 6)
        self.assertEqual(
            [(m["verb"], m["args"]) for m in self.sent],
            [
                ("beat", {}),
                ("abort", {"task": "t1"}),
                ("signal", {"signum": 2, "task": "t1"}),
                ("signal", {"signum": 15}),
                ("reset", {}),
                ("exit", {"timeout": 2.0}),
            ],
        )
        self.assertEqual(len({m.id for m in self.sent}), 6)
        self.assertEqual(self.control.pending, 6)

    def test_replies_correlated_out_of_order(self):
        beat = self.control.beat()
        abort = self.control.abort("t1")
        beat_cmd, abort_cmd = self.sent
        self.clock.advance(0.25)
        self.reply(abort_cmd, value="aborted")
        self.assertEqual(self.successResultOf(abort), "aborted")
        self.assertNoResult(beat)
        self.clock.advance(0.25)
        self.reply(beat_cmd)
        self.assertEqual(self.successResultOf(beat), 0.5)
        self.assertEqual(self.control.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [], "timeouts cancelled")

    def test_timeout(self):
        d = self.control.reset(timeout=3.0)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, errors.ControlTimeout)
        self.assertIn("'reset'", str(failure.value))
        self.assertEqual(self.control.pending, 0)

    def test_default_timeout(self):
        d = self.control.beat()
        self.clock.advance(9.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.failureResultOf(d, errors.ControlTimeout)

    def test_late_reply_ignored(self):
        d = self.control.abort("t1", timeout=1.0)
        self.clock.advance(1.0)
        self.failureResultOf(d, errors.ControlTimeout)
        self.reply(self.sent[0], value="aborted")  # must not raise AlreadyCalledError
        self.reply(self.sent[0], value="aborted")
        self.assertEqual(self.control.pending, 0)

    def test_reply_to_unknown_ref_ignored(self):
        d = self.control.beat()
        frames = self.codec.encode("reply", {"ref": "nobody.1", "ok": True})
        self.control.reply_received(self.codec.decode(frames))
        self.assertNoResult(d)
        self.assertEqual(self.control.pending, 1)

    def test_engine_gone_fails_all_pending(self):
        beat, reset = self.control.beat(), self.control.reset()
        gone = errors.EngineDead("engine e1 dead: heart silent")
        self.control.engine_gone(gone)
        self.assertIs(self.failureResultOf(beat, errors.EngineDead).value, gone)
        self.assertIs(self.failureResultOf(reset, errors.EngineDead).value, gone)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Later commands fail at once, without sending anything.
        self.failureResultOf(self.control.abort("t"), errors.EngineDead)
        self.assertEqual(len(self.sent), 2)
        self.successResultOf(self.control.exit())

    def test_exit_fires_when_engine_goes_after_ack(self):
        d = self.control.exit(timeout=1.0)
        self.reply(self.sent[0])
        self.assertNoResult(d)
        self.control.engine_gone(errors.EngineDead("engine e1 left: exited"))
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exit_times_out_when_engine_stays(self):
        d = self.control.exit(timeout=1.0)
        self.reply(self.sent[0])
        self.clock.advance(10.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, errors.ControlTimeout)
        self.control.engine_gone(errors.EngineDead("left at last"))  # no AlreadyCalledError

    def test_exit_refused(self):
        d = self.control.exit()
        self.reply(self.sent[0], ok=False, error={"type": "BadRequest", "message": "no"})
        self.failureResultOf(d, errors.BadRequest)
        self.control.engine_gone(errors.EngineDead("gone"))

    def test_exit_when_engine_leaves_before_ack_is_read(self):
        # The engine acks on its control socket and says 'bye' on its task
        # socket, then closes the control socket with linger 0: the controller
        # can see it leave before (or without) reading the ack.
        d = self.control.exit(timeout=1.0)
        self.control.engine_gone(errors.EngineDead("engine e1 left: exit command"))
        self.assertIsNone(self.successResultOf(d))

    def test_send_failure_fails_at_once(self):
        self.connected = False
        self.failureResultOf(self.control.beat(), errors.EngineDead)
        self.failureResultOf(self.control.exit(), errors.EngineDead)
        self.assertEqual(self.control.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_error_replies_map_to_classes(self):
        cases = [
            ({"type": "TaskAborted", "message": "gone"}, errors.TaskAborted),
            ({"type": "BadRequest", "message": "bad"}, errors.BadRequest),
            ({"type": "ControlTimeout", "message": "held"}, errors.ControlTimeout),
            ({"type": "NoSuchError", "message": "x"}, errors.ClusterError),
            ("not a dict", errors.ClusterError),
        ]
        for error, cls in cases:
            d = self.control.beat()
            self.reply(self.sent[-1], ok=False, error=error)
            failure = self.failureResultOf(d, cls)
            self.assertIs(type(failure.value), cls)
        self.assertEqual(str(failure.value), "malformed error from controller: 'not a dict'")

    def test_cancel(self):
        d = self.control.beat()
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.control.pending, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ControlChannelTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.codec = Codec(KEY)
        self.registry = Registry()
        self.monitor = HeartMonitor(
            self.clock, self.registry, PingCodec(KEY), lambda identity, ping: True, lambda record, beat: None
        )
        self.drops = DropLog(self.clock)
        self.addCleanup(self.drops.stop)
        self.sent = []
        # The scheduler records what an engine runs, from what its pongs say.
        scheduler = Scheduler(self.registry, self.codec, self.clock, self.send, self.send, self.drops, MemoryTaskStore())
        self.channel = ControlChannel(
            self.registry, self.monitor, self.codec, self.clock, self.send, self.drops, default_timeout=5.0,
            on_status=scheduler.engine_reported,
        )
        self.record = self.registry.register("e1", "i1", "host", 1, 0.0, identity=b"e1")
        self.registry.mark_alive(self.record, 0.0)

    def send(self, frames):
        self.sent.append((frames[0], self.codec.decode(frames[1:])))
        return True

    def from_engine(self, mtype, fields, identity=b"e1"):
        self.channel.message_received([identity, *self.codec.encode(mtype, fields, session=identity.decode())])

    def test_unregistered_identity_told_unknown(self):
        self.from_engine("pong", {"beat": 1, "instance": "x"}, identity=b"stranger")
        [(to, msg)] = self.sent
        self.assertEqual((to, msg.session), (b"stranger", "stranger"))
        self.assertEqual(msg.type, "unknown")
        self.assertNotIn("stranger", msg["reason"], "routing tokens are never shown")
        self.assertEqual(self.drops.totals[("control", "unknown session")], 1)

    def test_replayed_pong_dropped(self):
        frames = [b"e1", *self.codec.encode("pong", {"beat": 1, "instance": "i1", "queued": 3}, session="e1")]
        self.channel.message_received(frames)
        self.record.queued = 0
        self.channel.message_received(frames)
        self.assertEqual(self.record.queued, 0)
        self.assertEqual(self.drops.totals[("control", "replayed message")], 1)

    def test_message_of_another_session_dropped(self):
        self.channel.message_received([b"e1", *self.codec.encode("pong", {"beat": 1, "instance": "i1"}, session="e2")])
        self.assertEqual(self.drops.totals[("control", "session of another sender")], 1)
        self.assertIsNone(self.record.last_control_at)

    def test_dead_engine_told_unknown(self):
        self.registry.mark_dead(self.record, "gone", 1.0)
        self.from_engine("pong", {"beat": 1, "instance": "i1"})
        self.assertEqual([msg.type for _, msg in self.sent], ["unknown"])

    def test_stale_instance_dropped(self):
        self.clock.advance(5)
        self.from_engine("pong", {"beat": 1, "instance": "i0", "queued": 9})
        self.assertEqual(self.drops.totals[("control", "stale engine instance")], 1)
        self.assertEqual(self.record.queued, 0)
        self.assertIsNone(self.record.last_control_at, "a stale instance does not prove this one runs")
        self.assertEqual(self.sent, [])

    def test_bad_message_dropped(self):
        self.channel.message_received([b"e1", b"garbage", b"more"])
        self.channel.message_received([b"e1", *self.codec.encode("command", {"verb": "beat", "args": {}}, session="e1")])
        self.assertEqual(self.drops.totals[("control", "bad signature")], 1)
        self.assertEqual(self.drops.totals[("control", "unexpected type")], 1)
        self.assertEqual(self.sent, [])

    def test_pong_updates_status(self):
        self.clock.advance(10)
        self.from_engine("pong", {"beat": 3, "instance": "i1", "task": "t7", "running_for": 2.5, "queued": 4})
        self.assertEqual(self.record.running_task, "t7")
        self.assertEqual(self.record.task_started_at, 7.5)
        self.assertEqual(self.record.queued, 4)
        self.assertEqual(self.record.last_control_at, 10)
        self.from_engine("pong", {"beat": 4, "instance": "i1", "queued": 0})
        self.assertIsNone(self.record.running_task)
        self.assertIsNone(self.record.task_started_at)
        self.assertEqual(self.record.queued, 0)

    def test_pong_ends_busy(self):
        self.registry.mark_busy(self.record, 0.0, "held")
        self.from_engine("pong", {"beat": 3, "instance": "i1"})
        self.assertEqual(self.record.state, ALIVE)

    def test_send_ping(self):
        self.channel.send_ping(self.record, 12)
        [(to, msg)] = self.sent
        self.assertEqual((to, msg.type, msg["beat"]), (b"e1", "ping", 12))

    def test_reply_routed_to_command(self):
        d = self.channel.control_for("e1").abort("t1")
        [(to, command)] = self.sent
        self.assertEqual(to, b"e1")
        self.from_engine("reply", {"ref": command.id, "ok": True, "value": "running"})
        self.assertEqual(self.successResultOf(d), "running")

    def test_control_for(self):
        self.assertIs(self.channel.control_for("e1"), self.channel.control_for("e1"))
        self.assertRaises(errors.UnknownEngine, self.channel.control_for, "nope")
        self.registry.mark_dead(self.record, "gone", 1.0)
        self.assertRaises(errors.EngineDead, self.channel.control_for, "e1")

    def test_death_fails_pending_commands(self):
        other = self.registry.register("e2", "i2", "host", 2, 0.0, identity=b"e2")
        self.registry.mark_alive(other, 0.0)
        d1 = self.channel.control_for("e1").beat()
        d2 = self.channel.control_for("e2").beat()
        self.registry.mark_dead(self.record, "heart silent", 1.0)
        failure = self.failureResultOf(d1, errors.EngineDead)
        self.assertIn("heart silent", str(failure.value))
        self.assertNoResult(d2)
        self.assertNotIn("e1", self.channel.controls)
        self.assertIn("e2", self.channel.controls)

    def test_leaving_fails_pending_commands(self):
        d = self.channel.control_for("e1").reset()
        self.registry.remove(self.record, "exited", 1.0)
        self.failureResultOf(d, errors.EngineDead)
        self.assertEqual(self.channel.controls, {})

    def test_busy_engine_commands_wait(self):
        self.registry.mark_busy(self.record, 0.0, "held")
        self.assertEqual(self.record.state, BUSY)
        d = self.channel.control_for("e1").beat()
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, errors.ControlTimeout)
