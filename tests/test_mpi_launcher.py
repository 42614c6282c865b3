"""The MPI launcher with Debian's Open MPI: ``mpiexec -n 3`` engines on a host of their own
(a network namespace), each registering with its rank; stopped with nothing left behind."""
from __future__ import annotations

import shutil

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ipcluster.launchers.mpi import MPILauncher
from ipcluster.launchers.profile import LauncherSpec
from ipcluster.launchers.shim import engine_rank, parse_announcement, rank_of
from tests import netns
from tests.cluster import BOUND, connect_client, event, start_controller, until, within

#: A task: the rank the engine's environment gives it (by value: the hosts cannot import tests).
RANK = eval('lambda: int(__import__("os").environ["IPCLUSTER_RANK"])')


class Ranks(unittest.SynchronousTestCase):
    def test_rank_from_mpi_or_slurm(self):
        self.assertEqual(rank_of({"OMPI_COMM_WORLD_RANK": "3"}), 3)
        self.assertEqual(rank_of({"PMI_RANK": "2", "SLURM_PROCID": "9"}), 2)
        self.assertEqual(rank_of({"SLURM_ARRAY_TASK_ID": "5"}, array=True), 5)
        self.assertIsNone(rank_of({}))
        self.assertIsNone(rank_of({"PMI_RANK": "x"}))
        self.assertEqual(engine_rank({"IPCLUSTER_RANK": "4", "PMI_RANK": "1"}), 4)

    def test_announcement(self):
        self.assertEqual(parse_announcement("ipcluster-launched e3 123 node7 3"), ("e3", 123, "node7", 3))
        self.assertEqual(parse_announcement("ipcluster-launched e3 123 node7 -"), ("e3", 123, "node7", None))
        for line in ("ipcluster-launched e3 x node7 3", "hello", "ipcluster-launched e3 1 n"):
            self.assertIsNone(parse_announcement(line))

    def test_one_job_per_batch(self):
        launcher = MPILauncher(reactor, "/c.json", mpiexec="ip netns exec h mpiexec", args=["--oversubscribe"],
                               python="/py")
        argv = launcher.argv(["e0", "e1"])
        self.assertEqual(argv[:7], ["ip", "netns", "exec", "h", "mpiexec", "--oversubscribe", "-n"])
        self.assertEqual(argv[-2:], ["--ids", "e0,e1"])


class MPIJob(unittest.TestCase):
    timeout = 300

    def setUp(self):
        why = netns.skip_reason()
        if why:
            raise unittest.SkipTest(why)
        if shutil.which("mpiexec") is None:
            raise unittest.SkipTest("needs MPI (apt-get install openmpi-bin; .ci/run does)")
        self.net = netns.Network(1)
        self.addCleanup(self.net.close)

    @defer.inlineCallbacks
    def test_engines_are_ranks_of_one_job(self):
        host = self.net.hosts[0]
        spec = LauncherSpec("mpi", mpi={"mpiexec": f"ip netns exec {host.name} mpiexec",
                                        "args": ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]})
        ids = ["e0", "e1", "e2"]
        controller = yield start_controller(self, ip=self.net.controller_ip, engines=3, launcher=spec)
        yield within(defer.gatherResults([event(controller.registry, "joined", e) for e in ids]), BOUND,
                     "three MPI ranks to join")
        launcher = controller.local_engines.launcher
        self.assertEqual(launcher.jobs, 1, "the three engines are one mpiexec job")
        described = {d["id"]: d for d in controller.status.engines()}
        self.assertEqual({e: described[e]["rank"] for e in ids}, {"e0": 0, "e1": 1, "e2": 2})
        client = yield connect_client(self, controller)
        ranks = yield within(defer.gatherResults([client.submit(RANK, engine=e) for e in ids]), BOUND, "tasks")
        self.assertEqual(ranks, [0, 1, 2])
        # The rank's announcement (its own pid) comes through mpiexec's output forwarding, which
        # may trail the engine's registration over TCP.
        yield until(lambda: "e1" in launcher.pids, BOUND, "e1's announcement through mpiexec")
        self.assertEqual(launcher.running()["e1"], controller.registry.get("e1").pid)
        yield controller.stopService()
        yield until(lambda: not host.pids(), what="the MPI job to end on its host")



class RankInRegistration(unittest.SynchronousTestCase):
    """``register`` may carry ``rank``: an int in 0..2**31-1 is recorded, anything else ignored."""

    def test_valid_and_absurd_ranks(self):
        from twisted.internet.task import Clock

        from ipcluster.controller.droplog import DropLog
        from ipcluster.controller.registrar import Registrar
        from ipcluster.controller.registry import Registry
        from ipcluster.transport.wire import Codec

        key = b"k" * 32
        clock, registry, codec, sent = Clock(), Registry(), Codec(key), []
        drops = DropLog(clock)
        self.addCleanup(drops.stop)
        registrar = Registrar(registry, codec, clock, sent.append, drops, 0.5, key=key)
        for i, rank in enumerate((3, -1, 2**31, "7", 1.5, True, None)):
            about = {"engine": f"e{i}", "instance": f"{i}" * 32, "host": "h", "pid": 1}
            if rank is not None:
                about["rank"] = rank
            registrar.message_received([b"reg", *codec.encode("register", about, session="")])
            self.assertEqual(codec.decode(sent[-1][1:]).type, "registered", rank)
        self.assertEqual([registry.get(f"e{i}").rank for i in range(7)], [3, None, None, None, None, None, None])
        self.assertEqual(registry.get("e0").describe(0.0)["rank"], 3)
