"""Supervision of local engines on task.Clock: the supervisor's machine input by input,
back-off, the restart budget, recycling over the memory limit, stopping; LocalEngines
over a fake ILauncher; the memory watch; sizes; what the status source shows.
"""
import inspect
import signal

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ipcluster.controller.engines import LocalEngines
from ipcluster.controller.memory import MemoryWatch, parse_size, read_rss
from ipcluster.controller.registry import DEAD, Registry
from ipcluster.controller.supervisor import (
    BACKING_OFF, EXITED, GIVEN_UP, IDLE, RECYCLING, RUNNING, STOPPED, STOPPING, EngineSupervisor,
    NoTransition, RestartPolicy, SupervisorInputs, format_size,
)
from ipcluster.interfaces import ILauncher
from ipcluster.launchers.local import CLEAN_EXIT

PHASES = (IDLE, RUNNING, RECYCLING, BACKING_OFF, GIVEN_UP, EXITED, STOPPING, STOPPED)

INPUTS = {
    "launch": (),
    "died": ("process killed by signal 9 (SIGKILL)",),
    "exhausted": ("process killed by signal 9 (SIGKILL)",),
    "exited": (CLEAN_EXIT,),
    "due": (),
    "over_limit": (3 * 10**9,),
    "stop": (),
}

#: (phase, input) -> the phase it leads to; every pair not here raises NoTransition.
TRANSITIONS = {
    (IDLE, "launch"): RUNNING,
    (IDLE, "stop"): STOPPED,
    (RUNNING, "died"): BACKING_OFF,
    (RUNNING, "exhausted"): GIVEN_UP,
    (RUNNING, "exited"): EXITED,
    (RUNNING, "over_limit"): RECYCLING,
    (RUNNING, "stop"): STOPPING,
    (RECYCLING, "over_limit"): RECYCLING,
    (RECYCLING, "died"): BACKING_OFF,
    (RECYCLING, "exhausted"): GIVEN_UP,
    (RECYCLING, "stop"): STOPPING,
    (BACKING_OFF, "due"): RUNNING,
    (BACKING_OFF, "stop"): STOPPED,
    (GIVEN_UP, "stop"): STOPPED,
    (EXITED, "stop"): STOPPED,
    (STOPPING, "died"): STOPPED,
    (STOPPING, "exhausted"): STOPPED,
    (STOPPING, "exited"): STOPPED,
    (STOPPING, "stop"): STOPPING,
    (STOPPED, "stop"): STOPPED,
}

PATHS = {
    IDLE: (),
    RUNNING: (("launch",),),
    RECYCLING: (("launch",), ("over_limit", 3 * 10**9)),
    BACKING_OFF: (("launch",), ("died", "killed")),
    GIVEN_UP: (("launch",), ("exhausted", "killed")),
    EXITED: (("launch",), ("exited", CLEAN_EXIT)),
    STOPPING: (("launch",), ("stop",)),
    STOPPED: (("stop",),),
}


class Hooks:
    """What a supervisor does to the world, recorded."""

    def __init__(self, clock):
        self.clock = clock
        self.starts = []  # times
        self.signals = []  # (time, signum)
        self.condemned = []  # reasons
        self.changes = 0
        self.fail_start = None

    def start(self, engine_id):
        self.starts.append(self.clock.seconds())
        if self.fail_start is not None:
            return defer.fail(self.fail_start)
        return defer.succeed([engine_id])

    def signal(self, engine_id, signum):
        self.signals.append((self.clock.seconds(), signum))
        return True

    def condemn(self, engine_id, reason):
        self.condemned.append(reason)

    def changed(self):
        self.changes += 1


