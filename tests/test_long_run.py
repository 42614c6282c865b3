"""A long run leaves nothing per task behind (issue 9, memory): the whole
request path in process -- ClientFrontEnd, sessions, Scheduler, MemoryTaskStore,
DropLog -- on task.Clock, many tasks submitted, run and collected, then every
container that holds tasks is counted, and so are the live objects.

Not timed: it counts objects, and a leak of one object a task shows as
thousands.
"""
import gc
from collections import deque

from twisted.internet import defer

from ipcluster.scheduler.inputs import RECENT_ENTRIES
from ipcluster.scheduler.task import Task
from ipcluster.store.memory import MemoryTaskStore

from tests.test_scheduler import FrontEndFixture

TASKS = 50_000  # 50,000: a leak of one object a task shows as 48,000; 200,000 would take ~35 s
BATCH = 200  # submits in flight at once, as a client's map keeps them
KEEP = 1_000  # the store's and the outcome cache's bounds in this test


def live(kind) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is kind)


class LongRunTests(FrontEndFixture):
    """50,000 tasks through the front end; every per-task container is back to its bound."""

    remember = KEEP

    def setUp(self):
        super().setUp()
        self.store = MemoryTaskStore(clock=self.clock, max_tasks=KEEP)
        self.scheduler.store = self.store
        self.to_run = deque()  # task ids sent to e1, not yet answered
        self.delivered = 0

    # Count what flows instead of keeping it (the fixture's lists would be the leak).
    def send_engine(self, frames):
        self.to_run.append(self.codec.decode(frames[1:])["task"])
        return True

    def send_client(self, frames):
        if frames[0] == b"client-1" and self.sessions:
            msg = self.codec.decode(frames[1:])
            if msg.type == "result":
                self.assertIs(msg["ok"], True, msg.get("error"))
                self.delivered += 1
            else:
                self.assertEqual(msg.type, "running")
            return True
        return super().send_client(frames)

    def run_tasks(self, first: int, count: int) -> None:
        session = self.session(b"client-1")
        e1 = self.e1_codec
        for start in range(first, first + count, BATCH):
            for i in range(start, start + BATCH):
                frames = self.codec.encode("submit", {"task": f"t{i}"}, [b"p"], session=session)
                self.frontend.message_received([b"client-1", *frames])
            while self.to_run:
                task = self.to_run.popleft()
                self.scheduler.message_received([b"e1", *e1.encode("started", {"task": task, "instance": "e1-i"})])
                self.scheduler.message_received(
                    [b"e1", *e1.encode("result", {"task": task, "ok": True}, [b"v", b"", b""])]
                )
            self.clock.advance(0.001)

    def test_nothing_per_task_is_kept(self):
        self.run_tasks(0, 2 * KEEP)  # warm up: the bounded caches fill
        tasks_before, deferreds_before = live(Task), live(defer.Deferred)
        self.run_tasks(2 * KEEP, TASKS - 2 * KEEP)
        self.assertEqual(self.delivered, TASKS)
        s = self.scheduler
        self.assertEqual(s.completed, TASKS)
        self.assertEqual(s.tasks, {})
        self.assertEqual(len(s.recent), KEEP)
        # Results kept for futures-as-inputs: bounded in number too, not only in bytes (tiny
        # values stayed far below the byte bound, and every one of them was kept).
        self.assertEqual(len(s.inputs.recent), RECENT_ENTRIES)
        self.assertEqual(s.dependents, {})
        self.assertEqual(s.dispatcher._releases, {})
        self.assertEqual({e: len(h) for e, h in s.assigned.items()}, {"e1": 0})
        self.assertEqual(len(s.ready), 0)
        self.assertEqual(len(self.store.records), KEEP)
        self.assertEqual(len(self.store.finished_ids), KEEP)
        self.assertEqual(dict(self.drops.totals), {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(live(Task), tasks_before)
        self.assertLessEqual(live(defer.Deferred), deferreds_before)
