"""ipyparallel: ``Cluster(n=2).start_and_connect_sync()`` and a load-balanced view.

Runs under the peers' interpreter (ipyparallel must never share the project's
venv: its ``ipcluster`` console script replaces ours).
"""
from __future__ import annotations

import logging
import os
from typing import Any

from benchsys.base import ENGINES, Absent, Runner, rss_sum


class IpyparallelRunner(Runner):
    name = "ipyparallel"

    def prepare(self) -> None:
        self.cluster = None
        self.rc = None
        # Keep IPython's and ipyparallel's files (profile, security, logs) in our temp dir.
        os.environ["IPYTHONDIR"] = str(self.tmp / "ipython")
        try:
            import ipyparallel
        except ImportError as e:
            raise Absent(f"ipyparallel is not installed in the peers' venv: {e}") from None

        self.ipp = ipyparallel
        self.res["versions"]["ipyparallel"] = ipyparallel.__version__

    def start(self) -> None:
        self.cluster = self.ipp.Cluster(
            n=ENGINES, profile_dir=str(self.tmp / "profile_bench"), log_level=logging.WARNING
        )
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(ENGINES, timeout=60)
        self.view = self.rc.load_balanced_view()
        self.remember_descendants()

    def one(self) -> Any:
        return self.view.apply_async(self.fn).get(timeout=30)

    def many(self, n: int) -> list:
        apply_async, fn = self.view.apply_async, self.fn
        ars = [apply_async(fn, i) for i in range(n)]
        return [ar.get(timeout=self.args.phase_timeout) for ar in ars]

    def map(self, n: int) -> list:
        return list(self.view.map_sync(self.fn, range(n)))

    def map_chunked(self, n: int, chunksize: int) -> list:
        return list(self.view.map_sync(self.fn, range(n), chunksize=chunksize))

    def echo(self, array) -> Any:
        return self.view.apply_async(self.fn, array).get(timeout=self.args.phase_timeout)

    def controller_rss(self) -> tuple:
        import psutil

        main = psutil.Process(self.cluster.controller.pid)
        kids = main.children(recursive=True)
        self.note(
            f"ipyparallel: the controller is the ipcontroller process (its RSS is the RSS row) and "
            f"{len(kids)} forked subprocess(es) (schedulers, heart monitor), all in the PSS row"
        )
        return main.memory_info().rss, [main.pid] + [k.pid for k in kids]

    def engines_rss(self) -> int:
        pids = self.rc[:].apply_sync(os.getpid)
        self.note("ipyparallel: engine RSS excludes the per-engine nanny processes")
        return rss_sum(pids)

    def shutdown(self) -> None:
        if self.rc is not None:
            try:
                self.rc.close()
            except Exception as e:  # noqa: BLE001 - still stop the cluster
                self.note(f"ipyparallel: rc.close() raised {type(e).__name__}: {e}")
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()
