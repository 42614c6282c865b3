"""Daemons the cross-host tests start for themselves: an sshd in a namespace, munge + Slurm.

Each is a child of the test (``tests.cluster.spawn``), configured from files in the test's own
temporary directory, and killed and reaped at cleanup even when the test fails.  Each
``*_skip_reason`` says why the daemon cannot run here (for ``SkipTest``): the tests that need
it skip with that reason on a developer machine; ``.ci/run`` installs the packages.
"""
from __future__ import annotations

import os
import shlex
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


def slurm_skip_reason() -> Optional[str]:
    for program in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel"):
        if shutil.which(program) is None and not os.path.exists(f"/usr/sbin/{program}"):
            return f"needs Slurm and munge ({program} missing; apt-get install slurm-wlm munge; .ci/run does)"
    return None


class Slurm:
    """A single-node Slurm cluster of the test's own: munged, slurmctld (here, on the bridge's
    address) and slurmd (in ``node``'s namespace), all with files in a directory of their own.

    ``conf`` is its slurm.conf (set ``SLURM_CONF`` to it for sbatch and friends).
    """

    def __init__(self, testcase, controller_ip: str, node, cpus: int = 8) -> None:
        import random
        import socket

        import tempfile

        # Unix sockets' paths have at most 107 bytes (munge's, slurmstepd's in the spool directory):
        # everything lives under a short directory in /tmp, not in the test's.
        d = Path(tempfile.mkdtemp(prefix="ipc-slurm-"))
        testcase.addCleanup(shutil.rmtree, d, True)
        for sub in ("state", "spool", "munge"):
            (d / sub).mkdir(mode=0o700)
        m = d / "munge"
        key = m / "munge.key"
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
        self.socket = m / "munge.sock"
        spawn(testcase, "munged", ["munged", "-F", "--force", f"--socket={self.socket}", f"--key-file={key}",
                                   f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'seed'}",
                                   f"--log-file={m / 'munged.log'}"])
        port = random.randint(20000, 29000)
        self.conf = d / "slurm.conf"
        self.conf.write_text("\n".join([
            "ClusterName=ipc", f"SlurmctldHost={socket.gethostname()}({controller_ip})", "SlurmUser=root",
            f"SlurmctldPort={port}", f"SlurmdPort={port + 1}", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}", f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none", "ReturnToService=2",
            "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
            "SlurmdParameters=config_overrides", f"SlurmctldLogFile={d / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'slurmd.log'}", "MinJobAge=300", "SlurmctldTimeout=30", "SlurmdTimeout=30",
            f"NodeName=node1 NodeAddr={node.address} CPUs={cpus} RealMemory=1000 State=UNKNOWN",
            "PartitionName=debug Nodes=node1 Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        self.env = {"SLURM_CONF": str(self.conf)}
        self.directory = d
        # Each daemon is the first process of a PID namespace of its own (``unshare --pid``): what it
        # leaves behind when it is killed (slurmscriptd, slurmstepd) dies and is reaped with it.
        own_pids = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
        self.ctld = spawn(testcase, "slurmctld", [*own_pids, "slurmctld", "-D", "-i", "-f", str(self.conf)], env=self.env)
        # ``ip netns exec`` mounts a fresh /sys for the namespace, without the cgroup file systems
        # slurmd insists on seeing: mount them again, in that private mount namespace only.
        cgroups = ("mount -t tmpfs tmpfs /sys/fs/cgroup && for c in freezer cpuset memory devices; do "
                   "mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; done; "
                   "mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd; ")
        self.slurmd = spawn(testcase, "slurmd", node.argv(
            *own_pids, "sh", "-c", cgroups + f"exec slurmd -D -N node1 -f {shlex.quote(str(self.conf))}"), env=self.env)

    def ready(self) -> bool:
        """Whether the node is up and idle (blocking: test set-up only)."""
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20,
                                env=dict(os.environ, **self.env))
        return result.returncode == 0 and result.stdout.strip() in ("idle", "mixed", "allocated")

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            try:
                parts.append(f"--- {name}\n" + (self.directory / name).read_text()[-3000:])
            except OSError:
                pass
        return "\n".join(parts)
