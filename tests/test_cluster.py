"""Integration: a real controller, real engine processes, real sockets on 127.0.0.1.

Default heartbeat settings throughout, unless a test says otherwise.
"""
from __future__ import annotations

import os
import signal
import sys

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ipcluster import errors
from ipcluster.controller.registry import ALIVE, BUSY, DEAD
from tests.cluster import BOUND, connect_client, error_of, event, spawn, spawn_engine, start_controller, start_engines, until, within


def hold_gil(seconds):
    """One C call that holds the GIL: libc sleep() through ctypes.PyDLL (which keeps the GIL)."""
    import ctypes

    ctypes.PyDLL(None).sleep(int(seconds))
    return "held"


def spin(seconds=60.0):
    """Pure Python busy loop (interruptible by SIGINT)."""
    import time

    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[-1].split()[0] in ("T", "t")


class Liveness(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_killed_and_hung_engines_are_dead_others_alive(self):
        """SIGKILL and SIGSTOP are each reported dead; the bystander stays alive; pending commands errback."""
        controller = yield start_controller(self)
        procs = yield start_engines(self, controller, ["k", "s", "ok"])
        client = yield connect_client(self, controller)
        deaths = []
        controller.registry.subscribe(lambda ev, rec, why: ev == "dead" and deaths.append(rec.id))

        # Hung: SIGSTOP, then a command that can only wait, then dead.
        s_dead = event(controller.registry, "dead", "s")
        procs["s"].kill(signal.SIGSTOP)
        # A signal lands a moment later: until then the engine could still answer the command.
        yield until(lambda: _stopped(procs["s"].pid), what="engine s to stop")
        pending = controller.control.control_for("s").beat(timeout=120)
        record, reason = yield s_dead
        self.assertIn("heart silent", reason)
        exc = yield error_of(pending, "the pending beat")
        self.assertIsInstance(exc, errors.EngineDead)

        # Killed: SIGKILL (an engine we did not start: only the heartbeat can tell).
        k_dead = event(controller.registry, "dead", "k")
        procs["k"].kill(signal.SIGKILL)
        yield k_dead

        self.assertEqual(sorted(deaths), ["k", "s"])
        self.assertEqual(controller.registry.get("ok").state, ALIVE)
        rtt = yield client.beat("ok")
        self.assertGreater(rtt, 0)
        states = {e["id"]: e["state"] for e in (yield client.engines())}
        self.assertEqual(states, {"k": DEAD, "s": DEAD, "ok": ALIVE})
        with self.assertRaises(errors.EngineDead):
            yield client.submit(pow, 2, 2, engine="k")

    @defer.inlineCallbacks
    def test_gil_holding_task_is_busy_never_dead(self):
        """A task in one GIL-holding C call for 20 s: busy meanwhile, alive after, result arrives."""
        controller = yield start_controller(self)
        yield start_engines(self, controller, ["g"])
        client = yield connect_client(self, controller)
        seen = []
        controller.registry.subscribe(lambda ev, rec, why: rec.id == "g" and seen.append(ev))
        busy = event(controller.registry, "busy", "g")
        alive_again = event(controller.registry, "alive", "g", seconds=BOUND + 20)
        result = client.submit(hold_gil, 20, engine="g")
        record, reason = yield busy
        self.assertEqual(record.state, BUSY)
        self.assertIn("control silent", reason)
        engines = yield client.engines()
        self.assertIsNotNone(engines[0]["busy_for"])
        value = yield within(result, BOUND + 20, "the GIL-holding task's result")
        self.assertEqual(value, "held")
        yield alive_again
        self.assertEqual(controller.registry.get("g").state, ALIVE)
        self.assertNotIn("dead", seen)
        self.assertEqual(seen, ["busy", "alive"])


class Control(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.controller = yield start_controller(self)
        self.procs = yield start_engines(self, self.controller, ["c0"])
        self.client = yield connect_client(self, self.controller)

    def running(self, task_id):
        return until(lambda: self.controller.registry.get("c0").running_task == task_id, what=f"task {task_id} to start")

    @defer.inlineCallbacks
    def test_signal_interrupts_running_task(self):
        task = self.client.submit(spin, 60, engine="c0")
        yield self.running(task.task_id)
        missed = yield self.client.signal("c0", signal.SIGINT, task="some-other-task")
        self.assertFalse(missed)
        sent = yield self.client.signal("c0", signal.SIGINT, task=task.task_id)
        self.assertTrue(sent)
        exc = yield error_of(task, "the interrupted task")
        self.assertIsInstance(exc, errors.TaskInterrupted)
        self.assertEqual(exc.ename, "KeyboardInterrupt")
        # The engine survives and runs the next task.
        self.assertEqual((yield self.client.submit(pow, 3, 3, engine="c0")), 27)

    @defer.inlineCallbacks
    def test_bad_signal_number_is_refused_and_engine_survives(self):
        with self.assertRaises(errors.BadRequest):
            yield self.client.signal("c0", 100)
        self.assertGreater((yield self.client.beat("c0")), 0)
        self.assertEqual(self.controller.registry.get("c0").state, "alive")

    @defer.inlineCallbacks
    def test_abort_drops_queued_task(self):
        first = self.client.submit(nap, 30, engine="c0")
        second = self.client.submit(pow, 2, 5, engine="c0")
        yield self.running(first.task_id)
        self.assertEqual((yield self.client.abort("c0", second.task_id)), "aborted")
        exc = yield error_of(second, "the aborted task")
        self.assertIsInstance(exc, errors.TaskAborted)
        self.assertEqual((yield self.client.abort("c0", first.task_id)), "running")
        self.assertEqual((yield self.client.abort("c0", "never-sent")), "unknown")
        yield self.client.signal("c0", signal.SIGINT, task=first.task_id)
        exc = yield error_of(first, "the interrupted first task")
        self.assertIsInstance(exc, errors.TaskInterrupted)

    @defer.inlineCallbacks
    def test_reset_clears_namespace_and_queue(self):
        def put(value):
            from ipcluster.engine import namespace

            namespace["x"] = value

        def get():
            from ipcluster.engine import namespace

            return namespace.get("x")

        yield self.client.submit(put, 42, engine="c0")
        self.assertEqual((yield self.client.submit(get, engine="c0")), 42)
        self.assertEqual((yield self.client.reset("c0")), 0)
        self.assertIsNone((yield self.client.submit(get, engine="c0")))

    @defer.inlineCallbacks
    def test_exit_ends_engine(self):
        self.assertIsNone((yield self.client.exit("c0")))
        self.assertEqual([e["id"] for e in (yield self.client.engines())], [])
        status = yield within(self.procs["c0"].ended.addErrback(lambda f: f.value), BOUND, "engine process to end")
        self.assertEqual(getattr(status, "exitCode", None), 0, self.procs["c0"].output())
        with self.assertRaises(errors.UnknownEngine):
            yield self.client.beat("c0")

    @defer.inlineCallbacks
    def test_direct_task_result_output_and_errors(self):
        def chatty(x):
            import sys

            print("to stdout", x)
            print("to stderr", file=sys.stderr)
            return x + 1

        def boom():
            return 1 / 0

        task = self.client.submit(chatty, 1, engine="c0")
        self.assertEqual((yield task), 2)
        self.assertEqual((task.stdout, task.stderr), ("to stdout 1\n", "to stderr\n"))
        exc = yield error_of(self.client.submit(boom, engine="c0"), "boom")
        self.assertIsInstance(exc, ZeroDivisionError)
        self.assertIn("in boom", str(exc.__cause__))
        with self.assertRaises(errors.UnknownEngine):
            yield self.client.submit(pow, 1, 1, engine="nobody")
        with self.assertRaises(errors.BadRequest):
            yield self.client._call("control", {"engine": "c0", "verb": "explode", "args": {}}, 5)


class Identity(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_killed_engine_restarted_with_same_identity_registers_again(self):
        controller = yield start_controller(self)
        procs = yield start_engines(self, controller, ["r0"])
        old_pid = procs["r0"].pid
        dead = event(controller.registry, "dead", "r0")
        joined = event(controller.registry, "joined", "r0")
        procs["r0"].kill(signal.SIGKILL)
        # Restart at once: the new process waits until the old one is declared dead.
        new = spawn_engine(self, controller.config.connection_file, "r0")
        yield dead
        record, _ = yield joined
        self.assertEqual(record.pid, new.pid)
        self.assertNotEqual(record.pid, old_pid)
        client = yield connect_client(self, controller)
        self.assertEqual((yield client.submit(pow, 2, 3, engine="r0")), 8)

    @defer.inlineCallbacks
    def test_engine_gives_up_when_controller_is_gone(self):
        controller = yield start_controller(self)
        procs = yield start_engines(self, controller, ["lonely"], "--reconnect-timeout", "3", "--controller-timeout", "2")
        yield controller.stopService()
        status = yield within(procs["lonely"].ended.addErrback(lambda f: f.value), BOUND, "the engine to give up")
        self.assertEqual(getattr(status, "exitCode", None), 3, procs["lonely"].output())
        self.assertIn("giving up", procs["lonely"].output())


    @defer.inlineCallbacks
    def test_heart_pings_alone_keep_the_engine_linked(self):
        """Control pings paced out past the engine's silence limit (here: every 4 s, CONTROL_QUIET_MAX,
        at busy_after 8 s, against --controller-timeout 2): the pings its heart echoes are word from
        the controller, so the engine keeps its registration."""
        from ipcluster.controller.heartmonitor import CONTROL_QUIET_MAX

        controller = yield start_controller(self, busy_after=8.0)
        yield start_engines(self, controller, ["quiet"], "--controller-timeout", "2")
        record = controller.registry.get("quiet")
        events = []
        controller.registry.subscribe(lambda ev, rec, reason: rec.id == "quiet" and events.append((ev, reason)))
        pings = []
        monitor = controller.monitor
        real = monitor.send_control_ping
        monitor.send_control_ping = lambda rec, beat: (rec.id == "quiet" and pings.append(reactor.seconds()), real(rec, beat))[1]
        yield until(lambda: len(pings) >= 3 or events, 4 * CONTROL_QUIET_MAX + BOUND, "three control pings to the engine")
        self.assertEqual(events, [], "the engine lost its link and registered again")
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        self.assertGreater(min(gaps), 2.0 + 0.5, f"control pings were not paced past the silence limit: {gaps}")
        self.assertIs(controller.registry.get("quiet"), record)
        self.assertEqual(record.state, ALIVE)

    @defer.inlineCallbacks
    def test_engine_exits_cleanly_on_sigterm(self):
        controller = yield start_controller(self)
        procs = yield start_engines(self, controller, ["t0"])
        left = event(controller.registry, "left", "t0")
        procs["t0"].kill(signal.SIGTERM)
        record, reason = yield left
        self.assertIn("SIGTERM", reason)
        status = yield within(procs["t0"].ended.addErrback(lambda f: f.value), BOUND, "the engine to exit")
        self.assertEqual(getattr(status, "exitCode", None), 0, procs["t0"].output())
        self.assertIsNone(controller.registry.get("t0"))

    @defer.inlineCallbacks
    def test_engine_rejoins_a_restarted_controller(self):
        data_dir = self.mktemp()
        first = yield start_controller(self, data_dir=data_dir)
        yield start_engines(self, first, ["phoenix"], "--controller-timeout", "2")
        yield first.stopService()
        second = yield start_controller(self, data_dir=data_dir)
        self.assertNotEqual(first.key, second.key)
        yield event(second.registry, "joined", "phoenix")
        client = yield connect_client(self, second)
        self.assertEqual((yield client.submit(pow, 5, 2, engine="phoenix")), 25)


class Errors(unittest.TestCase):
    @defer.inlineCallbacks
    def test_no_controller(self):
        from ipcluster.client.twisted import TwistedClient

        missing = os.path.join(self.mktemp(), "connection.json")
        with self.assertRaises(errors.NoController):
            yield TwistedClient.connect(missing, reactor=reactor)
        # A connection file whose controller is gone.
        controller = yield start_controller(self)
        path = str(controller.config.connection_file)
        copy = self.mktemp()
        with open(path) as f, open(copy, "w") as g:
            g.write(f.read())
        yield controller.stopService()
        with self.assertRaises(errors.NoController):
            yield TwistedClient.connect(copy, reactor=reactor, timeout=1.0)


class BadInput(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_flood_of_garbage_at_every_port(self):
        """100,000 bad messages at each port: no engine dead, beat() answers, nothing runs."""
        controller = yield start_controller(self)
        yield start_engines(self, controller, ["f0", "f1"])
        client = yield connect_client(self, controller)
        deaths = []
        controller.registry.subscribe(lambda ev, rec, why: ev in ("dead", "purged") and deaths.append((rec.id, why)))
        canary = os.path.abspath(self.mktemp())
        count = 100_000
        flood = spawn(
            self, "flood", [sys.executable, os.path.join(os.path.dirname(__file__), "flood.py"), str(controller.config.connection_file), str(count), canary]
        )
        beats = 0
        while flood.running:
            # beat() must keep answering while the flood goes on.
            yield within(client.beat("f0", timeout=20), BOUND, "beat during the flood")
            beats += 1
        status = yield flood.ended.addErrback(lambda f: f.value)
        self.assertEqual(getattr(status, "exitCode", None), 0, flood.output())
        self.assertEqual(int(flood.out.decode().strip()), 5 * count)
        # Let the controller read the rest, then check.
        yield until(lambda: controller.drops.total >= 5 * count * 0.99, what="the controller to read the flood")
        self.assertGreater(beats, 0)
        self.assertEqual(deaths, [])
        self.assertGreater((yield client.beat("f1")), 0)
        self.assertEqual(sorted(r.id for r in controller.registry), ["f0", "f1"])
        self.assertFalse(os.path.exists(canary), "a forged task was executed")
        self.assertEqual((yield client.submit(pow, 2, 8, engine="f1")), 256)
