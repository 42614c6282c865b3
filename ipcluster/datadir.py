"""A cluster's data directory: the one check that it can be used.

Both the controller (before it writes its connection file and task store) and
``ipcluster start``/``run`` (before they start anything) call
:func:`ensure_usable`, so both refuse the same directories for the same reasons.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


class UnusableDataDir(OSError):
    """The data directory cannot be created, or files cannot be written in it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"the data directory {path} is unusable: {why}")
        self.path = path
        self.why = why


def ensure_usable(path: Path) -> None:
    """Create ``path`` (mode 0700, parents included) if needed and check that files can be written in it.

    Raises :class:`UnusableDataDir` saying why not.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".ipcluster-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = e.strerror or str(e)
        if isinstance(e, FileExistsError) and not path.is_dir():
            why = "it exists and is not a directory"
        raise UnusableDataDir(path, why) from None
