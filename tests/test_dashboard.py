"""The dashboard's live data: task runs (RunLog), the history ring on task.Clock, the event hub's
bounds with a fake request, and ``/events`` on a real listening port with real engines.

(The page itself, in headless Chromium, is tests/test_web.py's Dashboard.)
"""
from __future__ import annotations

import json
import os
import socket

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.interfaces import IPushProducer
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from ipcluster.controller.registry import Registry
from ipcluster.controller.status import ControllerStatus
from ipcluster.scheduler.runs import RunLog, outcome_of
from ipcluster.web import events
from ipcluster.web.events import EventHub, EventStream, frame, start_stream
from ipcluster.web.history import History
from tests.cluster import BOUND, connect_client, start_controller, start_engines, until, within
from tests.test_web import _Controller, start_web


class _Task:
    def __init__(self, task_id="t1", engine="e0", started_at=None, name=""):
        self.id, self.engine, self.started_at, self.name = task_id, engine, started_at, name


class Runs(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(100.0)
        self.log = RunLog(self.clock)
        self.seen = []
        self.log.subscribe(self.seen.append)

    def test_outcomes(self):
        self.assertEqual(outcome_of(True, None), "ok")
        self.assertEqual(outcome_of(False, {"type": "TaskCancelled", "message": "x"}), "cancelled")
        self.assertEqual(outcome_of(False, {"type": "ValueError"}), "failed")
        self.assertEqual(outcome_of(False, "not a dict"), "failed")

    def test_an_announced_run_spans_its_start_to_now(self):
        self.log.finished(_Task(started_at=97.5, name="fit"), True, {}, None)
        self.assertEqual(self.seen, [{"task": "t1", "name": "fit", "engine": "e0", "start": 97.5, "end": 100.0,
                                      "outcome": "ok"}])  # fmt: skip

    def test_a_short_run_lasts_what_its_engine_measured(self):
        # The engine's clock is far off; only the difference counts.
        self.log.finished(_Task(), False, {"started": 5000.0, "finished": 5000.25}, {"type": "ZeroDivisionError"})
        (run,) = self.seen
        self.assertEqual((run["start"], run["end"], run["outcome"]), (99.75, 100.0, "failed"))

    def test_no_run_without_an_engine_or_a_start(self):
        self.log.finished(_Task(engine=None), False, {}, {"type": "TaskCancelled"})  # cancelled while queued
        self.log.finished(_Task(), False, {}, {"type": "ValueError"})  # lost before it was seen to start
        self.log.finished(_Task(), True, {"started": True, "finished": 3.0}, None)  # nonsense durations
        self.log.finished(_Task(), True, {"started": 1.0, "finished": 1e9}, None)
        self.assertEqual(self.seen, [])
        self.log.finished(_Task(), False, {}, {"type": "TaskCancelled"})  # prefetched, given back for a cancel
        self.assertEqual([(r["start"], r["end"], r["outcome"]) for r in self.seen], [(100.0, 100.0, "cancelled")])

    def test_retried_and_unsubscribed(self):
        self.log.retried(_Task(started_at=99.0))
        self.assertEqual(self.seen[0]["outcome"], "retried")
        self.log.unsubscribe(self.seen.append)
        self.log.unsubscribe(self.seen.append)  # twice is harmless
        self.log.retried(_Task(started_at=99.0))
        self.assertEqual(len(self.seen), 1)


class HistoryOnAClock(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.controller = _Controller(self.clock)
        self.addCleanup(self.controller.drops.stop)
        self.cpu = {}
        status = self.controller.status
        status._rss_of = lambda pid: 50_000_000 + pid
        status._cpu_of = lambda pid: self.cpu.get(pid)
        registry = self.controller.registry
        for eid, pid, local in (("e0", 10, True), ("e1", 11, True), ("r0", 12, False)):
            record = registry.register(eid, "i-" + eid, "h", pid, 0.0)
            record.local = local
            registry.mark_alive(record, 0.0)

    def test_usage_reads_only_the_local_live_engines(self):
        self.cpu = {10: 1.0}
        self.assertEqual(self.controller.status.usage(),
                         {"e0": {"rss": 50_000_010, "cpu": 1.0}, "e1": {"rss": 50_000_011, "cpu": None}})
        self.controller.registry.mark_dead(self.controller.registry.get("e1"), "test", 1.0)
        self.assertEqual(set(self.controller.status.usage()), {"e0"})

    def test_rate_queue_and_cpu_per_second_in_a_bounded_ring(self):
        history = History(self.controller.status, self.clock, keep_samples=5)
        scheduler = self.controller.scheduler
        self.cpu = {10: 1.0, 11: 0.0}
        first = history.sample()
        self.assertIsNone(first["per_second"])
        self.assertEqual(first["engines"]["e0"], {"rss": 50_000_010, "cpu": None})
        self.assertNotIn("r0", first["engines"])  # a remote engine: no usage
        for second in range(1, 9):
            self.clock.advance(1.0)
            scheduler.completed += 3
            scheduler.failed += second % 2
            scheduler.ready = second
            self.cpu = {10: 1.0 + 0.5 * second, 11: 0.0}
            last = history.sample()
            self.assertEqual(last["per_second"], 3 + second % 2)
            self.assertEqual(last["queued"], second)
            self.assertEqual(last["engines"]["e0"]["cpu"], 50.0)
            self.assertEqual(last["engines"]["e1"]["cpu"], 0.0)
        self.assertEqual([s["time"] for s in history.snapshot()["samples"]], [4.0, 5.0, 6.0, 7.0, 8.0])

    def test_runs_ring_keeps_the_newest_and_tells_on_run(self):
        told = []
        history = History(self.controller.status, self.clock, keep_runs=3, on_run=told.append)
        history.watch()
        history.watch()  # once only
        runs = self.controller.scheduler.runs
        for i in range(5):
            runs.finished(_Task(f"t{i}", started_at=0.0), True, {}, None)
        self.assertEqual([r["task"] for r in history.snapshot()["runs"]], ["t2", "t3", "t4"])
        self.assertEqual(len(told), 5)
        history.unwatch()
        runs.finished(_Task("t9", started_at=0.0), True, {}, None)
        self.assertEqual(len(told), 5)
        self.assertEqual(runs.listeners, [])


class _Transport:
    def __init__(self):
        self.aborted = False

    def abortConnection(self):
        self.aborted = True

    def loseConnection(self):
        raise AssertionError("a slow reader's connection is aborted, not closed after its backlog")


class _Request(DummyRequest):
    """A DummyRequest that records a producer, and a transport that can be aborted."""

    def __init__(self):
        super().__init__([b"events"])
        self.transport = _Transport()
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer


class Hub(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.hub = EventHub(self.clock, max_streams=2, max_pending=1000, batch=0.05)

    def open(self):
        request = _Request()
        self.assertEqual(start_stream(self.hub, request, lambda: frame("hello", {"n": 1})), events.server.NOT_DONE_YET)
        return request

    def test_frames_are_one_data_line_of_json(self):
        data = frame("tick", {"text": "two\nlines", "n": 1.5})
        self.assertEqual(data, b'event: tick\ndata: {"text":"two\\nlines","n":1.5}\n\n')
        self.assertRaises(ValueError, frame, "tick", {"n": float("nan")})

    def test_hello_then_broadcast_and_a_cap_on_streams(self):
        a, b = self.open(), self.open()
        verifyObject(IPushProducer, a.producer)
        self.assertEqual(a.responseHeaders.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        self.hub.broadcast(b"x")
        self.assertEqual(a.written, [b'event: hello\ndata: {"n":1}\n\n', b"x"])
        refused = _Request()
        body = start_stream(self.hub, refused, lambda: self.fail("a refused stream made a hello"))
        self.assertEqual(refused.responseCode, 503)
        self.assertIn(b"status.json", body)
        self.assertEqual(self.hub.refused, 1)
        a.processingFailed(Exception("gone"))  # the browser went away: its place is free
        self.assertEqual(len(self.hub.streams), 1)
        self.open()

    def test_a_paused_stream_is_held_then_dropped_at_the_cap(self):
        request = self.open()
        stream: EventStream = request.producer
        stream.pauseProducing()
        self.hub.broadcast(b"a" * 600)
        self.hub.broadcast(b"b" * 300)
        self.assertEqual(len(request.written), 1)  # held, not written
        self.assertEqual(stream.pending_bytes, 900)
        stream.resumeProducing()
        self.assertEqual(request.written[1:], [b"a" * 600, b"b" * 300])
        stream.pauseProducing()
        self.hub.broadcast(b"c" * 800)
        self.hub.broadcast(b"d" * 300)  # 1100 > 1000: this reader is too slow
        self.assertTrue(request.transport.aborted)
        self.assertEqual((self.hub.dropped, len(self.hub.streams), stream.pending), (1, 0, []))
        self.hub.broadcast(b"e")  # nothing more is held or written for it
        self.assertEqual(stream.pending_bytes, 0)

    def test_runs_are_batched_on_the_clock(self):
        self.hub.run({"task": "ignored: no stream is open"})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        request = self.open()
        self.hub.run({"task": "t1"})
        self.hub.run({"task": "t2"})
        self.assertEqual(len(request.written), 1)
        self.clock.advance(0.05)
        self.assertEqual(request.written[1], b'event: runs\ndata: [{"task":"t1"},{"task":"t2"}]\n\n')
        self.hub.run({"task": "t3"})
        self.hub.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(request.transport.aborted)


# -- /events on a real port ----------------------------------------------------------------


class SseReader(protocol.Protocol):
    """Parses a text/event-stream body into (event, data, arrival time) and fires waiters."""

    def __init__(self):
        self.buffer = b""
        self.events: list = []
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            self.events.append((fields[b"event"].decode(), json.loads(fields[b"data"]), reactor.seconds()))

    def connectionLost(self, reason):
        self.done.callback(None)

    def runs(self) -> dict:
        return {run["task"]: (run, at) for name, data, at in self.events if name == "runs" for run in data}


def echo(x):
    return x


class StalledReader(protocol.Protocol):
    """Asks for /events with a tiny receive buffer, then never reads."""

    def connectionMade(self):
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.write(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.transport.pauseProducing()  # stop reading: the controller's writes pile up
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        self.lost.callback(None)


class Events(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.controller = yield start_controller(self)
        yield start_engines(self, self.controller, ["e0", "e1"])
        self.client = yield connect_client(self, self.controller)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    @defer.inlineCallbacks
    def stream(self, base):
        response = yield within(self.agent.request(b"GET", (base + "/events").encode()), BOUND, "GET /events")
        reader = SseReader()
        response.deliverBody(reader)
        self.addCleanup(lambda: response._transport.stopProducing() if not reader.done.called else None)
        return response, reader

    @defer.inlineCallbacks
    def test_a_task_that_ends_arrives_as_a_run(self):
        svc, base = yield start_web(self, self.controller)
        response, reader = yield self.stream(base)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream; charset=utf-8"])
        yield until(lambda: reader.events, what="the hello")
        name, hello, _ = reader.events[0]
        self.assertEqual(name, "hello")
        self.assertEqual(sorted(e["id"] for e in hello["status"]["engines"]), ["e0", "e1"])
        d = self.client.submit(echo, 7, engine="e1")
        self.assertEqual((yield within(d, BOUND, "the task")), 7)
        yield until(lambda: d.task_id in reader.runs(), what="the task's run on the stream")
        run, arrived = reader.runs()[d.task_id]
        self.assertEqual((run["engine"], run["outcome"]), ("e1", "ok"))
        self.assertLessEqual(run["start"], run["end"])
        ticks = lambda: [data for name, data, _ in reader.events if name == "tick"]  # noqa: E731
        yield until(lambda: any(t["status"]["tasks"]["completed"] == 1 for t in ticks()), what="a tick after the task")
        self.assertIn("per_second", ticks()[-1]["sample"])

    @defer.inlineCallbacks
    def test_a_reader_that_stops_is_dropped_and_others_go_on(self):
        self.patch(events, "SEND_BUFFER", 4096)
        svc, base = yield start_web(self, self.controller)
        svc.events.max_pending = 16 * 1024
        _, live = yield self.stream(base)
        stalled = StalledReader()
        port = int(base.rsplit(":", 1)[1])
        connector = reactor.connectTCP("127.0.0.1", port, protocol.ClientFactory.forProtocol(lambda: stalled))
        self.addCleanup(connector.disconnect)
        yield until(lambda: len(svc.events.streams) == 2, what="two open streams")
        # Load: a few thousand runs (~150 bytes each) on every stream, in bounded rounds.
        for _ in range(20):
            if svc.events.dropped:
                break
            yield within(defer.gatherResults([self.client.submit(echo, i) for i in range(200)]), BOUND, "200 tasks")
        self.assertEqual(svc.events.dropped, 1, "the stalled reader was never dropped")
        self.assertEqual(len(svc.events.streams), 1)
        stalled.transport.resumeProducing()  # reading again, it finds the connection reset
        yield within(stalled.lost, BOUND, "the stalled connection to close")
        # The controller still serves: the live reader sees a new task's run, status.json answers.
        d = self.client.submit(echo, "after")
        yield within(d, BOUND, "a task after the drop")
        yield until(lambda: d.task_id in live.runs(), what="the live reader to see the new run")
        response = yield within(self.agent.request(b"GET", (base + "/status.json").encode()), BOUND, "status.json")
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_streams_past_the_cap_are_refused(self):
        svc, base = yield start_web(self, self.controller)
        svc.events.max_streams = 1
        _, first = yield self.stream(base)
        response = yield within(self.agent.request(b"GET", (base + "/events").encode()), BOUND, "a second stream")
        self.assertEqual(response.code, 503)
        self.assertEqual(svc.events.refused, 1)
        yield svc.stopService()  # the service stops: its streams end
        yield within(first.done, BOUND, "the open stream to end")


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


class StatusCommand(unittest.TestCase):
    """``ipcluster status`` against a live controller: each engine's running task, and the tasks
    queued in the controller (the front end's ``tasks`` request)."""

    timeout = 180

    @defer.inlineCallbacks
    def test_status_lists_the_running_task_and_the_controllers_queue(self):
        import sys

        from twisted.internet import utils

        from ipcluster import errors

        controller = yield start_controller(self)
        yield start_engines(self, controller, ["e0"])
        client = yield connect_client(self, controller)
        running = client.submit(nap, 60, engine="e0")
        behind = [client.submit(nap, 0, engine="e0") for _ in range(4)]  # one prefetched, three in the controller
        for d in [running, *behind]:
            d.addErrback(lambda f: None)
        yield until(lambda: controller.registry.get("e0").running_task == running.task_id, what="the nap to start")
        listing = yield within(client.tasks(limit=2), BOUND, "the tasks request")
        self.assertEqual(listing["queued_total"], 3)
        self.assertEqual([t["task"] for t in listing["queued"]], [d.task_id for d in behind[1:3]])
        self.assertEqual(listing["queued"][0]["engines"], ["e0"])
        self.assertEqual(listing["counts"]["ready"], 3)
        bad = yield within(client.tasks(limit=-1).addCallbacks(lambda v: v, lambda f: f.value), BOUND, "a bad limit")
        self.assertIsInstance(bad, errors.BadRequest)

        out, err, code = yield within(utils.getProcessOutputAndValue(
            sys.executable, ["-m", "ipcluster", "status", "--data-dir", str(controller.config.data_dir)],
            env=dict(os.environ)), BOUND, "ipcluster status")  # fmt: skip
        text = out.decode()
        self.assertEqual(code, 0, text + err.decode())
        row = next(line for line in text.splitlines() if line.startswith("e0 "))
        self.assertIn(running.task_id, row)
        self.assertIn("3 ready and 0 waiting in the controller", text)
        self.assertIn("queued in the controller (3):", text)
        for d in behind[1:]:
            self.assertRegex(text, rf"(?m)^  {d.task_id}  ready    nap  \(e0\)$")
