"""The engine command line and the detached launcher of ``ipcluster engines``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from ipcluster.interfaces import ILauncher
from ipcluster.launchers.command import EngineCommand, engine_command, parse_engine_argv
from ipcluster.launchers.detached import DetachedEngines, fired
from tests.cluster import BOUND


class EngineCommandLine(unittest.SynchronousTestCase):
    def test_runs_this_interpreter_unbuffered(self):
        command = engine_command("/d/connection.json", "e3", environ={"HOME": "/h"})
        self.assertEqual(command.executable, sys.executable)
        self.assertEqual(
            command.argv, [sys.executable, "-m", "ipcluster.engine", "--connection-file", "/d/connection.json", "--id", "e3"]
        )
        self.assertEqual(command.env, {"HOME": "/h", "PYTHONUNBUFFERED": "1"})

    def test_inherits_the_environment_by_default(self):
        self.assertEqual(engine_command("/c", "e0").env["PATH"], os.environ["PATH"])

    def test_parse_reads_back_what_engine_command_writes(self):
        self.assertEqual(parse_engine_argv(engine_command("/d/c.json", "x7").argv), ("/d/c.json", "x7"))

    def test_parse_reads_the_other_spellings(self):
        self.assertEqual(parse_engine_argv(["ipcluster-engine", "-f", "/c", "--id=e1"]), ("/c", "e1"))
        self.assertEqual(parse_engine_argv(["python", "-m", "ipcluster.engine", "--connection-file=/c"]), ("/c", "?"))
        self.assertEqual(parse_engine_argv(["ipcluster-engine"]), (None, "?"))

    def test_parse_refuses_other_programs(self):
        self.assertIsNone(parse_engine_argv(["python", "worker.py", "--connection-file", "/c", "--id", "e1"]))


class SpawningReactor(task.Clock):
    """A clock that records ``spawnProcess`` instead of spawning."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, proto, executable, args, env=None, childFDs=None):
        self.spawned.append((executable, args, env))
        proto.transport = type("Transport", (), {"pid": 4242})()
        return proto.transport


class ControllersEngines(unittest.SynchronousTestCase):
    def test_local_engines_run_the_one_engine_command(self):
        from ipcluster.controller.registry import Registry
        from ipcluster.controller.engines import LocalEngines

        reactor = SpawningReactor()
        LocalEngines(reactor, Registry(), "/d/connection.json", 1).start_engine("e0")
        command = engine_command("/d/connection.json", "e0")
        # ... in an environment that ties it to this process (engine/parent.py)
        env = dict(command.env, IPCLUSTER_PARENT_PID=str(os.getpid()))
        self.assertEqual(reactor.spawned, [(command.executable, command.argv, env)])


class FakeProcess:
    """A Popen that exits when told to, or never (``stubborn``) until killed."""

    pids = iter(range(1000, 2000))

    def __init__(self, argv, stubborn=False, **kwargs):
        self.argv = argv
        self.kwargs = kwargs
        self.pid = next(self.pids)
        self.returncode = None
        self.stubborn = stubborn
        self.signals = []

    def poll(self):
        return self.returncode

    def send_signal(self, signum):
        self.signals.append(signum)
        if signum == signal.SIGKILL or not self.stubborn:
            self.returncode = -signum

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout=None):
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.argv, timeout)
        return self.returncode