class SupervisorMachine(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.hooks = Hooks(self.clock)

    def supervisor(self, phase=IDLE, **policy):
        policy.setdefault("memory_limit", 2 * 10**9)
        h = self.hooks
        sup = EngineSupervisor("e0", RestartPolicy(**policy), self.clock, h.start, h.signal, h.condemn, h.changed)
        for name, *args in PATHS[phase]:
            getattr(sup.lifecycle, name)(*args)
        self.assertEqual(sup.phase, phase)
        return sup

    def test_inputs_are_the_protocol(self):
        declared = {n for n, _ in inspect.getmembers(SupervisorInputs, inspect.isfunction) if not n.startswith("_")}
        self.assertEqual(declared, set(INPUTS))

    def test_every_input_in_every_state(self):
        observed = {}
        for phase in PHASES:
            for name, args in INPUTS.items():
                sup = self.supervisor(phase)
                before = (sup.phase, sup.restarts, sup.next_restart_at, sup.last_exit)
                try:
                    getattr(sup.lifecycle, name)(*args)
                except NoTransition:
                    self.assertEqual((sup.phase, sup.restarts, sup.next_restart_at, sup.last_exit), before, (phase, name))
                    continue
                observed[phase, name] = sup.phase
        self.assertEqual(observed, TRANSITIONS)

    # -- restarts and back-off --------------------------------------------------------

    def test_a_death_restarts_the_engine_after_the_first_delay(self):
        sup = self.supervisor(RUNNING)
        self.clock.advance(100)
        sup.process_ended("process killed by signal 9 (SIGKILL)", clean=False)
        self.assertEqual((sup.phase, sup.restarts, sup.next_restart_at), (BACKING_OFF, 1, 100.5))
        self.assertEqual(sup.last_exit, "process killed by signal 9 (SIGKILL)")
        self.assertTrue(sup.coming)
        self.clock.advance(0.49)
        self.assertEqual(self.hooks.starts, [0.0])
        self.clock.advance(0.01)
        self.assertEqual(self.hooks.starts, [0.0, 100.5])
        self.assertEqual((sup.phase, sup.next_restart_at), (RUNNING, None))

    def test_quick_deaths_double_the_delay_up_to_the_maximum(self):
        sup = self.supervisor(RUNNING, limit=100, window=1000.0)
        delays = []
        for _ in range(9):
            sup.process_ended("killed", clean=False)
            delays.append(sup.next_restart_at - self.clock.seconds())
            self.clock.advance(delays[-1])
            self.assertEqual(sup.phase, RUNNING)
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30, 30])

    def test_an_engine_that_lived_a_while_backs_off_from_the_start(self):
        sup = self.supervisor(RUNNING, limit=100, window=1000.0)
        for _ in range(3):
            sup.process_ended("killed", clean=False)
            self.clock.advance(sup.next_restart_at - self.clock.seconds())
        self.clock.advance(29.9)
        sup.process_ended("killed", clean=False)
        self.assertEqual(sup.next_restart_at - self.clock.seconds(), 4, "29.9 s is not long enough")
        self.clock.advance(4)
        self.clock.advance(30)
        sup.process_ended("killed", clean=False)
        self.assertEqual(sup.next_restart_at - self.clock.seconds(), 0.5, "lived 30 s: back to the first delay")

    def test_the_budget_gives_up_after_limit_restarts_in_the_window(self):
        sup = self.supervisor(RUNNING, limit=3, window=60.0)
        for n in range(3):
            self.assertEqual(sup.budget_left(), 3 - n)
            sup.process_ended("killed", clean=False)
            self.clock.advance(sup.next_restart_at - self.clock.seconds())
        changes = self.hooks.changes
        sup.process_ended("process killed by signal 11 (SIGSEGV)", clean=False)
        self.assertEqual((sup.phase, sup.restarts, sup.next_restart_at), (GIVEN_UP, 3, None))
        self.assertEqual(sup.last_exit, "process killed by signal 11 (SIGSEGV)")
        self.assertFalse(sup.coming)
        self.assertEqual(self.hooks.changes, changes + 1, "the scheduler hears that nothing is coming")
        self.clock.advance(1000)
        self.assertEqual(len(self.hooks.starts), 4, "a given-up engine is not started again")
        self.assertEqual(sup.describe()["supervisor"], "given up")

    def test_restarts_older_than_the_window_do_not_count(self):
        sup = self.supervisor(RUNNING, limit=2, window=60.0)
        for _ in range(2):
            sup.process_ended("killed", clean=False)
            self.clock.advance(sup.next_restart_at - self.clock.seconds())
        self.clock.advance(60)
        self.assertEqual(sup.budget_left(), 2)
        sup.process_ended("killed", clean=False)
        self.assertEqual(sup.phase, BACKING_OFF)

    def test_limit_zero_never_restarts(self):
        sup = self.supervisor(RUNNING, limit=0)
        sup.process_ended("killed", clean=False)
        self.assertEqual(sup.phase, GIVEN_UP)
        self.assertEqual(sup.describe()["supervisor"], "off")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_clean_exit_is_not_restarted(self):
        sup = self.supervisor(RUNNING)
        sup.process_ended(CLEAN_EXIT, clean=True)
        self.assertEqual((sup.phase, sup.restarts, sup.last_exit), (EXITED, 0, CLEAN_EXIT))
        self.assertFalse(sup.coming)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_start_that_fails_counts_as_a_death(self):
        self.hooks.fail_start = OSError("no such file")
        sup = self.supervisor(IDLE, limit=1)
        sup.lifecycle.launch()
        self.assertEqual(sup.phase, BACKING_OFF)
        self.assertIn("could not start it: no such file", sup.last_exit)
        self.clock.advance(0.5)
        self.assertEqual(sup.phase, GIVEN_UP)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

    # -- recycling over the memory limit ------------------------------------------------

    def test_over_the_limit_condemns_then_sigterms_then_sigkills(self):
        sup = self.supervisor(RUNNING, kill_after=5.0)
        self.clock.advance(10)
        sup.lifecycle.over_limit(3_100_000_000)
        reason = "exceeded its memory limit (RSS 3.1 GB > 2 GB)"
        self.assertEqual(self.hooks.condemned, [reason])
        self.assertEqual(self.hooks.signals, [(10, signal.SIGTERM)])
        sup.lifecycle.over_limit(3_200_000_000)  # still over while it goes: nothing more
        self.assertEqual(len(self.hooks.signals), 1)
        self.clock.advance(5)
        self.assertEqual(self.hooks.signals, [(10, signal.SIGTERM), (15, signal.SIGKILL)])
        sup.process_ended("process killed by signal 9 (SIGKILL)", clean=False)
        self.assertEqual(sup.phase, BACKING_OFF)
        self.assertEqual(sup.last_exit, reason + " (process killed by signal 9 (SIGKILL))")
        self.clock.advance(0.5)
        self.assertEqual(sup.phase, RUNNING)
        self.assertIsNone(sup.recycled_for)

    def test_a_recycled_engine_that_exits_cleanly_is_restarted(self):
        sup = self.supervisor(RECYCLING)
        sup.process_ended(CLEAN_EXIT, clean=True)
        self.assertEqual(sup.phase, BACKING_OFF)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "the SIGKILL timer was cancelled")
        self.clock.advance(100)
        self.assertEqual([s for _, s in self.hooks.signals], [signal.SIGTERM])

    def test_recycling_counts_against_the_budget(self):
        sup = self.supervisor(RUNNING, limit=1)
        sup.lifecycle.over_limit(3 * 10**9)
        sup.process_ended("killed", clean=False)
        self.clock.advance(0.5)
        sup.lifecycle.over_limit(3 * 10**9)
        sup.process_ended(CLEAN_EXIT, clean=True)
        self.assertEqual(sup.phase, GIVEN_UP)
        self.assertIn("exceeded its memory limit", sup.last_exit)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    # -- stopping ----------------------------------------------------------------------

    def test_no_restart_while_stopping(self):
        sup = self.supervisor(RUNNING)
        sup.lifecycle.stop()
        sup.process_ended("process killed by signal 15 (SIGTERM)", clean=False)
        self.assertEqual(sup.phase, STOPPED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.hooks.starts), 1)

    def test_stop_cancels_a_pending_restart(self):
        sup = self.supervisor(BACKING_OFF)
        sup.lifecycle.stop()
        self.assertEqual((sup.phase, sup.next_restart_at), (STOPPED, None))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.hooks.starts), 1)

    def test_stop_cancels_the_sigkill_of_a_recycled_engine(self):
        sup = self.supervisor(RECYCLING)
        sup.lifecycle.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [], "the launcher's stop kills it now")


