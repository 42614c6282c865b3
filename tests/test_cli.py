"""The ``ipcluster`` command, driven as a user drives it: subprocesses, their output and exit codes.

Every test works in its own data directory and, at cleanup, stops whatever
cluster it left there and kills every process named in it, so a failing test
leaves nothing running.  Waits are bounded polls, never fixed sleeps.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from twisted.internet import task
from twisted.trial import unittest

from ipcluster import cli
from ipcluster.cli import engines as engines_verb
from ipcluster.cli import scale as scale_verb
from ipcluster.cli import parser, processes
from ipcluster.cli.progress import Deadline, Progress
from ipcluster.cli.status import format_status
from ipcluster.launchers.detached import DetachedEngines
from tests.cluster import BOUND

IPCLUSTER = [sys.executable, "-m", "ipcluster.cli"]
LIVE = ("alive", "busy")
CONSOLE_SCRIPT = Path(sys.executable).parent / "ipcluster"


def ipcluster(*args: str, env: dict | None = None, timeout: float = 2 * BOUND) -> subprocess.CompletedProcess:
    """Run ``ipcluster ARGS`` to completion (bounded); its CompletedProcess with text output."""
    full_env = dict(os.environ)
    full_env.pop("IPCLUSTER_DIR", None)
    full_env.update(env or {})
    return subprocess.run(
        [*IPCLUSTER, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def poll(fn, seconds: float = BOUND, interval: float = 0.05, what: str = "a condition"):
    """Call ``fn`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(interval)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(BOUND)
    return proc.pid


class CLITestCase(unittest.TestCase):
    timeout = 300

    def data_dir(self) -> Path:
        """A fresh data directory whose cluster is torn down at cleanup, whatever happens."""
        path = Path(self.mktemp()).absolute()
        self.addCleanup(self.tear_down_cluster, path)
        return path

    def tear_down_cluster(self, path: Path) -> None:
        dd = cli.DataDir(path)
        pids = set()
        if path.is_dir():
            with_controller = dd.controller_pid() is not None
            if with_controller:
                try:
                    ipcluster("stop", "--data-dir", str(path), "--timeout", "20", timeout=BOUND)
                except subprocess.TimeoutExpired:
                    pass
            pids.update(pid for pid, _ in dd.read_engine_pids())
            pid = dd.read_pidfile()
            info = dd.read_connection()
            pids.update(p for p in (pid, info and info.controller_pid) if p)
        pids.update(cli.engine_processes(dd.connection_file))
        mine = [p for p in pids if p != os.getpid() and (processes.is_controller(p) or processes.is_engine(p))]
        for pid in mine:
            for signum in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, signum)
                except (ProcessLookupError, PermissionError):
                    pass
        poll(lambda: not any(cli.pid_alive(p) for p in mine), what=f"processes {mine} to die")

    def assert_exit(self, result: subprocess.CompletedProcess, code: int) -> None:
        self.assertEqual(
            result.returncode, code,
            f"exit code {result.returncode}, wanted {code}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}",
        )

    def assert_clear_error(self, result: subprocess.CompletedProcess, *phrases: str) -> None:
        """Exit code 1, an ``ipcluster: error:`` line containing the phrases, and no traceback."""
        self.assert_exit(result, 1)
        self.assertIn("ipcluster: error:", result.stderr)
        for phrase in phrases:
            self.assertIn(phrase, result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def status_json(self, path: Path) -> list[dict]:
        result = ipcluster("status", "--json", "--data-dir", str(path))
        self.assert_exit(result, 0)
        return json.loads(result.stdout)

    def start(self, path: Path, engines: int = 2, *extra: str) -> subprocess.CompletedProcess:
        result = ipcluster("start", "--daemon", "-n", str(engines), "--data-dir", str(path), *extra)
        self.assert_exit(result, 0)
        return result


class Help(CLITestCase):
    def test_help(self):
        result = ipcluster("--help")
        self.assert_exit(result, 0)
        for command in ("start", "stop", "status", "engines", "run"):
            self.assertIn(command, result.stdout)
        for command, options in {
            "start": ("--daemon", "-n", "--data-dir", "--ip", "--web", "--timeout"),
            "stop": ("--data-dir", "--timeout"),
            "status": ("--data-dir", "--json"),
            "engines": ("--data-dir", "-n"),
            "run": ("--data-dir", "-n", "script"),
        }.items():
            result = ipcluster(command, "--help")
            self.assert_exit(result, 0)
            for option in options:
                self.assertIn(option, result.stdout, f"`ipcluster {command} --help` does not mention {option}")

    def test_no_command_is_a_usage_error(self):
        result = ipcluster()
        self.assert_exit(result, 2)
        self.assertIn("usage: ipcluster", result.stderr)

    def test_console_script(self):
        if not CONSOLE_SCRIPT.exists():
            raise unittest.SkipTest(f"no {CONSOLE_SCRIPT}: install the project (pip install -e .)")
        if "ipcluster.cli" not in CONSOLE_SCRIPT.read_text(errors="replace"):
            raise unittest.SkipTest(f"{CONSOLE_SCRIPT} belongs to another package (ipyparallel also has an `ipcluster`)")
        result = subprocess.run([str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, timeout=BOUND)
        self.assert_exit(result, 0)
        self.assertIn("ipcluster", result.stdout)


class Lifecycle(CLITestCase):
    def test_start_status_engines_stop(self):
        path = self.data_dir()
        conn = path / "connection.json"

        # start --daemon: returns once the controller and its 2 engines are up.
        result = self.start(path, 2)
        self.assertIn("2 engine(s)", result.stdout)
        self.assertIn(str(conn), result.stdout)
        self.assertIn(str(path / "ipcluster.log"), result.stdout)
        self.assertIn("ipcluster stop", result.stdout)
        self.assertEqual(os.stat(conn).st_mode & 0o777, 0o600)
        controller = int((path / "ipcluster.pid").read_text())
        self.assertTrue(cli.pid_alive(controller))
        self.assertEqual(json.loads(conn.read_text())["controller_pid"], controller)

        # status: a table with both engines alive, and the counts.
        result = ipcluster("status", "--data-dir", str(path))
        self.assert_exit(result, 0)
        header, *rows = [line for line in result.stdout.splitlines() if re.match(r"^(ID|e\d|x\d)\s", line)]
        for column in ("ID", "HOST", "PID", "STATE", "RTT(ms)", "TASK", "BUSY-FOR", "QUEUED"):
            self.assertIn(column, header)
        self.assertEqual(sorted(row.split()[0] for row in rows), ["e0", "e1"])
        # alive, or busy if this noisy machine held an engine's interpreter for a while
        self.assertTrue(all(row.split()[3] in LIVE for row in rows), result.stdout)
        self.assertRegex(result.stdout, r"(?m)^2 engine\(s\): \d (alive|busy)")
        self.assertIn(f"controller pid {controller}", result.stdout)

        engines = self.status_json(path)
        self.assertEqual(sorted(e["id"] for e in engines), ["e0", "e1"])
        self.assertLessEqual({e["state"] for e in engines}, set(LIVE))
        for key in ("host", "pid", "rtt", "running_task", "busy_for", "queued"):
            self.assertIn(key, engines[0])
        engine_pids = {e["pid"] for e in engines}

        # A second start in the same data dir is refused, and changes nothing.
        result = ipcluster("start", "--daemon", "-n", "1", "--data-dir", str(path))
        self.assert_clear_error(result, "already", str(controller))
        self.assertEqual(int((path / "ipcluster.pid").read_text()), controller)
        self.assertEqual(len(self.status_json(path)), 2)

        # engines -n 1: a third engine, alive, recorded for stop.
        result = ipcluster("engines", "-n", "1", "--data-dir", str(path))
        self.assert_exit(result, 0)
        self.assertIn("x0", result.stdout)
        added = {eid: pid for pid, eid in cli.DataDir(path).read_engine_pids()}
        self.assertEqual(list(added), ["x0"])
        result = ipcluster("status", "--data-dir", str(path))
        self.assert_exit(result, 0)
        self.assertRegex(result.stdout, r"(?m)^x0\s+\S+\s+%d\s+(alive|busy)\s" % added["x0"])
        self.assertRegex(result.stdout, r"(?m)^3 engine\(s\): \d (alive|busy)")
        engines = self.status_json(path)
        self.assertLessEqual({e["state"] for e in engines}, set(LIVE))
        engine_pids |= {e["pid"] for e in engines}
        self.assertEqual(len(engine_pids), 3)

        # stop: everything exits, the connection and pid files are gone.
        result = ipcluster("stop", "--data-dir", str(path))
        self.assert_exit(result, 0)
        self.assertIn("Stopped", result.stdout)
        self.assertFalse(conn.exists())
        self.assertFalse((path / "ipcluster.pid").exists())
        self.assertFalse((path / "engines.pids").exists())
        self.assertFalse(cli.pid_alive(controller), "the controller outlived stop")
        self.assertEqual([p for p in engine_pids if cli.pid_alive(p)], [], "engines outlived stop")
        self.assertIn("controller stopped", (path / "ipcluster.log").read_text())

        # Now there is no cluster: status, stop and engines say so.
        self.assert_clear_error(ipcluster("status", "--data-dir", str(path)), "no cluster is running", str(path))
        self.assert_clear_error(ipcluster("stop", "--data-dir", str(path)), "no cluster is running")
        self.assert_clear_error(ipcluster("engines", "-n", "1", "--data-dir", str(path)), "no cluster is running")

        # And the data dir can be used again.
        self.start(path, 0)
        self.assert_exit(ipcluster("stop", "--data-dir", str(path)), 0)

    def test_foreground_start_stopped_by_stop(self):
        path = self.data_dir()
        log = open(Path(self.mktemp()).absolute(), "w+")
        self.addCleanup(log.close)
        env = dict(os.environ)
        env.pop("IPCLUSTER_DIR", None)
        proc = subprocess.Popen([*IPCLUSTER, "start", "-n", "1", "--data-dir", str(path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

        def reap():
            if proc.poll() is None:
                proc.kill()
            proc.wait(BOUND)

        self.addCleanup(reap)

        def one_alive():
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"`ipcluster start` exited with {proc.returncode}:\n{log.read()}")
            if not (path / "connection.json").exists():
                return False
            result = ipcluster("status", "--json", "--data-dir", str(path))
            return result.returncode == 0 and [e for e in json.loads(result.stdout) if e["state"] in LIVE]

        alive = poll(one_alive, what="the foreground cluster's engine")
        self.assertEqual(alive[0]["id"], "e0")
        # The foreground process is twistd itself (exec'd), so its pid is in the pid file.
        self.assertEqual(int((path / "ipcluster.pid").read_text()), proc.pid)

        self.assert_exit(ipcluster("stop", "--data-dir", str(path)), 0)
        proc.wait(BOUND)
        log.seek(0)
        output = log.read()
        self.assertIn("Server Shut Down.", output)  # the log went to the terminal (stdout)
        self.assertIn("engine e0 joined", output)
        self.assertFalse((path / "connection.json").exists())
        self.assertFalse(cli.pid_alive(alive[0]["pid"]))


class Run(CLITestCase):
    SCRIPT = textwrap.dedent(
        """
        import os, sys
        from ipcluster import Client

        with Client() as client:
            engines = client.wait_for_engines(2, timeout=60)
            print("engines:", len(engines))
            print("result:", client.submit(pow, 2, 10).result(60))
            print("args:", sys.argv[1:])
            print("pids:", " ".join(str(e["pid"]) for e in engines))
            print("data dir:", os.environ["IPCLUSTER_DIR"])
        sys.stdout.flush()
        sys.exit(3)
        """
    )

    def script(self, text: str) -> str:
        path = Path(self.mktemp()).absolute().with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def test_run_returns_the_scripts_exit_code(self):
        path = self.data_dir()
        result = ipcluster("run", "-n", "2", "--data-dir", str(path), self.script(self.SCRIPT), "one", "--two")
        self.assert_exit(result, 3)
        self.assertIn("engines: 2", result.stdout)
        self.assertIn("result: 1024", result.stdout)
        self.assertIn("args: ['one', '--two']", result.stdout)
        self.assertIn(f"data dir: {path}", result.stdout)
        # The cluster is gone again: connection file, controller and engines.
        self.assertFalse((path / "connection.json").exists())
        self.assertFalse((path / "ipcluster.pid").exists())
        pids = [int(p) for p in re.search(r"pids: (.*)", result.stdout).group(1).split()]
        self.assertEqual([p for p in pids if cli.pid_alive(p)], [])
        self.assertEqual(cli.engine_processes(path / "connection.json"), {})

    def test_run_in_a_temporary_data_dir(self):
        script = self.script(
            "import os, ipcluster\n"
            "print(os.environ['IPCLUSTER_DIR'])\n"
            "ipcluster.Client().close()\n"
        )
        result = ipcluster("run", "-n", "0", script)
        temporary = Path(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None
        if temporary is not None:
            self.addCleanup(self.tear_down_cluster, temporary)
        self.assert_exit(result, 0)
        self.assertIn("ipcluster-run-", str(temporary))
        self.assertFalse(temporary.exists(), "the temporary data dir was not removed")

    def test_run_stops_the_cluster_when_the_script_fails(self):
        path = self.data_dir()
        result = ipcluster("run", "-n", "1", "--data-dir", str(path), self.script("raise RuntimeError('boom')\n"))
        self.assert_exit(result, 1)
        self.assertIn("RuntimeError: boom", result.stderr)
        self.assertFalse((path / "connection.json").exists())
        self.assertEqual(cli.engine_processes(path / "connection.json"), {})

    def test_run_refuses_a_data_dir_in_use(self):
        path = self.data_dir()
        self.start(path, 0)
        controller = int((path / "ipcluster.pid").read_text())
        result = ipcluster("run", "--data-dir", str(path), self.script("print('ran')\n"))
        self.assert_clear_error(result, "already")
        self.assertNotIn("ran", result.stdout)
        self.assertTrue(cli.pid_alive(controller), "run stopped a cluster it did not start")
        self.assert_exit(ipcluster("stop", "--data-dir", str(path)), 0)

    def test_run_missing_script(self):
        result = ipcluster("run", "--data-dir", str(self.data_dir()), "no-such-script.py")
        self.assert_clear_error(result, "no such script")


class Errors(CLITestCase):
    def test_no_cluster(self):
        path = self.data_dir()
        for command in (["status"], ["status", "--json"], ["stop"], ["engines", "-n", "1"]):
            result = ipcluster(*command, "--data-dir", str(path))
            self.assert_clear_error(result, "no cluster is running", str(path))
            self.assertEqual(result.stdout, "")

    def test_ipcluster_dir_is_the_default(self):
        path = self.data_dir()
        result = ipcluster("status", env={"IPCLUSTER_DIR": str(path)})
        self.assert_clear_error(result, "no cluster is running", str(path))

    def test_unusable_data_dir(self):
        afile = Path(self.mktemp()).absolute()
        afile.parent.mkdir(parents=True, exist_ok=True)
        afile.write_text("not a directory\n")
        for path in (afile / "sub", afile):
            result = ipcluster("start", "--daemon", "-n", "0", "--data-dir", str(path))
            self.assert_clear_error(result, "unusable", str(path))
        result = ipcluster("run", "-n", "0", "--data-dir", str(afile / "sub"), __file__)
        self.assert_clear_error(result, "unusable")

    def test_stale_files_of_a_killed_cluster(self):
        path = self.data_dir()
        self.start(path, 0)
        info = json.loads((path / "connection.json").read_text())
        # As if the controller had been killed -9: its files stay behind, naming a dead pid.
        gone = dead_pid()
        info["controller_pid"] = gone
        controller = int((path / "ipcluster.pid").read_text())
        os.kill(controller, signal.SIGKILL)
        poll(lambda: not cli.pid_alive(controller), what="the controller to die")
        (path / "connection.json").write_text(json.dumps(info))
        (path / "ipcluster.pid").write_text(str(gone))

        self.assert_clear_error(ipcluster("status", "--data-dir", str(path)), "no cluster is running", "stale")
        # start cleans up after the dead cluster.
        self.start(path, 1)
        self.assertEqual([e["state"] in LIVE for e in self.status_json(path)], [True])
        self.assert_exit(ipcluster("stop", "--data-dir", str(path)), 0)

    def test_twistd_fails_to_start(self):
        path = self.data_dir()
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ipcluster("start", "--daemon", "-n", "1", "--data-dir", str(path), "--", "--client-port", str(port))
        self.assert_exit(result, 1)
        self.assertIn("failed to start", result.stderr)
        self.assertIn("Address already in use", result.stderr)
        # The reason comes first and whole (twistd's own report of it is cut at 100 bytes).
        self.assertEqual(result.stderr.splitlines()[1], f"ipcluster: error: the controller failed to start: cannot "
                         f"listen on tcp://127.0.0.1:{port} (the client socket): Address already in use")
        self.assertIn(f"last lines of {path / 'ipcluster.log'}", result.stderr)
        self.assertFalse((path / "connection.json").exists())
        self.assertFalse((path / "ipcluster.pid").exists())
        self.assertEqual(cli.engine_processes(path / "connection.json"), {})

    def test_bad_twistd_option(self):
        path = self.data_dir()
        result = ipcluster("start", "--daemon", "--data-dir", str(path), "--", "--no-such-option")
        self.assert_exit(result, 1)
        self.assertIn("no-such-option", result.stderr)
        self.assertNotIn("Traceback", result.stderr)


# -- the pieces, without processes ---------------------------------------------------------


class RemoveAndScale(CLITestCase):
    def test_remove_then_scale_up_and_down(self):
        path = self.data_dir()
        self.start(path, 2)
        log = path / "ipcluster.log"

        self.assert_clear_error(ipcluster("engines", "remove", "nope", "--data-dir", str(path)), "no live engine nope")
        self.assert_clear_error(ipcluster("engines", "scale", "-1", "--data-dir", str(path)))
        self.assert_clear_error(ipcluster("engines", "remove", "--data-dir", str(path)), "name the engines")

        result = ipcluster("engines", "remove", "e1", "--data-dir", str(path))
        self.assert_exit(result, 0)
        self.assertIn("e1 left", result.stdout)
        # It left on purpose: its supervisor says so and does not start it again.
        poll(lambda: "engine e1 exited on purpose" in log.read_text(), what="the supervisor's word on e1")
        self.assertNotIn("restarting engine e1", log.read_text())
        self.assertEqual([e["id"] for e in self.status_json(path) if e["state"] in LIVE], ["e0"])

        result = ipcluster("engines", "scale", "3", "--data-dir", str(path))
        self.assert_exit(result, 0)
        self.assertIn("Started 2 engine(s)", result.stdout)
        live = sorted(e["id"] for e in self.status_json(path) if e["state"] in LIVE)
        self.assertEqual(live, ["e0", "x0", "x1"])

        result = ipcluster("engines", "scale", "3", "--data-dir", str(path))
        self.assert_exit(result, 0)
        self.assertIn("3 engine(s) live already", result.stdout)

        result = ipcluster("engines", "scale", "1", "--data-dir", str(path))
        self.assert_exit(result, 0)
        self.assertEqual(re.findall(r"(?m)^(\S+) left$", result.stdout), ["x1", "x0"], "the newest idle ones first")
        self.assertEqual([e["id"] for e in self.status_json(path) if e["state"] in LIVE], ["e0"])


class SettleOnTheReason(unittest.SynchronousTestCase):
    """A failing daemon's reason reaches its log late on a loaded machine: start waits for it."""

    def setUp(self):
        self.clock = task.Clock()
        self.log = Path(self.mktemp())
        self.log.write_text("old run: twistd ipcluster: an old reason\n")
        self.offset = self.log.stat().st_size
        self.script = {}

    def sleep(self, seconds):
        self.clock.advance(seconds)
        for at in [t for t in self.script if t <= self.clock.seconds()]:
            with open(self.log, "a") as f:
                f.write(self.script.pop(at))

    def settle(self):
        from ipcluster.cli.start import _settle

        return _settle(self.log, self.offset, clock=self.clock.seconds, sleep=self.sleep)

    def test_waits_through_a_quiet_spell_for_the_reason(self):
        # (2.5 s of quiet: a daemon on a loaded machine logged its reason 1.x s late)
        self.script = {0.1: "twistd: starting\n", 2.6: "twistd ipcluster: cannot listen on ...: Address already in use\n"}
        self.assertEqual(self.settle(), "cannot listen on ...: Address already in use")

    def test_no_reason_after_three_seconds_of_quiet(self):
        self.script = {0.1: "twistd: starting\n"}
        self.assertIsNone(self.settle(), "the old run's reason is not this one's")
        self.assertLess(self.clock.seconds(), 4.0)


class RemovalOrder(unittest.SynchronousTestCase):
    def test_idle_before_working_then_newest_first(self):
        engines = [
            {"id": "e2", "running_task": None, "queued": 0},
            {"id": "e10", "running_task": "t1", "queued": 0},
            {"id": "x1", "running_task": None, "queued": 0},
            {"id": "e9", "running_task": None, "queued": 2},
            {"id": "x0", "running_task": None, "queued": 0},
        ]
        self.assertEqual(scale_verb.removal_order(engines), ["x1", "x0", "e2", "e10", "e9"])

    def test_scale_adds_or_removes_the_difference(self):
        class Client:
            def __init__(self, ids):
                self.ids, self.exited = list(ids), []

            def engines(self):
                return [{"id": i, "state": "alive", "running_task": None, "queued": 0} for i in self.ids]

            def exit(self, engine_id, timeout):
                self.exited.append(engine_id)
                self.ids.remove(engine_id)

        added, out = [], io.StringIO()
        client = Client(["e0", "e1"])
        self.assertEqual(scale_verb.scale(client, 5, added.append, stream=out), 3)
        self.assertEqual(added, [3])
        self.assertEqual(scale_verb.scale(client, 0, added.append, stream=out), -2)
        self.assertEqual(client.exited, ["e1", "e0"])
        self.assertEqual(added, [3])


class ProgressDots(unittest.SynchronousTestCase):
    def test_a_dot_a_second_then_done(self):
        clock, out = task.Clock(), io.StringIO()
        with Progress(out, "Starting", clock=clock.seconds) as bar:
            bar.tick()
            clock.advance(0.5)
            bar.tick()
            clock.advance(0.6)
            bar.tick()
            clock.advance(2.0)
            bar.tick()
        self.assertEqual(out.getvalue(), "Starting.. done\n")

    def test_failed_when_the_block_raises(self):
        out = io.StringIO()
        with self.assertRaises(KeyError):
            with Progress(out, "Starting", clock=task.Clock().seconds):
                raise KeyError("x")
        self.assertEqual(out.getvalue(), "Starting failed\n")


class DeadlineWaits(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.deadline = Deadline(1.0, clock=self.clock.seconds, sleep=self.clock.advance)

    def test_returns_what_ready_returns(self):
        answers = iter([None, None, "up"])
        self.assertEqual(self.deadline.wait_until(lambda: next(answers), lambda: AssertionError("expired")), "up")
        self.assertAlmostEqual(self.clock.seconds(), 0.2)
        self.assertAlmostEqual(self.deadline.left(), 0.8)

    def test_expires(self):
        self.assertRaises(TimeoutError, self.deadline.wait_until, lambda: None, TimeoutError, interval=0.3)
        self.assertTrue(self.deadline.passed())
        self.assertAlmostEqual(self.clock.seconds(), 1.2)

    def test_ready_stops_the_wait_by_raising(self):
        def ready():
            raise cli.CLIError("it died")

        self.assertRaises(cli.CLIError, self.deadline.wait_until, ready, TimeoutError)
        self.assertEqual(self.clock.seconds(), 0)

    def test_ticks_the_progress(self):
        out = io.StringIO()
        bar = Progress(out, "Waiting", clock=self.clock.seconds)
        self.assertRaises(TimeoutError, self.deadline.wait_until, lambda: None, TimeoutError, bar, interval=0.5)
        self.assertEqual(out.getvalue(), "Waiting.")


class Pieces(unittest.SynchronousTestCase):
    def test_fresh_ids(self):
        self.assertEqual(engines_verb.fresh_ids({"x0", "x2", "e1"}, 3), ["x1", "x3", "x4"])
        self.assertEqual(engines_verb.fresh_ids(set(), 1), ["x0"])

    def test_exit_code_as_a_shell_says_it(self):
        self.assertEqual([processes.exit_code(c) for c in (0, 3, -9)], [0, 3, 137])

    def test_format_status(self):
        engines = [
            {"id": "e10", "host": "h", "pid": 12, "state": "alive", "rtt": 0.0012, "running_task": None,
             "task_running_for": None, "busy_for": None, "queued": 0},
            {"id": "e2", "host": "h", "pid": 11, "state": "busy", "rtt": None, "running_task": "t-1",
             "task_running_for": 3.25, "busy_for": 2.0, "queued": 4},
            {"id": "x0", "host": "other", "pid": 13, "state": "dead", "rtt": None, "running_task": None, "queued": 2},
            {"id": "q", "state": "weird"},
        ]
        self.assertEqual(
            format_status(engines, cli.DataDir("/tmp/dd"), 99),
            "Cluster in /tmp/dd: controller pid 99\n"
            "ID   HOST   PID  STATE  RTT(ms)  TASK  RUNNING  BUSY-FOR  QUEUED\n"
            "e10  h      12   alive  1.2      -     -        -         0\n"
            "e2   h      11   busy   -        t-1   3.2s     2.0s      4\n"
            "x0   other  13   dead   -        -     -        -         2\n"
            "q    ?      ?    weird  -        -     -        -         -\n"
            "4 engine(s): 1 alive, 1 busy, 1 dead, 1 weird\n"
            "tasks: 1 running, 4 queued on engines\n",
        )
        self.assertEqual(
            format_status([], cli.DataDir("/tmp/dd"), 99),
            "Cluster in /tmp/dd: controller pid 99\nno engines\n0 engine(s)\ntasks: 0 running, 0 queued on engines\n",
        )
        tasks = {"counts": {"ready": 2, "waiting": 1}, "queued_total": 3, "queued": [
            {"task": "t-20", "name": "fit", "state": "ready", "engines": None},
            {"task": "t-3", "name": "", "state": "waiting", "engines": ["e2", "e10"]}]}  # fmt: skip
        self.assertEqual(
            format_status(engines[1:2], cli.DataDir("/tmp/dd"), 99, tasks).splitlines()[4:],
            ["tasks: 1 running, 4 queued on engines, 2 ready and 1 waiting in the controller",
             "queued in the controller (3):",
             "  t-20  ready    fit  (any engine)",
             "  t-3   waiting  -  (e2, e10)",
             "  ... and 1 more"],
        )  # fmt: skip

    def test_unusable_data_dir_says_what_to_do(self):
        afile = Path(self.mktemp()).absolute()
        afile.parent.mkdir(parents=True, exist_ok=True)
        afile.write_text("")
        e = self.assertRaises(cli.CLIError, cli.DataDir(afile).ensure_usable)
        self.assertEqual(
            str(e),
            f"the data directory {afile} is unusable: it exists and is not a directory. "
            "Pass another one with --data-dir or set IPCLUSTER_DIR.",
        )

    def test_each_verb_is_a_sub_command(self):
        build = parser.build_parser()
        for verb in parser.VERBS:
            script = ["script.py"] if verb.NAME == "run" else []
            args = build.parse_args([verb.NAME, "--data-dir", "/d", *script])
            self.assertIs(args.func, verb.run)
            self.assertEqual(args.data_dir, "/d")


class FakeClient:
    """What ``wait_joined`` reads of a Client: the engine list, here set by the test."""

    def __init__(self):
        self.live: set = set()

    def engines(self):
        return [{"id": eid, "state": "alive"} for eid in sorted(self.live)]


class WaitJoined(unittest.SynchronousTestCase):
    """``ipcluster engines``' wait, on a Clock, with fake engine processes and a fake client."""

    def setUp(self):
        from tests.test_launchers import FakeProcess

        self.dd = cli.DataDir(Path(self.mktemp()).absolute())
        self.dd.path.mkdir(parents=True)
        self.processes = {}

        def popen(argv, **kwargs):
            proc = FakeProcess(argv, **kwargs)
            self.processes[argv[argv.index("--id") + 1]] = proc
            return proc

        self.launcher = DetachedEngines(str(self.dd.connection_file), self.dd.engine_log, popen=popen)
        self.launcher.start(["x0", "x1"])
        self.dd.engine_log("x1").write_text("Traceback\nValueError: bad engine\n")
        self.client = FakeClient()
        self.clock = task.Clock()
        self.out = io.StringIO()

    def wait(self, seconds: float = 5.0, joining: tuple = ()) -> None:
        """Wait on the Clock; each engine of ``joining`` joins one second after the last."""
        pending = list(joining)

        def sleep(interval):
            self.clock.advance(interval)
            if pending and self.clock.seconds() >= len(self.client.live) + 1:
                self.client.live.add(pending.pop(0))

        deadline = Deadline(seconds, clock=self.clock.seconds, sleep=sleep)
        engines_verb.wait_joined(self.dd, self.client, self.launcher, ["x0", "x1"], deadline, stream=self.out)

    def test_returns_once_all_have_joined(self):
        self.wait(joining=("x1", "x0"))
        self.assertEqual(self.client.live, {"x0", "x1"})
        self.assertEqual(self.out.getvalue(), "Starting 2 engine(s). done\n")

    def test_an_engine_that_ends_first(self):
        self.processes["x1"].returncode = 2
        e = self.assertRaises(cli.CLIError, self.wait)
        self.assertEqual(
            str(e),
            f"engine x1 exited with code 2 before joining\nlast lines of {self.dd.engine_log('x1')}:\n"
            "    Traceback\n    ValueError: bad engine",
        )
        self.assertEqual(self.out.getvalue(), "Starting 2 engine(s) failed\n")

    def test_those_that_do_not_join_in_time(self):
        e = self.assertRaises(cli.CLIError, self.wait, 3.0, ("x0",))
        self.assertEqual(
            str(e),
            f"engine(s) x1 did not join within 3 s\nlast lines of {self.dd.engine_log('x1')}:\n"
            "    Traceback\n    ValueError: bad engine",
        )
        self.assertEqual(self.out.getvalue(), "Starting 2 engine(s).. failed\n")
        self.assertTrue(3.0 < self.clock.seconds() < 3.2, self.clock.seconds())  # expired just after the deadline


class BadInput(CLITestCase):
    """A bad option or an unusable data dir: one clear line on stderr and exit status 1, for every verb.

    Root reads every directory, so an unreadable one is shown with a path that is a file (in a
    subprocess) and with ``os.access`` saying no (in-process); privileges are not dropped here
    (the interpreter lives under /root, which another user may not enter).
    """

    def assert_one_line(self, result, *phrases):
        self.assert_clear_error(result, *phrases)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)

    def test_a_bad_option_for_every_verb(self):
        for verb in ("start", "stop", "status", "engines", "run"):
            result = ipcluster(verb, "--bogus", "script.py")
            self.assert_one_line(result, f"ipcluster {verb} --help")
            if verb not in ("run", "engines"):  # run passes what follows its script on to the script
                self.assertIn("unrecognized arguments: --bogus", result.stderr)
        # (engines reads script.py as its action, and says that one is wrong)
        self.assert_one_line(ipcluster("engines", "--bogus"), "unrecognized arguments: --bogus")
        self.assert_one_line(ipcluster("engines", "grow"), "invalid choice: 'grow'")
        self.assert_one_line(ipcluster("start", "-n", "many"), "invalid int value: 'many'")

    def test_a_data_dir_that_is_a_file_for_every_verb(self):
        afile = Path(self.mktemp()).absolute()
        afile.parent.mkdir(parents=True, exist_ok=True)
        afile.write_text("")
        script = afile.parent / "job.py"
        script.write_text("print('ran')\n")
        for verb, *rest in (["start", "--daemon"], ["stop"], ["status"], ["engines"], ["run", str(script)]):
            result = ipcluster(verb, "--data-dir", str(afile), *rest)
            self.assert_one_line(result, str(afile), "is not a directory")
            self.assertNotIn("ran", result.stdout)

    def test_an_unreadable_data_dir(self):
        path = self.data_dir()
        path.mkdir(parents=True, exist_ok=True)
        self.patch(os, "access", lambda p, mode: False)
        e = self.assertRaises(cli.CLIError, cli.DataDir(path).ensure_readable)
        self.assertIn("may not read it", str(e))
        self.patch(os, "access", lambda p, mode: True)
        cli.DataDir(path / "not-yet").ensure_readable()  # missing is fine: start makes it

    def test_twistd_bad_options(self):
        twistd = str(Path(sys.executable).parent / "twistd")
        for bad, phrase in ((["--bogus"], "option --bogus not recognized"), (["--heartbeat-period=-1"], "must be positive")):
            result = subprocess.run([twistd, "-n", "ipcluster", *bad], capture_output=True, text=True, timeout=BOUND)
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertEqual(result.stdout, "")
            self.assertEqual(result.stderr.strip().splitlines(), [f"twistd ipcluster: {result.stderr.split(': ', 1)[1].strip()}"])
            self.assertIn(phrase, result.stderr)
            self.assertIn("twistd ipcluster --help", result.stderr)
