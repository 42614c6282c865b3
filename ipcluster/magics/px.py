"""``%px`` and friends: run code on the cluster's engines from IPython or Jupyter.

* ``%pxconfig [--connection-file F] [--targets all|e0,e1] [--block|--noblock]`` -- which
  cluster and engines ``%px`` uses (default: ``Client()``'s connection file, every live engine,
  blocking).  The client is made on first use.
* ``%px CODE`` and ``%%px`` (a cell) -- run the code in each target engine's namespace (an
  engine view's ``execute``); what each engine prints is shown as it comes, each line
  labelled ``[stdout:e0]`` / ``[stderr:e0]``; the value of the last line, if it is an
  expression, as ``Out[e0]: ...``; an engine's error as ``[error:e0] ...`` with its remote
  traceback.  ``--targets`` and ``--noblock`` work on one call too: ``%%px --targets e1``.
* ``%pxresult`` -- wait for the last ``%px`` (one run with ``--noblock``, say) and show it.
* ``%autopx`` -- from now on every cell runs as ``%%px``, until the next ``%autopx``.
"""
from __future__ import annotations

import re
import time
from typing import Any, Optional

from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from ipcluster.client.views import ViewError, ViewResult

#: Seconds between two looks at the engines' output while ``%px`` waits.
POLL = 0.05


def autopx_off(shell: Any) -> bool:
    """Remove ``%autopx``'s input transformer; whether it was on."""
    found = [t for t in shell.input_transformers_cleanup if getattr(t, "is_autopx", False)]
    for transformer in found:
        shell.input_transformers_cleanup.remove(transformer)
    return bool(found)


class _AutoPx:
    """The input transformer of ``%autopx``: every cell becomes a ``%%px`` cell."""

    is_autopx = True

    def __call__(self, lines: list) -> list:
        cell = "".join(lines)
        if not cell.strip() or cell.lstrip().startswith(("%autopx", "%pxconfig", "%pxresult")):
            return lines
        return [f"get_ipython().run_cell_magic('px', '', {cell!r})\n"]


