"""Chaos under supervision (issue 8): 3 supervised local engines, 1,000 tasks; every 2 s for
20 s a random engine is SIGKILLed and another SIGSTOPped for 3 s.  Every task must give
exactly one correct result or a clear error, and no result may reach the client twice.

The counts (results, errors, duplicates, re-runs, restarts) are printed for the record.
"""
from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from ipcluster import errors
from tests.cluster import until, within
from tests.test_supervision import local_cluster

TASKS = 1000
ROUNDS = 10  # one every 2 s: 20 s of chaos
PERIOD = 2.0
FROZEN_FOR = 3.0


def work(i, log):
    """i², after 50 ms; each run leaves a line in ``log`` (so re-runs can be counted)."""
    import os
    import time

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"%d\n" % i)
    finally:
        os.close(fd)
    time.sleep(0.05)
    return i * i


class Chaos(unittest.TestCase):
    timeout = 400

    @defer.inlineCallbacks
    def test_every_task_ends_exactly_once_while_engines_are_killed_and_frozen(self):
        controller, client = yield local_cluster(self, engines=3)
        launcher = controller.local_engines.launcher
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        log = os.path.abspath(self.mktemp())

        delivered = Counter()  # task id -> results sent to its client, counted where they leave
        post = controller.scheduler.results
        deliver = post.deliver

        def counting(store, t, ok, fields, payloads, error):
            delivered[t.id] += 1
            return deliver(store, t, ok, fields, payloads, error)

        post.deliver = counting
        frozen: dict = {}  # engine id -> pid, while SIGSTOPped
        done = Counter()

        def thaw(engine_id, pid):
            if frozen.get(engine_id) == pid:
                del frozen[engine_id]
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

        def thaw_all():
            for engine_id, pid in list(frozen.items()):
                thaw(engine_id, pid)

        self.addCleanup(thaw_all)

        def round_():
            running = launcher.running()
            awake = sorted(e for e in running if e not in frozen)
            if not awake:
                return
            victim = rng.choice(awake)
            os.kill(running[victim], signal.SIGKILL)
            done["killed"] += 1
            others = [e for e in awake if e != victim]
            if others:
                sleeper = rng.choice(others)
                os.kill(running[sleeper], signal.SIGSTOP)
                frozen[sleeper] = running[sleeper]
                done["frozen"] += 1
                reactor.callLater(FROZEN_FOR, thaw, sleeper, running[sleeper])

        started = time.monotonic()
        futures = [client.submit(work, i, log) for i in range(TASKS)]
        chaos = task.LoopingCall(round_)
        chaos.clock = reactor
        stopped = chaos.start(PERIOD, now=False)
        self.addCleanup(lambda: chaos.running and chaos.stop())
        reactor.callLater(PERIOD * ROUNDS + 0.1, chaos.stop)
        outcomes = yield within(defer.DeferredList(futures, consumeErrors=True), 240, "1,000 tasks under chaos")
        yield within(stopped, 60, "the chaos to end")
        elapsed = time.monotonic() - started
        # Killed engines were restarted, frozen ones thawed and rejoined: the pool is whole again.
        yield until(lambda: sorted(r.id for r in controller.registry.live()) == ["e0", "e1", "e2"], 120,
                    "all three engines alive again")

        results, failures = 0, Counter()
        for i, (ok, value) in enumerate(outcomes):
            if ok:
                self.assertEqual(value, i * i, f"task {i} gave a wrong result")
                results += 1
            else:
                exc = value.value
                self.assertIsInstance(exc, (errors.EngineDied, errors.NoEngines), f"task {i}: {exc!r}")
                self.assertIn("engine", str(exc), f"task {i}'s error does not say what happened")
                failures[type(exc).__name__] += 1
        runs = Counter(int(line) for line in open(log).read().split())
        restarts = sum(controller.local_engines.supervision(e)["restarts"] for e in ("e0", "e1", "e2"))
        duplicates = sum(n - 1 for n in delivered.values() if n > 1) + client._core.dropped
        print(
            f"\n[chaos] seed {seed}: {TASKS} tasks in {elapsed:.1f} s; {done['killed']} SIGKILLs, "
            f"{done['frozen']} SIGSTOPs of {FROZEN_FOR:g} s; results {results}, errors {sum(failures.values())} "
            f"{dict(failures)}, duplicates {duplicates}, re-runs {sum(runs.values()) - len(runs)} "
            f"(tasks run more than once: {sum(1 for n in runs.values() if n > 1)}; retried by the scheduler: "
            f"{controller.scheduler.retried}), restarts {restarts}"
        )
        self.assertEqual(results + sum(failures.values()), TASKS)
        self.assertEqual(len(delivered), TASKS, "a task ended without a result")
        self.assertEqual(duplicates, 0, "a result was delivered twice")
        self.assertEqual(controller.scheduler.tasks, {}, "tasks left in flight")
        self.assertGreaterEqual(done["killed"], ROUNDS - 1, "the chaos did not happen")
        self.assertGreaterEqual(restarts, done["killed"] - 1, "killed engines were not restarted")
        self.assertGreater(results, TASKS * 0.9, "most tasks should survive: only the task running on a twice-killed engine fails")
