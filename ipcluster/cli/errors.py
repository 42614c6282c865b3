"""The one way an ``ipcluster`` command fails on purpose."""
from __future__ import annotations


class CLIError(Exception):
    """Reported as ``ipcluster: error: MESSAGE`` on stderr; the command exits with 1.

    The message says what went wrong and, where there is one, what to do
    about it; it is never a traceback.
    """
