"""What the calls of an engine view run on the engine, against its ``namespace``.

``ipcluster.client.views`` sends these functions as pinned tasks (by reference:
every engine has this module), so they run on the engine's main thread, in
order with the other tasks sent to that engine: a ``push`` followed by an
``execute`` sees the pushed names.  ``ipcluster.engine.namespace`` is the
namespace: ``execute`` uses it as its globals, ``push`` and ``pull`` write and
read it, and the ``reset`` control verb clears it.
"""
from __future__ import annotations

import ast
import linecache
from typing import Any, Mapping


def _namespace() -> dict:
    from ipcluster.engine import namespace

    return namespace


def push(names: Mapping[str, Any]) -> None:
    """Bind every ``name: value`` of ``names`` in the engine's namespace."""
    _namespace().update(names)


def pull(names: Any) -> Any:
    """The value of one name (a str), or a list of values for a list of names; NameError if unbound."""
    namespace = _namespace()
    wanted = [names] if isinstance(names, str) else list(names)
    missing = [name for name in wanted if name not in namespace]
    if missing:
        raise NameError(f"name(s) {', '.join(map(repr, missing))} not defined on this engine")
    values = [namespace[name] for name in wanted]
    return values[0] if isinstance(names, str) else values


def execute(code: str, filename: str = "<px>") -> Any:
    """Run ``code`` in the engine's namespace; the value of its last line if that is an
    expression (as IPython shows ``Out``), else None."""
    namespace = _namespace()
    # Its lines for the traceback of an error in it (the file exists nowhere).
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename, "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, filename, "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), filename, "eval"), namespace)
