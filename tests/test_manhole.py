"""The manhole: SSH (keys, passwords) and telnet (loopback only, password) into a live controller.

Real sockets on 127.0.0.1, a real engine process, Twisted's own SSH and
telnet client protocols (no ssh binary needed).  Every wait is bounded.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import signal as signals
import stat
from pathlib import Path
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application import service
from twisted.conch import error as conch_error
from twisted.conch import telnet
from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ipcluster import errors
from ipcluster.controller.registry import Registry
from ipcluster.interfaces import IEngineControl, IStatusSource
from ipcluster.listening import ListeningService
from ipcluster.manhole import credentials, login
from ipcluster.manhole import service as manhole
from ipcluster.manhole.namespace import HELPER_NAMES, make_namespace
from ipcluster.verbs import VERBS
from tests.cluster import BOUND, start_controller, start_engines, until, within

ANSI = re.compile(rb"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[@-~])")
USER_KEY_ID = "console-test"


def new_key() -> keys.Key:
    return keys.Key(ed25519.Ed25519PrivateKey.generate())


class LoginFailed(Exception):
    """The server hung up before a console opened."""


class Console:
    """What a console session has written; waits for patterns in it (escape sequences removed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.raw = b""
        self.pos = 0
        self.waiters: list = []
        self.ready = defer.Deferred()
        self.lost = defer.Deferred()
        self.connected = False
        self.transport = None

    @property
    def text(self) -> str:
        return ANSI.sub(b"", self.raw).decode("utf-8", "replace")

    def received(self, data: bytes) -> None:
        self.raw += data
        self._check()

    def _check(self) -> None:
        for waiter in list(self.waiters):
            pattern, d, timer = waiter
            m = pattern.search(self.text, self.pos)
            if m:
                self.waiters.remove(waiter)
                timer.cancel()
                self.pos = m.end()
                d.callback(m)

    def expect(self, pattern: str, seconds: float = BOUND) -> defer.Deferred:
        """Fires with the match of ``pattern`` in output after the last match; fails after ``seconds``."""
        d = defer.Deferred()

        def timed_out():
            waiter[:] and self.waiters.remove(waiter)
            d.errback(AssertionError(f"{self.name}: no {pattern!r} within {seconds:g} s; output so far:\n{self.text}"))

        waiter = [re.compile(pattern), d, reactor.callLater(seconds, timed_out)]
        self.waiters.append(waiter)
        self._check()
        return d

    def connection_lost(self, reason) -> None:
        self.connected = False
        if not self.ready.called:
            self.ready.errback(LoginFailed(f"{self.name}: disconnected before a console opened: {reason.getErrorMessage()}"))
        for pattern, d, timer in self.waiters:
            timer.cancel()
            d.errback(AssertionError(f"{self.name}: disconnected waiting for {pattern.pattern!r}; output:\n{self.text}"))
        self.waiters = []
        self.lost.callback(None)

    def close(self) -> defer.Deferred:
        if self.connected:
            self.transport.loseConnection()
        return within(self.lost, BOUND, f"{self.name} to disconnect")


# -- an SSH client made of twisted.conch parts -----------------------------------------


class SSHConsole(Console):
    def __init__(self, username: str, key=None, password=None, host_key=None) -> None:
        super().__init__(f"ssh {username}")
        self.username = username
        self.key = key
        self.password = password
        self.host_key = host_key
        self.channel = None

    def send(self, line: str) -> None:
        self.channel.write(line.encode() + b"\r")


class _ClientTransport(transport.SSHClientTransport):
    def __init__(self, console: SSHConsole) -> None:
        self.console = console

    def connectionMade(self):
        self.console.connected = True
        self.console.transport = self.transport
        super().connectionMade()

    def verifyHostKey(self, hostKey, fingerprint):
        if self.console.host_key is not None and keys.Key.fromString(hostKey) != self.console.host_key.public():
            return defer.fail(conch_error.ConchError("host key mismatch"))
        return defer.succeed(True)

    def connectionSecure(self):
        self.requestService(_ClientAuth(self.console, _ClientConnection(self.console)))

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.console.connection_lost(reason)


class _ClientAuth(userauth.SSHUserAuthClient):
    preferredOrder = [b"publickey", b"password"]

    def __init__(self, console: SSHConsole, instance) -> None:
        super().__init__(console.username.encode(), instance)
        self.console = console
        self.offered = set()

    def getPublicKey(self):
        if self.console.key is None or "key" in self.offered:
            return None
        self.offered.add("key")
        return self.console.key.public()

    def getPrivateKey(self):
        return defer.succeed(self.console.key)

    def getPassword(self, prompt=None):
        if self.console.password is None or "password" in self.offered:
            return None
        self.offered.add("password")
        return defer.succeed(self.console.password.encode())


class _ClientConnection(connection.SSHConnection):
    def __init__(self, console: SSHConsole) -> None:
        super().__init__()
        self.console = console

    def serviceStarted(self):
        super().serviceStarted()
        self.openChannel(_ShellChannel(self.console, conn=self))


class _ShellChannel(channel.SSHChannel):
    name = b"session"

    def __init__(self, console: SSHConsole, **kw) -> None:
        super().__init__(**kw)
        self.console = console

    def channelOpen(self, data):
        pty = session.packRequest_pty_req(b"xterm", (40, 160, 0, 0), b"")
        d = self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
        d.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        d.addCallback(self._shell_open)
        d.addErrback(lambda f: self.conn.transport.loseConnection())

    def _shell_open(self, _):
        self.console.channel = self
        if not self.console.ready.called:
            self.console.ready.callback(self.console)

    def dataReceived(self, data):
        self.console.received(data)

    def closed(self):
        self.conn.transport.loseConnection()


@defer.inlineCallbacks
def ssh_login(testcase, port: int, username: str, **kw):
    """A console over SSH (fails with LoginFailed if the server refuses us); closed at cleanup."""
    console = SSHConsole(username, **kw)
    factory = protocol.ClientFactory()
    factory.protocol = lambda: _ClientTransport(console)
    yield within(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory), BOUND, "an SSH connection")
    testcase.addCleanup(console.close)
    yield within(console.ready, BOUND, "the SSH console")
    return console