class FakeProcessEnd:
    """``why`` strings as LocalLauncher's why_ended writes them."""

    KILLED = "process killed by signal 9 (SIGKILL)"
    SEGV = "process killed by signal 11 (SIGSEGV)"


@implementer(ILauncher)
class FakeLauncher:
    """An ILauncher whose processes end when the test says."""

    def __init__(self):
        self.pids = iter(range(100, 10_000))
        self.procs = {}  # engine id -> pid
        self.starts = []
        self.signals = []
        self.stopped = None
        self.on_ended = None

    def start(self, engine_ids):
        for engine_id in engine_ids:
            self.procs[engine_id] = next(self.pids)
            self.starts.append(engine_id)
        return defer.succeed(list(engine_ids))

    def stop(self, timeout=5.0):
        self.stopped = timeout
        for engine_id in list(self.procs):
            self.end(engine_id, "process killed by signal 15 (SIGTERM)")
        return defer.succeed(None)

    def signal(self, engine_id, signum):
        self.signals.append((engine_id, signum))
        return engine_id in self.procs

    def running(self):
        return dict(self.procs)

    def ended(self, engine_id):
        return None

    def is_local(self, engine_id):
        return engine_id in self.procs

    def end(self, engine_id, why):
        pid = self.procs.pop(engine_id)
        self.on_ended(engine_id, pid, why)


class LocalEnginesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.registry = Registry()
        self.launcher = FakeLauncher()
        self.rss = {}
        self.engines = self.make()

    def make(self, count=2, **policy):
        engines = LocalEngines(
            self.clock, self.registry, "/d/connection.json", count, launcher=self.launcher,
            policy=RestartPolicy(**policy), rss_of=lambda pid: self.rss.get(pid),
        )
        self.launcher.on_ended = engines.process_ended
        return engines

    def join(self, engine_id):
        record = self.registry.register(engine_id, f"{engine_id}-{self.launcher.procs[engine_id]}", "host",
                                        self.launcher.procs[engine_id], self.clock.seconds(), local=True)
        self.registry.mark_alive(record, self.clock.seconds())
        return record

    def test_fake_launcher_is_a_launcher(self):
        verifyObject(ILauncher, self.launcher)

    def test_start_launches_every_engine(self):
        self.engines.startService()
        self.assertEqual(self.launcher.starts, ["e0", "e1"])
        self.assertTrue(self.engines.coming())
        self.assertEqual(self.engines.supervision("e0"),
                         {"supervisor": RUNNING, "restarts": 0, "next_restart_at": None, "last_exit": "", "rss": None,
                          "launcher": None})
        self.assertIsNone(self.engines.supervision("other"))

    def test_a_killed_engine_is_declared_dead_then_restarted_with_its_id(self):
        self.engines.startService()
        record = self.join("e0")
        self.launcher.end("e0", FakeProcessEnd.KILLED)
        self.assertEqual((record.state, record.reason), (DEAD, FakeProcessEnd.KILLED))
        self.assertEqual(self.engines.supervision("e0")["supervisor"], BACKING_OFF)
        self.clock.advance(0.5)
        self.assertEqual(self.launcher.starts, ["e0", "e1", "e0"])
        self.assertEqual(self.engines.supervision("e0")["restarts"], 1)

    def test_stop_restarts_nothing(self):
        self.engines.startService()
        self.launcher.end("e0", FakeProcessEnd.KILLED)
        self.engines.stopService()
        self.assertEqual(self.launcher.stopped, 5.0)
        self.clock.advance(100)
        self.assertEqual(self.launcher.starts, ["e0", "e1"])
        self.assertEqual({self.engines.supervision(e)["supervisor"] for e in ("e0", "e1")}, {STOPPED})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_listeners_hear_when_engines_stop_coming(self):
        heard = []
        self.engines = self.make(count=1, limit=0)
        self.engines.subscribe(lambda: heard.append(self.engines.coming()))
        self.engines.startService()
        self.launcher.end("e0", FakeProcessEnd.SEGV)
        self.assertEqual(heard, [True, False])
        self.assertTrue(self.engines.gave_up("e0"))

    def test_a_listener_that_raises_is_logged(self):
        self.engines.subscribe(lambda: 1 / 0)
        self.engines.startService()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_an_engine_over_its_memory_limit_is_recycled(self):
        self.engines = self.make(count=1, memory_limit=10**9)
        self.engines.startService()
        record = self.join("e0")
        pid = self.launcher.procs["e0"]
        self.rss[pid] = 900 * 10**6
        self.clock.advance(1.0)
        self.assertEqual(self.launcher.signals, [])
        self.assertEqual(self.engines.supervision("e0")["rss"], 900 * 10**6)
        self.rss[pid] = 1_500_000_000
        self.clock.advance(1.0)
        self.assertEqual((record.state, record.reason), (DEAD, "exceeded its memory limit (RSS 1.5 GB > 1 GB)"))
        self.assertEqual(self.launcher.signals, [("e0", signal.SIGTERM)])
        self.clock.advance(1.0)
        self.assertEqual(self.launcher.signals, [("e0", signal.SIGTERM)], "sampled again while it goes: no new signal")
        self.launcher.end("e0", CLEAN_EXIT)
        self.assertEqual(self.engines.supervision("e0")["supervisor"], BACKING_OFF)
        self.clock.advance(0.5)
        self.assertEqual(self.launcher.starts, ["e0", "e0"])
        self.engines.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [], "the memory watch stopped with the service")

    def test_an_engine_started_by_hand_is_not_supervised(self):
        self.launcher.start(["x"])
        self.engines.process_ended("x", 1, FakeProcessEnd.KILLED)
        self.clock.advance(100)
        self.assertEqual(self.launcher.starts, ["x"])


