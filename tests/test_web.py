"""The status page: the view on a fake clock, /status.json and /metrics over HTTP with real
engines, and the live page in headless Chromium (driven over the DevTools protocol).
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import socket
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, error, reactor, task, threads
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from zope.interface.verify import verifyObject

from ipcluster import errors
from ipcluster.controller.droplog import DropLog
from ipcluster.controller.registry import Registry
from ipcluster.controller.service import ControllerConfig
from ipcluster.controller.status import ControllerStatus
from ipcluster.interfaces import IStatusSource
from ipcluster.scheduler.runs import RunLog
from ipcluster.web.prometheus import exposition
from ipcluster.web.service import web_service
from ipcluster.web.view import StatusView
from tests.cluster import BOUND, Process, connect_client, error_of, event, start_controller, start_engines, until, within

CHROMIUM = "/usr/bin/chromium"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "status-page.png"
DASHBOARD_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "dashboard.png"


def hold_gil(seconds):
    """One C call that holds the GIL: libc sleep() through ctypes.PyDLL (which keeps the GIL)."""
    import ctypes

    ctypes.PyDLL(None).sleep(int(seconds))
    return "held"


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def boom():
    return 1 / 0


def ignore(d: defer.Deferred) -> defer.Deferred:
    """A task we never wait for: whatever it ends with (cleanup closes the client) is fine."""
    d.addErrback(lambda f: None)
    return d


# -- HTTP helpers ------------------------------------------------------------------


class Http:
    """GETs with twisted.web's Agent; its connections are closed at cleanup."""

    def __init__(self, testcase) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.pool)
        testcase.addCleanup(self.pool.closeCachedConnections)

    @defer.inlineCallbacks
    def request(self, url: str, method: bytes = b"GET"):
        response = yield within(self.agent.request(method, url.encode("ascii")), BOUND, f"{method.decode()} {url}")
        body = yield within(readBody(response), BOUND, f"the body of {url}")
        return response, body

    @defer.inlineCallbacks
    def json(self, url: str):
        response, body = yield self.request(url)
        if response.code != 200:
            raise AssertionError(f"GET {url}: HTTP {response.code}: {body[:500]!r}")
        return json.loads(body)


def header(response, name: str) -> str:
    values = response.headers.getRawHeaders(name) or []
    return values[0] if values else ""


@defer.inlineCallbacks
def start_web(testcase, controller):
    """The status service on a free loopback port; returns ``(service, base URL)``."""
    svc = web_service(controller, "tcp:0:interface=127.0.0.1", reactor)
    svc.privilegedStartService()
    svc.startService()
    testcase.addCleanup(svc.stopService)
    address = yield within(svc.listening(), BOUND, "the status page to listen")
    return svc, f"http://127.0.0.1:{address.port}"


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family) -> dict:
    """``{frozenset(labels.items()): value}`` for one metric family."""
    return {frozenset(s.labels.items()): s.value for s in family.samples}


# -- the view, on a fake clock -----------------------------------------------------


class _Scheduler:
    """What ControllerStatus reads of a scheduler: its counters, and no task in it."""

    def __init__(self, clock=None) -> None:
        self.completed = 0
        self.failed = 0
        self.ready = 0
        self.runs = RunLog(clock or task.Clock())

    def counts(self) -> dict:
        return {"waiting": 0, "ready": self.ready, "assigned": 0, "running": 0, "completed": self.completed,
                "failed": self.failed, "retried": 0, "stolen": 0}  # fmt: skip

    def assigned_to(self, engine_id: str) -> int:
        return 0


class _Controller:
    """A controller's status (the real ControllerStatus) over a registry, a drop log and a stub scheduler."""

    def __init__(self, clock) -> None:
        self.reactor = clock
        self.registry = Registry()
        self.scheduler = _Scheduler(clock)
        self.drops = DropLog(clock)
        self.config = ControllerConfig(data_dir="/nonexistent")
        self.status = ControllerStatus(clock, self.registry, self.scheduler, self.drops, self.config, dict)