# -- a telnet client ---------------------------------------------------------------------


class TelnetConsole(Console):
    def send(self, line: str) -> None:
        self.transport.write(line.encode() + b"\n")  # the telnet transport sends \r\n


class _TelnetClient(telnet.TelnetProtocol):
    """Agrees to what Twisted's telnet server asks (echo, NAWS, linemode, SGA)."""

    def __init__(self, console: TelnetConsole) -> None:
        self.console = console

    def connectionMade(self):
        self.console.connected = True
        self.console.transport = self.transport
        self.console.ready.callback(self.console)

    def enableLocal(self, option):
        return option in (telnet.LINEMODE, telnet.NAWS, telnet.SGA)

    def enableRemote(self, option):
        return option in (telnet.ECHO, telnet.SGA)

    def disableLocal(self, option):
        pass

    def disableRemote(self, option):
        pass

    def dataReceived(self, data):
        self.console.received(data)

    def connectionLost(self, reason):
        self.console.connection_lost(reason)


@defer.inlineCallbacks
def telnet_connect(testcase, port: int):
    console = TelnetConsole("telnet")
    factory = protocol.ClientFactory()
    factory.protocol = lambda: telnet.TelnetTransport(_TelnetClient, console)
    yield within(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory), BOUND, "a telnet connection")
    testcase.addCleanup(console.close)
    yield console.ready
    return console


# -- helpers -----------------------------------------------------------------------------


class LogCapture:
    """The manhole module's log messages during one test."""

    def __init__(self, testcase) -> None:
        self.events: list = []
        self.observer = self.events.append
        globalLogPublisher.addObserver(self.observer)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.observer)

    def messages(self, level=None) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace", "").startswith("ipcluster.manhole.") and (level is None or e.get("log_level") == level)
        ]


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@defer.inlineCallbacks
def start_manhole(testcase, controller, **kw):
    """The manhole services under one parent, started (ports bound), stopped at cleanup."""
    parent = service.MultiService()
    for svc in manhole.manhole_services(controller, data_dir=controller.config.data_dir, reactor=reactor, **kw):
        svc.setServiceParent(parent)
    parent.privilegedStartService()
    parent.startService()
    testcase.addCleanup(parent.stopService)
    ports = {}
    for svc in parent:
        address = yield within(svc.listening(), BOUND, f"{svc.name} to listen")
        ports[svc.name] = address.port
    return ports


