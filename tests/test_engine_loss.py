"""What the scheduler does when engines die (on task.Clock): the task that was running
counts an attempt, the tasks queued behind it do not (the poison pill); and when no
engine is left and none is coming, queued tasks fail with NoEngines after the timeout.
"""
from twisted.trial.unittest import SynchronousTestCase

from ipcluster import errors
from ipcluster.scheduler.rescue import FAIL, PUT_BACK, RETRY, rescues
from ipcluster.scheduler.task import READY, RUNNING, Task
from tests.test_scheduler import Fixture

SEGV = "process killed by signal 11 (SIGSEGV)"


class PoisonPill(Fixture):
    def setUp(self):
        super().setUp()
        self.e0 = self.engine("e0")

    def test_the_oldest_task_held_pays_the_others_go_back_intact(self):
        self.submit("pill")  # default retries: 1
        self.submit("q1")
        self.assertEqual(self.held("e0"), ["pill", "q1"])
        # The pill kills the engine within its first 20 ms: never reported started.
        self.die(self.e0, SEGV)
        self.assertEqual(self.scheduler.retried, 1)
        pill, q1 = self.scheduler.tasks["pill"], self.scheduler.tasks["q1"]
        self.assertEqual((pill.state, pill.retries), (READY, 0))
        self.assertEqual((q1.state, q1.retries), (READY, 1), "queued behind it: no retry lost")
        self.assertEqual(list(self.scheduler.ready)[:2], ["pill", "q1"], "both back at the front, in order")
        e1 = self.engine("e1")
        self.assertEqual(self.held("e1"), ["pill", "q1"])
        self.die(e1, SEGV)
        self.assertEqual(self.error_of("pill", "EngineDied"), f"engine e1 dead while running task pill: {SEGV}")
        self.assertEqual(self.scheduler.tasks["q1"].retries, 1)
        e2 = self.engine("e2")
        self.assertEqual(self.held("e2"), ["q1"])
        self.result("e2", "q1")
        self.assertIs(self.result_of("q1")["ok"], True)
        self.assertEqual((self.scheduler.retried, self.scheduler.failed, self.scheduler.completed), (1, 1, 1))
        self.assertEqual(e2.state, "alive")

    def test_a_started_task_behind_a_timed_out_one_is_the_one_that_ran(self):
        self.submit("slow", timeout=1.0)
        self.submit("next")
        self.started("e0", "slow")
        self.clock.advance(1.0)  # slow times out; its engine is told, but dies before it answers
        self.error_of("slow", "TaskTimeout")
        self.die(self.e0, SEGV)
        self.assertEqual(self.scheduler.retried, 0)
        self.assertEqual(self.scheduler.tasks["next"].retries, 1, "next had not run: slow held the engine")

    def test_any_task_reported_running_counts(self):
        self.submit("a")
        self.submit("b")
        self.result("e0", "a")
        self.submit("c")
        self.started("e0", "b")
        self.assertEqual(self.held("e0"), ["b", "c"])
        self.die(self.e0, SEGV)
        self.assertEqual([self.scheduler.tasks[t].retries for t in ("b", "c")], [0, 1])

    def test_a_queued_task_pinned_to_the_dead_engine_fails_before_running(self):
        self.engine("e1")
        self.submit("run", engines=["e0"])
        self.submit("pinned", engines=["e0"])
        self.assertEqual(self.held("e0"), ["run", "pinned"])
        self.die(self.e0, SEGV)
        self.assertEqual(self.error_of("pinned", "EngineDied"), f"engine e0 dead before running task pinned: {SEGV}")
        self.assertEqual(self.error_of("run", "EngineDied"), f"engine e0 dead while running task run: {SEGV}")

    def test_leaving_engines_are_treated_alike(self):
        self.submit("t1", retries=0)
        self.submit("t2", retries=0)
        self.from_engine("e0", "bye", {"instance": "e0-i", "reason": "exit command"})
        self.assertEqual(self.error_of("t1", "EngineDied"), "engine e0 left while running task t1: exited: exit command")
        self.assertEqual(self.state("t2"), READY)


