"""``concurrent.futures.ProcessPoolExecutor(2)``: what the standard library offers on one machine.

Runs under the project's interpreter (nothing to install).  The pool uses
multiprocessing's default start method; its tasks are pickled by reference
(``__main__.noop``), which its forked (or spawned) workers resolve.
"""
from __future__ import annotations

import multiprocessing
from typing import Any

from benchsys.base import ENGINES, NotAvailable, Runner, rss_sum


class ProcessPoolRunner(Runner):
    name = "processpool"
    startup_means = "the pool's first result (ProcessPoolExecutor(2) + submit(noop).result())"

    def prepare(self) -> None:
        import concurrent.futures

        self.ex = None
        self.cf = concurrent.futures
        self.note(f"ProcessPool(2): multiprocessing's default start method here: {multiprocessing.get_start_method()}")

    def start(self) -> None:
        self.ex = self.cf.ProcessPoolExecutor(ENGINES)
        self.ex.submit(self.fn).result(timeout=60)
        self.remember_descendants()

    def one(self) -> Any:
        return self.ex.submit(self.fn).result(timeout=30)

    def many(self, n: int) -> list:
        submit, fn = self.ex.submit, self.fn
        futs = [submit(fn, i) for i in range(n)]
        return [f.result(timeout=self.args.phase_timeout) for f in futs]

    def map(self, n: int) -> list:
        return list(self.ex.map(self.fn, range(n)))  # chunksize=1, its default

    def map_chunked(self, n: int, chunksize: int) -> list:
        return list(self.ex.map(self.fn, range(n), chunksize=chunksize))

    def echo(self, array) -> Any:
        return self.ex.submit(self.fn, array).result(timeout=self.args.phase_timeout)

    def controller_rss(self) -> tuple:
        raise NotAvailable("no controller: the pool's manager thread runs in the caller's process")

    def engines_rss(self) -> int:
        return rss_sum(list(self.ex._processes))  # (private, but the only way to the workers' pids)

    def shutdown(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=True, cancel_futures=True)
