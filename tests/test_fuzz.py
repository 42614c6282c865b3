"""A bounded, coverage-guided fuzz run of the wire decoder (``bench/fuzz_wire.py``, atheris)."""
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

SCRIPT = Path(__file__).parent.parent / "bench" / "fuzz_wire.py"
RUNS = 20_000

try:
    import atheris  # noqa: F401
except ImportError:  # pragma: no cover - atheris is in the test extras
    atheris = None


class FuzzTheDecoder(SynchronousTestCase):
    def test_a_bounded_run_finds_nothing(self):
        if atheris is None:
            raise self.skipTest("atheris is not installed")
        corpus = self.mktemp()
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--runs", str(RUNS), "--seconds", "120", "--corpus", corpus],
            capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONHASHSEED="0"),
        )
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        self.assertIn(f"Done {RUNS} runs", done.stderr)
        self.assertGreater(len(os.listdir(corpus)), 40, "the seeds (real messages of every type) were used")
