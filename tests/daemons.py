"""Daemons the cross-host tests start for themselves: an sshd in a namespace, munge + Slurm.

Each is a child of the test (``tests.cluster.spawn``), configured from files in the test's own
temporary directory, and killed and reaped at cleanup even when the test fails.  Each
``*_skip_reason`` says why the daemon cannot run here (for ``SkipTest``): the tests that need
it skip with that reason on a developer machine; ``.ci/run`` installs the packages.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from tests.cluster import spawn

SSHD = "/usr/sbin/sshd"


def sshd_skip_reason() -> Optional[str]:
    if not os.path.exists(SSHD) or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "needs OpenSSH (apt-get install openssh-server openssh-client; .ci/run does)"
    return None


class Sshd:
    """An sshd listening on ``host.address:22`` inside the host's namespace, admitting one throwaway key.

    ``options`` are the ssh client options that reach it (key, known hosts, no prompts).  Give
    several sshds the same ``directory``: they share the client key and the known-hosts file,
    so one set of options reaches them all.
    """

    def __init__(self, testcase, host, directory) -> None:
        self.host = host
        top = Path(directory).absolute()
        top.mkdir(parents=True, mode=0o700, exist_ok=True)
        client_key, known_hosts = top / "client_key", top / "known_hosts"
        if not client_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True)
        d = top / f"sshd-{host.name}"
        d.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
        (d / "authorized_keys").write_text((top / "client_key.pub").read_text())
        with open(known_hosts, "a") as f:
            f.write(f"{host.address} {(d / 'host_key.pub').read_text()}")
        config = d / "sshd_config"
        config.write_text(
            f"ListenAddress {host.address}\nPort 22\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self.process = spawn(testcase, f"sshd {host.name}", host.argv(SSHD, "-D", "-e", "-f", str(config)))
        self.options = ["-i", str(client_key), "-o", f"UserKnownHostsFile={known_hosts}",
                        "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-F", "/dev/null"]
        self.destination = f"root@{host.address}"

    def answers(self) -> bool:
        """Whether the sshd lets us in (its output and our last error, in the test log, if not)."""
        result = self.run("true")
        if result.returncode != 0:
            print(f"ssh {self.destination}: {result.stderr.strip()}; sshd: {self.process.output()[-500:]}")
        return result.returncode == 0

    def run(self, command: str) -> subprocess.CompletedProcess:
        """``ssh`` into the host, blocking (test set-up only, never on a path under test)."""
        return subprocess.run(["ssh", "-o", "BatchMode=yes", *self.options, self.destination, command],
                              capture_output=True, text=True, timeout=20)
