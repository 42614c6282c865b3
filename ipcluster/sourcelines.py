"""Source lines that travel with a task, so that its remote traceback can show them.

A function defined interactively (an IPython cell, ``exec`` of a string) has a
code file the engine cannot read, and cloudpickle renames the code file of every
function it pickles by value to ``<dynamic-code>``: the remote traceback would
show ``File "<dynamic-code>", line 2`` and no line.  The client has the lines
in its :mod:`linecache`.  :func:`task_extras` (client) sends, with the task, the
original file name of each function it runs and the lines of those files that
are not files on disk; :func:`restore` (engine, before the task runs) puts the
names back on the unpickled code and registers the lines in the engine's
``linecache``, so the traceback it formats shows them.
"""
from __future__ import annotations

import functools
import linecache
import os
import types
from typing import Any, Iterator

#: At most this many characters of source travel with one task (a bound on the payload).
MAX_SOURCE_CHARS = 256 * 1024
#: What cloudpickle names the code file of a function pickled by value.
DYNAMIC = "<dynamic-code>"


def functions_of(fn: Any, depth: int = 0) -> Iterator[types.FunctionType]:
    """The Python functions a task calls first: ``fn``, or what it wraps (partial, ChunkCall,
    a bound method, the user's function inside a view call); the same order on both sides."""
    if depth > 4:
        return
    if isinstance(fn, functools.partial):
        yield from functions_of(fn.func, depth + 1)
    elif isinstance(fn, types.MethodType):
        yield from functions_of(fn.__func__, depth + 1)
    elif isinstance(fn, types.FunctionType):
        yield fn
    else:
        wrapped = getattr(fn, "fn", None)  # ChunkCall and the view calls keep it here
        if wrapped is not None:
            yield from functions_of(wrapped, depth + 1)


@functools.lru_cache(maxsize=1024)
def _is_file(filename: str) -> bool:
    """Whether a code file is a file on disk, asked once per name: a ``stat`` at each submit
    would hand the GIL to the client's I/O thread.  (A file deleted since only loses its
    lines in a remote traceback.)"""
    return os.path.isfile(filename)


def task_extras(fn: Any) -> dict:
    """``{"files": [name per function], "sources": {name: lines}}`` for a task, or ``{}``."""
    files = [f.__code__.co_filename for f in functions_of(fn)]
    sources: dict[str, list[str]] = {}
    size = 0
    for filename in sorted(set(files)):
        if _is_file(filename):
            continue  # the engine reads it itself (the same file, normally)
        lines = linecache.getlines(filename)
        chars = sum(map(len, lines))
        if lines and size + chars <= MAX_SOURCE_CHARS:
            sources[filename] = list(lines)
            size += chars
    return {"files": files, "sources": sources} if sources else {}


def restore(fn: Any, extras: dict) -> None:
    """On the engine: the functions' file names back, their lines into ``linecache``."""
    sources = extras.get("sources")
    files = extras.get("files")
    if not isinstance(sources, dict) or not isinstance(files, list):
        return
    for func, filename in zip(functions_of(fn), files):
        if isinstance(filename, str) and func.__code__.co_filename == DYNAMIC:
            func.__code__ = _refiled(func.__code__, filename)
    for filename, lines in sources.items():
        if not (isinstance(filename, str) and isinstance(lines, list)):
            continue
        entry = linecache.cache.get(filename)
        if entry is None or (len(entry) == 4 and entry[1] is None):  # never over a real file's lines
            # mtime None: linecache.checkcache keeps the entry (no file to check it against).
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


def _refiled(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_refiled(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
