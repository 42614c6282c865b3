"""Network faults between hosts: a host's link cut and healed (network namespaces, CURVE over TCP).

Engines run in two namespaces on a bridge; the controller binds the bridge's address.  Cutting
one host's link (its veth set down) must make its engine dead within the detection bound
(``heartbeat_misses`` periods, plus slack for this shared machine) and its running task be
retried once on the other host; healing the link must bring the engine back (it re-registers).
"""
from __future__ import annotations

import sys
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.trial import unittest

from tests import netns
from tests.cluster import BOUND, connect_client, event, spawn, start_controller, until, within

log = Logger()
PERIOD, MISSES = 0.5, 3
#: Slack over ``PERIOD * MISSES`` for a loaded 2-core machine (the figure is logged).
SLACK = 4.0
SLEEPY = eval("lambda s: (__import__('time').sleep(s), __import__('os').readlink('/proc/self/ns/net'))[1]")


class LinkCut(unittest.TestCase):
    timeout = 300

    def setUp(self):
        why = netns.skip_reason()
        if why:
            raise unittest.SkipTest(why)
        self.net = netns.Network(2)
        self.addCleanup(self.net.close)

    def engine(self, controller, host, engine_id):
        argv = host.argv(sys.executable, "-m", "ipcluster.engine", "--connection-file",
                         str(controller.config.connection_file), "--id", engine_id)
        return spawn(self, f"engine {engine_id} on {host.name}", argv)

    @defer.inlineCallbacks
    def test_cut_kills_and_retries_heal_brings_it_back(self):
        controller = yield start_controller(self, ip=self.net.controller_ip, heartbeat_period=PERIOD,
                                            heartbeat_misses=MISSES)
        joined = [event(controller.registry, "joined", e) for e in ("e0", "e1")]
        for host, engine_id in zip(self.net.hosts, ("e0", "e1")):
            self.engine(controller, host, engine_id)
        yield defer.gatherResults(joined)
        client = yield connect_client(self, controller)
        tasks = [client.submit(SLEEPY, 3.0, retries=1) for _ in range(2)]
        records = {r.id: r for r in controller.registry.live()}
        yield until(lambda: all(records[e].running_task for e in ("e0", "e1")), what="a task running on each engine")
        cut_task = records["e0"].running_task

        dead = event(controller.registry, "dead", "e0")
        cut_at = time.monotonic()
        self.net.hosts[0].cut()
        _, reason = yield within(dead, BOUND, "e0 to be declared dead after its link was cut")
        detected = time.monotonic() - cut_at
        log.info("link cut: e0 dead after {s:.2f} s ({reason})", s=detected, reason=reason)
        self.assertLess(detected, PERIOD * MISSES + SLACK, f"detection took {detected:.2f} s")

        results = yield within(defer.gatherResults(tasks), BOUND, "both tasks (one retried on e1)")
        self.assertEqual([t.engine for t in tasks], ["e1", "e1"])
        self.assertEqual(len(set(results)), 1, "both ran on the second host")
        retried = next(t for t in tasks if t.task_id == cut_task)
        self.assertEqual(retried.engine, "e1")

        back = event(controller.registry, "joined", "e0")
        self.net.hosts[0].heal()
        yield within(back, BOUND, "e0 to re-register once its link is back")
        again = yield within(client.submit(SLEEPY, 0, engine="e0"), BOUND, "a task on e0 after the heal")
        self.assertNotEqual(again, results[0])
