"""transport/soon.py: end-of-turn jobs in one pass, on task.Clock."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.transport import soon as soon_module
from ipcluster.transport.soon import Soon


class SoonTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.soon = Soon(self.clock)
        self.ran = []

    def test_jobs_wait_for_the_end_of_the_turn_and_share_one_call(self):
        self.soon(lambda: self.ran.append(1))
        self.soon(lambda: self.ran.append(2))
        self.assertEqual(self.ran, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.ran, [1, 2])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_job_added_by_a_job_runs_in_the_same_pass(self):
        def commit():
            self.ran.append("commit")
            self.soon(lambda: self.ran.append("flush"))

        self.soon(commit)
        self.soon(lambda: self.ran.append("other"))
        self.clock.advance(0)
        self.assertEqual(self.ran, ["commit", "other", "flush"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failing_job_is_logged_and_the_rest_run(self):
        def bad():
            raise ValueError("job bug")

        self.soon(bad)
        self.soon(lambda: self.ran.append("after"))
        self.clock.advance(0)
        self.assertEqual(self.ran, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_a_pass_is_bounded(self):
        self.patch(soon_module, "MOST_A_PASS", 3)
        passes = []
        run = self.soon._run

        def counted():
            passes.append(len(self.ran))
            run()

        self.soon._run = counted

        def again():
            self.ran.append(len(self.ran))
            if len(self.ran) < 7:
                self.soon(again)

        self.soon(again)
        self.clock.advance(0)  # (task.Clock also runs the calls made meanwhile for time 0)
        self.assertEqual(self.ran, list(range(7)))
        self.assertEqual(passes, [0, 3, 6], "three jobs a pass, then a new callLater(0)")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_forgets_what_did_not_run(self):
        self.soon(lambda: self.ran.append(1))
        self.soon.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(self.ran, [])

    def test_now_runs_the_due_pass_at_once(self):
        self.soon(lambda: self.ran.append(1))
        self.soon.now()
        self.assertEqual(self.ran, [1])
        self.assertEqual(self.clock.getDelayedCalls(), [], "the turn's call is cancelled")
        self.soon.now()
        self.assertEqual(self.ran, [1], "nothing due: nothing runs")

    def test_now_inside_a_pass_leaves_it_to_the_pass(self):
        def job():
            self.ran.append("job")
            self.soon(lambda: self.ran.append("later"))
            self.soon.now()
            self.ran.append("after now")

        self.soon(job)
        self.clock.advance(0)
        self.assertEqual(self.ran, ["job", "after now", "later"])