class RescuePlan(SynchronousTestCase):
    def tasks(self, *states):
        out = []
        for n, state in enumerate(states):
            task = Task(f"t{n}", b"p", 0.0, retries=1)
            task.lifecycle.dependencies_met()
            task.lifecycle.assign("e0")
            if state == RUNNING:
                task.lifecycle.start(0.0)
            out.append(task)
        return out

    def test_newest_first_only_the_head_pays(self):
        held = self.tasks("assigned", "assigned", "assigned")
        plan = rescues(held, "e0", "dead", SEGV, lambda task: True)
        self.assertEqual([(r.task.id, r.action, r.ran) for r in plan],
                         [("t2", PUT_BACK, False), ("t1", PUT_BACK, False), ("t0", RETRY, True)])

    def test_no_retries_left_fails_with_the_reason(self):
        held = self.tasks("running")
        held[0].retries = 0
        (plan,) = rescues(held, "e0", "dead", SEGV, lambda task: True)
        self.assertEqual(plan.action, FAIL)
        self.assertIsInstance(plan.error, errors.EngineDied)
        self.assertEqual(str(plan.error), f"engine e0 dead while running task t0: {SEGV}")

    def test_nowhere_else_to_run_fails_every_one(self):
        plan = rescues(self.tasks("running", "assigned"), "e0", "dead", SEGV, lambda task: False)
        self.assertEqual([(r.action, "while" in str(r.error)) for r in plan], [(FAIL, False), (FAIL, True)])

    def test_nothing_held_nothing_to_do(self):
        self.assertEqual(rescues([], "e0", "dead", SEGV, lambda task: True), [])


class NoEngineTests(Fixture):
    def setUp(self):
        super().setUp()
        self.coming = False
        self.scheduler.watch.coming = lambda: self.coming

    def test_queued_tasks_fail_after_the_timeout_with_no_engine(self):
        self.submit("t1", client=b"c1")
        self.submit("t2", client=b"c2")
        self.clock.advance(59.9)
        self.assertEqual(self.results(), [])
        self.clock.advance(0.1)
        for task, client in (("t1", b"c1"), ("t2", b"c2")):
            message = self.error_of(task, "NoEngines", client=client)
            self.assertIn("no engine is alive and none is coming back", message)
            self.assertIn(f"task {task} waited 60 s", message)
        self.assertEqual(self.scheduler.tasks, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsInstance(errors.from_wire(self.result_of("t1")["error"]), errors.NoEngines)

    def test_the_wait_starts_when_the_last_engine_dies(self):
        e0 = self.engine("e0")
        self.submit("t1")
        self.clock.advance(100)
        self.die(e0, SEGV)  # t1 is retried: ready again, with nowhere to go
        self.assertEqual(self.state("t1"), READY)
        self.clock.advance(59)
        self.assertEqual(self.results(), [])
        self.clock.advance(1)
        self.error_of("t1", "NoEngines")

    def test_each_task_gets_the_whole_timeout(self):
        self.submit("early")
        self.clock.advance(50)
        self.submit("late")
        self.clock.advance(10)
        self.error_of("early", "NoEngines")
        self.assertEqual(self.results("late"), [])
        self.clock.advance(49.9)
        self.assertEqual(self.results("late"), [])
        self.clock.advance(0.1)
        self.error_of("late", "NoEngines")

    def test_an_engine_registering_ends_the_wait(self):
        self.submit("t1")
        self.clock.advance(30)
        e0 = self.engine("e0", alive=False)  # registering counts: it is coming
        self.clock.advance(100)
        self.assertEqual(self.results(), [])
        self.registry.remove(e0, "no pong", self.clock.seconds(), event="purged")
        self.clock.advance(59)
        self.assertEqual(self.results(), [], "the wait starts again from the purge")
        self.clock.advance(1)
        self.error_of("t1", "NoEngines")

    def test_a_joining_engine_takes_the_task_instead(self):
        self.submit("t1")
        self.clock.advance(59)
        self.engine("e0")
        self.assertEqual(self.sent("e0"), ["t1"])
        self.clock.advance(100)
        self.assertEqual(self.results(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_failure_while_a_restart_is_pending(self):
        self.coming = True
        self.submit("t1")
        self.clock.advance(1000)
        self.assertEqual(self.results(), [])
        self.coming = False  # the supervisor gave up, and says so
        self.scheduler.engines_changed()
        self.clock.advance(59.9)
        self.assertEqual(self.results(), [])
        self.clock.advance(0.1)
        self.error_of("t1", "NoEngines")

    def test_dependents_fail_with_it(self):
        self.submit("t1")
        self.submit("t2", after=["t1"])
        self.clock.advance(60)
        self.error_of("t1", "NoEngines")
        self.error_of("t2", "DependencyError")

    def test_restricted_tasks_are_not_the_watchs(self):
        e0 = self.engine("e0", alive=False)
        self.submit("pinned", engines=["e0"])
        self.submit("free")
        self.clock.advance(100)
        self.assertEqual(self.results(), [], "e0 registering: nothing fails")
        self.registry.remove(e0, "no pong", self.clock.seconds(), event="purged")
        self.error_of("pinned", "EngineDied")  # at once, as before
        self.clock.advance(60)
        self.error_of("free", "NoEngines")

    def test_no_timeout_waits_forever(self):
        self.scheduler.watch.timeout = None
        self.submit("t1")
        self.clock.advance(10**6)
        self.assertEqual(self.results(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_the_wait(self):
        self.submit("t1")
        self.scheduler.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
