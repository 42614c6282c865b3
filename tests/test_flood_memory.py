"""The keyless over-size flood: three messages of 5 x 200 MiB frames at the task and client ports.

Before ZAP, each such message cost the controller 1.2 GB of RSS and seconds of reactor
time, and three made every engine drop its link.  Now the flooder never passes the
handshake: the controller's RSS stays near its baseline (sampled every 50 ms while the flood
lasts, in a ``twistd`` process of its own) and its engines keep running tasks.
"""
from __future__ import annotations

import os
import sys

import psutil
from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial import unittest

from ipcluster.client.twisted import TwistedClient
from tests.cluster import BOUND, spawn, until, within

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
OVERSIZE = os.path.join(os.path.dirname(__file__), "oversize.py")
#: How far above its baseline the controller's RSS may go while the flood lasts.
MARGIN = 64 * 1024 * 1024

log = Logger()


class KeylessFlood(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_the_controller_memory_stays_near_its_baseline_and_engines_alive(self):
        data_dir = os.path.abspath(self.mktemp())
        conn = os.path.join(data_dir, "connection.json")
        twistd = spawn(self, "twistd", [TWISTD, "-n", "--pidfile=", "ipcluster", "--engines", "2", "--store", "memory",
                                        "--data-dir", data_dir])
        yield until(lambda: os.path.exists(conn) or not twistd.running, what="the connection file")
        self.assertTrue(twistd.running, twistd.output())
        controller = psutil.Process(twistd.pid)
        client = yield TwistedClient.connect(conn, reactor=reactor)
        self.addCleanup(client.close)
        yield self.engines_alive(client)
        for i in range(40):  # warm up: what a running controller holds anyway
            yield within(client.submit(pow, 2, i, engine=f"e{i % 2}"), BOUND, "a warm-up task")
        baseline = max(controller.memory_info().rss for _ in range(5))

        samples = []
        sampler = task.LoopingCall(lambda: samples.append(controller.memory_info().rss))
        sampler.start(0.05)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        flood = spawn(self, "oversize", [sys.executable, OVERSIZE, conn, "--messages", "3", "--frames", "5",
                                         "--frame-mb", "200", "--hold", "8"])
        yield until(lambda: b"SENDING" in flood.out or not flood.running, what="the flood to start")
        done = 0
        while flood.running:  # tasks keep running on both engines while the flood lasts
            yield within(client.submit(pow, 3, 2, engine=f"e{done % 2}"), BOUND, "a task during the flood")
            done += 1
        sampler.stop()
        yield flood.ended.addErrback(lambda f: None)
        self.assertEqual(flood.exit_code(), 0, flood.output())
        self.assertIn(b"OFFERED 6", flood.out)
        peak = max(samples)
        log.info("keyless flood ({out}): controller RSS baseline {base:.1f} MiB, peak {peak:.1f} MiB over {n} samples; "
                 "{done} tasks ran", out=flood.out.decode().split()[-4:], base=baseline / 2**20, peak=peak / 2**20,
                 n=len(samples), done=done)
        self.assertGreater(done, 0)
        self.assertLess(peak - baseline, MARGIN, f"RSS went from {baseline / 2**20:.0f} MiB to {peak / 2**20:.0f} MiB")
        engines = yield self.engines_alive(client)
        self.assertEqual(sorted(e["id"] for e in engines), ["e0", "e1"])

    @defer.inlineCallbacks
    def engines_alive(self, client):
        engines = []

        @defer.inlineCallbacks
        def check():
            engines[:] = yield client.engines()
            return len([e for e in engines if e["state"] == "alive"]) == 2

        deadline = reactor.seconds() + BOUND
        while not (yield check()):
            if reactor.seconds() > deadline:
                raise AssertionError(f"engines not alive: {engines}")
            yield task.deferLater(reactor, 0.1, lambda: None)
        return engines
