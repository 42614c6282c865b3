"""Engine views: work with the engines themselves (``client[:]``, ``client["e0", "e1"]``).

A view names some engines; each of its calls runs once on every one of them and
gives the results by engine id::

    dview = client[:]
    dview.push({"a": 3})
    dview.execute("b = a * 2")
    dview.pull("b")                 # {"e0": 6, "e1": 6}
    dview.apply(os.getpid)          # {"e0": 4242, "e1": 4243}
    dview.scatter("part", range(10)); dview.gather("part")   # [0, ..., 9]

Every call is a pinned task per engine (``engine=eid``, ``retries=0``), not a
control command: ``push``, ``execute`` and ``apply`` run user code (unpickling
a pushed value is user code too), which belongs on the engine's main thread,
interruptible by ``signal``; their payloads and results may be large, and the
control socket carries small headers only; and a pinned task keeps the order
of the user's own calls on that engine (a ``push`` then an ``execute`` sees the
name), gets ``stdout``/``stderr``, ``timeout``, cancel, live output and the
task store for free.  So a view call waits behind the task its engine is
running, as ipyparallel's DirectView does; the control verbs (``beat``,
``signal``, ``reset`` ...) stay the way around a busy engine.

``block=True`` (the view's default) waits and returns ``{engine: value}``;
``block=False`` or the ``*_async`` forms return a :class:`ViewResult`, a future
of that dict.  A call that failed on some engine raises :class:`ViewError`
naming each engine's exception.
"""
from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from ipcluster import errors
from ipcluster.engine import viewcalls

LIVE = ("alive", "busy", "registering")


class ViewError(errors.ClusterError):
    """A view call failed on one or more engines: ``errors`` maps each engine to its exception;
    the first one is the ``__cause__``."""

    def __init__(self, what: str, failures: Mapping[str, BaseException]) -> None:
        self.errors = dict(failures)
        lines = [f"  {engine}: {type(e).__name__}: {e}".split("\n", 1)[0] for engine, e in self.errors.items()]
        super().__init__(f"{what} failed on {len(self.errors)} engine(s):\n" + "\n".join(lines))


class ViewResult(concurrent.futures.Future):
    """The future of one view call: its result is ``{engine: value}``, in the view's order.

    ``futures`` holds each engine's :class:`~ipcluster.client.future.TaskFuture`;
    ``stdout``/``stderr`` what each engine printed (once done).
    """

    def __init__(self, what: str, futures: Mapping[str, Any], combine: Callable[[dict], Any] = dict) -> None:
        super().__init__()
        self.what = what
        self.futures = dict(futures)
        self._combine = combine
        self._left = len(self.futures)
        self._lock = threading.Lock()
        self.set_running_or_notify_cancel()
        if not self.futures:
            self.set_result(combine({}))
        for future in self.futures.values():
            future.add_done_callback(self._one_done)

    def __repr__(self) -> str:
        return f"<ViewResult {self.what} on {', '.join(self.futures)} {self._state.lower()}>"

    @property
    def stdout(self) -> dict:
        return {engine: f.stdout for engine, f in self.futures.items()}

    @property
    def stderr(self) -> dict:
        return {engine: f.stderr for engine, f in self.futures.items()}

    def result(self, timeout: Optional[float] = None) -> Any:
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            left = [e for e, f in self.futures.items() if not f.done()]
            raise concurrent.futures.TimeoutError(
                f"{self.what} did not finish within {timeout:g} s on engine(s) {', '.join(left)}"
            ) from None

    def cancel(self) -> bool:
        """Cancel the engines' tasks that have not started; True if none will run."""
        return all([f.cancel() for f in self.futures.values()])

    def _one_done(self, _: Any) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
        failures = {}
        for engine, f in self.futures.items():
            if f.cancelled():
                failures[engine] = errors.TaskCancelled(f"{self.what} was cancelled on engine {engine}")
            elif f.exception() is not None:
                failures[engine] = f.exception()
        if failures:
            error = ViewError(self.what, failures)
            error.__cause__ = next(iter(failures.values()))
            self.set_exception(error)
            return
        try:
            self.set_result(self._combine({engine: f.result() for engine, f in self.futures.items()}))
        except Exception as e:  # gather's joining of the parts
            self.set_exception(e)


