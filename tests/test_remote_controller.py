"""``ipcluster start --controller ssh:HOST --tunnel``: the controller on another host (a network
namespace with its own sshd), listening on that host's loopback only, reached through ssh -L."""
from __future__ import annotations

import os
import shlex
import sys

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ipcluster import connection
from ipcluster.client.twisted import TwistedClient
from ipcluster.launchers.controller import remote_of
from tests import netns
from tests.cluster import BOUND, spawn, until, within
from tests.daemons import Sshd, sshd_skip_reason

NETNS = eval('lambda: __import__("os").readlink("/proc/self/ns/net")')


class BehindSSH(unittest.TestCase):
    timeout = 300

    def setUp(self):
        why = netns.skip_reason() or sshd_skip_reason()
        if why:
            raise unittest.SkipTest(why)
        self.net = netns.Network(1)
        self.addCleanup(self.net.close)
        self.sshd = Sshd(self, self.net.hosts[0], self.mktemp())

    def ipcluster(self, *args):
        proc = spawn(self, "ipcluster " + " ".join(args[:1]), [sys.executable, "-m", "ipcluster.cli", *args])
        done = defer.Deferred()
        proc.ended.addBoth(lambda result: (done.callback((proc.exit_code(), proc.output())), result)[1])
        return within(done, BOUND * 2, f"ipcluster {args[0]}")

    @defer.inlineCallbacks
    def test_start_use_and_stop_through_a_tunnel(self):
        yield until(self.sshd.answers, what="the sshd", interval=0.5)
        data_dir = os.path.abspath(self.mktemp())
        remote_dir = os.path.abspath(self.mktemp())
        code, out = yield self.ipcluster(
            "start", "--data-dir", data_dir, "-n", "2", "--controller", f"ssh:{self.sshd.destination}", "--tunnel",
            "--ssh-options", shlex.join(self.sshd.options), "--remote-python", sys.executable,
            "--remote-data-dir", remote_dir, "--", "--curve")
        self.assertEqual(code, 0, out)
        self.addCleanup(lambda: self.ipcluster("stop", "--data-dir", data_dir) if remote_of(data_dir) else None)
        local = connection.read(os.path.join(data_dir, "connection.json"))
        there = connection.read(os.path.join(remote_dir, "connection.json"))
        self.assertEqual((local.ip, there.ip), ("127.0.0.1", "127.0.0.1"))
        self.assertNotEqual(local.ports, there.ports, "the local ports are the tunnel's")
        self.assertEqual(local.curve, there.curve)
        self.assertIsNotNone(local.curve)
        client = yield TwistedClient.connect(os.path.join(data_dir, "connection.json"), reactor=reactor)
        self.addCleanup(client.close)
        spaces = yield within(defer.gatherResults([client.submit(NETNS, engine=e) for e in ("e0", "e1")]),
                              BOUND, "tasks through the tunnel")
        self.assertNotIn(os.readlink("/proc/self/ns/net"), spaces, "the engines run on the other host")
        tunnel = remote_of(data_dir)["tunnel_pid"]
        client.close()
        code, out = yield self.ipcluster("stop", "--data-dir", data_dir)
        self.assertEqual(code, 0, out)
        self.assertFalse(os.path.exists(os.path.join(data_dir, "connection.json")))
        yield until(lambda: not connection.pid_alive(tunnel), what="the tunnel to end")
        host = self.net.hosts[0]
        yield until(lambda: all(_is_sshd(p) for p in host.pids()), what="the controller and engines to end")


def _is_sshd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"sshd" in f.read().split(b"\0")[0]
    except OSError:
        return True
