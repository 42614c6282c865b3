"""The whole product as a user runs it: ``twistd -n ipcluster`` and the blocking Client."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from ipcluster import Client, errors
from tests.cluster import BOUND, spawn, until, within

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def poll(fn, seconds=BOUND, interval=0.05):
    """In a worker thread: call fn until it returns something truthy (bounded)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {seconds} s polling {fn}")


class Twistd(unittest.TestCase):
    timeout = 180

    def test_plugin_is_listed(self):
        out = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=BOUND).stdout
        self.assertIn("ipcluster", out)
        helptext = subprocess.run([TWISTD, "ipcluster", "--help"], capture_output=True, text=True, timeout=BOUND).stdout
        for option in ("--engines", "--ip", "--data-dir", "--heartbeat-period", "--heartbeat-misses", "--client-port",
                       "--prefetch", "--store", "--web", "--manhole-ssh", "--manhole-telnet", "--manhole-authorized-keys"):
            self.assertIn(option, helptext)

    def test_port_in_use_is_one_clear_line(self):
        import socket

        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "ipcluster", "--data-dir", self.mktemp(), "--client-port", str(port)],
            capture_output=True, text=True, timeout=BOUND,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertIn(f"twistd ipcluster: cannot listen on tcp://127.0.0.1:{port} (the client socket): "
                      "Address already in use", output)
        self.assertNotIn("Traceback", output)

    @defer.inlineCallbacks
    def test_pid_file_goes_in_the_data_dir(self):
        """Plain `twistd -n ipcluster` leaves no twistd.pid in the working folder, and a second
        controller started from that folder (with its own data dir) is not refused for it."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        procs = []
        for name in ("a", "b"):
            data_dir = os.path.join(cwd, name)
            proc = spawn(self, f"twistd {name}", [TWISTD, "-n", "ipcluster", "--data-dir", data_dir], path=cwd)
            procs.append(proc)
            conn = os.path.join(data_dir, "connection.json")
            yield until(lambda: os.path.exists(conn) or not proc.running, what=f"controller {name}")
            self.assertTrue(proc.running, proc.output())
            with open(os.path.join(data_dir, "ipcluster.pid")) as f:
                self.assertEqual(int(f.read()), proc.pid)
        self.assertFalse(os.path.exists(os.path.join(cwd, "twistd.pid")))
        for proc in procs:
            proc.kill(signal.SIGTERM)
            yield within(proc.ended, BOUND, "the controller to stop")
        self.assertFalse(os.path.exists(os.path.join(cwd, "a", "ipcluster.pid")))

    @defer.inlineCallbacks
    def test_cluster_with_local_engines(self):
        data_dir = os.path.abspath(self.mktemp())
        conn = os.path.join(data_dir, "connection.json")
        twistd = spawn(self, "twistd", [TWISTD, "-n", "--pidfile=", "ipcluster", "--engines", "2", "--data-dir", data_dir])
        yield until(lambda: os.path.exists(conn) or not twistd.running, what="the connection file")
        self.assertTrue(twistd.running, twistd.output())
        self.assertEqual(os.stat(conn).st_mode & 0o777, 0o600)

        def use_cluster():
            with Client(conn) as client:
                engines = client.wait_for_engines(2, timeout=BOUND)
                pids = {e["id"]: e["pid"] for e in engines}
                future = client.submit(pow, 2, 10, engine="e0")
                value = future.result(BOUND)
                printed = client.submit(print, "hi", engine="e1")
                printed.result(BOUND)
                # An engine the controller started is dead the moment its process ends.
                os.kill(pids["e1"], signal.SIGKILL)
                killed_at = time.monotonic()
                dead = poll(lambda: [e for e in client.engines() if e["id"] == "e1" and e["state"] == "dead"])
                took = time.monotonic() - killed_at
                dead_refused = isinstance(client.submit(pow, 1, 1, engine="e1").exception(BOUND), errors.EngineDead)
                return pids, value, printed.stdout, dead[0]["reason"], took, dead_refused

        pids, value, stdout, reason, took, dead_refused = yield threads.deferToThread(use_cluster)
        self.assertEqual(value, 1024)
        self.assertEqual(stdout, "hi\n")
        self.assertIn("signal 9", reason)
        self.assertTrue(dead_refused)
        # Clean stop: engines exit, connection file removed.
        twistd.kill(signal.SIGTERM)
        status = yield within(twistd.ended.addErrback(lambda f: f.value), BOUND, "twistd to stop")
        # twistd re-raises the signal that stopped it once it has shut down cleanly.
        self.assertTrue(getattr(status, "exitCode", None) == 0 or getattr(status, "signal", None) == signal.SIGTERM, status)
        self.assertIn("Server Shut Down.", twistd.output())
        self.assertFalse(os.path.exists(conn))
        self.assertFalse(_alive(pids["e0"]), "engine e0 outlived the controller")
        self.assertIn("engine e0 joined", twistd.output())

    def test_client_without_controller(self):
        with self.assertRaises(errors.NoController) as caught:
            Client(os.path.join(self.mktemp(), "connection.json"))
        self.assertIn("no connection file", str(caught.exception))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is as good as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


class ControllerGone(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_pending_futures_fail_when_the_controller_goes_away(self):
        from tests.cluster import start_controller, start_engines

        controller = yield start_controller(self)
        yield start_engines(self, controller, ["g0"], "--controller-timeout", "2", "--reconnect-timeout", "5")
        path = str(controller.config.connection_file)
        client = yield threads.deferToThread(Client, path, 10.0, 3.0)
        self.addCleanup(lambda: threads.deferToThread(client.close))

        def nap(seconds):
            import time

            time.sleep(seconds)

        future = yield threads.deferToThread(client.submit, nap, 60)
        yield controller.stopService()
        exc = yield threads.deferToThread(future.exception, BOUND)
        self.assertIsInstance(exc, errors.NoController)
        self.assertIn("has not answered", str(exc))