class MemoryTests(SynchronousTestCase):
    def test_parse_size(self):
        self.assertEqual(parse_size("2GB"), 2 * 10**9)
        self.assertEqual(parse_size("512MiB"), 512 * 2**20)
        self.assertEqual(parse_size("1.5g"), 1_500_000_000)
        self.assertEqual(parse_size(" 1000 "), 1000)
        for bad in ("", "GB", "-1GB", "0", "2 parsecs", "1e9"):
            self.assertRaises(ValueError, parse_size, bad)

    def test_format_size(self):
        self.assertEqual([format_size(n) for n in (999, 1000, 2_150_000_000, 300 * 10**6)],
                         ["999 B", "1 kB", "2.15 GB", "300 MB"])

    def test_read_rss_of_this_process(self):
        import os

        rss = read_rss(os.getpid())
        self.assertIsNotNone(rss, "needs Linux /proc")
        self.assertGreater(rss, 10 * 2**20)
        self.assertIsNone(read_rss(2**22 + 12345))

    def test_watch_samples_on_its_clock(self):
        clock = Clock()
        over = []
        watch = MemoryWatch(clock, 100, lambda: {"a": 1, "b": 2, "gone": 3}, lambda e, rss: over.append((e, rss)),
                            rss_of={1: 50, 2: 150}.get, period=2.0)
        watch.start()
        clock.advance(1.9)
        self.assertEqual(over, [])
        clock.advance(0.1)
        self.assertEqual(over, [("b", 150)])
        self.assertEqual(watch.last, {"a": 50, "b": 150})
        watch.stop()
        self.assertEqual(clock.getDelayedCalls(), [])


