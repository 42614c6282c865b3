"""Parts 1 and 2 of bench/heartbeat.py: heartbeat round-trip time, and time to report an engine dead."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from hb.procs import BOUND, ENGINE, IP, PROCS, Controller, summary, wait_for


def raw_heart_rtt(count: int, warmup: int = 200) -> dict:
    """A plain pyzmq ROUTER pinging an in-process Heart, one ping at a time."""
    import zmq

    from ipcluster.engine.heart import Heart
    from ipcluster.transport.wire import PingCodec, new_key

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port(f"tcp://{IP}")
    identity = b"raw-heart"
    heart = Heart(ctx, f"tcp://{IP}:{port}", identity)
    heart.start()
    stopped = False
    try:
        pings = PingCodec(new_key())
        # The ROUTER knows the heart once its connection handshake is done: until
        # then a send fails with EHOSTUNREACH (ROUTER_MANDATORY).
        deadline = time.monotonic() + BOUND
        while True:
            try:
                router.send_multipart([identity, pings.ping(identity, 0, 0.0)])
                break
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
        if not router.poll(BOUND * 1000):
            raise TimeoutError("the heart did not echo the first ping")
        router.recv_multipart()
        payloads = [pings.ping(identity, i + 1, 0.0) for i in range(warmup + count)]
        rtts = []
        clock = time.perf_counter
        for i, data in enumerate(payloads):
            t0 = clock()
            router.send_multipart([identity, data])
            if not router.poll(10_000):
                raise TimeoutError(f"the heart did not echo ping {i}")
            frames = router.recv_multipart()
            t1 = clock()
            if frames != [identity, data]:
                raise AssertionError(f"ping {i} came back changed: {frames!r}")
            if i >= warmup:
                rtts.append(t1 - t0)
        stopped = heart.stop()
        return summary(rtts)
    finally:
        if not stopped:
            stopped = heart.stop()
        router.close(0)
        if stopped:
            ctx.term()


def controller_rtt(ctl: Controller, seconds: float, interval: float = 0.05) -> dict:
    """Sample client.engines() 'rtt' fields; one value per engine per change (= per beat)."""
    last: dict = {}
    per_beat: list = []
    samples = 0
    calls: list = []
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < end:
        t0 = time.perf_counter()
        engines = ctl.client.engines()
        calls.append(time.perf_counter() - t0)
        for e in engines:
            if e["state"] not in ("alive", "busy") or e["rtt"] is None:
                continue
            samples += 1
            if last.get(e["id"]) != e["rtt"]:
                last[e["id"]] = e["rtt"]
                per_beat.append(e["rtt"])
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    out = summary(per_beat)
    out.update(samples=samples, engines=len(last), seconds=seconds, engines_call=summary(calls))
    return out


# =============================================================================
# 2. time to report an engine dead
# =============================================================================


def time_to_dead(ctl: Controller, engine_id: str, pid: int, signum: int, poll: float = 0.02) -> tuple:
    """Seconds from just before ``os.kill(pid, signum)`` until engines() says ``dead``."""
    t0 = time.monotonic()
    os.kill(pid, signum)
    if signum == signal.SIGSTOP:
        PROCS.stopped.add(pid)
    deadline = t0 + BOUND
    next_at = t0
    while True:
        record = ctl.engines().get(engine_id)
        now = time.monotonic()
        if record is not None and record["state"] == "dead":
            return now - t0, record["reason"]
        if now > deadline:
            raise TimeoutError(f"engine {engine_id} not reported dead {BOUND:g} s after signal {signum}")
        next_at += poll
        time.sleep(max(0.0, next_at - time.monotonic()))


def external_deaths(ctl: Controller, root: Path, trials: int, period: float, rng: random.Random) -> dict:
    """SIGKILL and SIGSTOP of engines the controller did not start."""
    plan = [(f"b{k}", signal.SIGKILL) for k in range(trials)] + [
        (f"b{trials + k}", signal.SIGSTOP) for k in range(trials)
    ]
    procs = {}
    for engine_id, _ in plan:
        log = open(root / f"engine-{engine_id}.log", "wb")
        procs[engine_id] = PROCS.spawn(
            [ENGINE, "--connection-file", ctl.connection_file, "--id", engine_id],
            "engine", stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def all_alive():
        engines = ctl.engines()
        for engine_id, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"engine {engine_id} exited early with {proc.returncode}")
            e = engines.get(engine_id)
            if e is None or e["state"] != "alive":
                return False
            if e["pid"] != proc.pid:
                raise RuntimeError(f"engine {engine_id}: controller has pid {e['pid']}, we started {proc.pid}")
        return True

    wait_for(all_alive, BOUND, f"{len(procs)} external engines to be alive")
    results = {"SIGKILL": [], "SIGSTOP": []}
    reasons = {}
    for engine_id, signum in plan:
        proc = procs[engine_id]
        state = ctl.engines()[engine_id]["state"]
        if state != "alive":
            raise RuntimeError(f"engine {engine_id} is {state} before its trial")
        time.sleep(rng.uniform(0.0, period))  # random phase of the monitor's tick (see docstring)
        seconds, reason = time_to_dead(ctl, engine_id, proc.pid, signum)
        name = signal.Signals(signum).name
        results[name].append(seconds)
        reasons.setdefault(name, reason)
        if signum == signal.SIGSTOP:
            PROCS.end(proc, "engine")  # SIGCONT, then SIGKILL
    return {
        name: dict(summary(values), samples=values, reason=reasons.get(name, ""))
        for name, values in results.items()
    }


def local_deaths(root: Path, trials: int, period: float, rng: random.Random) -> dict:
    """SIGKILL of engines the controller started itself (reported via processEnded)."""
    ctl = Controller(root, "local-kill", engines=trials).start()
    try:
        ctl.client.wait_for_engines(trials, timeout=BOUND)
        PROCS.note_children(ctl.proc)
        values, reason = [], ""
        for k in range(trials):
            engine_id = f"e{k}"
            record = ctl.engines()[engine_id]
            if record["state"] != "alive":
                raise RuntimeError(f"local engine {engine_id} is {record['state']} before its trial")
            time.sleep(rng.uniform(0.0, period))
            seconds, why = time_to_dead(ctl, engine_id, record["pid"], signal.SIGKILL)
            values.append(seconds)
            reason = reason or why
        return dict(summary(values), samples=values, reason=reason)
    finally:
        ctl.stop()

