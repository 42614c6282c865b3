"""Engine views and futures as inputs: what they cost on a real cluster (issue 11).

    .venv/bin/python bench/views.py [--rounds 200] [--chain 100] [--repeats 5]

Starts ``twistd -n ipcluster --engines 2`` in a temporary directory (127.0.0.1), then measures:

* a view's ``execute`` round trip on both engines (blocking: both engines ran it and
  answered), and ``push`` + ``pull`` of a small value;
* a chain of N dependent tasks ``x -> x + 1``: with futures as inputs (all submitted at
  once, each result goes controller -> engine with the next task) against the same chain
  with a client round trip per step (``submit(...).result()`` then the next submit) and
  against ``after=`` with the value fetched by the client (the old way);
* what the per-submit work added for futures and source lines costs ``ClientCore.submit``.

Every wait is bounded; the controller and its engines are stopped on exit, on failure and on Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ipcluster import Client  # noqa: E402


def inc(x):
    return x + 1


def quantiles(samples: list) -> str:
    samples = sorted(samples)
    p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))]
    return f"median {statistics.median(samples) * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms (n={len(samples)})"


def start(tmp: Path) -> subprocess.Popen:
    twistd = Path(sys.executable).parent / "twistd"
    log = open(tmp / "controller.log", "wb")
    proc = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "ipcluster", "--engines", "2", "--data-dir", str(tmp)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        env=dict(os.environ, IPCLUSTER_DIR=str(tmp)), start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 60
    while not (tmp / "connection.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((tmp / "controller.log").read_text())
        time.sleep(0.01)
    return proc


def timed(call, rounds: int) -> list:
    """Seconds of each of ``rounds`` calls of ``call(i)``."""
    samples = []
    for i in range(rounds):
        t = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - t)
    return samples


def measure_views(client: Client, rounds: int) -> None:
    dview = client[:]
    dview.execute("x = 0")  # warm
    samples = timed(lambda i: dview.execute("x = x + 1"), rounds)
    print(f"view.execute on {len(dview)} engines: {quantiles(samples)}")
    samples = timed(lambda i: (dview.push({"y": i}), dview.pull("y")), rounds)
    print(f"view.push + view.pull on {len(dview)} engines: {quantiles(samples)}")
    one = client["e0"]
    samples = timed(lambda i: one.execute("x = x + 1"), rounds)
    print(f"view.execute on 1 engine: {quantiles(samples)}")
    samples = timed(lambda i: client.submit(inc, 1, engine="e0").result(30), rounds)
    print(f"(for scale) submit(...).result() pinned to 1 engine: {quantiles(samples)}")


def measure_chains(client: Client, n: int, repeats: int) -> None:
    ways = {
        "futures as inputs (all submitted at once)": lambda: _futures_chain(client, n),
        "client round trip per step (result() then submit)": lambda: _round_trips(client, n),
    }
    for name, run in ways.items():
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            assert run() == n, name
            times.append(time.perf_counter() - t)
        print(f"chain of {n} tasks, {name}: median {statistics.median(times) * 1e3:.1f} ms "
              f"({statistics.median(times) / n * 1e3:.2f} ms a step; {repeats} runs: "
              f"{', '.join(f'{x * 1e3:.0f}' for x in times)} ms)")


def _futures_chain(client: Client, n: int) -> int:
    f = client.submit(inc, 0)
    for _ in range(n - 1):
        f = client.submit(inc, f)
    return f.result(120)


def _round_trips(client: Client, n: int) -> int:
    x = 0
    for _ in range(n):
        x = client.submit(inc, x).result(30)
    return x


def measure_submit_cost(client: Client, n: int = 20000) -> None:
    core = client._core
    noop = lambda result: None  # noqa: E731
    t = time.perf_counter()
    for _ in range(n):
        task_id, _ = core.submit(inc, (1,), {}, {}, noop)
        core.forget(task_id=task_id)
    per = (time.perf_counter() - t) / n
    print(f"ClientCore.submit (pickle, sign; futures collected, source lines looked up): {per * 1e6:.1f} us a task")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--chain", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="ipcluster-bench-views-") as tmp:
        proc = start(Path(tmp))
        try:
            client = Client(str(Path(tmp) / "connection.json"), timeout=10)
            try:
                client.wait_for_engines(2, timeout=60)
                measure_views(client, args.rounds)
                measure_chains(client, args.chain, args.repeats)
                measure_submit_cost(client)
            finally:
                client.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