class Detached(unittest.SynchronousTestCase):
    def launcher(self, stubborn=()):
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.started = {}

        def popen(argv, **kwargs):
            engine_id = argv[argv.index("--id") + 1]
            self.started[engine_id] = FakeProcess(argv, stubborn=engine_id in stubborn, **kwargs)
            return self.started[engine_id]

        self.clock = task.Clock()
        return DetachedEngines(
            str(self.dir / "connection.json"), lambda eid: self.dir / f"engine-{eid}.log", popen=popen, clock=self.clock.seconds
        )

    def test_provides_ILauncher(self):
        self.assertTrue(verifyObject(ILauncher, self.launcher()))

    def test_start_detaches_each_engine_with_a_log_of_its_own(self):
        launcher = self.launcher()
        self.assertEqual(self.successResultOf(launcher.start(["x0", "x1"])), ["x0", "x1"])
        for engine_id, proc in self.started.items():
            self.assertEqual(proc.argv, engine_command(str(self.dir / "connection.json"), engine_id).argv)
            self.assertTrue(proc.kwargs["start_new_session"])
            self.assertEqual(proc.kwargs["stdin"], subprocess.DEVNULL)
            self.assertEqual(proc.kwargs["stderr"], subprocess.STDOUT)
            self.assertEqual(proc.kwargs["stdout"].name, str(self.dir / f"engine-{engine_id}.log"))
            self.assertEqual(proc.kwargs["env"]["PYTHONUNBUFFERED"], "1")
        self.assertEqual(launcher.running(), {"x0": self.started["x0"].pid, "x1": self.started["x1"].pid})
        self.assertTrue(launcher.is_local("x0"))
        self.assertFalse(launcher.is_local("e0"))

    def test_starting_an_id_twice_fails(self):
        launcher = self.launcher()
        launcher.start(["x0"])
        self.failureResultOf(launcher.start(["x0"]), ValueError)

    def test_a_log_that_cannot_be_opened_fails_the_start(self):
        launcher = DetachedEngines("/c", lambda eid: Path("/nonexistent/dir") / eid)
        self.failureResultOf(launcher.start(["x0"]), OSError)
        self.assertEqual(launcher.running(), {})

    def test_ended_says_why(self):
        launcher = self.launcher()
        launcher.start(["x0", "x1"])
        self.assertIsNone(launcher.ended("x0"))
        self.assertIsNone(launcher.ended("nobody"))
        self.started["x0"].returncode = 3
        self.assertEqual(launcher.ended("x0"), "exited with code 3")
        self.assertTrue(launcher.signal("x1", signal.SIGINT))
        self.assertEqual(launcher.ended("x1"), f"killed by signal {int(signal.SIGINT)}")
        self.assertEqual(launcher.running(), {})

    def test_signal_an_engine_that_does_not_run(self):
        launcher = self.launcher()
        launcher.start(["x0"])
        self.started["x0"].returncode = 0
        self.assertFalse(launcher.signal("x0", signal.SIGTERM))
        self.assertFalse(launcher.signal("nobody", signal.SIGTERM))
        self.assertEqual(self.started["x0"].signals, [])

    def test_stop_terminates_then_kills_the_stubborn(self):
        launcher = self.launcher(stubborn={"x1"})
        launcher.start(["x0", "x1"])
        self.assertIsNone(self.successResultOf(launcher.stop(timeout=5)))
        self.assertEqual(self.started["x0"].signals, [signal.SIGTERM])
        self.assertEqual(self.started["x1"].signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertEqual(launcher.running(), {})

    def test_stop_leaves_ended_engines_alone(self):
        launcher = self.launcher()
        launcher.start(["x0"])
        self.started["x0"].returncode = 1
        self.successResultOf(launcher.stop())
        self.assertEqual(self.started["x0"].signals, [])


class Fired(unittest.SynchronousTestCase):
    def test_result(self):
        self.assertEqual(fired(defer.succeed(3)), 3)

    def test_failure_is_raised(self):
        self.assertRaises(ZeroDivisionError, fired, defer.fail(ZeroDivisionError()))

    def test_unfired_is_an_error(self):
        self.assertRaises(RuntimeError, fired, defer.Deferred())


class DetachedProcess(unittest.TestCase):
    """A real child: in a session of its own, its output in its log."""

    def test_real_process(self):
        directory = Path(self.mktemp())
        directory.mkdir()

        def command(connection_file, engine_id):
            script = "import os, sys; print('session', os.getsid(0), flush=True); sys.stdin.read(); sys.exit(4)"
            return EngineCommand([sys.executable, "-c", script], dict(os.environ))

        launcher = DetachedEngines("/c", lambda eid: directory / f"{eid}.log", command=command)
        self.addCleanup(lambda: fired(launcher.stop(timeout=BOUND)))
        fired(launcher.start(["x0"]))
        pid = launcher.running()["x0"]
        proc = launcher.processes["x0"]
        self.assertEqual(proc.wait(BOUND), 4)  # stdin is /dev/null: read() returns at once
        self.assertEqual(launcher.ended("x0"), "exited with code 4")
        self.assertEqual((directory / "x0.log").read_text().split(), ["session", str(pid)])


class LocalLauncherSeam(unittest.SynchronousTestCase):
    def test_provides_ilauncher(self):
        from zope.interface.verify import verifyObject

        from ipcluster.interfaces import ILauncher
        from ipcluster.launchers.local import LocalLauncher

        launcher = LocalLauncher(SpawningReactor(), "/d/connection.json")
        self.assertTrue(verifyObject(ILauncher, launcher))
        self.assertEqual(self.successResultOf(launcher.start(["e0", "e1"])), ["e0", "e1"])
        self.assertEqual(launcher.running(), {"e0": 4242, "e1": 4242})
        self.assertTrue(launcher.is_local("e0"))
        self.assertIsNone(launcher.ended("e0"))
        self.failureResultOf(launcher.start(["e0"]), ValueError)

    def test_why_ended_names_the_signal(self):
        from twisted.internet import error

        from ipcluster.launchers.local import why_ended

        self.assertEqual(why_ended(error.ProcessTerminated(signal=11)), "process killed by signal 11 (SIGSEGV)")
        self.assertEqual(why_ended(error.ProcessTerminated(exitCode=3)), "process exited with code 3")
        self.assertEqual(why_ended(error.ProcessDone(0)), "process exited with code 0")
