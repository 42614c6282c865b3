"""What an engine imports to start: no Twisted, and no cloudpickle before its first task.

A real engine process (``python -m ipcluster.engine`` under ``PYTHONPROFILEIMPORTTIME``, so
that every module it imports is listed on its stderr) registers with an in-process
controller and joins; only then is it stopped and its list read.  Nothing here is timed:
start-up speed is measured by ``bench/compare.py``.
"""
import re
import signal

from twisted.internet import defer
from twisted.trial import unittest

from tests.cluster import BOUND, event, spawn, start_controller, within

#: ``import time:  self |  cumulative | <indent>module`` lines of ``-X importtime``.
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.M)


def imported(stderr: str) -> set:
    return set(IMPORT_LINE.findall(stderr))


class EngineImports(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_joined_engine_has_imported_no_twisted_and_no_cloudpickle(self):
        import sys

        controller = yield start_controller(self)
        joined = event(controller.registry, "joined", "lean")
        argv = [sys.executable, "-m", "ipcluster.engine", "--connection-file", str(controller.config.connection_file),
                "--id", "lean"]
        proc = spawn(self, "engine lean", argv, env={"PYTHONPROFILEIMPORTTIME": "1"})
        yield joined
        proc.kill(signal.SIGTERM)
        yield within(proc.ended, BOUND, "the engine to exit").addErrback(lambda f: None)
        modules = imported(proc.err.decode("utf-8", "replace"))
        # The list is real (the parse found the engine's own modules), so its absences mean something.
        self.assertTrue({"zmq", "ipcluster.engine.control", "ipcluster.engine.link"} <= modules, sorted(modules)[:20])
        self.assertEqual(sorted(m for m in modules if m.split(".")[0] == "twisted"), [])
        self.assertEqual(sorted(m for m in modules if m.startswith("ipcluster.controller")), [])
        # cloudpickle comes with the first task (runner.unpack), not at start-up.
        self.assertNotIn("cloudpickle", modules)
        self.assertNotIn("tempfile", modules)  # only a controller writes a connection file

    def test_the_import_list_parser_reads_importtime_lines(self):
        sample = (
            "import time: self [us] | cumulative | imported package\n"
            "import time:       102 |        102 | _signal\n"
            "import time:       397 |      20155 |   zmq.sugar\n"
            "ipcluster-engine: engine e0 registered\n"
        )
        self.assertEqual(imported(sample), {"_signal", "zmq.sugar"})
