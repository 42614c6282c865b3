"""A controller that is killed, or paused, on a real cluster (twistd subprocesses, real engines).

* SIGKILL and restart: 2 local engines and 1 hand-started one, several hundred
  tasks in flight (some long); the controller is killed and a new one started
  on the same data dir.  Every task gives exactly one correct result or a clear
  error, results the client had are still fetchable, none is delivered twice.
* SIGSTOP: the controller is paused longer than the client's silence limit;
  after SIGCONT no future has failed.

Each test prints its figures (``crash figures: ...``) for the closing note.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from ipcluster import Client, errors
from tests.cluster import BOUND, spawn, spawn_engine, until, within

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def echo(x, seconds):
    import time as _time

    _time.sleep(seconds)
    return x


def _controller(testcase, data_dir, *extra):
    argv = [TWISTD, "-n", "--pidfile=", "ipcluster", "--data-dir", data_dir, "--engines", "2",
            "--recovery-grace", "10", *extra]
    return spawn(testcase, "controller", argv)


def _connection(data_dir):
    try:
        with open(os.path.join(data_dir, "connection.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _pid_alive(pid):
    from ipcluster.connection import pid_alive

    return pid_alive(pid)


class ControllerKilled(unittest.TestCase):
    timeout = 400

    @defer.inlineCallbacks
    def test_sigkill_and_restart(self):
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        old = _controller(self, data_dir)
        first = yield until(lambda: _connection(data_dir), BOUND, "the connection file")
        path = os.path.join(data_dir, "connection.json")
        hand = spawn_engine(self, path, "h0", "--controller-timeout", "3")
        client = yield threads.deferToThread(Client, path, 20.0, 5.0)
        self.addCleanup(lambda: threads.deferToThread(client.close))
        before = yield threads.deferToThread(client.wait_for_engines, 3, BOUND)
        local_pids = [e["pid"] for e in before if e["id"] in ("e0", "e1")]

        n, long_ones = 300, range(50, 56)  # (running when the controller is killed)
        futures = yield threads.deferToThread(
            lambda: [client.submit(echo, i, 8.0 if i in long_ones else 0.02) for i in range(n)]
        )
        long_ids = {futures[i].task_id for i in long_ones}

        def running_long():
            return any(e["running_task"] in long_ids for e in client.engines())

        yield threads.deferToThread(lambda: _poll(running_long, BOUND))
        had = {f.task_id: f.result() for f in futures if f.done()}
        killed_at = time.monotonic()
        old.kill(signal.SIGKILL)
        yield within(old.ended, BOUND, "the controller to die")
        # The old controller's engines end with it (engine/parent.py).
        yield until(lambda: not any(_pid_alive(p) for p in local_pids), BOUND, "the old local engines to exit")

        new = _controller(self, data_dir)
        second = yield until(lambda: (c := _connection(data_dir)) and c["controller_pid"] == new.pid and c,
                             BOUND, "the new connection file")
        started_seconds = time.monotonic() - killed_at
        self.assertEqual((second["key"], second["ports"]), (first["key"], first["ports"]),
                         "the new controller keeps the key and the ports")

        def rejoined():
            live = [e for e in client.engines() if e["state"] in ("alive", "busy")]
            return len({e["id"] for e in live}) >= 3

        yield threads.deferToThread(lambda: _poll(rejoined, BOUND))
        rejoin_seconds = time.monotonic() - killed_at

        def outcomes():
            done = {}
            for f in futures:
                try:
                    done[f.task_id] = ("ok", f.result(BOUND * 3))
                except errors.ClusterError as e:
                    done[f.task_id] = ("error", e)
            return done

        done = yield threads.deferToThread(outcomes)
        all_done_seconds = time.monotonic() - killed_at
        values = {f.task_id: i for i, f in enumerate(futures)}
        wrong = {t: o for t, o in done.items() if o[0] == "ok" and o[1] != values[t]}
        errors_seen = [o[1] for o in done.values() if o[0] == "error"]
        self.assertEqual(wrong, {})
        for e in errors_seen:  # a clear error, if any: never a silent hang
            self.assertIsInstance(e, (errors.TaskLost, errors.EngineDied), repr(e))
        self.assertEqual(client._core.dropped, 0, "a result was delivered twice (or for no task)")

        # Results the client had before the kill are still there, for anyone.
        other = yield threads.deferToThread(Client, path, 20.0)
        self.addCleanup(lambda: threads.deferToThread(other.close))
        sample = list(had)[:20]
        fetched = yield threads.deferToThread(lambda: {t: other.fetch(t).result(BOUND) for t in sample})
        self.assertEqual(fetched, {t: had[t] for t in sample})

        log = new.output()
        recovered = _count(r"recovered (\d+) task", log)
        requeued, lost = _pair(r"recovery: (\d+) task\(s\) queued again, (\d+) lost", log)
        claimed = len(re.findall(r"engine \S+ runs recovered task", log))
        print(
            f"\ncrash figures: {n} tasks ({len(long_ones)} of 8 s), {len(had)} results before the kill (all fetchable: "
            f"{len(sample)} checked), {len(done) - len(errors_seen)} ok, {len(errors_seen)} errors, 0 duplicates; "
            f"recovered {recovered}: claimed by engines' reports {claimed}, finished by re-sent results "
            f"{recovered - claimed - requeued - lost}, re-queued {requeued}, lost {lost}; "
            f"client resumed {client._core.resumed}x, resubmitted {client._core.resubmitted}; new controller "
            f"listening {started_seconds:.1f} s after the kill, engines rejoined "
            f"{rejoin_seconds:.1f} s after the kill, all results {all_done_seconds:.1f} s after"
        )
        self.assertGreater(recovered, 0, log[-3000:])
        hand.kill(signal.SIGTERM)


class ControllerPaused(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_sigstop_longer_than_the_silence_limit(self):
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        proc = _controller(self, data_dir)
        yield until(lambda: _connection(data_dir), BOUND, "the connection file")
        path = os.path.join(data_dir, "connection.json")
        silence = 3.0  # the client's silence limit; the pause is 4 times as long
        client = yield threads.deferToThread(Client, path, 20.0, silence)
        self.addCleanup(lambda: threads.deferToThread(client.close))
        yield threads.deferToThread(client.wait_for_engines, 2, BOUND)
        futures = yield threads.deferToThread(lambda: [client.submit(echo, i, 0.05) for i in range(200)])
        yield until(lambda: any(f.done() for f in futures), BOUND, "a first result")
        proc.kill(signal.SIGSTOP)
        paused = time.monotonic()
        yield threads.deferToThread(time.sleep, 4 * silence)  # (the pause itself is what is tested)
        failed_during = [f for f in futures if f.done() and f.exception() is not None]
        proc.kill(signal.SIGCONT)
        results = yield threads.deferToThread(lambda: [f.result(BOUND * 2) for f in futures])
        self.assertEqual(failed_during, [])
        self.assertEqual(results, list(range(200)))
        print(f"\ncrash figures: paused {4 * silence:g} s (client silence limit {silence:g} s): 0 of 200 failed, "
              f"all done {time.monotonic() - paused:.1f} s after the pause began")


def _poll(fn, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if fn():
                return True
        except errors.ClusterError:  # (UnknownSession once, as the client opens its new session)
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s polling {fn}")


def _count(pattern, text):
    found = re.findall(pattern, text)
    return sum(int(x) for x in found)


def _pair(pattern, text):
    found = re.findall(pattern, text)
    return (sum(int(a) for a, _ in found), sum(int(b) for _, b in found)) if found else (0, 0)
