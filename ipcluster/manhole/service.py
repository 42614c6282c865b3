"""The manhole: an interactive Python console inside the running controller.

.. warning::

   A manhole is full access to the controller process: whoever logs in runs
   arbitrary Python as the user the controller runs as, can read the cluster's
   signing key, stop engines and run code on them.  Give it only to people you
   would give a shell on the controller's host.  Listen on 127.0.0.1 (reach it
   from elsewhere through an SSH tunnel) unless you have a reason not to.

Two ways in, both authenticated (there is no way in without credentials):

* **SSH** (``--manhole-ssh tcp:2222:interface=127.0.0.1``): public-key
  authentication against an OpenSSH ``authorized_keys`` file and, when a
  password file is given, passwords too.  The file is read at every login, so
  removing a key revokes it at once.  Any user name is accepted with a listed
  key; the name only goes into the log.  Key lines with options
  (``from="..." ssh-ed25519 ...``) are ignored rather than obeyed in part.
  The host key (ed25519) is generated on first use and kept in the data
  directory as ``manhole_host_key`` (mode 0600; the public half beside it as
  ``manhole_host_key.pub``, to check the fingerprint against).
* **Telnet** (``--manhole-telnet tcp:2323:interface=127.0.0.1``): for local
  use only, so it refuses any interface but loopback, and still asks for a
  user name and password (``--manhole-passwords``).  Telnet is plain text.

The password file has one ``user:password`` line per user (``#`` starts a
comment; everything after the first colon is the password; empty passwords
never match).  Keep it mode 0600.  Every failed login is logged with the user
name and the peer's address; successful logins are logged too.

In the console, ``help()`` lists what is there: the live ``controller``, its
``registry``, ``engines`` (engine id -> :class:`IEngineControl` provider, live
engines only), ``tasks`` (tasks in flight by id), ``scheduler``, ``store``
(the task store) and helpers: ``status()``, ``task(id)``, ``beat(eid)``,
``abort(eid, task)``, ``signal(eid, signum, task=None)``, ``reset(eid)`` and
``exit(eid)``.  Control verbs return Deferreds: the console
prints ``<Deferred #0>`` at once and ``Deferred #0 called back: <result>``
(or ``failed: ...``) when the engine answers.  Ctrl-D leaves the console.
"""
from __future__ import annotations

import hmac
import inspect
import os
import pydoc
import signal as _signal
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator, Optional

from twisted.application import service
from twisted.conch import error as conch_error
from twisted.conch import manhole, manhole_ssh
from twisted.conch import telnet as conch_telnet
from twisted.conch.checkers import SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys, userauth
from twisted.cred import credentials as cred_credentials
from twisted.cred import error as cred_error
from twisted.cred import portal as cred_portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from zope.interface import implementer

from ipcluster.listening import ConnectionTracker, endpoint_interface, is_loopback

HOST_KEY_FILE = "manhole_host_key"
TELNET_MAX_FAILURES = 3

log = Logger()


# -- configuration checks -------------------------------------------------------


def _server_endpoint(reactor, description: str, option: str):
    try:
        return endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise ValueError(f"{option}: bad endpoint description {description!r}: {e}") from e


