"""The Slurm launcher: its commands and its reading of Slurm's answers (on a task.Clock, Slurm faked),
then a real single-node Slurm (munged, slurmctld, and slurmd on a host of its own) running engines
as a job array and as one job of srun tasks."""
from __future__ import annotations

import os
import signal
import subprocess

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from ipcluster import connection
from ipcluster.launchers.local import CLEAN_EXIT
from ipcluster.launchers.profile import LauncherSpec
from ipcluster.launchers.slurm import SlurmLauncher, _sacct_jobs, _scontrol_jobs
from tests import netns
from tests.cluster import BOUND, connect_client, event, start_controller, until, within
from tests.daemons import Slurm, slurm_skip_reason

NETNS = eval('lambda: __import__("os").readlink("/proc/self/ns/net")')


class FakeSlurm:
    """Answers the launcher's commands from a table the test edits."""

    def __init__(self):
        self.calls = []
        self.squeue = ""
        self.scontrol = ""

    def __call__(self, argv):
        self.calls.append(argv)
        answers = {"sbatch": (b"42;ipc\n", b"", 0), "squeue": (self.squeue.encode(), b"", 0),
                   "sacct": (b"", b"sacct: error: Slurm accounting storage is disabled", 1),
                   "scontrol": (self.scontrol.encode(), b"", 0), "scancel": (b"", b"", 0)}
        return defer.succeed(answers[os.path.basename(argv[0])])


