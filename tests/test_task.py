"""A task's lifecycle machine, input by input, on task.Clock.

Every input is tried in every state: the ones the machine accepts move the
task where the table says, every other one raises NoTransition and leaves the
task exactly as it was.  The timeout timer belongs to the running state:
armed on entry, fired at the deadline, cancelled on every way out.
"""
import gc
import inspect
import weakref

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.scheduler.task import (
    ASSIGNED, DONE, READY, RELEASING, RUNNING, WAITING, NoTransition, Task, TaskInputs,
)

PHASES = (WAITING, READY, ASSIGNED, RELEASING, RUNNING, DONE)

#: Each input and the arguments it is given here.
INPUTS = {
    "dependencies_met": (),
    "assign": ("e2",),
    "start": (10.0,),
    "release": (),
    "released": (),
    "kept": (),
    "retry": (),
    "put_back": (),
    "result": (),
    "cancel": (),
    "dependency_failed": (),
    "stranded": (),
    "engine_lost": (),
    "time_out": (),
    "abandon": (),
}

#: (phase, input) -> the phase it leads to; every pair not here raises NoTransition.
TRANSITIONS = {
    (WAITING, "dependencies_met"): READY,
    (WAITING, "cancel"): DONE,
    (WAITING, "dependency_failed"): DONE,
    (WAITING, "stranded"): DONE,
    (WAITING, "abandon"): DONE,
    (READY, "assign"): ASSIGNED,
    (READY, "cancel"): DONE,
    (READY, "stranded"): DONE,
    (READY, "abandon"): DONE,
    (ASSIGNED, "start"): RUNNING,
    (ASSIGNED, "release"): RELEASING,
    (ASSIGNED, "retry"): READY,
    (ASSIGNED, "put_back"): READY,
    (ASSIGNED, "result"): DONE,
    (ASSIGNED, "engine_lost"): DONE,
    (ASSIGNED, "abandon"): DONE,
    (RELEASING, "start"): RUNNING,
    (RELEASING, "released"): READY,
    (RELEASING, "kept"): ASSIGNED,
    (RELEASING, "retry"): READY,
    (RELEASING, "put_back"): READY,
    (RELEASING, "result"): DONE,
    (RELEASING, "cancel"): DONE,
    (RELEASING, "engine_lost"): DONE,
    (RELEASING, "abandon"): DONE,
    (RUNNING, "retry"): READY,
    (RUNNING, "result"): DONE,
    (RUNNING, "engine_lost"): DONE,
    (RUNNING, "time_out"): DONE,
    (RUNNING, "abandon"): DONE,
}

#: How a fresh task is brought to each phase.
PATHS = {
    WAITING: (),
    READY: (("dependencies_met",),),
    ASSIGNED: (("dependencies_met",), ("assign", "e1")),
    RELEASING: (("dependencies_met",), ("assign", "e1"), ("release",)),
    RUNNING: (("dependencies_met",), ("assign", "e1"), ("start", 0.0)),
    DONE: (("cancel",),),
}


def fields(task):
    """What an input may change, to tell that a refused one changed nothing."""
    return (task.phase, task.state, task.releasing, task.engine, task.attempts, task.started_at, task.retries)


class TaskLifecycleTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.timed_out = []

    def task(self, phase=WAITING, timeout=5.0, retries=1):
        task = Task("t1", b"p", 0.0, retries=retries, timeout=timeout, clock=self.clock, on_timeout=self.timed_out.append)
        for name, *args in PATHS[phase]:
            getattr(task.lifecycle, name)(*args)
        self.assertEqual(task.phase, phase)
        return task

    def test_inputs_are_the_protocol(self):
        declared = {name for name, _ in inspect.getmembers(TaskInputs, inspect.isfunction) if not name.startswith("_")}
        self.assertEqual(declared, set(INPUTS))

    def test_every_input_in_every_state(self):
        observed = {}
        for phase in PHASES:
            for name, args in INPUTS.items():
                task = self.task(phase)
                before = fields(task)
                try:
                    getattr(task.lifecycle, name)(*args)
                except NoTransition:
                    self.assertEqual(fields(task), before, f"{name} refused in {phase} but changed the task")
                    continue
                observed[phase, name] = task.phase
        self.assertEqual(observed, TRANSITIONS)

    def test_done_takes_no_input(self):
        task = self.task(DONE)
        for name, args in INPUTS.items():
            self.assertRaises(NoTransition, getattr(task.lifecycle, name), *args)
        self.assertEqual(task.state, DONE)

    def test_public_state_hides_releasing(self):
        task = self.task(ASSIGNED)
        self.assertEqual((task.state, task.releasing), (ASSIGNED, False))
        task.lifecycle.release()
        self.assertEqual((task.phase, task.state, task.releasing), (RELEASING, ASSIGNED, True))
        task.lifecycle.kept()
        self.assertEqual((task.phase, task.state, task.releasing), (ASSIGNED, ASSIGNED, False))

    # -- what each transition writes ---------------------------------------------------

    def test_assign_counts_attempts(self):
        task = self.task(READY)
        task.lifecycle.assign("e1")
        self.assertEqual((task.engine, task.attempts), ("e1", 1))
        task.lifecycle.retry()
        task.lifecycle.assign("e2")
        self.assertEqual((task.engine, task.attempts), ("e2", 2))

    def test_start_records_when(self):
        task = self.task(ASSIGNED)
        task.lifecycle.start(3.5)
        self.assertEqual((task.state, task.started_at, task.engine), (RUNNING, 3.5, "e1"))

    def test_started_while_releasing(self):
        task = self.task(RELEASING)
        task.lifecycle.start(1.0)
        self.assertEqual((task.state, task.releasing, task.started_at), (RUNNING, False, 1.0))
        self.assertRaises(NoTransition, task.lifecycle.released)
        self.assertRaises(NoTransition, task.lifecycle.kept)

    def test_released_forgets_the_engine(self):
        task = self.task(RELEASING)
        task.lifecycle.released()
        self.assertEqual((task.state, task.engine, task.attempts), (READY, None, 1))

    def test_kept_keeps_the_engine(self):
        task = self.task(RELEASING)
        task.lifecycle.kept()
        self.assertEqual((task.state, task.engine), (ASSIGNED, "e1"))

    def test_cancel_after_release_keeps_the_engine(self):
        task = self.task(RELEASING)
        task.lifecycle.cancel()
        self.assertEqual((task.state, task.engine), (DONE, "e1"))

    def test_retry_costs_a_retry_and_forgets_the_run(self):
        for phase in (ASSIGNED, RELEASING, RUNNING):
            task = self.task(phase, retries=2)
            task.lifecycle.retry()
            self.assertEqual((task.state, task.engine, task.started_at, task.retries), (READY, None, None, 1), phase)

    def test_put_back_keeps_its_retries(self):
        for phase in (ASSIGNED, RELEASING):
            task = self.task(phase, retries=2)
            task.lifecycle.put_back()
            self.assertEqual((task.state, task.engine, task.started_at, task.retries), (READY, None, None, 2), phase)
        self.assertRaises(NoTransition, self.task(RUNNING).lifecycle.put_back)

    def test_engine_lost_keeps_the_engine(self):
        task = self.task(RUNNING)
        task.lifecycle.engine_lost()
        self.assertEqual((task.state, task.engine, task.retries), (DONE, "e1", 1))

    # -- the timeout timer: the running state's -------------------------------------------

    def test_timer_fires_at_the_deadline(self):
        task = self.task(ASSIGNED)
        self.clock.advance(100)
        self.assertEqual(self.clock.getDelayedCalls(), [], "an assigned task does not time out")
        task.lifecycle.start(self.clock.seconds())
        self.clock.advance(4.9)
        self.assertEqual(self.timed_out, [])
        self.clock.advance(0.1)
        self.assertEqual(self.timed_out, [task])
        self.assertEqual(task.state, RUNNING, "the timer reports; the time_out input decides")
        task.lifecycle.time_out()
        self.assertEqual(task.state, DONE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timer_counts_from_the_reported_start(self):
        task = self.task(ASSIGNED)
        self.clock.advance(10)
        task.lifecycle.start(7.0)  # the engine says it has run for 3 s
        self.clock.advance(1.9)
        self.assertEqual(self.timed_out, [])
        self.clock.advance(0.1)
        self.assertEqual(self.timed_out, [task])

    def test_started_past_its_deadline_times_out_at_once(self):
        task = self.task(ASSIGNED)
        self.clock.advance(10)
        task.lifecycle.start(0.0)
        self.clock.advance(0)
        self.assertEqual(self.timed_out, [task])

    def test_every_way_out_of_running_cancels_the_timer(self):
        for name in ("retry", "result", "engine_lost", "time_out", "abandon"):
            task = self.task(RUNNING)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            getattr(task.lifecycle, name)()
            self.assertEqual(self.clock.getDelayedCalls(), [], name)
            self.clock.advance(10)
            self.assertEqual(self.timed_out, [], name)

    def test_rerun_gets_a_fresh_deadline(self):
        task = self.task(RUNNING)
        self.clock.advance(3)
        task.lifecycle.retry()
        task.lifecycle.assign("e2")
        self.clock.advance(1)
        task.lifecycle.start(self.clock.seconds())
        self.clock.advance(4.9)
        self.assertEqual(self.timed_out, [], "the first run's deadline was cancelled")
        self.clock.advance(0.1)
        self.assertEqual(self.timed_out, [task])

    def test_no_timeout_no_timer(self):
        task = self.task(ASSIGNED, timeout=None)
        task.lifecycle.start(0.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        task.lifecycle.result()
        self.assertEqual(task.state, DONE)

    def test_timeout_needs_a_clock(self):
        self.assertRaises(ValueError, Task, "t1", b"p", 0.0, timeout=1.0)
        Task("t2", b"p", 0.0)  # no timeout: no clock needed

    def test_timer_without_a_handler_is_an_error(self):
        task = Task("t1", b"p", 0.0, timeout=1.0, clock=self.clock)
        for name, *args in PATHS[RUNNING]:
            getattr(task.lifecycle, name)(*args)
        self.assertRaises(RuntimeError, self.clock.advance, 1)

    def test_a_finished_task_leaves_memory_at_once(self):
        """No reference cycle between a task and its machine: no wait for the garbage collector."""
        gc.disable()
        self.addCleanup(gc.enable)
        for phase in PHASES:
            task = self.task(phase)
            if phase == RUNNING:
                task.lifecycle.result()
            gone = weakref.ref(task)
            del task
            self.assertIsNone(gone(), phase)
