"""Issue 11, item 3: ``%load_ext ipcluster`` in a real IPython ``InteractiveShell``, on a real cluster."""
from __future__ import annotations

from twisted.internet import defer

from tests.test_executor import ClusterCase

try:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
except ImportError:  # pragma: no cover - ipython is in the test extras
    InteractiveShell = None


class PxMagicsInAShell(ClusterCase):
    if InteractiveShell is None:
        skip = "IPython is not installed (pip install -e '.[test]')"

    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: self.blocking(self._shell))
        return d

    def _shell(self):
        self.shell = InteractiveShell.instance()
        self.addCleanup(self._reset_shell)
        self.cell("%load_ext ipcluster")
        self.cell(f"%pxconfig --connection-file {self.conn}")

    def _reset_shell(self):
        def reset():
            self.cell("%unload_ext ipcluster")
            magics = self.shell.magics_manager.registry.get("PxMagics")
            if magics is not None and magics.client is not None:
                magics.client.close()
            InteractiveShell.clear_instance()

        return self.blocking(reset)

    def cell(self, cell: str) -> str:
        """Run ``cell`` in the shell (on this thread); what it printed. Fails on an error."""
        with capture_output() as captured:
            result = self.shell.run_cell(cell)
        if result.error_in_exec is not None or result.error_before_exec is not None:
            raise AssertionError(f"{cell!r} failed: {result.error_in_exec or result.error_before_exec}\n{captured.stdout}")
        return captured.stdout

    @defer.inlineCallbacks
    def test_px_line_and_cell_label_each_engines_output_and_value(self):
        out = yield self.blocking(self.cell, "%px import os; me = os.getpid(); print('hello'); 6 * 7")
        lines = out.splitlines()
        self.assertEqual(sorted(line for line in lines if line.startswith("[stdout")), ["[stdout:e0] hello", "[stdout:e1] hello"])
        self.assertIn("Out[e0]: 42", lines)
        self.assertIn("Out[e1]: 42", lines)
        out = yield self.blocking(self.cell, "%%px --targets e1\nimport sys\nprint('to err', file=sys.stderr)\nprint(me > 0)\n")
        self.assertEqual(out.splitlines(), ["[stdout:e1] True", "[stderr:e1] to err"])
        self.assertNotIn("e0", out)

    @defer.inlineCallbacks
    def test_px_shows_output_as_it_comes(self):
        cell = "%%px --targets e0\nimport time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.3)\n"

        def run_and_watch():
            import sys
            import threading

            seen_early = []
            with capture_output() as captured:
                done = threading.Event()

                def watch():
                    # The first tick shows while the cell still runs (it takes 0.9 s).
                    while not done.is_set():
                        if "[stdout:e0] tick 0" in sys.stdout.getvalue():
                            seen_early.append(not done.is_set())
                            return
                        done.wait(0.02)

                watcher = threading.Thread(target=watch)
                watcher.start()
                self.shell.run_cell(cell)
                done.set()
                watcher.join()
            return captured.stdout, seen_early

        out, seen_early = yield self.blocking(run_and_watch)
        self.assertEqual(seen_early, [True], out)
        self.assertEqual(out.splitlines(), ["[stdout:e0] tick 0", "[stdout:e0] tick 1", "[stdout:e0] tick 2"])

    @defer.inlineCallbacks
    def test_errors_noblock_pxresult_and_autopx(self):
        out = yield self.blocking(self.cell, "%px --targets e0 undefined_name + 1")
        self.assertIn("[error:e0] NameError: name 'undefined_name' is not defined", out)
        self.assertIn("undefined_name + 1", out, "the remote traceback shows the line")
        out = yield self.blocking(self.cell, "%px --noblock --targets e1 print('later'); 'v'")
        self.assertEqual(out, "")
        out = yield self.blocking(self.cell, "%pxresult")
        self.assertEqual(out.splitlines(), ["[stdout:e1] later", "Out[e1]: 'v'"])
        out = yield self.blocking(self.cell, "%autopx")
        self.assertIn("enabled", out)
        out = yield self.blocking(self.cell, "on_engine = 5\nprint(on_engine * 2)")
        self.assertEqual(sorted(out.splitlines()), ["[stdout:e0] 10", "[stdout:e1] 10"])
        self.assertNotIn("on_engine", self.shell.user_ns, "the cell ran on the engines, not here")
        out = yield self.blocking(self.cell, "%autopx")
        self.assertIn("disabled", out)
        yield self.blocking(self.cell, "here = 1")
        self.assertEqual(self.shell.user_ns["here"], 1)
