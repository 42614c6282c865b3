"""Integration: load balancing, stealing, retries, timeouts, cancel, durable results, chaos.

Real engine processes on 127.0.0.1, driven through the Twisted client.
"""
from __future__ import annotations

import random
import signal

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from ipcluster import errors
from tests.cluster import BOUND, connect_client, error_of, spawn_engine, start_controller, start_engines, until, within


def nap(seconds, value=None):
    import time

    time.sleep(seconds)
    return value


def spin(seconds):
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "spun"


def square(i):
    import time

    time.sleep(0.002)
    return i * i


def whoami():
    import os

    return os.getpid()


class Balancing(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.controller = yield start_controller(self)
        self.procs = yield start_engines(self, self.controller, ["a", "b"])
        self.client = yield connect_client(self, self.controller)

    @defer.inlineCallbacks
    def test_tasks_spread_over_engines(self):
        tasks = [self.client.submit(nap, 0.05, i) for i in range(20)]
        values = yield defer.gatherResults(tasks)
        self.assertEqual(values, list(range(20)))
        used = {t.engine for t in tasks}
        self.assertEqual(used, {"a", "b"})

    @defer.inlineCallbacks
    def test_long_task_does_not_hold_up_work_another_engine_can_take(self):
        """A direct 30 s task on 'a'; balanced tasks prefetched behind it are stolen by 'b'."""
        long = self.client.submit(nap, 30, "long", engine="a")
        yield until(lambda: self.controller.registry.get("a").running_task == long.task_id, what="the long task to start")
        short = [self.client.submit(nap, 0.2, i) for i in range(6)]
        values = yield within(defer.gatherResults(short), BOUND, "the short tasks")
        self.assertEqual(values, list(range(6)))
        self.assertFalse(long.called, "short tasks waited for the long one")
        self.assertEqual({t.engine for t in short}, {"b"})
        yield self.client.signal("a", signal.SIGINT, task=long.task_id)
        yield error_of(long, "the interrupted long task")

    @defer.inlineCallbacks
    def test_stealing_moves_a_prefetched_task(self):
        """'a' runs a long task; a short one lands in its prefetch slot because 'b' is full;
        once 'b' is idle it steals the short one."""
        scheduler = self.controller.scheduler
        long = self.client.submit(nap, 30, "long", engine="a")
        yield until(lambda: self.controller.registry.get("a").running_task == long.task_id, what="the long task to start")
        b_tasks = [self.client.submit(nap, 1.0, i, engine="b") for i in range(2)]  # fills b: 1 running + 1 prefetched
        yield until(lambda: len(scheduler.assigned["b"]) == 2, what="b to be full")
        short = self.client.submit(nap, 0.1, "short")
        yield until(lambda: short.task_id in scheduler.assigned["a"], what="the short task in a's prefetch slot")
        self.assertEqual((yield within(short, BOUND, "the short task")), "short")
        self.assertEqual(short.engine, "b")
        self.assertEqual(scheduler.stolen, 1)
        self.assertFalse(long.called)
        yield defer.gatherResults(b_tasks)
        yield self.client.signal("a", signal.SIGINT, task=long.task_id)
        yield error_of(long, "the interrupted long task")

    @defer.inlineCallbacks
    def test_timeout_interrupts_and_engine_survives(self):
        exc = yield error_of(self.client.submit(spin, 60, timeout=1.0, engine="a"), "a task past its timeout")
        self.assertIsInstance(exc, errors.TaskTimeout)
        self.assertEqual((yield self.client.submit(pow, 2, 4, engine="a")), 16)

    @defer.inlineCallbacks
    def test_cancel_removes_queued_task(self):
        running = self.client.submit(nap, 30, engine="a")
        yield until(lambda: self.controller.registry.get("a").running_task == running.task_id, what="the task to start")
        waiting = self.client.submit(pow, 2, 2, engine="a", after=[running])
        self.assertTrue((yield self.client.cancel(waiting)))
        self.assertIsInstance((yield error_of(waiting, "the cancelled task")), defer.CancelledError)
        yield until(lambda: running.running, what="the client to hear the task started")
        self.assertFalse((yield self.client.cancel(running.task_id)), "a running task cannot be cancelled")
        yield self.client.signal("a", signal.SIGINT, task=running.task_id)
        yield error_of(running, "the interrupted task")

    @defer.inlineCallbacks
    def test_dependencies(self):
        first = self.client.submit(nap, 0.3, 1)
        second = self.client.submit(pow, 2, 3, after=[first])
        self.assertEqual((yield second), 8)
        self.assertTrue(first.called)
        broken = self.client.submit(lambda: 1 / 0)
        blocked = self.client.submit(pow, 2, 2, after=[broken])
        anyway = self.client.submit(pow, 3, 2, after=[broken], after_failed="run")
        self.assertIsInstance((yield error_of(broken, "the broken dependency")), ZeroDivisionError)
        exc = yield error_of(blocked, "a task whose dependency failed")
        self.assertIsInstance(exc, errors.DependencyError)
        self.assertIn(broken.task_id, str(exc))
        self.assertEqual((yield anyway), 9)
        with self.assertRaises(errors.BadRequest):
            yield self.client.submit(pow, 1, 1, after=["no-such-task"])


class Retries(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_task_reruns_when_its_engine_dies_then_fails_past_retries(self):
        controller = yield start_controller(self)
        procs = yield start_engines(self, controller, ["x", "y"])
        client = yield connect_client(self, controller)
        doomed = client.submit(nap, 1.0, "survived", engines=["x", "y"])
        yield until(lambda: controller.scheduler.assigned.get("x", {}).get(doomed.task_id) or controller.scheduler.assigned.get("y", {}).get(doomed.task_id), what="the task to be assigned")
        victim = "x" if doomed.task_id in controller.scheduler.assigned.get("x", {}) else "y"
        procs[victim].kill(signal.SIGKILL)
        self.assertEqual((yield within(doomed, BOUND, "the retried task")), "survived")
        self.assertNotEqual(doomed.engine, victim)
        self.assertEqual(controller.scheduler.retried, 1)
        # No retries left: EngineDied naming engine and task.
        survivor = "y" if victim == "x" else "x"
        last = client.submit(nap, 30, retries=0)
        yield until(lambda: controller.registry.get(survivor).running_task == last.task_id, what="the last task to start")
        procs[survivor].kill(signal.SIGKILL)
        exc = yield error_of(last, "a task whose engine died without retries")
        self.assertIsInstance(exc, errors.EngineDied)
        self.assertIn(survivor, str(exc))
        self.assertIn(last.task_id, str(exc))


class Durable(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_result_survives_controller_restart(self):
        data_dir = self.mktemp()
        first = yield start_controller(self, data_dir=data_dir)
        yield start_engines(self, first, ["d0"], "--controller-timeout", "2")
        client = yield connect_client(self, first)

        def printing(x):
            print("the answer is", x)
            return x * 2

        done = client.submit(printing, 21)
        self.assertEqual((yield done), 42)
        failed = client.submit(lambda: 1 / 0)
        yield error_of(failed, "a failing task")
        yield first.stopService()

        second = yield start_controller(self, data_dir=data_dir)
        other = yield connect_client(self, second)  # another client, after the restart
        fetched = other.fetch(done.task_id)
        self.assertEqual((yield within(fetched, BOUND, "the stored result")), 42)
        self.assertEqual(fetched.stdout, "the answer is 21\n")
        exc = yield error_of(other.fetch(failed.task_id), "the stored failure")
        self.assertIsInstance(exc, ZeroDivisionError)
        with self.assertRaises(errors.BadRequest):
            yield other.fetch("never-submitted")
        self.assertEqual((yield other.purge()), 2)
        with self.assertRaises(errors.BadRequest):
            yield other.fetch(done.task_id)


class Chaos(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_every_result_exactly_once_while_engines_are_killed(self):
        """5,000 tasks, retries=2, an engine SIGKILLed and replaced every ~1.5 s."""
        controller = yield start_controller(self, store="memory")
        names = iter(f"c{i}" for i in range(1000))
        live = yield start_engines(self, controller, [next(names) for _ in range(3)])
        client = yield connect_client(self, controller)
        rng = random.Random(42)
        kills = []

        def chaos():
            victim = rng.choice(sorted(live))
            live.pop(victim).kill(signal.SIGKILL)
            kills.append(victim)
            new = next(names)
            live[new] = spawn_engine(self, controller.config.connection_file, new)

        killer = task.LoopingCall(chaos)
        killer.clock = reactor
        killer.start(1.5, now=False)
        self.addCleanup(lambda: killer.running and killer.stop())
        n = 5000
        tasks = [client.submit(square, i, retries=2) for i in range(n)]
        values = yield within(defer.gatherResults(tasks, consumeErrors=True), 240, "5,000 tasks under chaos")
        killer.stop()
        self.assertEqual(values, [i * i for i in range(n)])
        self.assertGreaterEqual(len(kills), 2, "the chaos did not happen")
        self.assertEqual(client._core.dropped, 0, "a task yielded a second result")
        self.assertEqual(controller.scheduler.tasks, {})
        self.assertGreater(controller.scheduler.retried, 0)
