"""The data directory check shared by the controller and ``ipcluster``."""
from __future__ import annotations

import os
from pathlib import Path

from twisted.trial import unittest

from ipcluster.datadir import UnusableDataDir, ensure_usable


class EnsureUsable(unittest.SynchronousTestCase):
    def setUp(self):
        self.base = Path(self.mktemp()).absolute()
        self.base.mkdir(parents=True)

    def test_creates_the_directory_private(self):
        path = self.base / "a" / "b"
        ensure_usable(path)
        self.assertTrue(path.is_dir())
        self.assertEqual(path.stat().st_mode & 0o777, 0o700)
        self.assertEqual(list(path.iterdir()), [], "the probe file was left behind")

    def test_an_existing_directory_is_kept(self):
        (self.base / "keep").write_text("x")
        ensure_usable(self.base)
        self.assertEqual((self.base / "keep").read_text(), "x")

    def test_a_file_is_not_a_directory(self):
        afile = self.base / "file"
        afile.write_text("")
        e = self.assertRaises(UnusableDataDir, ensure_usable, afile)
        self.assertEqual(str(e), f"the data directory {afile} is unusable: it exists and is not a directory")
        self.assertEqual((e.path, e.why), (afile, "it exists and is not a directory"))

    def test_below_a_file(self):
        afile = self.base / "file"
        afile.write_text("")
        e = self.assertRaises(UnusableDataDir, ensure_usable, afile / "sub")
        self.assertIn(f"the data directory {afile / 'sub'} is unusable: ", str(e))
        self.assertIsInstance(e, OSError)  # what the controller's callers catch

    def test_read_only(self):
        if os.geteuid() == 0:
            raise unittest.SkipTest("root writes to read-only directories")
        path = self.base / "ro"
        path.mkdir(mode=0o500)
        self.addCleanup(path.chmod, 0o700)
        e = self.assertRaises(UnusableDataDir, ensure_usable, path)
        self.assertIn("Permission denied", str(e))
