"""Helpers for integration tests: a real controller, real engine processes, bounded waits.

Everything started here is cleaned up through ``addCleanup``, so a failing
test leaves no process or socket behind.  Waits are on events (registry
transitions, process exit) with generous bounds -- never fixed sleeps.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Callable, Optional

from twisted.internet import defer, error, protocol, reactor

from ipcluster.controller.registry import EngineRecord

BOUND = 60.0  # seconds: generous, this machine is shared and noisy


class Timeout(AssertionError):
    pass


def within(d: defer.Deferred, seconds: float, what: str) -> defer.Deferred:
    """``d``, failing with Timeout (an AssertionError) if it has not fired in ``seconds``."""
    result = defer.Deferred()
    timer = reactor.callLater(seconds, lambda: result.called or result.errback(Timeout(f"timed out after {seconds:g} s waiting for {what}")))

    def done(value):
        if timer.active():
            timer.cancel()
        if not result.called:
            result.callback(value)
        return None

    def failed(f):
        if timer.active():
            timer.cancel()
        if not result.called:
            result.errback(f)
        return None

    d.addCallbacks(done, failed)
    return result


def until(predicate: Callable[[], object], seconds: float = BOUND, what: str = "a condition", interval: float = 0.02) -> defer.Deferred:
    """Fires with the predicate's first truthy value; polls the in-process state, bounded."""
    d = defer.Deferred()
    deadline = reactor.seconds() + seconds
    call = [None]

    def check():
        try:
            value = predicate()
        except Exception:
            d.errback()
            return
        if value:
            d.callback(value)
        elif reactor.seconds() > deadline:
            d.errback(Timeout(f"timed out after {seconds:g} s waiting for {what}"))
        else:
            call[0] = reactor.callLater(interval, check)

    check()
    return d


def event(registry, wanted: str, engine_id: str, seconds: float = BOUND) -> defer.Deferred:
    """Fires with ``(record, reason)`` at the registry's next ``wanted`` event for ``engine_id``."""
    d = defer.Deferred()

    def listener(ev: str, record: EngineRecord, reason: str) -> None:
        if ev == wanted and record.id == engine_id and not d.called:
            registry.unsubscribe(listener)
            d.callback((record, reason))

    registry.subscribe(listener)

    def cleanup(result):
        registry.unsubscribe(listener)
        return result

    return within(d, seconds, f"engine {engine_id} {wanted}").addBoth(cleanup)


class Process(protocol.ProcessProtocol):
    """A child process whose output we keep and whose end we can wait for."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()
        self.pid: Optional[int] = None
        self.status = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.status = reason.value
        self.ended.callback(reason.value)

    @property
    def running(self) -> bool:
        return not self.ended.called

    def kill(self, signum: int) -> None:
        if self.running and self.pid:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def exit_code(self) -> Optional[int]:
        return getattr(self.status, "exitCode", None)

    def output(self) -> str:
        return (self.out + self.err).decode("utf-8", "replace")


def spawn(testcase, name: str, argv: list, env: Optional[dict] = None, path: Optional[str] = None) -> Process:
    """Start a child process (in directory ``path``); at cleanup SIGCONT+SIGKILL it (if still running) and reap it."""
    proc = Process(name)
    reactor.spawnProcess(proc, argv[0], argv, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), path=path)

    def reap():
        if proc.running:
            proc.kill(signal.SIGCONT)
            proc.kill(signal.SIGKILL)
        return within(proc.ended, BOUND, f"{name} to be reaped").addErrback(lambda f: f.trap(error.ProcessTerminated, error.ProcessDone))

    testcase.addCleanup(reap)
    return proc


def spawn_engine(testcase, connection_file, engine_id: str, *extra: str) -> Process:
    argv = [sys.executable, "-m", "ipcluster.engine", "--connection-file", str(connection_file), "--id", engine_id, *extra]
    return spawn(testcase, f"engine {engine_id}", argv)


@defer.inlineCallbacks
def start_controller(testcase, data_dir: Optional[str] = None, **config):
    """An in-process Controller on the test's reactor, stopped at cleanup."""
    from ipcluster.controller.service import Controller, ControllerConfig

    data_dir = data_dir or testcase.mktemp()
    controller = Controller(ControllerConfig(data_dir=Path(data_dir), **config), reactor)
    controller.privilegedStartService()
    controller.startService()
    testcase.addCleanup(lambda: controller.stopService() if controller.running else None)
    yield None
    return controller


@defer.inlineCallbacks
def start_engines(testcase, controller, ids, *extra: str):
    """Spawn external engines and wait until every one has joined."""
    joined = [event(controller.registry, "joined", eid) for eid in ids]
    procs = [spawn_engine(testcase, controller.config.connection_file, eid, *extra) for eid in ids]
    try:
        yield defer.gatherResults(joined, consumeErrors=True)
    except defer.FirstError as e:
        outputs = "\n".join(f"--- {p.name}:\n{p.output()}" for p in procs)
        raise AssertionError(f"engines did not join: {e.subFailure.value}\n{outputs}")
    return dict(zip(ids, procs))


@defer.inlineCallbacks
def connect_client(testcase, controller):
    from ipcluster.client.twisted import TwistedClient

    client = yield TwistedClient.connect(str(controller.config.connection_file), reactor=reactor)
    testcase.addCleanup(client.close)
    return client


def error_of(d: defer.Deferred, what: str, seconds: float = BOUND) -> defer.Deferred:
    """Fires with the exception ``d`` fails with; fails the test if ``d`` succeeds instead."""

    def succeeded(value):
        raise AssertionError(f"expected {what} to fail, it gave {value!r}")

    return within(d.addCallbacks(succeeded, lambda f: f.value), seconds, what)
