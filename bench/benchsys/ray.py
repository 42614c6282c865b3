"""Ray: a local instance (``ray.init(address="local", num_cpus=2)``), remote functions, its object store.

Runs under the peers' interpreter.  Kept local and quiet:

* ``address="local"`` always starts a new instance (never joins one found via
  ``RAY_ADDRESS`` or ``/tmp/ray``), its files under our temporary directory;
* ``include_dashboard=False``; ``_node_ip_address="127.0.0.1"``, and
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so that Ray's agents also take the
  loopback address (without it they find this host's interface address and
  bind and connect there);
* ``RAY_USAGE_STATS_ENABLED=0``: no usage report is sent;
* ``log_to_driver=False``, logging at ERROR.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from benchsys.base import ENGINES, Absent, Runner, rss_sum

LOCAL_ONLY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _is_worker(proc) -> bool:
    """Ray's worker processes are titled ``ray::IDLE`` or ``ray::<task>``; its agents ``ray::...Agent``."""
    try:
        title = " ".join(proc.cmdline()).strip()
    except Exception:
        return False
    return title.startswith("ray::") and not title.endswith("Agent")


class RayRunner(Runner):
    name = "ray"
    startup_means = "ray.init() + the first result of a remote call"

    def prepare(self) -> None:
        self.started = False
        os.environ.update(LOCAL_ONLY_ENV)
        try:
            import ray
        except ImportError as e:
            raise Absent(f"ray is not installed in the peers' venv: {e}") from None

        self.ray = ray
        self.res["versions"]["ray"] = ray.__version__

    def start(self) -> None:
        ray = self.ray
        self.started = True
        ray.init(
            address="local", num_cpus=ENGINES, include_dashboard=False, _node_ip_address="127.0.0.1",
            _temp_dir=str(self.tmp), log_to_driver=False, logging_level=logging.ERROR,
        )
        self.remote = ray.remote(self.fn)
        ray.get(self.remote.remote(), timeout=60)
        self.remember_descendants()

    def one(self) -> Any:
        return self.ray.get(self.remote.remote(), timeout=30)

    def many(self, n: int) -> list:
        ray, remote, bound = self.ray, self.remote.remote, self.args.phase_timeout
        refs = [remote(i) for i in range(n)]
        return [ray.get(r, timeout=bound) for r in refs]

    def map(self, n: int) -> list:
        remote = self.remote.remote  # Ray has no map: a list of remote calls, then one get
        return self.ray.get([remote(i) for i in range(n)], timeout=self.args.phase_timeout)

    def echo(self, array) -> Any:
        ray = self.ray
        ref = ray.put(array)
        try:
            return ray.get(self.remote.remote(ref), timeout=self.args.phase_timeout)
        finally:
            del ref

    def _processes(self) -> tuple:
        import psutil

        procs = psutil.Process().children(recursive=True)
        workers = [p for p in procs if _is_worker(p)]
        return procs, workers

    def controller_rss(self) -> tuple:
        procs, workers = self._processes()
        rest = [p for p in procs if p not in workers]
        gcs = [p for p in rest if "gcs_server" in p.name()]
        self.note(
            f"ray: the RSS row is the gcs_server process; the PSS row adds the raylet, dashboard, agents "
            f"and monitors ({len(rest)} processes in all, not the {len(workers)} workers)"
        )
        return gcs[0].memory_info().rss, [p.pid for p in rest]

    def engines_rss(self) -> int:
        _, workers = self._processes()
        if len(workers) != ENGINES:
            self.note(f"ray: {len(workers)} worker processes were running (their sum is the engines row)")
        return rss_sum(p.pid for p in workers)

    def shutdown(self) -> None:
        if self.started:
            self.ray.shutdown()
