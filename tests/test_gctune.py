"""ipcluster/gctune.py: the controller's collector settings."""
import gc

from twisted.trial.unittest import SynchronousTestCase

from ipcluster import gctune


class TuneTests(SynchronousTestCase):
    def setUp(self):
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)

    def test_freezes_what_exists_and_spaces_collections(self):
        kept = [[] for _ in range(10)]
        gctune.tune()
        self.assertEqual(gc.get_threshold(), (gctune.YOUNG, gctune.OLDER, gctune.OLDER))
        self.assertGreaterEqual(gc.get_freeze_count(), len(kept))