class EngineView:
    """Some engines of a client, by id; every call runs on each (see the module's docstring)."""

    def __init__(self, client: Any, targets: Sequence[str], block: bool = True) -> None:
        self.client = client
        #: The engine ids, in order.
        self.targets = list(targets)
        self.block = block

    def __repr__(self) -> str:
        return f"<EngineView {self.targets}>"

    def __len__(self) -> int:
        return len(self.targets)

    def __iter__(self):
        return iter(self.targets)

    # -- calls -----------------------------------------------------------------------

    def apply(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Union[dict, ViewResult]:
        """``fn(*args, **kwargs)`` on every engine: ``{engine: value}``; every keyword is ``fn``'s."""
        return self._run(self._each(fn, args, kwargs, f"apply({_name(fn)})"))

    def apply_async(self, fn: Callable, /, *args: Any, **kwargs: Any) -> ViewResult:
        return self._each(fn, args, kwargs, f"apply({_name(fn)})")

    def execute(self, code: str, block: Optional[bool] = None) -> Union[dict, ViewResult]:
        """Run Python ``code`` in each engine's namespace: ``{engine: value of its last line if an
        expression, else None}``; what it printed is in the ViewResult's ``stdout``."""
        if not isinstance(code, str):
            raise TypeError("execute takes Python source code as a str")
        return self._run(self._each(viewcalls.execute, (code,), {}, "execute"), block)

    def execute_async(self, code: str) -> ViewResult:
        return self.execute(code, block=False)

    def push(self, names: Mapping[str, Any], block: Optional[bool] = None) -> Union[dict, ViewResult]:
        """Bind ``names`` (a mapping of name to value) in every engine's namespace."""
        names = dict(names)
        if not all(isinstance(k, str) and k.isidentifier() for k in names):
            raise ValueError("push takes a mapping whose keys are Python names")
        return self._run(self._each(viewcalls.push, (names,), {}, "push"), block)

    def push_async(self, names: Mapping[str, Any]) -> ViewResult:
        return self.push(names, block=False)

    def pull(self, names: Union[str, Iterable[str]], block: Optional[bool] = None) -> Union[dict, ViewResult]:
        """Each engine's value of ``names`` (a name, or a list of names: a list of values)."""
        names = names if isinstance(names, str) else list(names)
        return self._run(self._each(viewcalls.pull, (names,), {}, "pull"), block)

    def pull_async(self, names: Union[str, Iterable[str]]) -> ViewResult:
        return self.pull(names, block=False)

    def broadcast(self, obj: Any, name: Optional[str] = None, block: Optional[bool] = None) -> Union[dict, ViewResult]:
        """Put ``obj`` (a function, mostly) in every engine's namespace as ``name`` (default its
        ``__name__``), for ``execute`` and later tasks to call."""
        name = name or getattr(obj, "__name__", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError("broadcast needs a name= for an object without a __name__")
        return self.push({name: obj}, block)

    def scatter(self, name: str, seq: Sequence, block: Optional[bool] = None) -> Union[dict, ViewResult]:
        """Split ``seq`` into one contiguous part per engine (sizes differ by one at most) and
        bind each part as ``name`` on its engine; ``gather(name)`` joins them back."""
        parts = split(seq, len(self.targets))
        futures = {
            engine: self.client._submit(viewcalls.push, ({name: part},), {}, _pinned(engine))
            for engine, part in zip(self.targets, parts)
        }
        return self._run(ViewResult("scatter", futures), block)

    def scatter_async(self, name: str, seq: Sequence) -> ViewResult:
        return self.scatter(name, seq, block=False)

    def gather(self, name: str, block: Optional[bool] = None) -> Any:
        """The parts bound as ``name`` on the engines, in the view's order, joined (lists and
        tuples concatenated, numpy arrays by ``numpy.concatenate``; else a list of the parts)."""
        futures = {engine: self.client._submit(viewcalls.pull, (name,), {}, _pinned(engine)) for engine in self.targets}
        return self._run(ViewResult("gather", futures, combine=lambda values: join(list(values.values()))), block)

    def gather_async(self, name: str) -> ViewResult:
        return self.gather(name, block=False)

    # -- plumbing --------------------------------------------------------------------

    def _each(self, fn: Callable, args: tuple, kwargs: dict, what: str) -> ViewResult:
        futures = {engine: self.client._submit(fn, args, kwargs, _pinned(engine)) for engine in self.targets}
        return ViewResult(what, futures)

    def _run(self, result: ViewResult, block: Optional[bool] = None) -> Any:
        return result.result() if (self.block if block is None else block) else result


def _pinned(engine: str) -> dict:
    # retries=0: a pinned task cannot run elsewhere, and a view call is about this engine.
    return {"engine": engine, "retries": 0}


def _name(fn: Any) -> str:
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def split(seq: Sequence, n: int) -> list:
    """``seq`` in ``n`` contiguous slices whose lengths differ by one at most (the first longer)."""
    if n < 1:
        raise ValueError("a view of no engines has nothing to scatter to")
    size, extra = divmod(len(seq), n)
    parts, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        parts.append(seq[start:end])
        start = end
    return parts


def join(parts: list) -> Any:
    """Scattered parts joined back: lists, tuples, ranges, numpy arrays; else the list of parts."""
    if parts and all(isinstance(p, (list, range)) for p in parts):
        return [x for p in parts for x in p]
    if parts and all(isinstance(p, tuple) for p in parts):
        return tuple(x for p in parts for x in p)
    if parts and type(parts[0]).__module__ == "numpy" and hasattr(parts[0], "shape"):
        import numpy

        return numpy.concatenate(parts)
    return parts


class EngineViews:
    """``client.view(...)`` and ``client[...]`` (a mixin of :class:`~ipcluster.client.Client`)."""

    def engines(self) -> list:  # pragma: no cover - provided by the client
        raise NotImplementedError

    def view(self, targets: Union[None, str, Iterable[str]] = None, block: bool = True) -> EngineView:
        """A view of ``targets`` (engine ids; None: every engine alive now, in id order).

        UnknownEngine if an id names no engine the controller knows; EngineDead if
        it names a dead one; NoEngines if there is no engine at all.
        """
        listed = {e["id"]: e for e in self.engines()}
        if targets is None:
            ids = sorted(e for e, info in listed.items() if info["state"] in LIVE)
            if not ids:
                raise errors.NoEngines("no engine is alive: there is nothing to view")
            return EngineView(self, ids, block)
        ids = [targets] if isinstance(targets, str) else [str(t) for t in targets]
        _check_targets(ids, listed)
        return EngineView(self, ids, block)

    def __getitem__(self, key: Any) -> EngineView:
        """``client[:]`` every live engine; ``client["e0"]``, ``client["e0", "e1"]``,
        ``client[["e0", "e1"]]`` those; ``client[0]``, ``client[1:3]`` by position among the live ones."""
        if isinstance(key, (str, list, tuple)):
            return self.view(key)
        everyone = self.view()
        if isinstance(key, slice):
            return EngineView(self, everyone.targets[key], everyone.block)
        if isinstance(key, int):
            return EngineView(self, [everyone.targets[key]], everyone.block)
        raise TypeError(f"engines are picked by id, list of ids, index or slice, not {key!r}")


def _check_targets(ids: list, listed: dict) -> None:
    """UnknownEngine / EngineDead unless every id names a live engine of ``listed``."""
    unknown = [e for e in ids if e not in listed]
    if unknown:
        known = ", ".join(sorted(listed)) or "none"
        raise errors.UnknownEngine(f"no engine {', '.join(map(repr, unknown))} (known: {known})")
    dead = [e for e in ids if listed[e]["state"] not in LIVE]
    if dead:
        raise errors.EngineDead(", ".join(f"engine {e} is {listed[e]['state']}" for e in dead))
