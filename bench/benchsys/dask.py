"""dask.distributed: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` + Client.

Runs under the peers' interpreter.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from benchsys.base import ENGINES, Absent, Runner, rss_here, rss_sum


class DaskRunner(Runner):
    name = "dask"

    def prepare(self) -> None:
        self.cluster = None
        self.client = None
        try:
            import dask
            import distributed
        except ImportError as e:
            raise Absent(f"dask.distributed is not installed in the peers' venv: {e}") from None

        self.distributed = distributed
        self.res["versions"]["distributed"] = distributed.__version__
        self.res["versions"]["dask"] = dask.__version__
        dask.config.set({"temporary-directory": str(self.tmp)})

    def start(self) -> None:
        d = self.distributed
        self.cluster = d.LocalCluster(
            n_workers=ENGINES, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR, host="127.0.0.1",
        )
        self.client = d.Client(self.cluster)
        self.client.wait_for_workers(ENGINES, timeout=60)
        self.remember_descendants()

    def one(self) -> Any:
        return self.client.submit(self.fn, pure=False).result(timeout=30)

    def many(self, n: int) -> list:
        submit, fn = self.client.submit, self.fn
        futs = [submit(fn, i, pure=False) for i in range(n)]
        return self.client.gather(futs)

    def map(self, n: int) -> list:
        return self.client.gather(self.client.map(self.fn, range(n), pure=False))

    def echo(self, array) -> Any:
        # What dask's own warning about large graph arguments recommends: scatter, then submit.
        self.note("dask: the payload is scattered to a worker (client.scatter), then submit(fn, future)")
        [data] = self.client.scatter([array], hash=False)
        try:
            return self.client.submit(self.fn, data, pure=False).result(timeout=self.args.phase_timeout)
        finally:
            data.release()

    def controller_rss(self) -> tuple:
        rss = self.client.run_on_scheduler(rss_here)
        where = self.client.run_on_scheduler(os.getpid)
        if where == os.getpid():
            self.note(
                "dask: LocalCluster's scheduler runs in the client's process; its RSS also holds "
                "the client, the 2 nannies and this script"
            )
        return rss, [where]

    def engines_rss(self) -> int:
        return rss_sum(self.client.run(os.getpid).values())

    def shutdown(self) -> None:
        if self.client is not None:
            try:
                self.client.close(timeout=20)
            except Exception as e:  # noqa: BLE001 - still close the cluster
                self.note(f"dask: client.close() raised {type(e).__name__}: {e}")
        if self.cluster is not None:
            self.cluster.close(timeout=20)