class Printer:
    """Prints a view call's output as it comes, each line labelled with its stream and engine."""

    def __init__(self, result: ViewResult) -> None:
        self.result = result
        self._shown = {engine: 0 for engine in result.futures}  # chunks printed, per engine
        self._partial: dict = {}  # (stream, engine) -> text after the last newline

    def follow(self, timeout: Optional[float] = None) -> None:
        """Print the output as it comes until every engine is done (or ``timeout`` passes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.result.done() and (deadline is None or time.monotonic() < deadline):
            self._print_new()
            time.sleep(POLL)
        self._print_new()

    def finish(self) -> None:
        """Print what is left: output that was not streamed, the values, the errors."""
        self._print_new()
        for engine, future in self.result.futures.items():
            streamed = {"stdout": "", "stderr": ""}
            for stream, text in future.output:
                streamed[stream] += text
            for stream in ("stdout", "stderr"):
                whole = getattr(future, stream)
                rest = whole[len(streamed[stream]):] if whole.startswith(streamed[stream]) else whole
                self._lines(stream, engine, rest)
                self._flush(stream, engine)
        self._show_outcome()

    def _show_outcome(self) -> None:
        error = self.result.exception()
        failed = error.errors if isinstance(error, ViewError) else {}
        for engine, future in self.result.futures.items():
            if engine in failed:
                e = failed[engine]
                print(f"[error:{engine}] {type(e).__name__}: {e}")
                cause = getattr(e, "__cause__", None)
                if cause is not None:
                    print(_from_the_code(str(cause)).rstrip())
            elif future.done() and not future.cancelled() and future.result() is not None:
                print(f"Out[{engine}]: {future.result()!r}")

    def _print_new(self) -> None:
        for engine, future in self.result.futures.items():
            chunks = future.output[self._shown[engine]:]
            self._shown[engine] += len(chunks)
            for stream, text in chunks:
                self._lines(stream, engine, text)

    def _lines(self, stream: str, engine: str, text: str) -> None:
        text = self._partial.pop((stream, engine), "") + text
        *whole, rest = text.split("\n")
        for line in whole:
            print(f"[{stream}:{engine}] {line}")
        if rest:
            self._partial[(stream, engine)] = rest

    def _flush(self, stream: str, engine: str) -> None:
        rest = self._partial.pop((stream, engine), "")
        if rest:
            print(f"[{stream}:{engine}] {rest}")


@magics_class
class PxMagics(Magics):
    """``%px``, ``%%px``, ``%pxresult``, ``%autopx``, ``%pxconfig``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.connection_file: Optional[str] = None
        self.targets: Optional[list] = None  # None: every live engine
        self.block = True
        self.client: Any = None
        self.last: Optional[ViewResult] = None
        self._printed_last = False

    # -- magics ---------------------------------------------------------------------------

    @line_magic
    def pxconfig(self, line: str) -> None:
        """%pxconfig [--connection-file F] [--targets all|e0,e1] [--block|--noblock]"""
        options, rest = _options(line)
        if rest:
            raise ValueError(f"%pxconfig takes only options, not {rest!r}")
        if "connection_file" in options and options["connection_file"] != self.connection_file:
            self._close()
            self.connection_file = options["connection_file"]
        if "targets" in options:
            self.targets = options["targets"]
        self.block = options.get("block", self.block)

    @line_cell_magic
    def px(self, line: str, cell: Optional[str] = None) -> None:
        """%px CODE, or %%px [--targets ...] [--noblock] with the cell as the code."""
        options, code = _options(line)
        if cell is not None:
            code = cell if not code else code + "\n" + cell
        view = self._client().view(options.get("targets", self.targets))
        self.last = view.execute_async(code)
        self._printed_last = False
        if options.get("block", self.block):
            self._show(self.last)

    @line_magic
    def pxresult(self, line: str = "") -> None:
        """Wait for the last %px and show its output and values."""
        if self.last is None:
            print("no %px has run yet")
            return
        self._show(self.last, again=self._printed_last)

    @line_magic
    def autopx(self, line: str = "") -> None:
        """Toggle: run every cell on the engines, as %%px."""
        if autopx_off(self.shell):
            print("%autopx disabled")
            return
        # A cleanup transformer sees the cell as typed, before magics are translated.
        self.shell.input_transformers_cleanup.append(_AutoPx())
        print("%autopx enabled: cells run on the engines; %autopx again to stop")

    # -- plumbing ------------------------------------------------------------------------

    def _show(self, result: ViewResult, again: bool = False) -> None:
        printer = Printer(result)
        if again:  # all of it, as it was
            printer._shown = dict.fromkeys(result.futures, 0)
        printer.follow()
        printer.finish()
        self._printed_last = True

    def _client(self) -> Any:
        if self.client is None:
            from ipcluster import Client

            self.client = Client(self.connection_file)
        return self.client

    def _close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


_FLAG = re.compile(r"\s*(--block|--noblock)(?=\s|$)")
_VALUED = re.compile(r"\s*(--targets|--connection-file)\s+(\"[^\"]*\"|'[^']*'|\S+)")


def _from_the_code(tb: str) -> str:
    """A remote traceback from the first frame of the %px code on (the engine's own frames cut)."""
    start = tb.find('  File "<px')
    return tb if start < 0 else "Traceback (most recent call last):\n" + tb[start:]


def _options(line: str) -> tuple:
    """The ``--`` options at the start of ``line``, and the rest of it as it was (the code)."""
    options: dict = {}
    rest = line
    while rest.lstrip().startswith("--"):
        flag, valued = _FLAG.match(rest), _VALUED.match(rest)
        if flag:
            options["block"] = flag.group(1) == "--block"
            rest = rest[flag.end():]
        elif valued:
            value = valued.group(2).strip("\"'")
            if valued.group(1) == "--targets":
                options["targets"] = None if value == "all" else [t for t in value.split(",") if t]
            else:
                options["connection_file"] = value
            rest = rest[valued.end():]
        else:
            raise ValueError(f"unknown or incomplete option in {rest.strip()[:40]!r}")
    return options, rest.strip() if options else line