# -- the namespace: no sockets ---------------------------------------------------------------


@implementer(IEngineControl)
class FakeControl:
    """Records each command; every one answers at once."""

    def __init__(self, engine_id: str) -> None:
        self.engine_id = engine_id
        self.calls: list = []

    def _called(self, *call):
        self.calls.append(call)
        return defer.succeed(call)

    def beat(self, timeout=None):
        return self._called("beat", timeout)

    def abort(self, task_id, timeout=None, release=False):
        return self._called("abort", task_id, timeout, release)

    def signal(self, signum, task_id=None, timeout=None):
        return self._called("signal", signum, task_id, timeout)

    def exit(self, timeout=5.0):
        return self._called("exit", timeout)

    def reset(self, timeout=None):
        return self._called("reset", timeout)


@implementer(IStatusSource)
class FakeStatus:
    """A controller's status with one engine alive and one dead, and some finished tasks."""

    ENGINES = [
        {"id": "e0", "host": "h", "pid": 10, "state": "alive", "rtt": 0.00125, "busy_for": None, "running_task": None,
         "task_running_for": None, "queued": 2},
        {"id": "e1", "host": "h", "pid": 11, "state": "dead", "rtt": None, "busy_for": None, "running_task": None,
         "task_running_for": None, "queued": 0},
    ]  # fmt: skip
    TASKS = {"in_flight": 1, "waiting": 3, "ready": 2, "by_state": {}, "queued_on_engines": 2, "completed": 7,
             "failed": 1, "retried": 0, "stolen": 0}  # fmt: skip

    def now(self):
        return 0.0

    def engines(self):
        return self.ENGINES

    def tasks(self):
        return self.TASKS

    def drops(self):
        return {}

    def controller(self):
        return {"pid": 1, "ip": "127.0.0.1", "ports": {}, "heartbeat_period": 1.0, "heartbeat_misses": 3, "data_dir": "/x"}

    def usage(self):
        return {}

    def subscribe_runs(self, listener):
        pass

    def unsubscribe_runs(self, listener):
        pass

    def subscribe(self, listener):
        pass

    def unsubscribe(self, listener):
        pass


