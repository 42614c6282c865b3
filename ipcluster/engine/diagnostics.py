"""The engine's diagnostic lines, on the process's real stderr."""
from __future__ import annotations

import sys


def say(text: str) -> None:
    """Print ``ipcluster-engine: text`` on ``sys.__stderr__``; never raises.

    ``sys.__stderr__``, not ``sys.stderr``: a running task's stderr is redirected into its
    captured output.  When the controller that started this engine dies, that stream is a
    broken pipe (or closed); a diagnostic that raised there would take the control thread
    down with it and the engine would never re-register, so a line that cannot be written
    is dropped: there is nowhere left to report it.
    """
    stream = sys.__stderr__
    if stream is None:  # started without a stderr at all
        return
    try:
        print(f"ipcluster-engine: {text}", file=stream, flush=True)
    except (OSError, ValueError):  # broken pipe, closed file
        pass
