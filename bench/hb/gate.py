"""``python -m ipcluster.engine ARGS``, held at a gate: ``python bench/hb/gate.py MARKER ARGS``.

Imports the engine's modules first (so that the go releases registrations, not imports),
creates the file MARKER, waits for a line on stdin, then runs ``ipcluster.engine`` as
``python -m`` would, with ARGS as its command line.
"""
import runpy
import sys

import ipcluster.engine.engine  # noqa: F401  (the imports an engine pays before registering)
import ipcluster.engine.main  # noqa: F401

if __name__ == "__main__":
    marker, args = sys.argv[1], sys.argv[2:]
    open(marker, "w").close()
    if sys.stdin.readline():
        sys.argv = ["ipcluster.engine", *args]
        runpy.run_module("ipcluster.engine", run_name="__main__", alter_sys=True)