class HelpTexts(SynchronousTestCase):
    def test_ipcluster_start_states_the_defaults(self):
        from ipcluster.cli import start
        from ipcluster.controller.supervisor import DEFAULT_RESTART_LIMIT, DEFAULT_RESTART_WINDOW
        from ipcluster.scheduler.noengines import DEFAULT_NO_ENGINE_TIMEOUT

        text = " ".join(start.DESCRIPTION.split())
        policy = RestartPolicy()
        self.assertIn(f"at most {DEFAULT_RESTART_LIMIT} times within {DEFAULT_RESTART_WINDOW:g} s", text)
        self.assertIn(f"after {policy.first_delay:g} s, backing off to {policy.max_delay:g} s", text)
        self.assertIn(f"NoEngines after {DEFAULT_NO_ENGINE_TIMEOUT:g} s", text)

    def test_twistd_options_reach_the_config(self):
        from ipcluster.controller import tap

        options = tap.Options()
        options.parseOptions(["--restart-limit", "3", "--restart-window", "20", "--engine-memory-limit", "2GB",
                              "--no-engine-timeout", "0", "--dead-engine-ttl", "5"])
        self.assertEqual((options["restart-limit"], options["restart-window"], options["engine-memory-limit"]),
                         (3, 20.0, 2 * 10**9))
        self.assertEqual((options["no-engine-timeout"], options["dead-engine-ttl"]), (0.0, 5.0))
        options["data-dir"] = self.mktemp()
        config = tap.makeService(options).controller.config
        self.assertEqual(config.restart_policy(), RestartPolicy(limit=3, window=20.0, memory_limit=2 * 10**9))
        self.assertEqual((config.no_engine_timeout, config.dead_engine_ttl), (None, 5.0), "0: wait forever")
        from twisted.python import usage

        for bad in (["--restart-limit", "-1"], ["--engine-memory-limit", "lots"], ["--no-engine-timeout", "-1"]):
            self.assertRaises(usage.UsageError, tap.Options().parseOptions, bad)


class StatusShowsSupervision(SynchronousTestCase):
    """engines() (IStatusSource) carries the supervision of local engines, and lists a local
    engine that is down without ever having registered (a crash loop at start-up)."""

    def setUp(self):
        from ipcluster.controller.config import ControllerConfig
        from ipcluster.controller.droplog import DropLog
        from ipcluster.controller.status import ControllerStatus
        from ipcluster.interfaces import IStatusSource
        from tests.test_web import _Scheduler

        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = Registry()
        self.launcher = FakeLauncher()
        self.engines = LocalEngines(self.clock, self.registry, "/d/c.json", 2, launcher=self.launcher,
                                    policy=RestartPolicy(limit=1))
        self.launcher.on_ended = self.engines.process_ended
        drops = DropLog(self.clock)
        self.addCleanup(drops.stop)
        self.status = ControllerStatus(self.clock, self.registry, _Scheduler(), drops,
                                       ControllerConfig(data_dir="/nonexistent"), dict, self.engines)
        verifyObject(IStatusSource, self.status)

    def test_engines_show_restarts_and_the_next_one(self):
        from ipcluster.web.prometheus import exposition
        from ipcluster.web.view import StatusView

        self.engines.startService()
        record = self.registry.register("e0", "i", "host", self.launcher.procs["e0"], self.clock.seconds(), local=True)
        self.registry.mark_alive(record, self.clock.seconds())
        self.assertEqual([e["id"] for e in self.status.engines()], ["e0"], "e1 is starting: not shown yet")
        self.launcher.end("e0", FakeProcessEnd.KILLED)
        self.launcher.end("e1", FakeProcessEnd.SEGV)
        e0, e1 = self.status.engines()
        self.assertEqual((e0["state"], e0["supervisor"], e0["restarts"], e0["next_restart_at"]),
                         ("dead", BACKING_OFF, 1, 1000.5))
        self.assertEqual((e1["id"], e1["state"], e1["supervisor"], e1["reason"]), ("e1", "dead", BACKING_OFF, FakeProcessEnd.SEGV))
        self.clock.advance(0.5)
        self.launcher.end("e1", FakeProcessEnd.SEGV)
        e1 = self.status.engines()[1]
        self.assertEqual((e1["supervisor"], e1["restarts"], e1["last_exit"]), (GIVEN_UP, 1, FakeProcessEnd.SEGV))
        text = exposition(StatusView(self.status, self.clock).status())
        self.assertIn('ipcluster_engine_restarts_total{engine="e1"} 1', text)
        self.engines.stopService()
