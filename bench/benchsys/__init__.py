"""The systems ``bench/compare.py`` compares, one module each, behind ``base.Runner``.

``SYSTEMS`` is the table's column order.  ``PEERS`` run under the peers'
interpreter (their own venv: ipyparallel's ``ipcluster`` console script must
never replace ours); the others under the project's.  Modules are imported
only in the child that runs them (``runner_class``), under its interpreter.
"""
from __future__ import annotations

import importlib

SYSTEMS = ("ipcluster", "ipyparallel", "dask", "processpool", "ray")
PEERS = ("ipyparallel", "dask", "ray")
LABELS = {
    "ipcluster": "ipcluster", "ipyparallel": "ipyparallel", "dask": "dask",
    "processpool": "ProcessPool(2)", "ray": "ray",
}
SHORT = {"ipcluster": "ipc", "ipyparallel": "ipp", "dask": "dask", "processpool": "pool", "ray": "ray"}
ALIASES = {"ipp": "ipyparallel", "ipc": "ipcluster", "distributed": "dask", "pool": "processpool",
           "ppe": "processpool", "processpoolexecutor": "processpool"}
_CLASSES = {
    "ipcluster": "IpclusterRunner", "ipyparallel": "IpyparallelRunner", "dask": "DaskRunner",
    "processpool": "ProcessPoolRunner", "ray": "RayRunner",
}


def runner_class(system: str):
    """The Runner subclass for ``system`` (imports only its module)."""
    module = importlib.import_module(f"benchsys.{system}")
    return getattr(module, _CLASSES[system])
