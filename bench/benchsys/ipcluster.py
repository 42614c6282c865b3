"""ipcluster: ``twistd -n ipcluster --engines 2`` as a subprocess and the blocking Client.

Runs under the project's interpreter (its venv has ipcluster and twistd).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from benchsys.base import ENGINES, Absent, Runner, rss_sum

VENV_BIN = Path(sys.executable).parent


class IpclusterRunner(Runner):
    name = "ipcluster"

    def prepare(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.client = None
        try:
            import ipcluster
            import ipcluster.client  # noqa: F401  (the lazy import, done before the clock starts)
        except ImportError as e:
            raise Absent(f"ipcluster is not importable by {sys.executable}: {e}") from None

        self.Client = ipcluster.Client
        self.log_path = self.tmp / "controller.log"
        self.res["versions"]["ipcluster"] = getattr(ipcluster, "__version__", "?")

    def start(self) -> None:
        argv = [
            str(VENV_BIN / "twistd"), "-n", "--pidfile=", "ipcluster",
            "--engines", str(ENGINES), "--data-dir", str(self.tmp),
        ]
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp,
                env=dict(os.environ, IPCLUSTER_DIR=str(self.tmp)),
            )
        finally:
            log.close()
        import psutil

        self.watch.append(psutil.Process(self.proc.pid))
        conn = self.tmp / "connection.json"
        while not conn.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"twistd exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.002)
        self.client = self.Client(str(conn), timeout=10.0)
        self.client.wait_for_engines(ENGINES, timeout=60, interval=0.005)
        self.remember_descendants()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def one(self) -> Any:
        return self.client.submit(self.fn).result(timeout=30)

    def many(self, n: int) -> list:
        submit, fn = self.client.submit, self.fn
        futs = [submit(fn, i) for i in range(n)]
        return [f.result(timeout=self.args.phase_timeout) for f in futs]

    def map(self, n: int) -> list:
        return list(self.client.map(self.fn, range(n)))

    def map_chunked(self, n: int, chunksize: int) -> list:
        return list(self.client.map(self.fn, range(n), chunksize=chunksize))

    def echo(self, array) -> Any:
        return self.client.submit(self.fn, array).result(timeout=self.args.phase_timeout)

    def controller_rss(self) -> tuple:
        import psutil

        me = psutil.Process(self.proc.pid)
        engines = {int(e["pid"]) for e in self.client.engines() if e.get("pid")}
        others = [p.pid for p in me.children(recursive=True) if p.pid not in engines]
        return me.memory_info().rss, [me.pid] + others

    def engines_rss(self) -> int:
        return rss_sum(int(e["pid"]) for e in self.client.engines() if e.get("state") in ("alive", "busy"))

    def shutdown(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception as e:  # noqa: BLE001 - still stop the controller
                self.note(f"ipcluster: client.close() raised {type(e).__name__}: {e}")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.res["errors"]["shutdown"] = "twistd did not exit within 15 s of SIGTERM; killed"
                self.proc.kill()
                self.proc.wait(5)
            if self.proc.returncode not in (0, -signal.SIGTERM):
                self.note(f"ipcluster: twistd exited with {self.proc.returncode}")
        # engines: children of twistd, in self.watch; Runner.stop() ends any left over.
