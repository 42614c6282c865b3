"""Issue 11, item 4: engines enable faulthandler; a segfaulting task's error carries the dump."""
from __future__ import annotations

from twisted.internet import defer, threads
from twisted.trial import unittest

from ipcluster import Client, errors
from ipcluster.faults import MAX_LINES, FaultTrail, with_fault
from tests.cluster import BOUND, event, start_controller, within


def segfault_by_signal():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def segfault_by_null_read():
    import ctypes

    return ctypes.string_at(0)


class Trail(unittest.TestCase):
    def test_keeps_the_last_dump_bounded(self):
        trail = FaultTrail()
        self.assertEqual(with_fault("process killed by signal 9 (SIGKILL)", trail), "process killed by signal 9 (SIGKILL)")
        for line in ("engine e0 registered", "Fatal Python error: Aborted", "old", "Fatal Python error: Segmentation fault",
                     ""):
            trail.feed(line)
        trail.feed("Thread 0x2 (most recent call first):")
        for i in range(MAX_LINES * 2):
            trail.feed(f'  File "other.py", line {i} in g')
        trail.feed("Current thread 0x1 (most recent call first):")
        trail.feed('  File "task.py", line 7 in the_task')
        dump = trail.dump
        self.assertNotIn("Aborted", dump)
        self.assertEqual(len(dump.splitlines()), MAX_LINES)
        lines = dump.splitlines()
        self.assertEqual(lines[:3], ["Fatal Python error: Segmentation fault", "Current thread 0x1 (most recent call first):",
                                     '  File "task.py", line 7 in the_task'], "the crashed thread first")
        self.assertEqual(lines[3], "Thread 0x2 (most recent call first):")
        self.assertTrue(with_fault("why", trail).startswith("why; "))


class Segfaults(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_a_segfaulting_task_fails_with_the_faulthandler_traceback(self):
        controller = yield start_controller(self, engines=1)
        yield event(controller.registry, "joined", "e0")
        conn = str(controller.config.connection_file)
        client = yield within(threads.deferToThread(Client, conn, BOUND), BOUND * 2, "client")
        self.addCleanup(lambda: threads.deferToThread(client.close))
        for task in (segfault_by_signal, segfault_by_null_read):
            joined = event(controller.registry, "joined", "e0", seconds=BOUND * 2)  # its supervisor restarts it
            f = yield within(threads.deferToThread(client.submit, task, retries=0), BOUND, "submit")
            try:
                e = yield within(threads.deferToThread(f.exception, BOUND * 2), BOUND * 3, task.__name__)
            except Exception as waited:  # say where the engine and the task were
                engines = [r.describe(0) for r in controller.registry]
                raise AssertionError(f"{waited}; engines: {engines}; tasks: {controller.scheduler.counts()}")
            self.assertIsInstance(e, errors.EngineDied)
            text = str(e)
            self.assertIn("signal 11", text)
            self.assertIn("Fatal Python error: Segmentation fault", text)
            self.assertIn(f"in {task.__name__}", text, "the task's own frame")
            yield joined
