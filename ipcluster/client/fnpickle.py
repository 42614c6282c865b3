"""A submitted function's pickle, kept while it is provably what pickling it again would give.

cloudpickle pickles a function of ``__main__`` (a script's, a notebook's) by
value: its code, and the values of the globals it uses, its defaults, its
name... at every submit, about a third of a no-op task's client CPU.  Caching
that pickle by the function alone would ship stale globals, so
:class:`FunctionPickles` keeps one only for a function all of whose pickled
state is immutable, and checks at each use that the state is still the same
objects:

* a plain function of ``__main__`` (always pickled by value), without closure,
  attributes (``__dict__``), annotations or keyword-only defaults;
* its defaults, and each global its code (nested code included) reads or
  writes that exists in its module, are *atoms*: None, bools, numbers, strings,
  bytes, and tuples of atoms -- nothing that can change in place;
* the code, those values, the module attributes cloudpickle takes
  (``__name__``, ``__file__``, ...) and the function's names and docstring are
  the very objects they were when the pickle was made (compared by ``id``; the
  cache holds them, so no id is reused meanwhile).  A global that did not exist
  then must still not exist (a builtin's name, say).

Anything else -- a helper function, a module, a list among the globals -- is
pickled at each submit as before.  A function is cached the second time it is
submitted (a lambda made for one submit is not worth it).  ``transport.buffers``
puts the kept pickle into the task's payload, and pickles the payload afresh
when another function sharing the globals comes along in it.
"""
from __future__ import annotations

import dis
import threading
import types
import weakref
from collections import OrderedDict
from typing import Any, Optional

import cloudpickle

#: Functions whose pickles are kept at most (the least recently submitted let go first).
KEEP = 256
_ATOMS = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
_GLOBAL_OPS = frozenset(dis.opmap[name] for name in ("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL"))
#: The module attributes cloudpickle puts with a function pickled by value.
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")
_MISSING = object()
_names_of: "weakref.WeakKeyDictionary[types.CodeType, tuple]" = weakref.WeakKeyDictionary()


def _atom(value: Any) -> bool:
    if type(value) is tuple:
        return all(map(_atom, value))
    return type(value) in _ATOMS


def global_names(code: types.CodeType) -> tuple:
    """The global names ``code`` and the code nested in it use (cloudpickle's, or more)."""
    names = _names_of.get(code)
    if names is None:
        found = dict.fromkeys(i.argval for i in dis.get_instructions(code) if i.opcode in _GLOBAL_OPS)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(dict.fromkeys(global_names(const)))
        names = _names_of[code] = tuple(found)
    return names


def _state(fn: types.FunctionType) -> Optional[tuple]:
    """Every object pickling ``fn`` by value takes (all atoms, or None: not cacheable)."""
    if fn.__closure__ is not None or fn.__kwdefaults__ or fn.__dict__ or fn.__annotations__:
        return None
    if getattr(fn, "__type_params__", ()):  # (Python 3.12's generic functions)
        return None
    g = fn.__globals__
    values = (
        fn.__defaults__, fn.__doc__, *(g.get(name, _MISSING) for name in global_names(fn.__code__)),
        *(g.get(name, _MISSING) for name in _BASE_GLOBALS),
    )
    if not all(v is _MISSING or _atom(v) for v in values):
        return None
    return (fn.__code__, fn.__name__, fn.__qualname__, fn.__module__, *values)


class FunctionPickles:
    """The pickles of the functions submitted again and again (see the module's docstring)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        # fn -> (the state's objects, their ids, the pickle or None: seen once)
        self._kept: "OrderedDict[Any, tuple]" = OrderedDict()

    def known(self, fn: Any) -> Optional[dict]:
        """``{fn: its pickle}`` for ``transport.buffers.dumps``, or None (pickle it as usual)."""
        if type(fn) is not types.FunctionType or fn.__module__ != "__main__":
            return None
        state = _state(fn)
        if state is None:
            return None
        ids = tuple(map(id, state))
        with self._lock:
            kept = self._kept.get(fn)
            if kept is not None and kept[1] == ids and kept[2] is not None:
                self._kept.move_to_end(fn)
                return {fn: kept[2]}
            seen = kept is not None and kept[1] == ids
        blob = cloudpickle.dumps(fn, protocol=5) if seen else None
        with self._lock:
            self._kept[fn] = (state, ids, blob)
            self._kept.move_to_end(fn)
            while len(self._kept) > self.keep:
                self._kept.popitem(last=False)
        return {fn: blob} if blob is not None else None
