"""Cluster profiles (TOML) and the launcher options of ``twistd ipcluster``: which overrides which."""
from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ipcluster.controller.tap import Options, makeService
from ipcluster.interfaces import ILauncher
from ipcluster.launchers.mpi import MPILauncher
from ipcluster.launchers.profile import LauncherSpec, ProfileError, load_profile
from ipcluster.launchers.slurm import SlurmLauncher
from ipcluster.launchers.ssh import SSHHost, SSHLauncher

PROFILE = """
launcher = "slurm"
engines = 16
ip = "0.0.0.0"

[slurm]
partition = "compute"
account = "proj42"
time = "02:00:00"
mode = "srun"

[ssh]
hosts = ["alice@node1*8", "node2"]
"""


class Profiles(SynchronousTestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def options(self, *argv):
        o = Options()
        o.parseOptions(list(argv))
        return o

    def test_the_profile_sets_what_the_command_line_leaves_at_its_default(self):
        o = self.options("--profile", self.write(PROFILE), "--data-dir", self.mktemp())
        self.assertEqual((o["engines"], o["ip"]), (16, "0.0.0.0"))
        spec = o.launcher_spec
        self.assertEqual(spec.kind, "slurm")
        self.assertEqual((spec.slurm["partition"], spec.slurm["account"], spec.slurm["time"], spec.slurm["mode"]),
                         ("compute", "proj42", "02:00:00", "srun"))

    def test_the_command_line_overrides_the_profile(self):
        o = self.options("--profile", self.write(PROFILE), "--engines", "3", "--launcher", "ssh",
                         "--ssh-hosts", "h1,bob@h2:2222", "--slurm-partition", "debug")
        self.assertEqual(o["engines"], 3)
        self.assertEqual(o.launcher_spec.kind, "ssh")
        self.assertEqual(o.launcher_spec.ssh["hosts"], ["h1", "bob@h2:2222"])
        self.assertEqual(o.launcher_spec.slurm["partition"], "debug")

    def test_nonsense_is_one_clear_error(self):
        for text, words in (("launcher = 'pbs'", "launcher must be"), ("nodes = 3", "unknown keys nodes"),
                            ("ssh = 3", "[ssh] must be a table"), ("launcher = ", "not valid TOML")):
            e = self.assertRaises(usage.UsageError, self.options, "--profile", self.write(text))
            self.assertIn(words, str(e))
        self.assertIn("cannot read profile", str(self.assertRaises(ProfileError, load_profile, "/nonexistent.toml")))
        self.assertIn("needs hosts", str(self.assertRaises(usage.UsageError, self.options, "--launcher", "ssh")))
        self.assertIn("--launcher local", str(self.assertRaises(
            usage.UsageError, self.options, "--launcher", "mpi", "--engine-memory-limit", "1GB")))

    def test_each_kind_builds_an_ilauncher(self):
        from twisted.internet import reactor

        spec = {"local": LauncherSpec(), "ssh": LauncherSpec("ssh", ssh={"hosts": ["a*1", "b"]}),
                "mpi": LauncherSpec("mpi", mpi={"args": ["--oversubscribe"]}),
                "slurm": LauncherSpec("slurm", slurm={"partition": "p"})}
        built = {k: s.build(reactor, "/c/connection.json", lambda *a: None, ["e0", "e1"]) for k, s in spec.items()}
        for launcher in built.values():
            verifyObject(ILauncher, launcher)
        self.assertIsInstance(built["ssh"], SSHLauncher)
        self.assertEqual(built["ssh"].placement["e0"], SSHHost("a", engines=1))
        self.assertIsInstance(built["mpi"], MPILauncher)
        self.assertIsInstance(built["slurm"], SlurmLauncher)

    def test_the_controller_gets_the_launcher(self):
        data_dir = self.mktemp()
        o = self.options("--data-dir", data_dir, "--launcher", "mpi", "--engines", "2", "--mpiexec", "mpirun")
        controller = makeService(o).controller
        self.assertIsInstance(controller.local_engines.launcher, MPILauncher)
        self.assertEqual(controller.local_engines.launcher.mpiexec, "mpirun")
        self.assertFalse(os.path.exists(os.path.join(data_dir, "connection.json")))
