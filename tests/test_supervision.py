"""Integration: the controller's own engines under supervision, real processes on 127.0.0.1.

A SIGKILLed local engine comes back with its id and takes work; a poison-pill task
with retries=1 costs exactly two engine deaths (both restarted) and fails with
EngineDied naming SIGSEGV, while the tasks queued behind it succeed; with no engine
left and none coming, queued tasks fail with NoEngines; an engine over its memory
limit is recycled and its task told why.
"""
from __future__ import annotations

import os
import signal

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ipcluster import errors
from tests.cluster import BOUND, connect_client, error_of, event, start_controller, until, within


def nap(seconds, value=None):
    import time

    time.sleep(seconds)
    return value


def segfault():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def whoami():
    import os

    return os.getpid()


def hog(megabytes, seconds):
    import time

    block = bytearray(megabytes * 10**6)
    for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    time.sleep(seconds)
    return len(block)


class Deaths:
    """Every ``dead`` event of a registry, with its reason."""

    def __init__(self, registry) -> None:
        self.events = []
        self.registry = registry
        registry.subscribe(self._event)

    def _event(self, event, record, reason) -> None:
        if event == "dead":
            self.events.append((record.id, reason, reactor.seconds()))

    def close(self) -> None:
        self.registry.unsubscribe(self._event)


@defer.inlineCallbacks
def local_cluster(testcase, engines=2, **config):
    """A controller with supervised local engines, all joined, and a client."""
    controller = yield start_controller(testcase, engines=engines, store="memory", **config)
    yield defer.gatherResults([event(controller.registry, "joined", f"e{i}") for i in range(engines)])
    client = yield connect_client(testcase, controller)
    return controller, client


def pid_of(controller, engine_id):
    return controller.local_engines.launcher.running()[engine_id]


class Restarts(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_a_killed_engine_comes_back_and_takes_work(self):
        controller, client = yield local_cluster(self, engines=1)
        old = pid_of(controller, "e0")
        self.assertEqual((yield within(client.submit(whoami), BOUND, "a task on e0")), old)
        dead = event(controller.registry, "dead", "e0")
        back = event(controller.registry, "joined", "e0")
        killed_at = reactor.seconds()
        os.kill(old, signal.SIGKILL)
        record, reason = yield dead  # (resumed inside the registry's announcement)
        self.assertEqual(reason, "process killed by signal 9 (SIGKILL)")
        self.assertEqual(controller.local_engines.supervision("e0")["supervisor"], "backing off")
        record, _ = yield back
        rejoined = reactor.seconds() - killed_at
        new = pid_of(controller, "e0")
        self.assertNotEqual(new, old)
        self.assertEqual(record.pid, new)
        self.assertTrue(record.local)
        self.assertEqual((yield within(client.submit(whoami), BOUND, "a task on the restarted e0")), new)
        info = next(e for e in controller.status.engines() if e["id"] == "e0")
        self.assertEqual((info["state"], info["supervisor"], info["restarts"]), ("alive", "running", 1))
        print(f"\n[restart] e0 SIGKILLed: back (joined) after {rejoined:.2f} s (back-off 0.5 s)")

    @defer.inlineCallbacks
    def test_the_poison_pill_costs_two_engines_and_names_the_signal(self):
        controller, client = yield local_cluster(self, engines=2)
        deaths = Deaths(controller.registry)
        self.addCleanup(deaths.close)
        pill = client.submit(segfault, retries=1)
        behind = [client.submit(nap, 0.3, i) for i in range(8)]
        exc = yield error_of(pill, "the poison pill")
        self.assertIsInstance(exc, errors.EngineDied)
        self.assertIn("while running task", str(exc))
        self.assertIn(pill.task_id, str(exc))
        self.assertIn("process killed by signal 11 (SIGSEGV)", str(exc))
        values = yield within(defer.gatherResults(behind), BOUND * 2, "the tasks queued behind the pill")
        self.assertEqual(values, list(range(8)))
        # Two deaths, and only the pill charged. One exception, documented in scheduling.md: an
        # engine that finished a task and segfaulted on the pill a moment later can die before
        # ZeroMQ's I/O thread has written that result; the finished task is then the oldest the
        # dead engine held, it pays the retry, and the pill (put back) costs one more engine.
        deaths_n = len(deaths.events)
        self.assertIn(deaths_n, (2, 3), deaths.events)
        self.assertEqual({engine for engine, _, _ in deaths.events}, {"e0", "e1"})
        self.assertTrue(all("SIGSEGV" in reason for _, reason, _ in deaths.events), deaths.events)
        self.assertEqual(controller.scheduler.retried, deaths_n - 1, "one retry charged per death but the last")
        # Both came back.
        yield until(lambda: all(r.state == "alive" for r in controller.registry), BOUND, "both engines back")
        restarts = {e: controller.local_engines.supervision(e)["restarts"] for e in ("e0", "e1")}
        self.assertEqual(sum(restarts.values()), deaths_n, restarts)
        self.assertTrue(all(n >= 1 for n in restarts.values()), restarts)


class NoEnginesLeft(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_queued_tasks_fail_once_no_engine_is_coming(self):
        controller, client = yield local_cluster(self, engines=1, restart_limit=0, no_engine_timeout=2.0)
        running = client.submit(nap, 60, retries=1)
        queued = client.submit(nap, 0, "never")
        yield until(lambda: controller.registry.get("e0").running_task == running.task_id, BOUND, "the task to start")
        gone = reactor.seconds()
        os.kill(pid_of(controller, "e0"), signal.SIGKILL)
        for d in (running, queued):
            exc = yield error_of(d, "a task with no engine left")
            self.assertIsInstance(exc, errors.NoEngines)
            self.assertIn("no engine is alive and none is coming back", str(exc))
        waited = reactor.seconds() - gone
        self.assertGreaterEqual(waited, 2.0)
        self.assertEqual(controller.local_engines.supervision("e0")["supervisor"], "off")
        self.assertEqual(controller.scheduler.tasks, {})

    @defer.inlineCallbacks
    def test_an_engine_that_joins_in_time_takes_the_task(self):
        from tests.cluster import spawn_engine

        controller = yield start_controller(self, store="memory", no_engine_timeout=30.0)
        client = yield connect_client(self, controller)
        task = client.submit(nap, 0, "ran")
        spawn_engine(self, controller.config.connection_file, "late")
        self.assertEqual((yield within(task, BOUND, "the task on the late engine")), "ran")


class MemoryLimit(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_an_engine_over_its_limit_is_recycled_and_its_task_told(self):
        controller, client = yield local_cluster(self, engines=1, engine_memory_limit=250 * 10**6)
        old = pid_of(controller, "e0")
        deaths = Deaths(controller.registry)
        self.addCleanup(deaths.close)
        exc = yield error_of(client.submit(hog, 400, 30, retries=0), "the memory hog")
        self.assertIsInstance(exc, errors.EngineDied)
        self.assertIn("while running task", str(exc))
        self.assertIn("exceeded its memory limit", str(exc))
        self.assertIn("> 250 MB", str(exc))
        yield until(lambda: (r := controller.registry.get("e0")) is not None and r.state == "alive", BOUND, "e0 back")
        self.assertNotEqual(pid_of(controller, "e0"), old)
        self.assertEqual(controller.local_engines.supervision("e0")["restarts"], 1)
        self.assertEqual(len(deaths.events), 1, deaths.events)
        self.assertEqual((yield within(client.submit(nap, 0, "fine"), BOUND, "a task after the recycle")), "fine")
