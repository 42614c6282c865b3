"""The engine's link to the controller: every input in every state, on task.Clock."""
from __future__ import annotations

import io
import sys
import time
from typing import Optional

from automat import NoTransition
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.engine import link as link_module
from ipcluster.engine.diagnostics import say
from ipcluster.engine.link import Link, new_link

STATES = ("idle", "registering", "lost", "connected", "exiting", "gave_up", "stopped")

#: For each state, the inputs it takes and the state each leads to; every other input raises.
TAKES = {
    "idle": {"start": "registering", "stop": "stopped", "channels": "idle"},
    "registering": {
        "registered": "connected",
        "attempt_failed": "registering",
        "_give_up": "gave_up",
        "stop": "stopped",
        "channels": "registering",
    },
    "lost": {
        "registered": "connected",
        "attempt_failed": "lost",
        "_give_up": "gave_up",
        "stop": "stopped",
        "channels": "lost",
    },
    "connected": {
        "contact": "connected",
        "tick": "connected",
        "forgotten": "lost",
        "_silence": "lost",
        "exit_requested": "exiting",
        "stop": "stopped",
        "channels": "connected",
    },
    "exiting": {
        "contact": "exiting",
        "tick": "exiting",
        "exit_requested": "exiting",
        "forgotten": "lost",
        "_silence": "lost",
        "stop": "stopped",
        "channels": "exiting",
    },
    "gave_up": {"stop": "stopped", "channels": "gave_up"},
    "stopped": {},
}


class FakeChannels:
    """Stands in for ``channels.Channels``: what the link needs of it, and what it was told."""

    def __init__(self, period: float = 0.5, controller: str = "10.0.0.1") -> None:
        self.period = period
        self.controller = controller
        self.closed: list[Optional[str]] = []

    def close(self, bye: Optional[str]) -> None:
        self.closed.append(bye)


class Fixture:
    """A link on a task.Clock, with every effect recorded."""

    def __init__(self, reconnect_timeout: float = 60.0, controller_timeout: Optional[float] = None, say=None):
        self.clock = Clock()
        self.said: list[str] = []
        self.effects: list = []
        self.link: Link = new_link(
            "e0",
            self.clock,
            reconnect_timeout,
            controller_timeout,
            say or self.said.append,
            drop_queued=lambda: self.effects.append("drop queued"),
            give_up=lambda why: self.effects.append(("give up", why)),
            interrupt=lambda: self.effects.append("interrupt"),
        )
        self.channels = FakeChannels()

    def state(self) -> str:
        # Automat has no public accessor for the current state; the table test needs it.
        return self.link.__automat_transitioner__._state.name

    def reach(self, state: str) -> "Fixture":
        """Drive the link into ``state`` through its inputs."""
        paths = {
            "idle": [],
            "registering": ["start"],
            "connected": ["start", "registered"],
            "exiting": ["start", "registered", "exit_requested"],
            "lost": ["start", "registered", "forgotten"],
            "gave_up": ["start", "_give_up"],
            "stopped": ["start", "stop"],
        }
        for name in paths[state]:
            self.feed(name)
        assert self.state() == state, (self.state(), state)
        return self

    def feed(self, name: str):
        """Call the input ``name`` with typical arguments."""
        args = {
            "registered": (self.channels,),
            "attempt_failed": ("registration refused: duplicate",),
            "forgotten": ("engine e0 is not registered",),
            "tick": (True,),
            "exit_requested": (5.0, True),
            "stop": ("SIGTERM",),
            "_silence": ("no word from the controller for 9.0 s",),
            "_give_up": ("no controller accepted this engine for 61 s",),
        }.get(name, ())
        return getattr(self.link, name)(*args)


INPUTS = sorted({name for takes in TAKES.values() for name in takes})


class EveryInputInEveryState(SynchronousTestCase):
    def test_the_table_names_every_input_of_the_machine(self):
        declared = {name for name, value in vars(Link).items() if callable(value) and not name.startswith("__")}
        self.assertEqual(set(INPUTS), declared)
        self.assertEqual(set(TAKES), set(STATES))

    def test_every_input_in_every_state(self):
        for state in STATES:
            for name in INPUTS:
                fixture = Fixture().reach(state)
                expected = TAKES[state].get(name)
                if expected is None:
                    with self.assertRaises(NoTransition, msg=f"{name} in {state}"):
                        fixture.feed(name)
                    self.assertEqual(fixture.state(), state, f"{name} in {state} changed the state")
                else:
                    fixture.feed(name)
                    self.assertEqual(fixture.state(), expected, f"{name} in {state}")