class Namespace(unittest.SynchronousTestCase):
    def setUp(self):
        registry = Registry()
        for eid in ("e0", "e1"):
            registry.mark_alive(registry.register(eid, "i-" + eid, "h", 10, 0.0), 0.0)
        registry.mark_dead(registry.get("e1"), "test", 1.0)
        self.controls = {eid: FakeControl(eid) for eid in ("e0", "e1")}
        for control in self.controls.values():
            verifyObject(IEngineControl, control)
        status = FakeStatus()
        verifyObject(IStatusSource, status)
        self.controller = SimpleNamespace(
            registry=registry, control=SimpleNamespace(control_for=self.controls.__getitem__), status=status,
            scheduler=SimpleNamespace(tasks={}), store=None,
        )  # fmt: skip
        self.ns = make_namespace(self.controller)

    def test_a_helper_for_every_verb(self):
        self.assertEqual(set(HELPER_NAMES), {"help", "status", "task", *VERBS})
        self.assertEqual(HELPER_NAMES[-1], "exit")
        for name, verb in VERBS.items():
            params = list(inspect.signature(self.ns[name]).parameters)
            self.assertEqual(params, ["eid"] + [a.name for a in verb.args if not a.internal], name)
            self.assertIn(verb.reply, inspect.getdoc(self.ns[name]))

    def test_helpers_check_and_send_the_verbs(self):
        self.assertEqual(self.successResultOf(self.ns["beat"](0)), ("beat", None))
        self.assertEqual(self.successResultOf(self.ns["abort"]("e0", "t1", timeout=2)), ("abort", "t1", 2.0, False))
        self.assertEqual(self.successResultOf(self.ns["signal"](0, "INT")), ("signal", int(signals.SIGINT), None, None))
        self.assertEqual(self.successResultOf(self.ns["exit"](0)), ("exit", 5.0))
        self.assertEqual(self.successResultOf(self.ns["reset"](0, 1)), ("reset", 1.0))
        with self.assertRaises(errors.BadRequest):
            self.ns["signal"](0, "NOSUCHSIGNAL")
        with self.assertRaises(errors.BadRequest):
            self.ns["beat"](0, timeout=-1)
        with self.assertRaises(TypeError):
            self.ns["abort"](0, "t1", release=True)  # the scheduler's argument, not the operator's
        with self.assertRaises(KeyError):
            self.ns["beat"]("e1")  # dead
        self.assertEqual(len(self.controls["e0"].calls), 5)

    def test_status_prints_the_engines_table_and_the_task_counts(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.ns["status"]()
        lines = out.getvalue().splitlines()
        self.assertRegex(lines[0], r"^id +host +pid +state +rtt +task +running +busy-for +queued$")
        self.assertRegex(lines[1], r"^e0 +h +10 +alive +1\.2ms +- +- +- +2$")
        self.assertRegex(lines[2], r"^e1 +h +11 +dead +- ")
        self.assertEqual(
            lines[3], "1 live engine(s); 1 task(s) in flight; 2 ready to run, 3 waiting; 7 completed, 1 failed, 0 retried"
        )

    def test_task_without_a_store(self):
        with self.assertRaises(RuntimeError):
            self.ns["task"]("t1")


# -- configuration: no sockets -------------------------------------------------------------


class Configuration(unittest.TestCase):
    def setUp(self):
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.controller = SimpleNamespace(reactor=reactor)
        self.passwords = write_private(self.dir / "passwords", "admin:s3cret\n")
        self.keys = write_private(self.dir / "authorized_keys", new_key().public().toString("openssh").decode() + "\n")

    def services(self, **kw):
        return manhole.manhole_services(self.controller, data_dir=self.dir / "data", reactor=reactor, **kw)

    def test_telnet_refuses_non_loopback(self):
        for description in (
            "tcp:0",
            "tcp:0:interface=0.0.0.0",
            "tcp:0:interface=10.1.2.3",
            "tcp:0:0.0.0.0",
            r"tcp6:0:interface=\:\:",
            "tcp:0:interface=example.com",
            "unix:" + str(self.dir / "sock"),
        ):
            with self.assertRaises(ValueError, msg=description) as caught:
                self.services(telnet=description, passwords=self.passwords)
            self.assertIn("loopback", str(caught.exception))

    def test_a_mistake_leaves_nothing_behind(self):
        with self.assertRaises(ValueError):
            self.services(ssh="tcp:0:interface=127.0.0.1", authorized_keys=self.keys, telnet="tcp:0", passwords=self.passwords)
        self.assertFalse((self.dir / "data").exists())  # no host key generated

    def test_telnet_accepts_loopback(self):
        for description in ("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.1.2.3", "tcp:0:interface=localhost", r"tcp6:0:interface=\:\:1"):
            [svc] = self.services(telnet=description, passwords=self.passwords)
            self.assertIsInstance(svc, ListeningService)
            self.assertEqual(svc.name, "manhole-telnet")
            self.assertIsNone(svc.port)  # nothing listens before start

    def test_telnet_needs_passwords(self):
        with self.assertRaises(ValueError) as caught:
            self.services(telnet="tcp:0:interface=127.0.0.1")
        self.assertIn("--manhole-passwords", str(caught.exception))

    def test_ssh_needs_an_auth_source(self):
        with self.assertRaises(ValueError) as caught:
            self.services(ssh="tcp:0:interface=127.0.0.1")
        self.assertEqual(str(caught.exception), "--manhole-ssh needs --manhole-authorized-keys or --manhole-passwords")

    def test_ssh_authorized_keys_must_exist(self):
        with self.assertRaises(ValueError) as caught:
            self.services(ssh="tcp:0:interface=127.0.0.1", authorized_keys=self.dir / "missing")
        self.assertIn("missing", str(caught.exception))

    def test_bad_endpoint(self):
        with self.assertRaises(ValueError) as caught:
            self.services(ssh="nonsense:1", authorized_keys=self.keys)
        self.assertIn("--manhole-ssh", str(caught.exception))

    def test_nothing_asked_nothing_listens(self):
        self.assertEqual(self.services(), [])

    def test_host_key_generated_once_and_kept(self):
        self.services(ssh="tcp:0:interface=127.0.0.1", authorized_keys=self.keys)
        path = self.dir / "data" / credentials.HOST_KEY_FILE
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        first = path.read_bytes()
        key = keys.Key.fromString(first)
        self.assertFalse(key.isPublic())
        self.assertEqual(keys.Key.fromFile(str(path) + ".pub"), key.public())
        self.services(ssh="tcp:0:interface=127.0.0.1", authorized_keys=self.keys)
        self.assertEqual(path.read_bytes(), first)
        self.assertEqual(credentials.host_key(self.dir / "data"), key)

    def test_unreadable_host_key_is_an_error(self):
        data = self.dir / "data"
        data.mkdir()
        (data / credentials.HOST_KEY_FILE).write_text("not a key")
        with self.assertRaises(ValueError) as caught:
            self.services(ssh="tcp:0:interface=127.0.0.1", authorized_keys=self.keys)
        self.assertIn(credentials.HOST_KEY_FILE, str(caught.exception))
        self.assertEqual((data / credentials.HOST_KEY_FILE).read_text(), "not a key")

    def test_password_file(self):
        write_private(self.passwords, "# comment\nadmin:pa:ss\nnobody:\n\n")
        checker = credentials.PasswordFile(self.passwords)
        self.assertEqual(checker.entries(), {b"admin": b"pa:ss"})


# -- sessions against a live controller -------------------------------------------------------


class Sessions(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.logs = LogCapture(self)
        self.controller = yield start_controller(self)
        tmp = Path(self.mktemp())
        tmp.mkdir()
        self.user_key = new_key()
        authorized = write_private(
            tmp / "authorized_keys",
            "# the test's key\n" + self.user_key.public().toString("openssh", comment=USER_KEY_ID).decode() + "\n",
        )
        passwords = write_private(tmp / "passwords", "admin:correct horse\n")
        self.ports = yield start_manhole(
            self,
            self.controller,
            ssh="tcp:0:interface=127.0.0.1",
            telnet="tcp:0:interface=127.0.0.1",
            authorized_keys=authorized,
            passwords=passwords,
        )
        self.host_key = credentials.host_key(self.controller.config.data_dir)

    def ssh(self, username="operator", **kw):
        kw.setdefault("host_key", self.host_key)
        return ssh_login(self, self.ports["manhole-ssh"], username, **kw)

    @defer.inlineCallbacks
    def test_ssh_key_login_beats_an_engine(self):
        """Log in with a key; engines["e0"].beat() shows its Deferred, then the RTT it fires with."""
        yield start_engines(self, self.controller, ["e0"])
        console = yield self.ssh(key=self.user_key)
        yield console.expect(r"help\(\) lists the helpers")
        yield console.expect(r">>> ")
        console.send('engines["e0"].beat()')
        shown = yield console.expect(r"<Deferred #(\d+)>")
        fired = yield console.expect(rf"Deferred #{shown.group(1)} called back: ([0-9.e-]+)")
        self.assertGreater(float(fired.group(1)), 0)
        console.send("beat(0)")  # the helper, with an int meaning e0
        yield console.expect(r"Deferred #\d+ called back: [0-9.e-]+")
        console.send("status()")
        yield console.expect(r"id +host +pid +state +rtt +task +running +busy-for")
        yield console.expect(r"e0 +\S+ +\d+ +alive +[0-9.]+ms +- +- +-")  # no task, not busy
        yield console.expect(r"1 live engine\(s\); 0 task\(s\) in flight")
        if getattr(self.controller, "store", None) is not None:
            console.send('task("no-such-task")')  # the task store, through the console
            yield console.expect(r"Deferred #\d+ called back: None")
        console.send('beat("nope")')
        yield console.expect(r"KeyError: .*'nope': no such engine; live engines: e0")
        console.send("help()")
        for name in ("status()", "task(task_id)", "beat(eid, timeout=None)", "abort(eid, task, timeout=None)", "reset(eid, timeout=None)", "exit(eid, timeout=5.0)"):
            yield console.expect(re.escape(name))
        console.send("help(beat)")
        yield console.expect(r"Round trip through engine")
        console.send("sorted(engines), len(tasks), controller.registry is registry")
        yield console.expect(r"\(\['e0'\], 0, True\)")
        # A Deferred that fails later: shown as failed, and then handled.
        console.send('from twisted.internet import defer, reactor; d = defer.Deferred(); reactor.callLater(0, d.errback, ValueError("boom")); d')
        shown = yield console.expect(r"<Deferred #(\d+)>")
        yield console.expect(rf"Deferred #{shown.group(1)} failed: 'boom'")
        console.send("d")
        yield console.expect(r"current result: None")
        console.send("quit()")
        yield within(console.lost, BOUND, "quit() to hang up")
        self.assertTrue(any("operator logged in over ssh from 127.0.0.1" in m for m in self.logs.messages()))

    @defer.inlineCallbacks
    def test_ssh_without_the_key_is_refused_and_logged(self):
        with self.assertRaises(LoginFailed):
            yield self.ssh("intruder", key=new_key())
        with self.assertRaises(LoginFailed):
            yield self.ssh("nobody")  # no credentials at all
        warnings = yield until(
            lambda: [m for m in self.logs.messages() if "failed ssh login for user 'intruder' from 127.0.0.1:" in m],
            what="the failed login to be logged",
        )
        self.assertIn("not authorized", warnings[0])
        self.assertFalse(any("logged in over" in m for m in self.logs.messages()))
        yield until(
            lambda: any("closed without logging in (user 'nobody')" in m for m in self.logs.messages()),
            what="the unauthenticated disconnect to be logged",
        )

    @defer.inlineCallbacks
    def test_ssh_password(self):
        with self.assertRaises(LoginFailed):
            yield self.ssh("admin", password="wrong")
        self.assertTrue(any("failed ssh login for user 'admin'" in m for m in self.logs.messages()))
        console = yield self.ssh("admin", password="correct horse")
        yield console.expect(r">>> ")
        console.send("6*7")
        yield console.expect(r"\b42\b")

    @defer.inlineCallbacks
    def test_telnet_asks_for_a_password(self):
        console = yield telnet_connect(self, self.ports["manhole-telnet"])
        yield console.expect(r"Username: ")
        console.send("admin")
        yield console.expect(r"Password: ")
        console.send("wrong")
        yield console.expect(r"Authentication failed")
        yield console.expect(r"Username: ")
        self.assertTrue(any("failed telnet login for user 'admin' from 127.0.0.1:" in m for m in self.logs.messages()))
        self.assertNotIn(">>>", console.text)
        console.send("admin")
        yield console.expect(r"Password: ")
        console.send("correct horse")
        yield console.expect(r">>> ")
        console.send("1+1")
        yield console.expect(r"\n2\r*\n")

    @defer.inlineCallbacks
    def test_telnet_linemode_eof_leaves_the_console(self):
        """A LINEMODE client sends Ctrl-D as IAC EOF: the session ends cleanly, nothing fails unhandled."""
        errors_seen = []
        globalLogPublisher.addObserver(errors_seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, errors_seen.append)
        console = yield telnet_connect(self, self.ports["manhole-telnet"])
        yield console.expect(r"Username: ")
        console.send("admin")
        yield console.expect(r"Password: ")
        console.send("correct horse")
        yield console.expect(r">>> ")
        console.send("2+3")
        yield console.expect(r"\n5\r*\n")
        console.transport.transport.write(telnet.IAC + bytes([236]))  # raw IAC EOF, as a LINEMODE client sends Ctrl-D
        yield within(console.lost, BOUND, "the console to hang up on EOF")
        failures = [e for e in errors_seen if e.get("log_failure") is not None or e.get("isError")]
        self.assertEqual(failures, [], [formatEvent(e) for e in failures])

    @defer.inlineCallbacks
    def test_telnet_hangs_up_after_repeated_failures(self):
        console = yield telnet_connect(self, self.ports["manhole-telnet"])
        for _ in range(login.TELNET_MAX_FAILURES):
            yield console.expect(r"Username: ")
            console.send("admin")
            yield console.expect(r"Password: ")
            console.send("guess")
        yield console.expect(r"too many failures")
        yield within(console.lost, BOUND, "the server to hang up")
