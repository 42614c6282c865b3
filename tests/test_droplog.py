"""DropLog: a flood of bad messages costs a few log lines, not one per message."""
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.controller.droplog import DropLog


class DropLogTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.drops = DropLog(self.clock, burst=3, window=10.0)
        self.logged = []
        self.drops.log = Logger(observer=self.logged.append)

    def lines(self):
        return [formatEvent(event) for event in self.logged]

    def test_burst_then_one_summary(self):
        for i in range(3):
            self.drops.drop("client", "bad signature", b"peer%d" % i, "detail")
        self.assertEqual(len(self.logged), 3)
        self.assertIn("bad signature", self.lines()[0])
        self.assertIn("peer0", self.lines()[0])
        self.assertIn("(detail)", self.lines()[0])

        for i in range(500):
            self.drops.drop("client", "bad signature", b"flood")
        for i in range(7):
            self.drops.drop("task", "unexpected type", b"flood")
        self.assertEqual(len(self.logged), 3, "suppressed until the window closes")

        self.clock.advance(9.9)
        self.assertEqual(len(self.logged), 3)
        self.clock.advance(0.1)
        self.assertEqual(len(self.logged), 4, "one summary line")
        summary = self.logged[-1]
        self.assertEqual(summary["count"], 507)
        self.assertEqual(
            formatEvent(summary),
            "dropped 507 more bad messages in the last 10 s: "
            "500 on client (bad signature), 7 on task (unexpected type)",
        )

        self.assertEqual(self.drops.total, 510)
        self.assertEqual(self.drops.totals[("client", "bad signature")], 503)
        self.assertEqual(self.drops.totals[("task", "unexpected type")], 7)

        self.clock.advance(100)
        self.assertEqual(len(self.logged), 4, "nothing more to say")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_next_window_logs_again(self):
        for i in range(5):
            self.drops.drop("client", "garbage")
        self.clock.advance(10)
        self.assertEqual(len(self.logged), 4)
        self.clock.advance(30)
        for i in range(4):
            self.drops.drop("task", "garbage")
        self.assertEqual(len(self.logged), 7, "a new window starts with a new burst")
        self.clock.advance(10)
        self.assertEqual(len(self.logged), 8)
        self.assertEqual(self.logged[-1]["count"], 1)
        self.assertEqual(self.drops.total, 9)

    def test_no_summary_when_nothing_suppressed(self):
        self.drops.drop("client", "garbage")
        self.drops.drop("client", "garbage")
        self.clock.advance(10)
        self.assertEqual(len(self.logged), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_flushes(self):
        for i in range(6):
            self.drops.drop("client", "garbage")
        self.drops.stop()
        self.assertEqual(len(self.logged), 4)
        self.assertEqual(self.logged[-1]["count"], 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_logs_through_the_global_publisher(self):
        drops = DropLog(self.clock, burst=1, window=1.0)
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        drops.drop("client", "garbage", b"p")
        drops.drop("client", "garbage", b"p")
        self.clock.advance(1.0)
        mine = [formatEvent(e) for e in seen if e.get("log_namespace", "").startswith("ipcluster.controller.droplog")]
        self.assertEqual(len(mine), 2)
        self.assertIn("dropped 1 more bad messages", mine[1])
