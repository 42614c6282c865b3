"""The manhole's credentials on disk: its SSH host key, authorized keys, and a password file.

The key and password files are read at every login, so that removing a key or
a password revokes it at once.
"""
from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from twisted.conch.ssh import keys
from twisted.cred import credentials as cred_credentials
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

HOST_KEY_FILE = "manhole_host_key"

log = Logger()


def private_file_warning(path: Path, what: str) -> None:
    """Log a warning if ``path`` is readable (or writable) by its group or others."""
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
                    fingerprint=fingerprint(key),
                )
        finally:
            os.unlink(tmp)
    try:
        key = keys.Key.fromFile(str(path))
    except (OSError, keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
        raise ValueError(f"cannot read the manhole's SSH host key {path}: {e}; fix or remove it") from e
    if key.isPublic():
        raise ValueError(f"{path} holds a public key; the manhole needs the private host key there")
    private_file_warning(path, "SSH host key")
    return key

def fingerprint(key: keys.Key) -> str:
    """As ``ssh-keygen -l`` shows it: ``SHA256:...``."""
    return "SHA256:" + key.fingerprint(format=keys.FingerprintFormats.SHA256_BASE64).rstrip("=")

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