class Registering(SynchronousTestCase):
    def test_a_reason_is_printed_once_and_no_answer_is_not_a_reason(self):
        f = Fixture().reach("registering")
        for why in ("no connection file", "no connection file", None, "registration refused: busy", None):
            f.link.attempt_failed(why)
        self.assertEqual(
            f.said,
            [
                "no connection file (will keep trying for 60 s)",
                "registration refused: busy (will keep trying for 60 s)",
            ],
        )
        self.assertEqual(f.effects, [])

    def test_gives_up_only_after_the_reconnect_timeout(self):
        f = Fixture(reconnect_timeout=3.0).reach("registering")
        f.clock.advance(3.0)
        f.link.attempt_failed(None)  # exactly the timeout: one more try
        self.assertEqual(f.state(), "registering")
        f.clock.advance(0.5)
        f.link.attempt_failed(None)
        self.assertEqual(f.state(), "gave_up")
        self.assertEqual(f.effects, [("give up", "no controller accepted this engine for 4 s")])
        self.assertIsNone(f.link.channels())

    def test_the_timeout_counts_from_the_start_not_from_construction(self):
        f = Fixture(reconnect_timeout=3.0)
        f.clock.advance(100)
        f.link.start()
        f.clock.advance(2)
        f.link.attempt_failed(None)
        self.assertEqual(f.state(), "registering")

    def test_registered_serves_the_channels(self):
        f = Fixture().reach("registering")
        self.assertIsNone(f.link.channels())
        f.link.registered(f.channels)
        self.assertIs(f.link.channels(), f.channels)
        self.assertEqual(f.said, ["engine e0 registered with controller at 10.0.0.1"])

    def test_stop_while_registering_says_no_bye(self):
        f = Fixture().reach("registering")
        f.link.stop("SIGTERM")
        self.assertEqual((f.state(), f.channels.closed, f.effects), ("stopped", [], []))


class Connected(SynchronousTestCase):
    def test_silence_limit_is_ten_heartbeat_periods_but_at_least_5_s(self):
        for period, limit in ((0.5, 5.0), (1.0, 10.0), (0.1, 5.0)):
            f = Fixture().reach("registering")
            f.link.registered(FakeChannels(period=period))
            f.clock.advance(limit)
            f.link.tick(False)
            self.assertEqual(f.state(), "connected", f"period {period}: lost at the limit")
            f.clock.advance(0.1)
            f.link.tick(False)
            self.assertEqual(f.state(), "lost", f"period {period}: not lost after the limit")

    def test_controller_timeout_overrides_the_silence_limit(self):
        f = Fixture(controller_timeout=2.0).reach("connected")
        f.clock.advance(2.5)
        f.link.tick(False)
        self.assertEqual(f.state(), "lost")

    def test_contact_keeps_the_link(self):
        f = Fixture().reach("connected")
        for _ in range(10):
            f.clock.advance(4.0)
            f.link.contact()
            f.link.tick(True)
        self.assertEqual(f.state(), "connected")
        f.clock.advance(5.5)
        f.link.tick(True)
        self.assertEqual(f.state(), "lost")

    def test_silence_closes_without_bye_drops_the_queue_and_searches_anew(self):
        f = Fixture(reconnect_timeout=3.0).reach("connected")
        f.clock.advance(100)  # long after the start: the search counts from the loss
        f.link.tick(False)
        self.assertEqual(f.said[-1], "no word from the controller for 100.0 s; re-registering")
        self.assertEqual((f.channels.closed, f.effects), ([None], ["drop queued"]))
        self.assertIsNone(f.link.channels())
        f.clock.advance(2)
        f.link.attempt_failed(None)
        self.assertEqual(f.state(), "lost")
        f.clock.advance(2)
        f.link.attempt_failed(None)
        self.assertEqual(f.state(), "gave_up")
        self.assertEqual(f.effects[-1], ("give up", "no controller accepted this engine for 4 s"))

    def test_forgotten(self):
        f = Fixture().reach("connected")
        f.link.forgotten("engine e0 is not registered")
        self.assertEqual(f.said[-1], "the controller does not know this engine (engine e0 is not registered); re-registering")
        self.assertEqual((f.state(), f.channels.closed, f.effects), ("lost", [None], ["drop queued"]))

    def test_a_complaint_is_printed_again_in_a_new_search(self):
        f = Fixture().reach("registering")
        f.link.attempt_failed("no connection file")
        f.link.registered(f.channels)
        f.link.forgotten("gone")
        f.link.attempt_failed("no connection file")
        self.assertEqual(sum("no connection file" in line for line in f.said), 2)

    def test_registers_again_after_a_loss(self):
        f = Fixture().reach("lost")
        again = FakeChannels(controller="10.0.0.2")
        f.link.registered(again)
        self.assertIs(f.link.channels(), again)
        f.link.stop("SIGTERM")
        self.assertEqual((f.channels.closed, again.closed), ([None], ["SIGTERM"]))

    def test_stop_says_bye(self):
        f = Fixture().reach("connected")
        f.link.stop("SIGTERM")
        self.assertEqual((f.state(), f.channels.closed), ("stopped", ["SIGTERM"]))
        with self.assertRaises(NoTransition):
            f.link.channels()