class Commands(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.slurm = FakeSlurm()
        self.ended = []
        self.launcher = SlurmLauncher(self.clock, "/data/connection.json", lambda *a: self.ended.append(a),
                                      settings={"partition": "p", "account": "a", "time": "1:00:00", "poll": 2.0,
                                                "python": "/py", "options": ["--mem=1G"]},
                                      log_dir=self.mktemp(), run=self.slurm)
        os.makedirs(self.launcher.log_dir)

    def test_array_and_srun_jobs(self):
        argv = self.launcher.sbatch_argv(["e0", "e1", "e2"])
        for option in ("--partition", "p", "--account", "a", "--time", "1:00:00", "--array=0-2", "--mem=1G"):
            self.assertIn(option, argv)
        self.assertIn("--ids e0,e1,e2 --array", argv[-1])
        srun = SlurmLauncher(self.clock, "/c.json", settings={"mode": "srun"}).sbatch_argv(["e0", "e1"])
        self.assertIn("--ntasks=2", srun)
        self.assertTrue(srun[-1].startswith("exec srun"))
        self.assertRaises(ValueError, SlurmLauncher, self.clock, "/c", settings={"mode": "nope"})

    def test_parsing(self):
        line = ("JobId=43 ArrayJobId=42 ArrayTaskId=1 JobName=x JobState=FAILED Reason=NonZeroExitCode "
                "Dependency=(null) ExitCode=1:0")
        self.assertEqual(_scontrol_jobs(line + "\nJobId=50 JobState=COMPLETED Reason=None ExitCode=0:0"),
                         {"42_1": ("FAILED", "NonZeroExitCode", "1:0"), "50": ("COMPLETED", "None", "0:0")})
        self.assertEqual(_sacct_jobs("42_0|CANCELLED by 0|None|0:15\n"), {"42_0": ("CANCELLED", "None", "0:15")})

    def test_pending_running_failed_completed(self):
        started = self.launcher.start(["e0"])
        self.launcher.start(["e1"])
        self.clock.advance(0)  # one sbatch for both
        self.assertEqual(self.successResultOf(started), ["e0", "e1"])
        self.assertEqual([c[0] for c in self.slurm.calls], ["sbatch"])
        self.assertEqual(self.launcher.describe("e0"), "slurm job 42_0 PENDING (submitted)")
        self.slurm.scontrol = "".join(f"JobId={42 + i} ArrayJobId=42 ArrayTaskId={i} JobState=PENDING Reason=None "
                                      "ExitCode=0:0\n" for i in range(2))
        self.clock.advance(2)  # squeue does not list the new array yet, scontrol does: still queued
        self.assertEqual((self.ended, sorted(self.launcher.running())), ([], ["e0", "e1"]))
        self.slurm.squeue = "42_0|PENDING|Resources\n42_1|PENDING|Priority\n"
        self.clock.advance(2)
        self.assertEqual(self.launcher.describe("e1"), "slurm job 42_1 PENDING (Priority)")
        with open(os.path.join(self.launcher.log_dir, "slurm-42_0.log"), "w") as f:
            f.write("ipcluster-launched e0 777 node1 0\nhello from e0\n")
        self.slurm.squeue = "42_0|RUNNING|None\n42_1|RUNNING|None\n"
        self.clock.advance(2)
        self.assertEqual(self.launcher.running(), {"e0": 777, "e1": 0})
        self.slurm.squeue = "42_1|RUNNING|None\n"
        self.slurm.scontrol = "JobId=43 ArrayJobId=42 ArrayTaskId=0 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0\n"
        self.clock.advance(2)
        self.assertEqual(self.ended, [("e0", 777, "slurm job 42_0 FAILED (NonZeroExitCode, exit code 1:0)")])
        self.assertEqual(self.launcher.ended("e0"), self.ended[0][2])
        self.assertTrue(self.launcher.signal("e1", signal.SIGTERM))
        self.assertEqual(self.slurm.calls[-1], ["scancel", "--signal=15", "--full", "42_1"])
        self.assertFalse(self.launcher.signal("e0", signal.SIGTERM))
        self.slurm.squeue = ""
        self.slurm.scontrol = "JobId=44 ArrayJobId=42 ArrayTaskId=1 JobState=COMPLETED Reason=None ExitCode=0:0\n"
        self.clock.advance(2)
        self.assertEqual(self.ended[-1], ("e1", 0, CLEAN_EXIT))
        self.assertEqual(self.launcher.running(), {})

    def test_sbatch_refused(self):
        self.slurm_fail = SlurmLauncher(self.clock, "/c", run=lambda argv: defer.succeed((b"", b"sbatch: error: Invalid account", 1)))
        d = self.slurm_fail.start(["e0"])
        self.clock.advance(0)
        self.assertIn("Invalid account", str(self.failureResultOf(d, RuntimeError).value))

    def test_stop_cancels_and_waits(self):
        self.launcher.start(["e0"])
        self.clock.advance(0)
        self.slurm.squeue = "42_0|RUNNING|None\n"
        d = self.launcher.stop(timeout=5)
        self.assertIn(["scancel", "42_0"], self.slurm.calls)
        self.assertNoResult(d)
        self.slurm.squeue = ""
        self.slurm.scontrol = "JobId=43 ArrayJobId=42 ArrayTaskId=0 JobState=CANCELLED Reason=None ExitCode=0:15\n"
        self.clock.advance(0.5)
        self.successResultOf(d)
        self.assertEqual(self.ended[-1][2], "slurm job 42_0 CANCELLED (None, exit code 0:15)")


class SlurmCase(unittest.TestCase):
    """A Slurm of the test's own, its node on a host (namespace) of its own."""

    timeout = 300

    def setUp(self):
        why = netns.skip_reason() or slurm_skip_reason()
        if why:
            raise unittest.SkipTest(why)
        self.net = netns.Network(1)
        self.addCleanup(self.net.close)
        self.slurm = Slurm(self, self.net.controller_ip, self.net.hosts[0])


class RealSlurm(SlurmCase):
    @defer.inlineCallbacks
    def cluster(self, mode):
        try:
            yield until(self.slurm.ready, seconds=BOUND, what="the Slurm node to be idle", interval=0.5)
        except Exception:
            raise AssertionError(f"Slurm did not come up:\n{self.slurm.logs()}")
        spec = LauncherSpec("slurm", slurm={"mode": mode, "poll": 0.5, "conf": str(self.slurm.conf), "time": "10:00"})
        controller = yield start_controller(self, ip=self.net.controller_ip, engines=2, launcher=spec)
        try:
            yield within(defer.gatherResults([event(controller.registry, "joined", e) for e in ("e0", "e1")]),
                         BOUND, "engines to join from Slurm")
        except Exception:
            raise AssertionError(f"engines did not join:\n{self.slurm.logs()}")
        client = yield connect_client(self, controller)
        spaces = yield within(defer.gatherResults([client.submit(NETNS, engine=e) for e in ("e0", "e1")]), BOUND, "tasks")
        self.assertNotIn(os.readlink("/proc/self/ns/net"), spaces, "the engines run on the Slurm node's host")
        return controller

    @defer.inlineCallbacks
    def stopped(self, controller):
        yield controller.stopService()
        squeue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=dict(os.environ, **self.slurm.env))
        self.assertEqual(squeue.stdout.strip(), "", "scancel left no job queued")
        yield until(lambda: not [p for p in self.net.hosts[0].pids() if b"ipcluster" in _cmdline(p)],
                    what="no engine left on the node")

    @defer.inlineCallbacks
    def test_job_array(self):
        controller = yield self.cluster("array")
        launcher = controller.local_engines.launcher
        self.assertEqual(launcher.job_of["e1"].split("_")[1], "1")
        # The engine may register before the next poll sees its job running.
        yield until(lambda: "RUNNING" in ({d["id"]: d for d in controller.status.engines()}["e0"]["launcher"] or ""),
                    what="e0's job to be seen running")
        described = {d["id"]: d for d in controller.status.engines()}
        self.assertRegex(described["e0"]["launcher"], r"slurm job \d+_0 RUNNING")
        yield until(lambda: launcher.running().get("e0"), what="e0's pid from its job's output")
        self.assertEqual(launcher.running()["e0"], controller.registry.get("e0").pid)
        # A killed array task is reported with Slurm's word on it, and restarted as a new job.
        first = launcher.job_of["e0"]
        back = event(controller.registry, "joined", "e0")
        self.assertTrue(launcher.signal("e0", signal.SIGKILL))
        yield until(lambda: launcher.ended("e0"), what="e0's job to end")
        self.assertRegex(launcher.ended("e0"), rf"slurm job {first} (FAILED|CANCELLED)")
        yield within(back, BOUND, "e0 restarted through sbatch")
        self.assertNotEqual(launcher.job_of["e0"], first)
        self.assertEqual(sorted(r.id for r in controller.registry.live()), ["e0", "e1"])
        yield self.stopped(controller)

    @defer.inlineCallbacks
    def test_one_job_of_srun_tasks(self):
        controller = yield self.cluster("srun")
        launcher = controller.local_engines.launcher
        self.assertEqual(launcher.job_of["e0"], launcher.job_of["e1"])
        yield self.stopped(controller)


