"""Which launcher starts the controller's engines, and the cluster profile file that says so.

A profile is a TOML file written once per cluster (``twistd ipcluster --profile FILE``,
``ipcluster start -- --profile FILE``); command-line options override it::

    launcher = "slurm"          # local | ssh | slurm | mpi
    engines = 64
    ip = "0.0.0.0"              # any non-loopback address: CurveZMQ on every socket

    [ssh]
    hosts = ["alice@node1*8", "node2:2222", "node3"]   # [user@]host[:port][*engines]
    python = "/opt/venv/bin/python"                    # the interpreter on the hosts
    options = ["-i", "~/.ssh/cluster_ed25519"]         # more ssh options
    remote_dir = ".ipcluster/remote"                   # where the connection file goes (0600)

    [slurm]
    partition = "compute"
    account = "proj42"
    time = "02:00:00"
    mode = "array"              # "array": a job array of single engines; "srun": one job, srun steps
    options = ["--mem-per-cpu=2G"]
    poll = 10.0                 # seconds between squeue/sacct polls

    [mpi]
    mpiexec = "mpiexec"
    args = ["--oversubscribe"]

:class:`LauncherSpec` is the parsed form (``ControllerConfig.launcher``); :meth:`LauncherSpec.build`
makes the ``ILauncher``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import attr

KINDS = ("local", "ssh", "slurm", "mpi")
#: Top-level profile keys that are ``twistd ipcluster`` options of the same name.
OPTION_KEYS = ("engines", "ip", "location", "curve", "heartbeat-period", "heartbeat-misses")


def _tuple(value) -> tuple:
    return tuple(value) if value is not None else ()


@attr.s(frozen=True)
class LauncherSpec:
    """The launcher's kind and its settings (one table per kind, as in the profile)."""

    kind: str = attr.ib(default="local", validator=attr.validators.in_(KINDS))
    ssh: dict = attr.ib(factory=dict)
    slurm: dict = attr.ib(factory=dict)
    mpi: dict = attr.ib(factory=dict)

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def build(self, reactor, connection_file: str, on_ended, engine_ids: Sequence[str], data_dir: Optional[str] = None):
        """The ``ILauncher`` this spec describes, reporting each engine's end to ``on_ended``."""
        if self.kind == "local":
            from ipcluster.launchers.local import LocalLauncher

            return LocalLauncher(reactor, connection_file, on_ended)
        if self.kind == "ssh":
            from ipcluster.launchers.ssh import SSHHost, SSHLauncher

            s = self.ssh
            hosts = [h if isinstance(h, SSHHost) else SSHHost.parse(str(h)) for h in s.get("hosts", ())]
            return SSHLauncher(reactor, connection_file, hosts, on_ended, expected=engine_ids,
                               ssh=s.get("ssh", "ssh"), options=_tuple(s.get("options")),
                               python=s.get("python", "python3"),
                               remote_dir=s.get("remote_dir", ".ipcluster/remote"))
        if self.kind == "mpi":
            from ipcluster.launchers.mpi import MPILauncher

            m = self.mpi
            return MPILauncher(reactor, connection_file, on_ended, mpiexec=m.get("mpiexec", "mpiexec"),
                               args=_tuple(m.get("args")), python=m.get("python", sys.executable))
        from ipcluster.launchers.slurm import SlurmLauncher

        return SlurmLauncher(reactor, connection_file, on_ended, settings=dict(self.slurm),
                             log_dir=str(data_dir or Path(connection_file).parent))


class ProfileError(ValueError):
    """A profile file that cannot be read or says something that makes no sense."""


def load_profile(path) -> dict:
    """The profile at ``path`` as a dict (``tomllib``); ProfileError with the reason if it is not usable."""
    import tomllib

    try:
        with open(Path(path).expanduser(), "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ProfileError(f"cannot read profile {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"profile {path} is not valid TOML: {e}") from None
    unknown = set(data) - {"launcher", *OPTION_KEYS, *(k.replace("-", "_") for k in OPTION_KEYS), "ssh", "slurm", "mpi"}
    if unknown:
        raise ProfileError(f"profile {path}: unknown keys {', '.join(sorted(unknown))}")
    if data.get("launcher", "local") not in KINDS:
        raise ProfileError(f"profile {path}: launcher must be one of {', '.join(KINDS)}")
    for table in ("ssh", "slurm", "mpi"):
        if not isinstance(data.get(table, {}), dict):
            raise ProfileError(f"profile {path}: [{table}] must be a table")
    return data


def spec_from(profile: dict, kind: Optional[str] = None, overrides: Optional[dict[str, dict[str, Any]]] = None) -> LauncherSpec:
    """A LauncherSpec from a loaded profile, with ``kind`` and per-table ``overrides`` (the command line) on top."""
    tables = {t: dict(profile.get(t, {})) for t in ("ssh", "slurm", "mpi")}
    for table, values in (overrides or {}).items():
        tables[table].update({k: v for k, v in values.items() if v is not None})
    spec_kind = kind or profile.get("launcher", "local")
    if spec_kind == "ssh" and not tables["ssh"].get("hosts"):
        raise ProfileError("the ssh launcher needs hosts (--ssh-hosts, or hosts in the profile's [ssh] table)")
    return LauncherSpec(spec_kind, **tables)
