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

    def test_cycles_are_still_freed(self):
        gctune.tune(young=100)
        import weakref

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        for _ in range(1000):  # allocations enough for a young collection
            [[]]
        gc.collect(0)
        self.assertIsNone(gone())