class ControllerAsAJob(SlurmCase):
    """``ipcluster start --controller slurm``: the controller (with its engines) is a Slurm job on the node."""

    @defer.inlineCallbacks
    def test_controller_job_writes_its_connection_file_back(self):
        import sys

        from ipcluster.client.twisted import TwistedClient
        from ipcluster.launchers.controller import remote_of
        from tests.cluster import spawn

        yield until(self.slurm.ready, seconds=BOUND, what="the Slurm node to be idle", interval=0.5)
        data_dir = os.path.abspath(self.mktemp())
        node = self.net.hosts[0].address

        def ipcluster(*args):
            proc = spawn(self, f"ipcluster {args[0]}", [sys.executable, "-m", "ipcluster.cli", *args], env=self.slurm.env)
            done = defer.Deferred()
            proc.ended.addBoth(lambda r: (done.callback((proc.exit_code(), proc.output())), r)[1])
            return within(done, BOUND * 2, f"ipcluster {args[0]}")

        code, out = yield ipcluster("start", "--data-dir", data_dir, "-n", "1", "--controller", "slurm",
                                    "--ip", node)
        self.assertEqual(code, 0, out + self.slurm.logs())
        self.addCleanup(lambda: ipcluster("stop", "--data-dir", data_dir) if remote_of(data_dir) else None)
        info = connection.read(os.path.join(data_dir, "connection.json"))
        self.assertEqual(info.ip, node)
        self.assertIsNotNone(info.curve, "a controller on a non-loopback address speaks CURVE")
        client = yield TwistedClient.connect(os.path.join(data_dir, "connection.json"), reactor=reactor)
        self.addCleanup(client.close)
        space = yield within(client.submit(NETNS), BOUND, "a task on the controller job's engine")
        self.assertNotEqual(space, os.readlink("/proc/self/ns/net"))
        client.close()
        code, out = yield ipcluster("stop", "--data-dir", data_dir)
        self.assertEqual(code, 0, out)
        yield until(lambda: not [p for p in self.net.hosts[0].pids() if b"ipcluster" in _cmdline(p)],
                    what="the controller job to end")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
