"""Engine pieces that need no sockets: describing a task's failure, the local queue."""
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.engine.runner import describe as _describe
from ipcluster.engine.taskqueue import QueuedTask, TaskQueue


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")


class Describe(SynchronousTestCase):
    def test_plain_exception(self):
        try:
            raise ValueError("bad value")
        except ValueError as e:
            described = _describe(e)
        self.assertEqual((described["type"], described["message"]), ("ValueError", "bad value"))
        self.assertIn("raise ValueError", described["traceback"])

    def test_exception_whose_str_raises(self):
        """Used to escape the engine's task loop and end the engine (and then the next one)."""
        described = _describe(Unprintable())
        self.assertEqual(described["type"], "Unprintable")
        self.assertIn("str() failed", described["message"])


class Queue(SynchronousTestCase):
    def test_fifo_remove_clear_close(self):
        q = TaskQueue()
        for name in "abc":
            q.put(QueuedTask(name, b""))
        self.assertTrue(q.remove("b"))
        self.assertFalse(q.remove("b"))
        self.assertEqual(q.get().id, "a")
        self.assertEqual([t.id for t in q.close()], ["c"])
        self.assertIsNone(q.get())
        self.assertFalse(q.put(QueuedTask("d", b"")))
