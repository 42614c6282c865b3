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

The package: :mod:`~ipcluster.manhole.credentials` (host key, authorized
keys, password file), :mod:`~ipcluster.manhole.login` (audited logins),
:mod:`~ipcluster.manhole.console` (the REPL), :mod:`~ipcluster.manhole.namespace`
(what a session finds) and this module, which builds the listening services
(:class:`ipcluster.listening.ListeningService`).
"""
from __future__ import annotations

from typing import Optional

from twisted.application import service
from twisted.conch import manhole_ssh
from twisted.conch.checkers import SSHPublicKeyChecker
from twisted.cred import portal as cred_portal
from twisted.internet import endpoints, protocol
from twisted.logger import Logger

from ipcluster.listening import ListeningService, endpoint_interface, is_loopback
from ipcluster.manhole.console import Realm
from ipcluster.manhole.credentials import AuthorizedKeysFile, PasswordFile, fingerprint, host_key, private_file_warning
from ipcluster.manhole.login import SSHUserAuth, TelnetLogin, TelnetTransport
from ipcluster.manhole.namespace import make_namespace

log = Logger()


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
    mistakes, before anything listens.  Each service is a
    :class:`~ipcluster.listening.ListeningService` named ``manhole-ssh`` or
    ``manhole-telnet``.  ``reactor`` defaults to the controller's.
    """
    reactor = controller.reactor if reactor is None else reactor
    _check_options(ssh, telnet, authorized_keys, passwords)
    if not ssh and not telnet:
        return []
    # Every check first, so a mistake leaves nothing behind (not even a host key).
    telnet_endpoint = _telnet_endpoint(reactor, telnet, passwords) if telnet else None
    ssh_endpoint = _server_endpoint(reactor, ssh, "--manhole-ssh") if ssh else None
    password_file = _password_file(passwords) if passwords is not None else None
    keyfile = _authorized_keys(authorized_keys) if authorized_keys is not None else None

    realm = Realm(lambda: make_namespace(controller))
    services: list[service.IService] = []
    if ssh:
        factory = ssh_factory(realm, host_key(data_dir), keyfile, password_file)
        services.append(ListeningService("manhole-ssh", ssh_endpoint, ssh, factory))
    if telnet:
        services.append(ListeningService("manhole-telnet", telnet_endpoint, telnet, telnet_factory(realm, password_file)))
    return services


def ssh_factory(
    realm: Realm, key, keyfile: Optional[AuthorizedKeysFile], password_file: Optional[PasswordFile]
) -> manhole_ssh.ConchFactory:
    """The SSH server: host ``key``, public keys from ``keyfile`` and/or passwords, audited logins."""
    checkers = []
    if keyfile is not None:
        checkers.append(SSHPublicKeyChecker(keyfile))
    if password_file is not None:
        checkers.append(password_file)
    factory = manhole_ssh.ConchFactory(cred_portal.Portal(realm, checkers))
    factory.noisy = False
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}
    factory.services = {**factory.services, b"ssh-userauth": SSHUserAuth}
    log.info("manhole: SSH host key {fingerprint}", fingerprint=fingerprint(key))
    return factory


def telnet_factory(realm: Realm, password_file: PasswordFile) -> protocol.ServerFactory:
    """The telnet server: a user name and password prompt, then the console."""
    portal = cred_portal.Portal(realm, [password_file])
    factory = protocol.ServerFactory()
    factory.noisy = False
    factory.protocol = lambda: TelnetTransport(TelnetLogin, portal)
    return factory


# -- configuration checks -------------------------------------------------------


def _check_options(ssh: Optional[str], telnet: Optional[str], authorized_keys, passwords) -> None:
    if authorized_keys is not None and not ssh:
        raise ValueError("--manhole-authorized-keys needs --manhole-ssh")
    if passwords is not None and not ssh and not telnet:
        raise ValueError("--manhole-passwords needs --manhole-ssh or --manhole-telnet")
    if ssh and authorized_keys is None and passwords is None:
        raise ValueError("--manhole-ssh needs --manhole-authorized-keys or --manhole-passwords")


def _server_endpoint(reactor, description: str, option: str):
    try:
        return endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise ValueError(f"{option}: bad endpoint description {description!r}: {e}") from e


def _telnet_endpoint(reactor, description: str, passwords):
    """Telnet is plain text: its endpoint must bind a loopback interface, and say so plainly."""
    interface = endpoint_interface(description)
    if interface is None or not is_loopback(interface):
        where = "all interfaces" if interface == "" else (interface or "a non-TCP endpoint")
        raise ValueError(
            f"--manhole-telnet {description!r} would listen on {where}: telnet is plain text and is only "
            "allowed on a loopback interface (tcp:PORT:interface=127.0.0.1); use --manhole-ssh for "
            "remote access"
        )
    if passwords is None:
        raise ValueError("--manhole-telnet needs --manhole-passwords (telnet logins always ask for a password)")
    endpoint = _server_endpoint(reactor, description, "--manhole-telnet")
    if getattr(endpoint, "_interface", interface) != interface:  # what Twisted parsed, where it tells
        raise ValueError(f"--manhole-telnet {description!r}: cannot tell which interface it binds")
    return endpoint


def _password_file(path) -> PasswordFile:
    checker = PasswordFile(path)
    try:
        users = checker.entries()
    except OSError as e:
        raise ValueError(f"--manhole-passwords: cannot read {checker.path}: {e}") from e
    if not users:
        log.warn("manhole: {path} lists no user with a password", path=str(checker.path))
    private_file_warning(checker.path, "password file")
    return checker


def _authorized_keys(path) -> AuthorizedKeysFile:
    keyfile = AuthorizedKeysFile(path)
    try:
        found = keyfile.keys()
    except OSError as e:
        raise ValueError(f"--manhole-authorized-keys: cannot read {keyfile.path}: {e}") from e
    if not found:
        log.warn("manhole: {path} lists no usable public key", path=str(keyfile.path))
    return keyfile
