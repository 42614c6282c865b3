"""IPython magics for the cluster: ``%load_ext ipcluster``.

``%px``, ``%%px``, ``%pxresult``, ``%autopx`` and ``%pxconfig`` (``ipcluster.magics.px``).
IPython is needed only here: importing ``ipcluster`` does not import it.
"""
from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics on ``ipython`` (called by ``%load_ext ipcluster``)."""
    from ipcluster.magics.px import PxMagics

    ipython.register_magics(PxMagics(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """Stop ``%autopx`` if it is on (``%unload_ext ipcluster``)."""
    from ipcluster.magics.px import autopx_off

    autopx_off(ipython)