class View(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.controller = _Controller(self.clock)
        self.addCleanup(self.controller.drops.stop)
        verifyObject(IStatusSource, self.controller.status)
        self.view = StatusView(self.controller.status, self.clock, rate_window=10.0, drops_window=60.0)
        self.view.watch()
        self.addCleanup(self.view.unwatch)

    def advance(self, seconds: float) -> None:
        for _ in range(int(seconds)):
            self.clock.advance(1.0)
            self.view.sample()

    def test_status_is_cached_briefly(self):
        first = self.view.status()
        self.controller.scheduler.completed = 5
        self.assertIs(self.view.status(), first, "a request right after another recomputed the status")
        self.clock.advance(self.view.cache_seconds)
        self.assertEqual(self.view.status()["tasks"]["completed"], 5)

    def test_tasks_per_second_over_the_window(self):
        self.assertEqual(self.view.status()["tasks"]["per_second"], 0.0)
        self.controller.scheduler.completed = 20
        self.advance(10)
        self.assertAlmostEqual(self.view.tasks_per_second(), 2.0)
        self.controller.scheduler.failed = 10  # 10 more in the next 10 s, none after the first 20
        self.advance(10)
        self.assertAlmostEqual(self.view.tasks_per_second(), 1.0)
        self.advance(10)
        self.assertAlmostEqual(self.view.tasks_per_second(), 0.0)

    def test_recent_drops_and_failures(self):
        reg = self.controller.registry
        self.controller.drops.drop("task", "bad signature", b"peer")
        self.advance(30)
        self.controller.drops.drop("task", "bad signature", b"peer")
        self.controller.drops.drop("heartbeat", "wrong frame count", b"peer")
        record = reg.register("e0", "i0", "host-a", 42, self.clock.seconds())
        reg.mark_alive(record, self.clock.seconds())
        reg.mark_dead(record, "heart silent for 3 beats", self.clock.seconds())
        gone = reg.register("e1", "i1", "host-b", 43, self.clock.seconds())
        reg.remove(gone, "no heartbeat within 10 s of registering", self.clock.seconds(), event="purged")
        status = self.view.status()
        drops = {(d["socket"], d["reason"]): (d["recent"], d["total"]) for d in status["drops"]}
        self.assertEqual(drops, {("task", "bad signature"): (2, 2), ("heartbeat", "wrong frame count"): (1, 1)})
        self.advance(45)  # the first task drop is now older than the 60 s window
        drops = {(d["socket"], d["reason"]): (d["recent"], d["total"]) for d in self.view.status()["drops"]}
        self.assertEqual(drops, {("task", "bad signature"): (1, 2), ("heartbeat", "wrong frame count"): (1, 1)})
        self.assertEqual([(f["engine"], f["event"]) for f in status["failures"]], [("e1", "purged"), ("e0", "dead")])
        self.assertEqual(status["failures"][1]["reason"], "heart silent for 3 beats")
        self.assertEqual(status["counts"], {"registering": 0, "alive": 0, "busy": 0, "dead": 1})

    def test_metrics_escape_labels_and_parse(self):
        reg = self.controller.registry
        record = reg.register('we"ird\\id', "i0", "h", 1, 0.0)
        reg.mark_alive(record, 0.0)
        record.rtt = 0.00125
        self.controller.drops.drop("client", 'a "quoted" reason\nover two lines', b"p")
        self.controller.scheduler.completed = 3
        text = exposition(self.view.status())
        found = families(text)
        self.assertEqual(samples(found["ipcluster_engine_heartbeat_rtt_seconds"]), {frozenset({("engine", 'we"ird\\id')}): 0.00125})
        self.assertEqual(
            samples(found["ipcluster_dropped_messages"]),
            {frozenset({("socket", "client"), ("reason", 'a "quoted" reason\nover two lines')}): 1.0},
        )
        self.assertEqual(found["ipcluster_tasks_completed"].type, "counter")
        self.assertEqual(samples(found["ipcluster_tasks_completed"]), {frozenset(): 3.0})
        for name, family in found.items():
            self.assertTrue(family.documentation, f"{name} has no HELP")
            self.assertRegex(text, rf"(?m)^# TYPE {name}(_total)? {family.type}$")

    def test_bad_endpoint_fails_at_once(self):
        with self.assertRaises(ValueError):
            web_service(self.controller, "nonsense:8080", reactor)

    @defer.inlineCallbacks
    def test_a_bare_port_binds_loopback(self):
        """--web 0 (or tcp:0) serves on 127.0.0.1 only, like the telnet manhole."""
        for description in ("0", "tcp:0"):
            svc = web_service(self.controller, description, reactor)
            svc.privilegedStartService()
            svc.startService()
            address = yield within(svc.listening(), BOUND, "the status page to listen")
            yield svc.stopService()
            self.assertEqual(address.host, "127.0.0.1", description)

    @defer.inlineCallbacks
    def test_port_in_use_fails_start(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        svc = web_service(self.controller, f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1", reactor)
        with self.assertRaises(error.CannotListenError):
            svc.privilegedStartService()
        with self.assertRaises(error.CannotListenError):
            yield svc.listening()
        self.assertIsNone(svc.port)
        self.assertEqual(len(self.flushLoggedErrors(error.CannotListenError)), 1)


# -- over HTTP, with a real controller ---------------------------------------------


class Pages(unittest.TestCase):
    """The page and the endpoints' HTTP behaviour (no engines needed)."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.controller = yield start_controller(self)
        self.svc, self.base = yield start_web(self, self.controller)
        self.http = Http(self)

    def test_binds_only_the_endpoint_interface(self):
        self.assertEqual(self.svc.address.host, "127.0.0.1")
        self.assertIsInstance(self.svc.port, int)
        self.assertGreater(self.svc.port, 0)

    @defer.inlineCallbacks
    def test_page_is_self_contained(self):
        response, body = yield self.http.request(self.base + "/")
        self.assertEqual(response.code, 200)
        self.assertTrue(header(response, "content-type").startswith("text/html"))
        csp = header(response, "content-security-policy")
        self.assertIn("default-src 'none'", csp)
        self.assertIn("connect-src 'self'", csp)
        page = body.decode("utf-8")
        self.assertIn("status.json", page)
        # No external asset: nothing loaded from another origin, no protocol-relative URL.
        self.assertNotRegex(page, r"(?i)(src|href)\s*=\s*[\"']?\s*(https?:)?//")
        self.assertNotRegex(page, r"(?i)https?://")
        self.assertNotIn("@import", page)

    @defer.inlineCallbacks
    def test_read_only_and_unknown_paths(self):
        response, _ = yield self.http.request(self.base + "/status.json", b"POST")
        self.assertEqual(response.code, 405)
        response, _ = yield self.http.request(self.base + "/metrics", b"DELETE")
        self.assertEqual(response.code, 405)
        response, _ = yield self.http.request(self.base + "/nothing-here")
        self.assertEqual(response.code, 404)
        response, body = yield self.http.request(self.base + "/status.json", b"HEAD")
        self.assertEqual((response.code, body), (200, b""))

    @defer.inlineCallbacks
    def test_stop_closes_port_and_connections(self):
        yield self.http.json(self.base + "/status.json")  # leaves a kept-alive connection open
        self.assertEqual(len(self.svc.factory.protocols), 1)
        yield within(self.svc.stopService(), BOUND, "the status service to stop")
        self.assertEqual(len(self.svc.factory.protocols), 0)
        self.assertIsNone(self.svc.port)
        probe = socket.socket()
        try:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", int(self.base.rsplit(":", 1)[1]))), 0)
        finally:
            probe.close()


class LiveData(unittest.TestCase):
    """/status.json and /metrics with real engine processes."""

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        # These tests look right after a change; the short status cache has its own test.
        self.patch(StatusView, "cache_seconds", 0)
        self.controller = yield start_controller(self)
        self.procs = yield start_engines(self, self.controller, ["e0", "e1"])
        self.client = yield connect_client(self, self.controller)
        self.svc, self.base = yield start_web(self, self.controller)
        self.http = Http(self)
        self.assertEqual((yield self.client.submit(pow, 2, 10, engine="e0")), 1024)
        exc = yield error_of(self.client.submit(boom, engine="e1"), "boom")
        self.assertIsInstance(exc, ZeroDivisionError)
        self.controller.drops.drop("task", 'a "quoted" reason\nover two lines', b"test")
        registry = self.controller.registry
        yield until(lambda: all(registry.get(e).rtt is not None for e in ("e0", "e1")), what="heartbeat RTTs")

    @defer.inlineCallbacks
    def test_status_json(self):
        response, body = yield self.http.request(self.base + "/status.json")
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), "application/json")
        self.assertEqual(header(response, "cache-control"), "no-store")
        status = json.loads(body)
        engines = {e["id"]: e for e in status["engines"]}
        self.assertEqual(sorted(engines), ["e0", "e1"])
        for eid, e in engines.items():
            self.assertEqual(e["state"], "alive")
            self.assertEqual(e["pid"], self.procs[eid].pid)
            self.assertEqual(e["host"], socket.gethostname())
            self.assertGreaterEqual(e["rtt"], 0.0)
            self.assertLess(e["rtt"], 5.0)
        self.assertEqual(status["counts"], {"registering": 0, "alive": 2, "busy": 0, "dead": 0})
        tasks = status["tasks"]
        self.assertEqual((tasks["in_flight"], tasks["completed"], tasks["failed"]), (0, 1, 1))
        self.assertGreater(tasks["per_second"], 0.0)
        self.assertEqual(
            status["drops"], [{"socket": "task", "reason": 'a "quoted" reason\nover two lines', "total": 1, "recent": 1}]
        )
        self.assertEqual(status["failures"], [])
        self.assertNotIn(self.controller.key.hex(), body.decode())

        # A task in flight shows as running on its engine.
        napping = ignore(self.client.submit(nap, 60, engine="e0"))
        yield until(lambda: self.controller.registry.get("e0").running_task == napping.task_id, what="the nap to start")
        status = yield self.http.json(self.base + "/status.json")
        e0 = next(e for e in status["engines"] if e["id"] == "e0")
        self.assertEqual(e0["running_task"], napping.task_id)
        self.assertGreaterEqual(e0["task_running_for"], 0.0)
        self.assertEqual(status["tasks"]["in_flight"], 1)

    @defer.inlineCallbacks
    def test_metrics_parse(self):
        response, body = yield self.http.request(self.base + "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "content-type"), "text/plain; version=0.0.4; charset=utf-8")
        text = body.decode("utf-8")
        found = families(text)
        for name in [
            "ipcluster_engines",
            "ipcluster_engine_heartbeat_rtt_seconds",
            "ipcluster_tasks_in_flight",
            "ipcluster_tasks_completed",
            "ipcluster_tasks_failed",
            "ipcluster_tasks_per_second",
            "ipcluster_dropped_messages",
        ]:
            self.assertIn(name, found)
            self.assertTrue(found[name].documentation, f"{name} has no HELP")
        self.assertEqual(
            samples(found["ipcluster_engines"]),
            {frozenset({("state", s)}): n for s, n in [("registering", 0), ("alive", 2), ("busy", 0), ("dead", 0)]},
        )
        rtts = samples(found["ipcluster_engine_heartbeat_rtt_seconds"])
        self.assertEqual(set(rtts), {frozenset({("engine", "e0")}), frozenset({("engine", "e1")})})
        self.assertTrue(all(0.0 <= v < 5.0 for v in rtts.values()), rtts)
        self.assertEqual(samples(found["ipcluster_tasks_in_flight"]), {frozenset(): 0})
        self.assertEqual(
            samples(found["ipcluster_tasks"]), {frozenset({("state", s)}): 0 for s in ("waiting", "ready", "assigned", "running")}
        )
        self.assertEqual(found["ipcluster_tasks_completed"].type, "counter")
        self.assertEqual(samples(found["ipcluster_tasks_completed"]), {frozenset(): 1})
        self.assertEqual(samples(found["ipcluster_tasks_failed"]), {frozenset(): 1})
        self.assertEqual(
            samples(found["ipcluster_dropped_messages"]),
            {frozenset({("socket", "task"), ("reason", 'a "quoted" reason\nover two lines')}): 1},
        )
        self.assertIn("# TYPE ipcluster_tasks_completed_total counter", text)
        self.assertIn('ipcluster_engines{state="alive"} 2', text)

    @defer.inlineCallbacks
    def test_dead_engine_is_a_recent_failure(self):
        dead = event(self.controller.registry, "dead", "e1")
        self.procs["e1"].kill(signal.SIGKILL)
        yield dead
        status = yield self.http.json(self.base + "/status.json")
        self.assertEqual({e["id"]: e["state"] for e in status["engines"]}, {"e0": "alive", "e1": "dead"})
        self.assertEqual(len(status["failures"]), 1)
        failure = status["failures"][0]
        self.assertEqual((failure["engine"], failure["event"], failure["pid"]), ("e1", "dead", self.procs["e1"].pid))
        self.assertIn("heart silent", failure["reason"])
        _, body = yield self.http.request(self.base + "/metrics")
        found = families(body.decode())
        self.assertEqual(samples(found["ipcluster_engines"])[frozenset({("state", "dead")})], 1)
        self.assertEqual(samples(found["ipcluster_engine_failures"])[frozenset({("event", "dead")})], 1)
        self.assertEqual(set(samples(found["ipcluster_engine_heartbeat_rtt_seconds"])), {frozenset({("engine", "e0")})})


# -- in headless Chromium ------------------------------------------------------------


class DevTools:
    """A tiny blocking Chrome DevTools Protocol client (one page target); call it from a thread."""

    def __init__(self, ws_url: str, timeout: float) -> None:
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list = []  # what the page said while we waited for replies (console, exceptions)

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                break
            if "method" in reply:
                self.events.append(reply)
        if "error" in reply:
            raise AssertionError(f"DevTools {method}: {reply['error']}")
        return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise AssertionError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, predicate: str, what: str, seconds: float = BOUND):
        """Poll a JS expression in the page until it is truthy (bounded); returns its value."""
        script = """
        new Promise((resolve, reject) => {
          const deadline = Date.now() + %d;
          (function check() {
            let value = null;
            try { value = (() => (%s))(); } catch (e) { value = null; }
            if (value) return resolve(value);
            if (Date.now() > deadline) {
              const rows = document.getElementById("engine-rows");
              return reject(new Error("timed out waiting for " + %s + "; engines shown: " +
                                      (rows ? rows.innerText : "(no table)")));
            }
            setTimeout(check, 50);
          })();
        })""" % (int(seconds * 1000), predicate, json.dumps(what))
        return self.evaluate(script)

    def errors(self) -> list:
        """Console errors and uncaught exceptions the page reported (after ``watch_console``)."""
        found = []
        for e in self.events:
            params = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("exception", {}).get("description") or params["exceptionDetails"]["text"])
            elif e["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif e["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", "") + " " + params["entry"].get("url", ""))
        return found

    def watch_console(self) -> None:
        self.call("Runtime.enable")
        self.call("Log.enable")

    def screenshot(self, path: Path, width: int = 1280) -> bytes:
        height = int(self.evaluate("Math.ceil(document.documentElement.getBoundingClientRect().height)"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=max(height, 400), deviceScaleFactor=1, mobile=False)
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        self.ws.close()


def in_thread(what: str, f, *args, seconds: float = BOUND + 30, **kwargs) -> defer.Deferred:
    return within(threads.deferToThread(f, *args, **kwargs), seconds, what)


def row_state(engine_id: str) -> str:
    return f'document.querySelector(\'#engine-rows tr[data-engine-id="{engine_id}"]\')?.dataset.state'


@defer.inlineCallbacks
def start_chromium(testcase, http: Http):
    """Headless Chromium on a fresh profile; returns a DevTools client for its page.

    Its output goes to a file (not pipes: Chromium's crashpad handlers detach from
    its process tree and would hold pipes open).  At cleanup every process that
    names the test's own profile directory (the browser, its children, its
    crashpad handlers) is killed, and the browser is reaped.
    """
    import psutil

    profile = Path(testcase.mktemp()).resolve()
    profile.mkdir(parents=True)
    log_path = profile.parent / "chromium.log"
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900",
        f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        "about:blank",
    ]  # fmt: skip
    # HOME inside the profile: the crash database and caches stay in the test's temp dir too.
    env = dict(os.environ, HOME=str(profile), XDG_CONFIG_HOME=str(profile), XDG_CACHE_HOME=str(profile))
    proc = Process("chromium")
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        reactor.spawnProcess(proc, argv[0], argv, env=env, childFDs={0: devnull, 1: log, 2: log})
    finally:
        os.close(devnull)
        os.close(log)

    def output() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    def ours(p) -> bool:
        try:
            return p.pid == proc.pid or any(str(profile) in arg for arg in (p.cmdline() or []))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    def gone(p) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    @defer.inlineCallbacks
    def stop():
        family = [p for p in psutil.process_iter() if ours(p)]
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        # Not psutil's wait(): on our own child it would call waitpid() and steal the
        # exit status from the reactor, whose processEnded would then never come.
        others = [p for p in family if p.pid != proc.pid]
        yield until(lambda: all(gone(p) for p in others), what="chromium's processes to end")
        try:
            yield within(proc.ended, BOUND, "chromium to be reaped")
        except (error.ProcessTerminated, error.ProcessDone):
            pass

    testcase.addCleanup(stop)
    port_file = profile / "DevToolsActivePort"
    try:
        yield until(
            lambda: not proc.running or (port_file.exists() and len(port_file.read_text().splitlines()) >= 2),
            what="chromium's DevTools port",
        )
    except Exception as e:
        raise AssertionError(f"{e}; chromium's output:\n{output()}") from e
    if not proc.running:
        raise AssertionError(f"chromium exited at start ({proc.status}):\n{output()}")
    port = int(port_file.read_text().splitlines()[0])
    targets = yield http.json(f"http://127.0.0.1:{port}/json/list")
    page = next(t for t in targets if t.get("type") == "page")
    devtools = yield in_thread("a DevTools connection", DevTools, page["webSocketDebuggerUrl"], BOUND + 30)
    testcase.addCleanup(devtools.close)
    return devtools


class Browser(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_page_shows_engine_busy_then_dead(self):
        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest(f"{CHROMIUM} is not installed (Debian package 'chromium')")
        controller = yield start_controller(self)
        procs = yield start_engines(self, controller, ["e0", "e1", "e2"])
        client = yield connect_client(self, controller)
        svc, base = yield start_web(self, controller)
        http = Http(self)
        # Some history for the counters: completed and failed tasks.
        results = yield within(
            defer.gatherResults([client.submit(pow, 2, n, engine=f"e{n % 3}") for n in range(12)]), BOUND, "warm-up tasks"
        )
        self.assertEqual(results, [2**n for n in range(12)])
        yield error_of(client.submit(boom, engine="e2"), "a failing task")

        browser = yield start_chromium(self, http)
        yield in_thread("the page to load", browser.call, "Page.navigate", url=base + "/")
        yield in_thread(
            "all engines alive in the page",
            browser.wait_for,
            " && ".join(f'{row_state(e)} === "alive"' for e in ("e0", "e1", "e2")),
            "three alive engines",
        )
        shown = yield in_thread("the page's counters", browser.evaluate,
                                '["tasks-completed", "tasks-failed"].map(id => document.getElementById(id).textContent)')
        self.assertEqual(shown, ["12", "1"])
        self.assertEqual((yield in_thread("the connection state", browser.evaluate, "document.documentElement.dataset.connection")), "ok")

        # Busy: one task holding e0's GIL in a C call.
        busy = event(controller.registry, "busy", "e0")
        held = client.submit(hold_gil, 30, engine="e0")
        yield busy
        yield in_thread("e0 busy in the page", browser.wait_for, f'{row_state("e0")} === "busy"', "e0 to show busy")
        busy_for = yield in_thread("e0's busy-for", browser.evaluate,
                                   "document.querySelector('#engine-rows tr[data-engine-id=\"e0\"]').cells[7].textContent")
        self.assertRegex(busy_for, r"^\d+\.\d s$")
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        yield in_thread("a screenshot", browser.screenshot, tmp / "status-busy.png")

        # Dead: SIGKILL the busy engine; its task fails.
        dead = event(controller.registry, "dead", "e0")
        procs["e0"].kill(signal.SIGKILL)
        yield dead
        exc = yield error_of(held, "the task of the killed engine")
        self.assertIsInstance(exc, errors.EngineDied)
        yield in_thread("e0 dead in the page", browser.wait_for,
                        f'{row_state("e0")} === "dead" && document.querySelector(\'#failure-rows tr[data-failed-engine="e0"]\')',
                        "e0 to show dead, with a failure row")
        reason = yield in_thread("the failure reason", browser.evaluate,
                                 "document.querySelector('#failure-rows tr[data-failed-engine=\"e0\"] td.reason').textContent")
        self.assertIn("heart silent", reason)

        # A real bad message (unsigned garbage on the registration socket) shows as dropped.
        import zmq

        context = zmq.Context()
        self.addCleanup(context.destroy, linger=0)
        garbage = context.socket(zmq.DEALER)
        garbage.connect(controller.info.address("registration"))
        garbage.send_multipart([b"not", b"a signed message"])
        yield until(lambda: controller.drops.total >= 1, what="the garbage to be dropped")
        yield in_thread("the drop in the page", browser.wait_for,
                        "document.querySelector('#drop-rows tr[data-socket=\"registration\"]')", "a dropped-message row")

        # For the picture: e1 busy too, so the page shows alive, busy and dead engines at once.
        busy = event(controller.registry, "busy", "e1")
        ignore(client.submit(hold_gil, 30, engine="e1"))
        yield busy
        yield in_thread("e1 busy in the page", browser.wait_for,
                        f'{row_state("e1")} === "busy" && document.getElementById("tasks-failed").textContent === "2"',
                        "e1 to show busy and two failed tasks")
        states = yield in_thread("the states shown", browser.evaluate,
                                 "Array.from(document.querySelectorAll('#engine-rows tr')).map(r => [r.dataset.engineId, r.dataset.state])")
        self.assertEqual(states, [["e0", "dead"], ["e1", "busy"], ["e2", "alive"]])
        png = yield in_thread("a screenshot", browser.screenshot, tmp / "status-page.png")
        self.assertTrue(png.startswith(b"\x89PNG\r\n\x1a\n"))
        if os.environ.get("IPCLUSTER_UPDATE_SCREENSHOT"):  # refresh the user's guide picture on request
            shutil.copyfile(tmp / "status-page.png", DOCS_SCREENSHOT)


def flaky_nap(n):
    """A short task of varying length (0.03 to 0.35 s); every 23rd fails."""
    import time

    time.sleep(0.03 + (n % 9) * 0.04)
    if n % 23 == 5:
        raise ValueError(f"task {n} fails on purpose")
    return n


def drawn(chart: str) -> str:
    return f"Number(document.documentElement.dataset.drawn{chart} || 0)"


class Dashboard(unittest.TestCase):
    """The charts in headless Chromium: the controller's own two engines under a few hundred tasks."""

    timeout = 300

    @defer.inlineCallbacks
    def test_charts_draw_the_work_and_the_table_shows_the_running_task(self):
        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest(f"{CHROMIUM} is not installed (Debian package 'chromium')")
        controller = yield start_controller(self, engines=2)
        yield until(lambda: all(controller.registry.get(e) is not None and controller.registry.get(e).state == "alive"
                                for e in ("e0", "e1")), what="the controller's two engines")
        client = yield connect_client(self, controller)
        svc, base = yield start_web(self, controller)
        browser = yield start_chromium(self, Http(self))
        yield in_thread("the console", browser.watch_console)
        yield in_thread("the page to load", browser.call, "Page.navigate", url=base + "/")
        yield in_thread("the page to stream", browser.wait_for,
                        f'{row_state("e0")} === "alive" && {row_state("e1")} === "alive" && '
                        'document.getElementById("conn").textContent === "live"', "two alive engines, streaming")
        canvases = yield in_thread("the canvases", browser.evaluate,
                                   "Array.from(document.querySelectorAll('canvas')).map(c => [c.id, c.width > 0 && c.height > 0])")
        self.assertEqual(canvases, [[c, True] for c in ("chart-stream", "chart-rate", "chart-rss", "chart-cpu")])
        before = yield in_thread("the draw counts", browser.evaluate, f"[{drawn('Stream')}, {drawn('Rate')}]")

        n = 300
        work = [client.submit(flaky_nap, i) for i in range(n)]
        for d in work:
            d.addErrback(lambda f: f.trap(ValueError))
        yield in_thread("bars in the task stream", browser.wait_for,
                        "Number(document.documentElement.dataset.streamBars) >= 120", "120 bars in the task stream")
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        png = yield in_thread("a screenshot under load", browser.screenshot, tmp / "dashboard.png")
        self.assertTrue(png.startswith(b"\x89PNG\r\n\x1a\n"))
        yield within(defer.gatherResults(work), BOUND * 2, f"{n} tasks")
        failed = sum(1 for i in range(n) if i % 23 == 5)
        yield in_thread("every run in the task stream", browser.wait_for,
                        f"Number(document.documentElement.dataset.streamBars) >= {n}", f"{n} bars")
        after = yield in_thread("the draw counts", browser.evaluate, f"[{drawn('Stream')}, {drawn('Rate')}]")
        self.assertGreater(after[0], before[0], "the task stream was not redrawn after tasks ran")
        self.assertGreater(after[1], before[1], "the throughput chart was not redrawn")
        bars = yield in_thread("the bars by outcome", browser.evaluate,
                               "Object.fromEntries(Chart.getChart('chart-stream').data.datasets.map(d => [d.label, d.data.length]))")
        self.assertEqual((bars["ok"], bars["failed"]), (n - failed, failed))
        yield in_thread("memory of the local engines", browser.wait_for,
                        "Chart.getChart('chart-rss').data.datasets.filter(d => d.data.length > 1).length === 2",
                        "two RSS lines")

        # The engine table shows the task a busy engine runs, and for how long.
        napping = ignore(client.submit(nap, 60, engine="e1"))
        yield until(lambda: controller.registry.get("e1").running_task == napping.task_id, what="the nap to start")
        cell = f"document.querySelector('#engine-rows tr[data-engine-id=\"e1\"]')"
        yield in_thread("the running task in the table", browser.wait_for,
                        f"{cell}.cells[5].textContent === {json.dumps(napping.task_id)} && {cell}.cells[6].textContent",
                        "e1's running task")
        rss = yield in_thread("e1's RSS", browser.evaluate, f"{cell}.cells[9].textContent")
        self.assertRegex(rss, r"^\d+ MB$")
        self.assertEqual((yield in_thread("the console", browser.errors)), [])
        if os.environ.get("IPCLUSTER_UPDATE_SCREENSHOT"):  # refresh the user's guide picture on request
            DASHBOARD_SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copyfile(tmp / "dashboard.png", DASHBOARD_SCREENSHOT)
