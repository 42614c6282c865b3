#!/usr/bin/env python
"""Heartbeat benchmark for ipcluster: round-trip time, time to detect death, controller cost.

Run it from the project root with the project's virtualenv::

    .venv/bin/python bench/heartbeat.py                 # full run, about 2-3 minutes
    .venv/bin/python bench/heartbeat.py --quick         # shorter windows, fewer trials (~1.5 min)
    .venv/bin/python bench/heartbeat.py --json bench/results/heartbeat.json

It needs psutil (in the project's ``test`` extras): ``.venv/bin/pip install psutil``.
Everything listens on 127.0.0.1 and lives in a temporary directory; every
process it starts is ended (SIGCONT, then SIGTERM/SIGKILL) on exit, failure
or Ctrl-C.

What is measured
----------------
1. **Heartbeat round-trip time.**

   * *raw heart*: a plain pyzmq ROUTER pings an in-process
     ``ipcluster.engine.heart.Heart`` (the native ``zmq.proxy_steerable`` echo)
     2,000 times, one at a time, after a warm-up; each ping is a real
     ``PingCodec`` ping.  Median and p99 of ``perf_counter`` round trips.
   * *via the controller*: ``twistd -n --pidfile= ipcluster --engines 2`` is
     started as a subprocess; once ``Client.wait_for_engines(2)`` returns,
     ``client.engines()`` is sampled every 50 ms for ``--rtt-seconds``.  Each
     sample's ``rtt`` field is the latest heart round trip the controller
     measured (reactor clock, from the start of the monitor's tick to the
     reactor handling the pong, so it includes reactor latency).  One value
     per engine per change is kept (one per heartbeat), so the median/p99
     weigh each beat once.

2. **Time to report an engine dead**, with the controller's DEFAULT settings
   (period and misses from ``ipcluster.controller.heartmonitor``).
   External engines (``ipcluster-engine --connection-file F --id bK``, started
   by this script, so the controller does not see their process exit) are
   brought up together and waited for; then, for each trial, after a random
   delay in ``[0, period)`` (so the kills fall at random phases of the
   monitor's tick -- without it, each trial would start right after the
   previous death was reported, i.e. always at the same phase), ``t0`` is read
   just before ``os.kill`` and ``client.engines()`` is polled every 20 ms until
   the engine's state is ``dead``.  SIGKILL (process gone, connection closed)
   and SIGSTOP (process frozen, connection open, heart silent) are measured,
   ``--trials`` each (default 5); stopped engines get SIGCONT then SIGKILL right
   after their trial.  For comparison, engines the controller started itself
   (``--engines N``) are SIGKILLed: they are reported through
   ``processEnded``, without waiting for missed beats.

3. **Controller CPU per second** at 0 (idle baseline), 100 and 1,000
   engines.  The engines are simulated, "many hearts in a few processes": the
   script re-runs itself in helper mode
   (``bench/heartbeat.py --hearts N --connection-file F``), ``--procs``
   processes (default 4).  Each helper registers its N engines with distinct
   ids exactly as ``ipcluster/engine/engine.py`` does (a DEALER on the
   registration socket sends ``register`` via ``ipcluster.transport.wire.Codec`` and
   waits for ``registered``), then starts one real ``Heart`` per engine (native
   echo thread) and one DEALER per engine on the control socket, which a single
   ``zmq.Poller`` loop serves: ``ping`` -> ``pong {beat, instance, queued}``.
   Each level gets a fresh controller (``--engines 0``).  Once every engine is
   alive, after a short warm-up, the controller process's CPU time
   (user+system, all its threads, via psutil) is read over ``--cpu-window``
   seconds (default 10) and reported as CPU seconds per second (100% = one
   core).  Nothing talks to the controller during the window.  Before and
   after it, ``client.engines()`` is checked, and the controller's log for the
   window is scanned: no simulated engine may be declared dead, purged, busy,
   or re-registered, and late monitor ticks are counted.

Helper mode (used by part 3, can be run by hand against a running controller)::

    .venv/bin/python bench/heartbeat.py --hearts 250 --connection-file ~/.ipcluster/connection.json

It prints ``READY <n>`` once every engine is registered and its heart runs,
answers control pings until SIGTERM/SIGINT (or its parent exits), then prints
one JSON line of counters and exits.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

from benchstats import pct  # noqa: E402  (bench/ is on sys.path)

VENV_BIN = Path(sys.executable).parent
TWISTD = VENV_BIN / "twistd"
ENGINE = VENV_BIN / "ipcluster-engine"
SCRIPT = Path(__file__).resolve()
IP = "127.0.0.1"
BOUND = 60.0  # seconds: generous bound on every wait for an event


# =============================================================================
# helper mode: many simulated engines in one process
# =============================================================================


def run_hearts(n: int, connection_file: str, prefix: str, register_timeout: float, max_seconds: float) -> int:
    """Register ``n`` engines like engine.py does, give each a Heart, answer control pings."""
    import zmq

    from ipcluster import connection
    from ipcluster.engine.heart import Heart
    from ipcluster.transport.wire import BadMessage, Codec
    from ipcluster.transport.security import configure_client, engine_token

    stop = [False]

    def on_signal(signum, frame):
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.getppid()

    info = connection.read(connection_file)
    codec = Codec(info.key)
    ctx = zmq.Context()
    # Per engine: registration DEALER (temporary), heart DEALER + 2 inproc PAIRs, control DEALER.
    ctx.set(zmq.MAX_SOCKETS, 6 * n + 64)
    host, pid = socket.gethostname(), os.getpid()
    engines = []  # (engine_id, instance, heart, control socket)
    controls: dict = {}
    sessions: dict = {}  # control socket -> its engine's session (the token)
    counters = {"engines": n, "pings": 0, "pongs": 0, "commands": 0, "unknown": 0, "bad": 0}

    def cleanup() -> None:
        for reg in pending:
            reg.close(0)
        all_stopped = True
        for _, _, heart, ctl in engines:
            all_stopped = heart.stop() and all_stopped
            ctl.close(0)
        if all_stopped:  # a heart thread still running would make term() wait for its sockets
            ctx.term()

    def on_control(ctl) -> None:
        """Engine._on_control for one simulated engine: answer what is waiting."""
        while True:
            try:
                frames = ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = codec.decode(frames)
            except BadMessage:
                counters["bad"] += 1
                continue
            if msg.type == "ping":
                counters["pings"] += 1
                pong = {"beat": msg["beat"], "instance": controls[ctl], "queued": 0}
                ctl.send_multipart(codec.encode("pong", pong, session=sessions[ctl]))
                counters["pongs"] += 1
            elif msg.type == "command":
                counters["commands"] += 1
                if msg["verb"] == "beat":
                    reply = {"ref": msg.id, "ok": True, "value": None}
                else:
                    reply = {"ref": msg.id, "ok": False, "error": {"type": "BadRequest", "message": "simulated engine"}}
                ctl.send_multipart(codec.encode("reply", reply, session=sessions[ctl]))
            elif msg.type == "unknown":
                counters["unknown"] += 1

    def on_registration(reg) -> None:
        """Engine._register's reply handling, then Engine._connect / _Link: heart, control DEALER."""
        engine_id, instance, request = pending[reg]
        try:
            msg = codec.decode(reg.recv_multipart(zmq.NOBLOCK))
        except (BadMessage, zmq.Again):
            return
        if msg.get("ref") != request:
            return
        if msg.type == "rejected":
            raise RuntimeError(f"engine {engine_id} rejected: {msg['reason']}")
        if msg.type != "registered":
            return
        token = engine_token(info.key, msg["nonce"], instance)  # the routing token, as an engine derives it
        heart = Heart(ctx, info.address("heartbeat"), token, lambda sock: configure_client(sock, info))
        heart.start()
        ctl = ctx.socket(zmq.DEALER)
        ctl.setsockopt(zmq.IDENTITY, token)
        ctl.setsockopt(zmq.LINGER, 0)
        configure_client(ctl, info)
        ctl.connect(info.address("control"))
        engines.append((engine_id, instance, heart, ctl))
        controls[ctl] = instance
        sessions[ctl] = token.decode()
        poller.register(ctl, zmq.POLLIN)
        poller.unregister(reg)
        reg.close(0)
        del pending[reg]

    pending: dict = {}
    poller = zmq.Poller()
    try:
        # -- registration, as Engine._register: a DEALER (random identity) sends 'register'
        for i in range(n):
            engine_id = f"{prefix}{i}"
            instance = uuid.uuid4().hex
            reg = ctx.socket(zmq.DEALER)
            reg.setsockopt(zmq.LINGER, 0)
            configure_client(reg, info)
            reg.connect(info.address("registration"))
            request = codec.new_id()
            reg.send_multipart(
                codec.encode(
                    "register",
                    {"engine": engine_id, "instance": instance, "host": host, "pid": pid},
                    msg_id=request,
                )
            )
            pending[reg] = (engine_id, instance, request)
            poller.register(reg, zmq.POLLIN)
        # -- one poller serves registration replies and every engine's control socket
        register_by = time.monotonic() + register_timeout
        ends = time.monotonic() + max_seconds
        ready = False
        while not stop[0]:
            if os.getppid() != parent or time.monotonic() > ends:
                break  # orphaned, or running far too long: do not linger
            if pending and time.monotonic() > register_by:
                print(f"FAILED {len(pending)} of {n} registrations unanswered after {register_timeout:g} s", flush=True)
                return 1
            for sock, _ in poller.poll(200):
                if sock in pending:
                    try:
                        on_registration(sock)
                    except RuntimeError as e:
                        print(f"FAILED {e}", flush=True)
                        return 1
                elif sock in controls:
                    on_control(sock)
            if not pending and not ready:
                ready = True
                print(f"READY {n}", flush=True)
        return 0
    finally:
        cleanup()
        print(json.dumps(counters), flush=True)