def _private_file_warning(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warn(
            "manhole: {what} {path} is readable by others (mode {mode:o}); chmod 600 it",
            what=what,
            path=str(path),
            mode=stat.S_IMODE(mode),
        )


# -- the host key -----------------------------------------------------------------


def host_key(data_dir) -> keys.Key:
    """The manhole's SSH host key: read from ``data_dir``, or generated (once) and kept there.

    A new key is written with mode 0600 and published atomically, so two
    controllers starting at once end up with the same key.  A key file that
    exists but cannot be read is an error, never silently replaced.
    """
    from cryptography.hazmat.primitives.asymmetric import ed25519

    data_dir = Path(data_dir).expanduser()
    path = data_dir / HOST_KEY_FILE
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        tmp = data_dir / f".{HOST_KEY_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key.toString("openssh"))
            try:
                os.link(tmp, path)  # fails if another process published first: use theirs
            except FileExistsError:
                pass
            else:
                (data_dir / (HOST_KEY_FILE + ".pub")).write_bytes(key.public().toString("openssh") + b"\n")
                log.info(
                    "manhole: generated SSH host key {path} ({fingerprint})",
                    path=str(path),
                    fingerprint=_fingerprint(key),
                )
        finally:
            os.unlink(tmp)
    try:
        key = keys.Key.fromFile(str(path))
    except (OSError, keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
        raise ValueError(f"cannot read the manhole's SSH host key {path}: {e}; fix or remove it") from e
    if key.isPublic():
        raise ValueError(f"{path} holds a public key; the manhole needs the private host key there")
    _private_file_warning(path, "SSH host key")
    return key


def _fingerprint(key: keys.Key) -> str:
    """As ``ssh-keygen -l`` shows it: ``SHA256:...``."""
    return "SHA256:" + key.fingerprint(format=keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


# -- credentials ------------------------------------------------------------------


class AuthorizedKeysFile:
    """An ``IAuthorizedKeysDB`` that reads an OpenSSH authorized_keys file at every login.

    Every key in the file is good for any user name.
    """

    def __init__(self, path) -> None:
        self.path = Path(path).expanduser()

    def keys(self) -> list[keys.Key]:
        found = []
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith(b"#"):
                    continue
                try:
                    found.append(keys.Key.fromString(line))
                except (keys.BadKeyError, ValueError) as e:
                    log.warn(
                        "manhole: {path} line {number} ignored (not a plain public key; "
                        "key options are not supported): {error}",
                        path=str(self.path),
                        number=number,
                        error=e,
                    )
        return found

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        try:
            return self.keys()
        except OSError as e:
            log.error("manhole: cannot read authorized keys {path}: {e}", path=str(self.path), e=e)
            return []


@implementer(ICredentialsChecker)
class PasswordFile:
    """Checks user names and passwords against a file of ``user:password`` lines, read at every login."""

    credentialInterfaces = (cred_credentials.IUsernamePassword,)

    def __init__(self, path) -> None:
        self.path = Path(path).expanduser()

    def entries(self) -> dict[bytes, bytes]:
        users = {}
        with open(self.path, "rb") as f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if not line.strip() or line.lstrip().startswith(b"#") or b":" not in line:
                    continue
                user, password = line.split(b":", 1)
                if user and password:
                    users[user] = password
        return users

    def requestAvatarId(self, credentials):
        try:
            users = self.entries()
        except OSError as e:
            log.error("manhole: cannot read password file {path}: {e}", path=str(self.path), e=e)
            return defer.fail(cred_error.UnauthorizedLogin("password file unreadable"))
        expected = users.get(credentials.username)
        given = credentials.password
        if isinstance(given, str):
            given = given.encode("utf-8")
        if expected is None or not given or not hmac.compare_digest(expected, given):
            return defer.fail(cred_error.UnauthorizedLogin("wrong user name or password"))
        return defer.succeed(credentials.username)


def _peer(transport) -> str:
    try:
        address = transport.getPeer()
    except Exception:
        return "unknown peer"
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def _text(name) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


class _AuditedPortal:
    """A portal, seen by one connection, that logs each login and each failed one."""

    def __init__(self, portal: cred_portal.Portal, kind: str, peer: str) -> None:
        self._portal = portal
        self.kind = kind
        self.peer = peer

    def listCredentialsInterfaces(self):
        return self._portal.listCredentialsInterfaces()

    def login(self, credentials, mind, *interfaces):
        user = _text(getattr(credentials, "username", "?"))

        def succeeded(result):
            log.info("manhole: {user} logged in over {kind} from {peer}", user=user, kind=self.kind, peer=self.peer)
            return result

        def failed(failure):
            if not failure.check(conch_error.ValidPublicKey):  # a client asking whether to sign: not a login
                log.warn(
                    "manhole: failed {kind} login for user {user!r} from {peer}: {why}",
                    kind=self.kind,
                    user=user,
                    peer=self.peer,
                    why=failure.getErrorMessage() or failure.type.__name__,
                )
            return failure

        return self._portal.login(credentials, mind, *interfaces).addCallbacks(succeeded, failed)


class _UserAuthServer(userauth.SSHUserAuthServer):
    def serviceStarted(self):
        super().serviceStarted()
        self.portal = _AuditedPortal(self.portal, "ssh", _peer(self.transport.transport))

    def serviceStopped(self):
        super().serviceStopped()
        if getattr(self.transport, "avatar", None) is None:
            log.info(
                "manhole: ssh connection from {peer} closed without logging in (user {user!r})",
                peer=self.portal.peer,
                user=_text(self.user or b""),
            )


class _TelnetLogin(conch_telnet.AuthenticatingTelnetProtocol):
    """Telnet's user name / password prompt, audited, hanging up after a few failures."""

    failures = 0

    def connectionMade(self):
        self.portal = _AuditedPortal(self.portal, "telnet", _peer(self.transport))
        super().connectionMade()

    def _ebLogin(self, failure):
        self.failures += 1
        if self.failures >= TELNET_MAX_FAILURES:
            self.transport.write(b"\r\nAuthentication failed; too many failures.\r\n")
            self.transport.loseConnection()
            return
        super()._ebLogin(failure)


# -- the console ------------------------------------------------------------------


class _Interpreter(manhole.ManholeInterpreter):
    """Twisted's manhole interpreter, except that a failure it has shown is not also logged.

    A Deferred that reaches the prompt is shown as ``<Deferred #n>`` and then
    ``Deferred #n called back: ...`` or ``Deferred #n failed: ...``; once the
    console has shown a failure, it is handled (the Deferred's result becomes
    None), so the controller's log gets no "Unhandled error in Deferred".
    """

    def _ebDisplayDeferred(self, failure, k, obj):
        super()._ebDisplayDeferred(failure, k, obj)
        return None


class _Console(manhole.ColoredManhole):
    """The REPL: Twisted's colored manhole, with a banner and a ``quit()`` that hangs up."""

    def initializeScreen(self):
        self.terminal.reset()
        self.terminal.write(
            f"ipcluster manhole in the controller (pid {os.getpid()}): full access to the process. "
            "help() lists the helpers; Ctrl-D leaves.".encode()
        )
        self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()

    def connectionMade(self):
        super().connectionMade()
        self.interpreter = _Interpreter(self, self.namespace)
        console = self

        class _Quit:
            def __repr__(self):
                return "Use quit() or Ctrl-D to leave the manhole."

            def __call__(self):
                console.terminal.loseConnection()

        self.interpreter.locals["quit"] = _Quit()


class _TerminalSession(manhole_ssh.TerminalSession):
    """An SSH shell session on the console: default size without a pty, resizes, EOF hangs up."""

    width, height = 80, 24
    _terminal = None

    def openShell(self, proto):
        self._terminal = self.chainedProtocolFactory()
        self.transportFactory(proto, self._terminal, IConchUser(self.original), self.width, self.height)

    def windowChanged(self, newWindowSize):
        self.height, self.width = newWindowSize[:2]
        if self._terminal is not None and self._terminal.terminalProtocol is not None:
            self._terminal.terminalProtocol.terminalSize(self.width, self.height)

    def eofReceived(self):
        if self._terminal is not None:
            self._terminal.loseConnection()


@implementer(cred_portal.IRealm)
class _Realm(manhole_ssh.TerminalRealm):
    """Hands out consoles: SSH users and telnet sessions, each with a fresh namespace."""

    sessionFactory = _TerminalSession

    def __init__(self, make_namespace) -> None:
        super().__init__()
        self.chainedProtocolFactory = lambda: insults.ServerProtocol(_Console, make_namespace())
        self._make_namespace = make_namespace

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IConchUser in interfaces:
            return super().requestAvatar(avatarId, mind, IConchUser)
        if conch_telnet.ITelnetProtocol in interfaces:
            console = conch_telnet.TelnetBootstrapProtocol(insults.ServerProtocol, _Console, self._make_namespace())
            return conch_telnet.ITelnetProtocol, console, lambda: None
        raise NotImplementedError(f"no manhole avatar for {interfaces}")


# -- the namespace ----------------------------------------------------------------


class LiveEngines(Mapping):
    """Live engines (alive or busy): ``engines["e0"]`` is that engine's ``IEngineControl``.

    An int ``i`` means the engine with id ``e{i}`` (how local engines are named).
    Always current: engines that join later show up, dead ones disappear.
    """

    def __init__(self, controller) -> None:
        self._controller = controller

    def _live(self) -> dict:
        return {record.id: record for record in self._controller.registry.live()}

    @staticmethod
    def _id(key) -> str:
        return f"e{key}" if isinstance(key, int) and not isinstance(key, bool) else str(key)

    def __getitem__(self, key):
        engine_id = self._id(key)
        if engine_id not in self._live():
            record = self._controller.registry.get(engine_id)
            why = f"it is {record.state}" if record is not None else "no such engine"
            raise KeyError(f"{engine_id!r}: {why}; live engines: {', '.join(self._live()) or 'none'}")
        return self._controller.control.control_for(engine_id)

    def __contains__(self, key) -> bool:
        return self._id(key) in self._live()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._live()))

    def __len__(self) -> int:
        return len(self._live())

    def __repr__(self) -> str:
        live = self._live()
        inner = ", ".join(f"{eid!r}: <{record.state}>" for eid, record in live.items())
        return f"<live engines {{{inner}}}>"


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _rtt(value) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def _signum(signum) -> int:
    if isinstance(signum, str):
        name = signum.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(getattr(_signal.Signals, name))
        except AttributeError:
            raise ValueError(f"no signal named {signum!r}") from None
    return int(signum)


HELPER_NAMES = ("help", "status", "task", "beat", "abort", "signal", "reset", "exit")


def _scheduler(controller):
    """The controller's task scheduler (``scheduler``, formerly ``router``)."""
    scheduler = getattr(controller, "scheduler", None)
    return scheduler if scheduler is not None else getattr(controller, "router", None)


def make_namespace(controller) -> dict:
    """A fresh console namespace for one session on ``controller``."""
    engines = LiveEngines(controller)
    scheduler = _scheduler(controller)

    def status():
        """Print a table of engines (id, host, pid, state, heartbeat RTT, running task, busy-for) and queue depths."""
        now = controller.reactor.seconds()
        rows = [("id", "host", "pid", "state", "rtt", "task", "running", "busy-for", "queued")]
        for record in controller.registry:
            d = record.describe(now)
            rows.append(
                (
                    d["id"],
                    d["host"],
                    str(d["pid"]),
                    d["state"],
                    _rtt(d["rtt"]),
                    d["running_task"] or "-",
                    _seconds(d["task_running_for"]),
                    _seconds(d["busy_for"]),
                    str(d.get("queued", "-")),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        summary = [f"{len(controller.registry.live())} live engine(s)"]
        if scheduler is not None:
            summary.append(f"{len(scheduler.tasks)} task(s) in flight")
            if getattr(scheduler, "ready", None) is not None:
                summary.append(f"{len(scheduler.ready)} ready to run")
            counts = [f"{getattr(scheduler, name)} {name}" for name in ("completed", "failed", "retried") if hasattr(scheduler, name)]
            if counts:
                summary.append(", ".join(counts))
        print("; ".join(summary))

    def task(task_id):
        """The task store's record of ``task_id`` (a Deferred firing with a dict, or None if unknown)."""
        store = getattr(controller, "store", None)
        if store is None:
            raise RuntimeError("this controller has no task store (open)")
        return store.get(str(task_id))

    def beat(eid, timeout=None):
        """Round trip through engine ``eid``'s control thread; fires with the RTT in seconds."""
        return engines[eid].beat(timeout)

    def abort(eid, task, timeout=None):
        """Remove queued ``task`` from engine ``eid``; fires with "aborted", "running" or "unknown"."""
        return engines[eid].abort(task, timeout)

    def signal(eid, signum, task=None, timeout=None):
        """Send ``signum`` (a number or a name like "INT") to engine ``eid``; with ``task``, only if it runs it."""
        return engines[eid].signal(_signum(signum), task, timeout)

    def reset(eid, timeout=None):
        """Clear engine ``eid``'s namespace and queue; fires with the number of queued tasks dropped."""
        return engines[eid].reset(timeout)

    def exit(eid, timeout=5.0):
        """Ask engine ``eid`` to exit (a running task gets ``timeout`` s); fires once it has left."""
        return engines[eid].exit(timeout)

    def help(obj=None):
        """List the names and helpers here; help(obj) shows obj's documentation."""
        if obj is not None:
            print(pydoc.render_doc(obj, title="%s", renderer=pydoc.plaintext))
            return
        print("ipcluster manhole: Python inside the running controller (full access to it).")
        print()
        print("  controller  the Controller service (config, registry, control, scheduler, ...)")
        print("  registry    every engine's record, dead ones included: registry.get(eid)")
        print('  engines     live engines: engines["e0"] (or engines[0]) is its IEngineControl')
        print("  tasks       tasks in flight, by id (finished ones are in the store: task(id))")
        print("  scheduler   the task scheduler; store: the task store (records of finished tasks)")
        print()
        for name in HELPER_NAMES:
            fn = helpers[name]
            summary = (inspect.getdoc(fn) or "").splitlines()[0]
            print(f"  {name}{inspect.signature(fn)}")
            print(f"      {summary}")
        print()
        print('Control verbs return Deferreds: the console shows "<Deferred #n>" and later')
        print('"Deferred #n called back: <result>" (or "failed: <error>").  Ctrl-D or quit() leaves.')

    helpers = {
        "help": help,
        "status": status,
        "task": task,
        "beat": beat,
        "abort": abort,
        "signal": signal,
        "reset": reset,
        "exit": exit,
    }
    for name, fn in helpers.items():
        fn.__qualname__ = name
    return {
        "controller": controller,
        "registry": controller.registry,
        "engines": engines,
        "tasks": scheduler.tasks if scheduler is not None else {},
        "scheduler": scheduler,
        "store": getattr(controller, "store", None),
        **helpers,
    }


# -- the listening services ---------------------------------------------------------


class ManholeService(service.Service):
    """Listens on one endpoint with one manhole factory.

    After start, ``port`` is the listening port (``port.getHost().port`` is
    the port number, useful with ``tcp:0``); ``listening()`` gives a Deferred
    that fires with it.  Stopping closes the port and hangs up every session.
    """

    def __init__(self, name: str, endpoint, description: str, factory) -> None:
        self.setName(name)
        self.description = description
        self._endpoint = endpoint
        self._factory = ConnectionTracker(factory)
        self.port = None
        self._listening: Optional[defer.Deferred] = None
        self._failure = None
        self._waiters: list[defer.Deferred] = []

    def _listen(self) -> None:
        if self._listening is not None:
            return
        self._listening = self._endpoint.listen(self._factory)
        self._listening.addCallbacks(self._listened, self._listen_failed)

    def _listened(self, port) -> None:
        self.port = port
        address = port.getHost()
        log.info(
            "{name} listening on {host}:{port}",
            name=self.name,
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)

    def _listen_failed(self, failure) -> None:
        if failure.check(defer.CancelledError) and not self.running:
            return None  # stopped before it listened
        self._failure = failure
        log.failure("{name} could not listen on {description}", failure, name=self.name, description=self.description)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)

    def listening(self) -> defer.Deferred:
        """Fires with the listening port once the service listens (fails if it cannot)."""
        if self.port is not None:
            return defer.succeed(self.port)
        if self._failure is not None:
            return defer.fail(self._failure)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def privilegedStartService(self) -> None:
        # Bind while still privileged (like twistd's own ports): a port in use fails twistd at once.
        self._listen()
        if self._failure is not None:
            self._failure.raiseException()
        super().privilegedStartService()

    def startService(self) -> None:
        self._listen()
        if self._failure is not None:
            self._failure.raiseException()
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        listening, self._listening = self._listening, None
        port, self.port = self.port, None
        self._failure = None
        if port is None and listening is not None and not listening.called:
            listening.cancel()
        if port is not None:
            yield port.stopListening()
        yield self._factory.disconnect_all()


def manhole_services(
    controller,
    *,
    ssh: Optional[str] = None,
    telnet: Optional[str] = None,
    authorized_keys=None,
    passwords=None,
    data_dir,
    reactor=None,
) -> list[service.IService]:
    """The manhole's listening services for ``controller`` (none if neither ``ssh`` nor ``telnet``).

    ``ssh`` and ``telnet`` are server endpoint descriptions
    (``tcp:2222:interface=127.0.0.1``).  SSH needs ``authorized_keys`` (an
    OpenSSH authorized_keys file) or ``passwords`` (``user:password`` lines),
    or both; telnet needs ``passwords`` and a loopback interface.  The SSH
    host key lives in ``data_dir``.  Raises ValueError for any of these
    mistakes, before anything listens.  Each service is named
    (``manhole-ssh``, ``manhole-telnet``) and has a ``port`` once started.
    """
    if reactor is None:
        reactor = getattr(controller, "reactor", None)
    if reactor is None:
        from twisted.internet import reactor
    if authorized_keys is not None and not ssh:
        raise ValueError("--manhole-authorized-keys needs --manhole-ssh")
    if passwords is not None and not ssh and not telnet:
        raise ValueError("--manhole-passwords needs --manhole-ssh or --manhole-telnet")
    if not ssh and not telnet:
        return []

    # Every check first, so a mistake leaves nothing behind (not even a host key).
    if ssh and authorized_keys is None and passwords is None:
        raise ValueError("--manhole-ssh needs --manhole-authorized-keys or --manhole-passwords")
    if telnet:
        interface = endpoint_interface(telnet)
        if interface is None or not is_loopback(interface):
            where = "all interfaces" if interface == "" else (interface or "a non-TCP endpoint")
            raise ValueError(
                f"--manhole-telnet {telnet!r} would listen on {where}: telnet is plain text and is only "
                "allowed on a loopback interface (tcp:PORT:interface=127.0.0.1); use --manhole-ssh for "
                "remote access"
            )
        if passwords is None:
            raise ValueError("--manhole-telnet needs --manhole-passwords (telnet logins always ask for a password)")
        telnet_endpoint = _server_endpoint(reactor, telnet, "--manhole-telnet")
        if getattr(telnet_endpoint, "_interface", interface) != interface:  # what Twisted parsed, where it tells
            raise ValueError(f"--manhole-telnet {telnet!r}: cannot tell which interface it binds")
    if ssh:
        ssh_endpoint = _server_endpoint(reactor, ssh, "--manhole-ssh")

    password_checker = None
    if passwords is not None:
        password_checker = PasswordFile(passwords)
        try:
            users = password_checker.entries()
        except OSError as e:
            raise ValueError(f"--manhole-passwords: cannot read {password_checker.path}: {e}") from e
        if not users:
            log.warn("manhole: {path} lists no user with a password", path=str(password_checker.path))
        _private_file_warning(password_checker.path, "password file")
    keyfile = None
    if authorized_keys is not None:
        keyfile = AuthorizedKeysFile(authorized_keys)
        try:
            found = keyfile.keys()
        except OSError as e:
            raise ValueError(f"--manhole-authorized-keys: cannot read {keyfile.path}: {e}") from e
        if not found:
            log.warn("manhole: {path} lists no usable public key", path=str(keyfile.path))

    services: list[service.IService] = []
    realm = _Realm(lambda: make_namespace(controller))

    if ssh:
        checkers = []
        if keyfile is not None:
            checkers.append(SSHPublicKeyChecker(keyfile))
        if password_checker is not None:
            checkers.append(password_checker)
        key = host_key(data_dir)
        factory = manhole_ssh.ConchFactory(cred_portal.Portal(realm, checkers))
        factory.noisy = False
        factory.publicKeys = {key.sshType(): key.public()}
        factory.privateKeys = {key.sshType(): key}
        factory.services = {**factory.services, b"ssh-userauth": _UserAuthServer}
        log.info("manhole: SSH host key {fingerprint}", fingerprint=_fingerprint(key))
        services.append(ManholeService("manhole-ssh", ssh_endpoint, ssh, factory))

    if telnet:
        telnet_portal = cred_portal.Portal(realm, [password_checker])
        factory = protocol.ServerFactory()
        factory.noisy = False
        factory.protocol = lambda: conch_telnet.TelnetTransport(_TelnetLogin, telnet_portal)
        services.append(ManholeService("manhole-telnet", telnet_endpoint, telnet, factory))

    return services
