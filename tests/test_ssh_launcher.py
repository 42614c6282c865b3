"""The SSH launcher across real hosts: engines on two network namespaces, each with its own sshd,
reached over TCP with CurveZMQ (the controller binds the bridge's non-loopback address)."""
from __future__ import annotations

import os
import signal
import stat

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ipcluster.launchers.profile import LauncherSpec
from ipcluster.launchers.ssh import SSHHost, SSHLauncher, place
from tests import netns
from tests.cluster import BOUND, connect_client, event, start_controller, until, within
from tests.daemons import Sshd, sshd_skip_reason


class Placement(unittest.SynchronousTestCase):
    def test_counts_first_then_round_robin(self):
        a, b, c = SSHHost.parse("alice@a*2"), SSHHost.parse("b:2222"), SSHHost.parse("c")
        self.assertEqual((a.destination, a.engines, b.port), ("alice@a", 2, 2222))
        placed = place([f"e{i}" for i in range(6)], [a, b, c])
        self.assertEqual([placed[f"e{i}"].destination for i in range(6)], ["alice@a", "alice@a", "b", "c", "b", "c"])

    def test_commands_never_prompt_and_quote(self):
        launcher = SSHLauncher(reactor, "/tmp/x y/connection.json", [SSHHost("h", 2200)], python="/opt/py thon")
        argv = launcher.ssh_argv(SSHHost("h", 2200), "true")
        self.assertIn("BatchMode=yes", argv)
        self.assertEqual(argv[-4:], ["-p", "2200", "h", "true"])
        self.assertIn("'/opt/py thon' -m ipcluster.launchers.shim", launcher.engine_command(SSHHost("h"), "e0"))
        self.assertIn("umask 077", launcher.copy_command())
        self.assertRaises(ValueError, SSHLauncher, reactor, "f", [])


#: A task: the network namespace of the process that runs it (by value: the hosts cannot import tests).
NETNS = eval('lambda: __import__("os").readlink("/proc/self/ns/net")')


class AcrossHosts(unittest.TestCase):
    timeout = 300

    def setUp(self):
        why = netns.skip_reason() or sshd_skip_reason()
        if why:
            raise unittest.SkipTest(why)
        self.net = netns.Network(2)
        self.addCleanup(self.net.close)
        keys = self.mktemp()
        self.sshds = [Sshd(self, host, keys) for host in self.net.hosts]

    @defer.inlineCallbacks
    def test_engines_start_run_and_stop_over_ssh(self):
        yield until(lambda: all(s.answers() for s in self.sshds), what="the sshds to answer", interval=0.5)
        import sys

        spec = LauncherSpec("ssh", ssh={
            "hosts": [SSHHost(s.destination, engines=1) for s in self.sshds],
            "options": self.sshds[0].options,  # one key and one known-hosts file for both
            "python": sys.executable, "remote_dir": os.path.abspath(self.mktemp()),
        })
        joined = [event_later(self, "joined", eid) for eid in ("e0", "e1")]
        controller = yield start_controller(self, ip=self.net.controller_ip, engines=2, launcher=spec)
        self.assertIsNotNone(controller.info.curve, "a non-loopback controller speaks CURVE")
        for d in joined:
            d.callback(controller)
        yield within(defer.gatherResults([d.joined for d in joined]), BOUND, "engines to join over ssh")
        launcher = controller.local_engines.launcher
        self.assertEqual({launcher.where(e) for e in ("e0", "e1")} - {None}, {os.uname().nodename})
        copied = os.path.join(spec.ssh["remote_dir"], "connection.json")
        self.assertEqual(stat.S_IMODE(os.stat(copied).st_mode), 0o600)
        client = yield connect_client(self, controller)
        namespaces = yield within(defer.gatherResults([client.submit(NETNS, engine=e) for e in ("e0", "e1")]),
                                  BOUND, "a task on each host")
        here = os.readlink("/proc/self/ns/net")
        self.assertNotIn(here, namespaces)
        self.assertEqual(len(set(namespaces)), 2, "each engine in its own host's namespace")
        records = {r.id: r for r in controller.registry.live()}
        self.assertEqual(records["e0"].pid, launcher.running()["e0"], "the pid the engine registered with")
        # A signal reaches the remote engine; its supervisor restarts it over ssh.
        restarted = event(controller.registry, "joined", "e1")
        self.assertTrue(launcher.signal("e1", signal.SIGKILL))
        yield restarted
        yield controller.stopService()
        for host in self.net.hosts:
            yield until(lambda host=host: all(_is_sshd(p) for p in host.pids()), what=f"engines on {host.name} to end")


def _is_sshd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"sshd" in f.read().split(b"\0")[0]
    except OSError:
        return True  # gone


class event_later(defer.Deferred):
    """A registry event waited for on a controller that does not exist yet (callback it with the controller)."""

    def __init__(self, testcase, wanted, engine_id):
        super().__init__()
        self.joined = defer.Deferred()
        self.addCallback(lambda controller: event(controller.registry, wanted, engine_id).chainDeferred(self.joined))
