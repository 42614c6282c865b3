"""Every Python example in the README and the user's guide runs, against a real cluster (engines e0, e1)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from twisted.internet import defer, utils
from twisted.trial import unittest

from ipcluster.web.service import web_service
from tests.cluster import BOUND, event, start_controller, within

ROOT = Path(__file__).resolve().parent.parent
# The user-facing documents; protocol.md and architecture.md show fragments, not programs.
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "guide.md", ROOT / "docs" / "scheduling.md"]


def python_examples():
    for path in DOCUMENTS:
        for n, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S)):
            yield f"{path.relative_to(ROOT)} example {n + 1}", block


class Examples(unittest.TestCase):
    timeout = 300

    def test_there_are_examples(self):
        names = [name for name, _ in python_examples()]
        self.assertGreaterEqual(len(names), 4, names)

    @defer.inlineCallbacks
    def test_examples_run(self):
        controller = yield start_controller(self, engines=2)
        yield defer.gatherResults(
            [event(controller.registry, "joined", e) for e in ("e0", "e1")]
        )
        web = web_service(controller, "tcp:0:interface=127.0.0.1")  # the guide reads its /events
        web.setServiceParent(controller)
        address = yield within(web.listening(), BOUND, "the status page")
        env = dict(os.environ, IPCLUSTER_DIR=str(controller.config.data_dir.resolve()),
                   IPCLUSTER_STATUS_URL=f"http://127.0.0.1:{address.port}")
        for name, code in python_examples():
            out, err, code_ = yield within(
                utils.getProcessOutputAndValue(sys.executable, ["-c", code], env=env, path=str(ROOT)),
                BOUND * 2,
                name,
            )
            self.assertEqual(code_, 0, f"{name} failed:\n{code}\n--- stdout:\n{out.decode()}\n--- stderr:\n{err.decode()}")
            self.assertNotIn(b"Traceback", err, name)