class Exiting(SynchronousTestCase):
    def test_running_task_is_interrupted_once_after_the_timeout(self):
        f = Fixture().reach("connected")
        f.link.exit_requested(3.0, True)
        f.clock.advance(3.0)
        f.link.contact()
        f.link.tick(True)
        self.assertEqual(f.effects, [])
        f.clock.advance(0.5)
        f.link.tick(True)
        f.clock.advance(1)
        f.link.tick(True)
        self.assertEqual(f.effects, ["interrupt"])
        self.assertEqual(f.said[-1], "exit timeout passed with a task still running; interrupting it")
        self.assertEqual(f.state(), "exiting")

    def test_a_task_that_ended_is_not_interrupted(self):
        f = Fixture().reach("connected")
        f.link.exit_requested(1.0, True)
        f.clock.advance(2)
        f.link.tick(False)
        self.assertEqual(f.effects, [])

    def test_no_deadline_when_no_task_ran_at_the_command(self):
        f = Fixture().reach("connected")
        f.link.exit_requested(1.0, False)
        f.clock.advance(2)
        f.link.contact()
        f.link.tick(True)
        self.assertEqual(f.effects, [])

    def test_a_second_exit_sets_a_new_deadline(self):
        f = Fixture().reach("connected")
        f.link.exit_requested(1.0, False)
        f.link.exit_requested(2.0, True)
        f.clock.advance(2.5)
        f.link.tick(True)
        self.assertEqual(f.effects, ["interrupt"])
        f.link.exit_requested(10.0, True)
        f.clock.advance(4.0)
        f.link.contact()
        f.link.tick(True)
        self.assertEqual(f.effects, ["interrupt"])
        f.clock.advance(7.0)
        f.link.contact()
        f.link.tick(True)
        self.assertEqual(f.effects, ["interrupt", "interrupt"])

    def test_silence_while_exiting_loses_the_link(self):
        f = Fixture().reach("exiting")
        f.clock.advance(6)
        f.link.tick(False)
        self.assertEqual((f.state(), f.channels.closed, f.effects), ("lost", [None], ["drop queued"]))

    def test_stop_says_bye(self):
        f = Fixture().reach("exiting")
        self.assertIs(f.link.channels(), f.channels)
        f.link.stop("exit command")
        self.assertEqual((f.state(), f.channels.closed), ("stopped", ["exit command"]))


class BrokenStderr(SynchronousTestCase):
    """Issue 8: with the controller that started the engine dead, stderr is a broken pipe."""

    def test_a_whole_life_with_a_broken_stderr(self):
        class BrokenPipe(io.StringIO):
            def write(self, text):
                raise BrokenPipeError(32, "Broken pipe")

        self.patch(sys, "__stderr__", BrokenPipe())
        f = Fixture(reconnect_timeout=1.0, say=say)
        f.link.start()
        f.link.attempt_failed("no connection file")
        f.link.registered(f.channels)
        f.link.forgotten("not registered")
        f.clock.advance(2)
        f.link.attempt_failed(None)
        self.assertEqual(f.state(), "gave_up")
        self.assertEqual(f.effects[0], "drop queued")



class ProductionClock(SynchronousTestCase):
    def test_monotonic_clock(self):
        clock = link_module.MonotonicClock()
        first = clock.seconds()
        self.assertLessEqual(first, clock.seconds())
        self.assertLess(abs(first - time.monotonic()), 1.0)
