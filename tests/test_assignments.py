"""scheduler/queues.py Assignments: what engines hold, and where a thief may look."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.controller.registry import Registry
from ipcluster.scheduler.queues import Assignments
from ipcluster.scheduler.task import Task


class StealLookupTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.assignments = Assignments(Registry(), capacity=2)
        for i in range(100):
            self.assignments.engine_up(f"e{i}")
        self.asked = []

    def answers(self, engine_id):
        self.asked.append(engine_id)
        return True

    def task(self, task_id):
        return Task(task_id, b"p", 0.0, clock=self.clock)

    def test_no_engine_holding_a_spare_task_means_no_walk(self):
        for i in range(100):
            self.assignments.add(f"e{i}", self.task(f"t{i}"))  # one each: the running one
        self.assertIsNone(self.assignments.to_steal("e0", self.answers))
        self.assertEqual(self.asked, [], "no engine was even asked")

    def test_only_engines_holding_two_are_candidates_and_they_stop_being_so(self):
        self.assignments.add("e7", self.task("a"))
        self.assignments.add("e7", self.task("b"))
        self.assignments.to_steal("e0", self.answers)
        self.assertEqual(self.asked, ["e7"])
        self.assignments.remove("e7", "a")
        self.asked.clear()
        self.assertIsNone(self.assignments.to_steal("e0", self.answers))
        self.assertEqual(self.asked, [])
        self.assignments.add("e7", self.task("c"))
        self.assignments.engine_gone("e7")
        self.assertIsNone(self.assignments.to_steal("e0", self.answers))
        self.assertEqual(self.asked, [])
