"""The package layout's rule: the sides every process shares never import the controller's."""
from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial import unittest

import ipcluster

ROOT = Path(ipcluster.__file__).parent
#: Packages that run outside the controller (or in every process) and what they must not import.
FORBIDDEN = {
    "client": ("ipcluster.controller", "ipcluster.scheduler", "ipcluster.store", "ipcluster.web", "ipcluster.manhole"),
    "engine": ("ipcluster.controller", "ipcluster.scheduler", "ipcluster.store", "ipcluster.client", "ipcluster.web",
               "ipcluster.manhole"),
    "transport": ("ipcluster.controller", "ipcluster.scheduler", "ipcluster.client", "ipcluster.engine"),
    "launchers": ("ipcluster.controller", "ipcluster.scheduler", "ipcluster.client"),
}


def imports(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


class ImportGraph(unittest.SynchronousTestCase):
    def test_no_arrow_back_into_the_controller(self):
        found = []
        for package, forbidden in FORBIDDEN.items():
            for path in sorted((ROOT / package).rglob("*.py")):
                for name in sorted(imports(path)):
                    if name.startswith(forbidden):
                        found.append(f"{path.relative_to(ROOT.parent)} imports {name}")
        self.assertEqual(found, [])

    def test_the_check_sees_imports(self):
        """The checker itself: it finds both import forms (or the test above could never fail)."""
        here = imports(Path(__file__))
        self.assertIn("ipcluster", here)
        self.assertIn("twisted.trial.unittest", here)
        self.assertIn("ast", here)