# =============================================================================
# process bookkeeping: everything we start is ended at exit
# =============================================================================


class Procs:
    """Every process this script started (and the controllers' children), ended at exit."""

    def __init__(self) -> None:
        self.items: list = []  # (Popen, kind)
        self.stopped: set = set()  # pids we SIGSTOPped
        self.extra: list = []  # psutil.Process of controllers' children
        self.done = False

    def spawn(self, argv, kind: str, **kw) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(kw.pop("env", {}))
        proc = subprocess.Popen([str(a) for a in argv], env=env, stdin=subprocess.DEVNULL, **kw)
        self.items.append((proc, kind))
        return proc

    def note_children(self, proc: subprocess.Popen) -> None:
        try:
            import psutil

            self.extra.extend(psutil.Process(proc.pid).children(recursive=True))
        except Exception:
            pass

    def signal(self, proc: subprocess.Popen, signum: int) -> None:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass

    def end(self, proc: subprocess.Popen, kind: str, grace: float = 10.0) -> None:
        """SIGCONT if we stopped it; SIGTERM (controllers, helpers) or SIGKILL; reap."""
        if proc.pid in self.stopped:
            self.signal(proc, signal.SIGCONT)
            self.stopped.discard(proc.pid)
        if proc.poll() is None:
            if kind in ("controller", "helper"):
                self.note_children(proc)
                self.signal(proc, signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            self.signal(proc, signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            print(f"warning: pid {proc.pid} ({kind}) did not end", file=sys.stderr)

    def cleanup(self) -> None:
        if self.done:
            return
        self.done = True
        order = {"engine": 0, "helper": 1, "controller": 2}
        for proc, kind in sorted(self.items, key=lambda item: order.get(item[1], 0)):
            self.end(proc, kind)
        for child in self.extra:  # local engines of a controller that did not stop them
            try:
                if child.is_running():
                    child.kill()
            except Exception:
                pass


PROCS = Procs()


# =============================================================================
# a controller subprocess
# =============================================================================


class Controller:
    """``twistd -n --pidfile= ipcluster`` in a subprocess, and a Client on it."""

    def __init__(self, root: Path, name: str, engines: int = 0) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.engines_n = engines
        self.connection_file = self.dir / "connection.json"
        self.log_path = self.dir / "controller.log"
        self.proc: Optional[subprocess.Popen] = None
        self.client = None

    def start(self, timeout: float = BOUND) -> "Controller":
        import ipcluster

        argv = [
            TWISTD, "-n", "--pidfile=", "ipcluster",
            "--data-dir", self.dir, "--ip", IP, "--engines", self.engines_n,
        ]
        with open(self.log_path, "wb") as log:
            self.proc = PROCS.spawn(
                argv, "controller", stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                env={"IPCLUSTER_DIR": str(self.dir)},
            )
        deadline = time.monotonic() + timeout
        while not self.connection_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no connection file after {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.02)
        self.client = ipcluster.Client(str(self.connection_file), timeout=10.0)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def engines(self) -> dict:
        return {e["id"]: e for e in self.client.engines()}

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_text(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
        if self.proc is not None:
            PROCS.end(self.proc, "controller", grace=15.0)


# =============================================================================
# statistics and waiting
# =============================================================================


def summary(values) -> dict:
    values = list(values)
    return {
        "n": len(values),
        "median": statistics.median(values) if values else float("nan"),
        "p99": pct(values, 99),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """The predicate's first truthy value, polled; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads, not its children)."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


# =============================================================================
# 1. round-trip time
# =============================================================================


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


# =============================================================================
# 3. controller CPU with many simulated engines
# =============================================================================

EVENT_RE = re.compile(r"engine (\S+) (dead|purged|busy|registering|left|alive again)\b")
LATE_RE = re.compile(r"heart monitor ran [0-9.]+ s late")


def helper_split(total: int, procs: int) -> list:
    procs = max(1, min(procs, total))
    base, extra = divmod(total, procs)
    return [base + (1 if i < extra else 0) for i in range(procs)]


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line from the helper's stdout, or '' at EOF / timeout."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return ""
    return proc.stdout.readline().decode("utf-8", "replace").strip()


def cpu_level(root: Path, n: int, procs: int, window: float, warmup: float) -> dict:
    ctl = Controller(root, f"cpu-{n}", engines=0).start()
    helpers = []
    try:
        started = time.monotonic()
        for p, count in enumerate(helper_split(n, procs) if n else []):
            err = open(root / f"cpu-{n}" / f"helper-{p}.log", "wb")
            helpers.append(
                PROCS.spawn(
                    [sys.executable, SCRIPT, "--hearts", count, "--connection-file", ctl.connection_file,
                     "--id-prefix", f"sim{p}-"],
                    "helper", stdout=subprocess.PIPE, stderr=err,
                )
            )
            err.close()
        for p, helper in enumerate(helpers):
            deadline = time.monotonic() + 2 * BOUND
            while True:
                line = read_line(helper, max(0.0, deadline - time.monotonic()))
                if line.startswith("READY"):
                    break
                if not line and (helper.poll() is not None or time.monotonic() > deadline):
                    raise RuntimeError(f"helper {p} did not get ready (exit {helper.poll()})")
                if line.startswith("FAILED"):
                    raise RuntimeError(f"helper {p}: {line}")

        def all_alive():
            engines = ctl.engines()
            alive = [e for e in engines.values() if e["state"] == "alive"]
            return (engines,) if len(alive) >= n else None

        wait_for(all_alive, BOUND, f"{n} simulated engines to be alive", interval=0.25)
        ready_s = time.monotonic() - started
        time.sleep(warmup)  # a few beats of steady state before the window
        before = ctl.engines()
        if len(before) != n or any(e["state"] != "alive" for e in before.values()):
            states = {}
            for e in before.values():
                states[e["state"]] = states.get(e["state"], 0) + 1
            raise RuntimeError(f"not steady before the window: {states}")
        log_start = ctl.log_size()
        helper_cpu0 = sum(cpu_seconds(h.pid) for h in helpers)
        c0, t0 = cpu_seconds(ctl.pid), time.monotonic()
        time.sleep(window)  # the measurement window: nothing talks to the controller
        c1, t1 = cpu_seconds(ctl.pid), time.monotonic()
        helper_cpu1 = sum(cpu_seconds(h.pid) for h in helpers)
        log = ctl.log_text(log_start)
        after = ctl.engines()
        events: dict = {}
        for m in EVENT_RE.finditer(log):
            events[m.group(2)] = events.get(m.group(2), 0) + 1
        late = len(LATE_RE.findall(log))
        changed = [
            eid for eid, e in before.items()
            if eid not in after or after[eid]["state"] != "alive" or after[eid]["registered_at"] != e["registered_at"]
        ]
        rtts = [e["rtt"] for e in after.values() if e["rtt"] is not None]
        cpu = (c1 - c0) / (t1 - t0)
        # stop the helpers (they print their counters), then the controller
        counters = []
        for helper in helpers:
            PROCS.signal(helper, signal.SIGTERM)
        for helper in helpers:
            try:
                out, _ = helper.communicate(timeout=30)
                lines = out.decode().strip().splitlines()
                counters.append(json.loads(lines[-1]) if lines else {})
            except Exception:
                counters.append({})
        return {
            "engines": n,
            "helper_processes": len(helpers),
            "seconds_to_all_alive": ready_s,
            "window_s": t1 - t0,
            "controller_cpu_s": c1 - c0,
            "controller_cpu_per_s": cpu,
            "controller_percent_core": 100.0 * cpu,
            "helpers_percent_core": 100.0 * (helper_cpu1 - helper_cpu0) / (t1 - t0),
            "not_alive_after_window": len(changed),
            "events_in_window": events,
            "late_ticks_in_window": late,
            "rtt_after_window": summary(rtts) if rtts else None,
            "helper_unknown_msgs": sum(c.get("unknown", 0) for c in counters),
            "helper_pongs": sum(c.get("pongs", 0) for c in counters),
            "late_tick_lines": [line for line in log.splitlines() if LATE_RE.search(line)][:5],
            # liveness only: late ticks are reported (a column) but are the controller's lag, not a false death
            "ok": not changed and not events,
        }
    finally:
        for helper in helpers:
            PROCS.end(helper, "helper")
        ctl.stop()


# =============================================================================
# report
# =============================================================================


def fmt_s(x: float, unit: str = "ms") -> str:
    if x != x:  # nan
        return "-"
    if unit == "us":
        return f"{x * 1e6:8.1f} us"
    if unit == "ms":
        return f"{x * 1e3:8.2f} ms"
    return f"{x:8.3f} s "


def print_report(res: dict) -> None:
    env = res["environment"]
    print()
    print("ipcluster heartbeat benchmark")
    print(f"  {env['python']} | pyzmq {env['pyzmq']} / libzmq {env['libzmq']} | Twisted {env['twisted']} | "
          f"{env['cpus']} CPUs | {env['platform']}")
    hb = res["settings"]
    print(f"  controller defaults: heartbeat period {hb['heartbeat_period']:g} s, dead after "
          f"{hb['heartbeat_misses']} missed beats")
    if "rtt" in res:
        raw, via = res["rtt"]["raw_heart"], res["rtt"]["controller"]
        print()
        print("1. Heartbeat round-trip time")
        print(f"   {'':44} {'n':>6} {'median':>11} {'p99':>11} {'max':>11}")
        print(f"   {'raw: pyzmq ROUTER -> in-process Heart':44} {raw['n']:>6} {fmt_s(raw['median'], 'us'):>11} "
              f"{fmt_s(raw['p99'], 'us'):>11} {fmt_s(raw['max'], 'us'):>11}")
        print(f"   {'controller rtt (engines(), one per beat)':44} {via['n']:>6} {fmt_s(via['median'], 'us'):>11} "
              f"{fmt_s(via['p99'], 'us'):>11} {fmt_s(via['max'], 'us'):>11}")
        print(f"   (controller: {via['engines']} local engines sampled for {via['seconds']:g} s, "
              f"{via['samples']} samples; engines() call median {via['engines_call']['median'] * 1e3:.2f} ms)")
    if "death" in res:
        d = res["death"]
        print()
        print("2. Time from signal to state 'dead' in client.engines() (polled every 20 ms)")
        print(f"   {'':44} {'n':>3} {'median':>10} {'min':>10} {'max':>10}")
        rows = [
            ("external engine, SIGKILL", d["external"]["SIGKILL"]),
            ("external engine, SIGSTOP", d["external"]["SIGSTOP"]),
            ("controller-started engine, SIGKILL", d["local_sigkill"]),
        ]
        for label, r in rows:
            print(f"   {label:44} {r['n']:>3} {fmt_s(r['median'], 's'):>10} {fmt_s(r['min'], 's'):>10} "
                  f"{fmt_s(r['max'], 's'):>10}")
        for label, r in rows:
            print(f"   {label + ':':37} samples " + ", ".join(f"{x:.3f}" for x in r["samples"]) + " s")
            print(f"   {'':37} reason  {r['reason']!r}")
    if "cpu" in res:
        print()
        print("3. Controller CPU with simulated engines (real Hearts, spread over helper processes)")
        print(f"   {'engines':>7} {'window':>7} {'cpu s':>7} {'% core':>7} {'helpers %':>9} {'up in':>7} "
              f"{'rtt med':>9} {'rtt p99':>9} {'late':>4} {'events':>6} {'dead':>4}  ok")
        for r in res["cpu"]:
            rtt = r["rtt_after_window"]
            med = f"{rtt['median'] * 1e3:.2f}ms" if rtt else "-"
            p99 = f"{rtt['p99'] * 1e3:.2f}ms" if rtt else "-"
            print(
                f"   {r['engines']:>7} {r['window_s']:>6.1f}s {r['controller_cpu_s']:>7.2f} "
                f"{r['controller_percent_core']:>6.1f}% {r['helpers_percent_core']:>8.1f}% "
                f"{r['seconds_to_all_alive']:>6.1f}s "
                f"{med:>9} {p99:>9} "
                f"{r['late_ticks_in_window']:>4} {sum(r['events_in_window'].values()):>6} "
                f"{r['not_alive_after_window']:>4}  {'yes' if r['ok'] else 'NO'}"
            )
        print("   (% core: controller user+system CPU seconds per wall second x 100; helpers %: the simulated")
        print("    engines' processes, same machine; late: monitor ticks the controller ran late, which judge")
        print("    nobody; events: dead/busy/purged/left/registering lines in the controller log during the")
        print("    window; dead: engines not alive, or re-registered, after the window; ok: events = dead = 0;")
        print("    rtt: engines() rtt fields after the window; pongs are read only after the tick has sent")
        print("    all its pings, so at scale this rtt includes the time the monitor's tick takes)")
    print()
    print(f"total runtime {res['runtime_s']:.1f} s; load average (1/5/15 min) at start "
          f"{env['loadavg_at_start']}, at end {env['loadavg_at_end']}")


def environment() -> dict:
    import twisted
    import zmq

    return {
        "python": f"Python {platform.python_version()}",
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "twisted": twisted.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# =============================================================================
# main
# =============================================================================


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help="shorter run: 3 s of RTT sampling, 3 trials, 5 s CPU windows, no idle baseline")
    p.add_argument("--only", default="rtt,death,cpu", help="comma-separated parts to run (rtt, death, cpu)")
    p.add_argument("--raw-pings", type=int, default=2000, help="pings to the in-process heart (default 2000)")
    p.add_argument("--rtt-seconds", type=float, default=None, help="seconds of engines() rtt sampling (default 8)")
    p.add_argument("--trials", type=int, default=None, help="kills per kind (default 5)")
    p.add_argument("--cpu-engines", default=None, help="simulated engine counts (default 0,100,1000)")
    p.add_argument("--cpu-window", type=float, default=None, help="CPU measurement window in s (default 10)")
    p.add_argument("--cpu-warmup", type=float, default=2.0, help="steady-state seconds before the window (default 2)")
    p.add_argument("--procs", type=int, default=4, help="helper processes for simulated engines (default 4)")
    p.add_argument("--seed", type=int, default=None, help="seed for the random kill phases")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs)")
    # helper mode
    p.add_argument("--hearts", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--connection-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--id-prefix", default=None, help=argparse.SUPPRESS)
    p.add_argument("--register-timeout", type=float, default=BOUND, help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=900.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    if args.rtt_seconds is None:
        args.rtt_seconds = 3.0 if q else 8.0
    if args.trials is None:
        args.trials = 3 if q else 5
    if args.cpu_window is None:
        args.cpu_window = 5.0 if q else 10.0
    if args.cpu_engines is None:
        args.cpu_engines = "100,1000" if q else "0,100,1000"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.hearts is not None:
        if not args.connection_file:
            sys.exit("--hearts needs --connection-file")
        prefix = args.id_prefix or f"sim-{os.getpid()}-"
        return run_hearts(args.hearts, args.connection_file, prefix, args.register_timeout, args.max_seconds)

    try:
        import psutil  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs psutil: .venv/bin/pip install psutil")
    for tool in (TWISTD, ENGINE):
        if not tool.exists():
            sys.exit(f"{tool} not found: run this with the project's venv python (.venv/bin/python)")
    from ipcluster.controller.heartmonitor import DEFAULT_MISSES, DEFAULT_PERIOD

    parts = {x.strip() for x in args.only.split(",") if x.strip()}
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="ipcluster-bench-"))
    atexit.register(PROCS.cleanup)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    res: dict = {
        "environment": environment(),
        "settings": {"heartbeat_period": DEFAULT_PERIOD, "heartbeat_misses": DEFAULT_MISSES},
        "args": {k: v for k, v in vars(args).items() if k not in ("hearts", "connection_file", "id_prefix")},
    }
    failed = False
    try:
        if parts & {"rtt", "death"}:
            print("starting controller with 2 local engines ...", file=sys.stderr, flush=True)
            ctl = Controller(root, "main", engines=2).start()
            try:
                ctl.client.wait_for_engines(2, timeout=BOUND)
                PROCS.note_children(ctl.proc)
                if "rtt" in parts:
                    print(f"measuring RTT ({args.raw_pings} raw pings, {args.rtt_seconds:g} s of engines()) ...",
                          file=sys.stderr, flush=True)
                    res["rtt"] = {
                        "raw_heart": raw_heart_rtt(args.raw_pings),
                        "controller": controller_rtt(ctl, args.rtt_seconds),
                    }
                if "death" in parts:
                    print(f"death detection: {args.trials} SIGKILL + {args.trials} SIGSTOP external engines ...",
                          file=sys.stderr, flush=True)
                    external = external_deaths(ctl, root, args.trials, DEFAULT_PERIOD, rng)
            finally:
                ctl.stop()
            if "death" in parts:
                print(f"death detection: {args.trials} SIGKILL controller-started engines ...",
                      file=sys.stderr, flush=True)
                res["death"] = {
                    "external": external,
                    "local_sigkill": local_deaths(root, args.trials, DEFAULT_PERIOD, rng),
                }
        if "cpu" in parts:
            res["cpu"] = []
            for n in [int(x) for x in args.cpu_engines.split(",") if x.strip()]:
                print(f"controller CPU with {n} simulated engines ({args.cpu_window:g} s window) ...",
                      file=sys.stderr, flush=True)
                res["cpu"].append(cpu_level(root, n, args.procs, args.cpu_window, args.cpu_warmup))
    except BaseException:
        failed = True
        print(f"benchmark failed; logs in {root}", file=sys.stderr)
        raise
    finally:
        PROCS.cleanup()
        if not failed and not args.keep_tmp:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep_tmp:
            print(f"logs kept in {root}", file=sys.stderr)
    res["runtime_s"] = time.monotonic() - started
    res["environment"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(res)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
