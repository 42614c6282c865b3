"""Issue 11, item 4: a running task's output, streamed to its clients while it runs."""
from __future__ import annotations

import io
import threading

from twisted.internet import defer
from twisted.trial import unittest

from ipcluster.engine.liveoutput import INTERVAL, MAX_CHUNK, MAX_STREAMED, TRUNCATED, LiveOutput, LiveStream
from ipcluster.scheduler.output import MAX_OUTPUT_BYTES
from tests.cluster import BOUND, until
from tests.test_executor import ClusterCase
from tests.test_scheduler import Fixture


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def chatty(lines, pause):
    import sys
    import time

    for i in range(lines):
        print(f"line {i}")
        print(f"warn {i}", file=sys.stderr)
        time.sleep(pause)
    return lines


def flood(chars):
    import sys
    import time

    for _ in range(chars // 1000):
        sys.stdout.write("x" * 999 + "\n")
    time.sleep(0.3)
    return chars


class Pacing(unittest.TestCase):
    def setUp(self):
        self.clock = FakeClock()
        self.live = LiveOutput("t1", self.clock)
        self.capture = io.StringIO()
        self.out = LiveStream("stdout", self.capture, self.live)
        self.err = LiveStream("stderr", io.StringIO(), self.live)

    def test_nothing_before_the_interval_then_merged_chunks_in_order(self):
        self.out.write("a")
        self.out.write("b")
        self.err.write("E")
        self.out.write("c")
        self.assertEqual(self.live.take(), [], "a task younger than the interval streams nothing")
        self.assertEqual(self.live.take(final=True), [], "a task that never streamed: all of it is in its result")
        self.clock.now += INTERVAL
        self.assertEqual(self.live.take(), [("stdout", "ab"), ("stderr", "E"), ("stdout", "c")])
        self.out.write("d")
        self.assertEqual(self.live.take(), [], "not again before the interval")
        self.assertEqual(self.live.take(final=True), [("stdout", "d")], "the last of a streaming task")
        self.assertEqual(self.capture.getvalue(), "abcd", "the full capture has everything")

    def test_chunks_and_the_total_are_bounded(self):
        self.out.write("y" * (MAX_CHUNK * 2 + 5))
        self.clock.now += INTERVAL
        self.assertEqual([len(t) for _, t in self.live.take()], [MAX_CHUNK, MAX_CHUNK, 5])
        self.out.write("z" * MAX_STREAMED)
        self.out.write("more")
        self.out.write("and more")
        self.clock.now += INTERVAL
        chunks = self.live.take()
        self.assertEqual(sum(len(t) for _, t in chunks), MAX_STREAMED - (MAX_CHUNK * 2 + 5) + len(TRUNCATED))
        self.assertEqual(chunks[-1], ("stdout", TRUNCATED), "one notice")
        self.assertEqual(len(self.capture.getvalue()), MAX_CHUNK * 2 + 5 + MAX_STREAMED + 12)

    def test_a_stream_takes_only_text(self):
        with self.assertRaises(TypeError):
            self.out.write(b"bytes")


class Relay(Fixture):
    def test_output_goes_to_the_tasks_clients_and_is_not_stored(self):
        self.engine("e1")
        self.submit("t1", client=b"c1")
        self.from_engine("e1", "output", {"task": "t1", "stream": "stdout"}, [b"hello\n"])
        outputs = [(to, m) for to, m in self.to_clients if m.type == "output"]
        self.assertEqual(len(outputs), 1)
        to, msg = outputs[0]
        self.assertEqual((to, msg["task"], msg["stream"], msg["engine"], msg.payloads), (b"c1", "t1", "stdout", "e1", (b"hello\n",)))
        self.assertEqual(self.scheduler.output.relayed, 1)
        self.assertNotIn("hello", repr(self.store.records.get("t1")))

    def test_output_of_a_task_elsewhere_or_an_unknown_stream_is_dropped(self):
        self.engine("e1")
        self.engine("e2")
        self.submit("t1", engines=["e1"])
        self.from_engine("e2", "output", {"task": "t1", "stream": "stdout"}, [b"forged"])
        self.from_engine("e1", "output", {"task": "t1", "stream": "stdin"}, [b"odd"])
        self.from_engine("e1", "output", {"task": "t1", "stream": "stdout"}, [b"x" * (MAX_OUTPUT_BYTES + 1)])
        self.assertEqual([m for _, m in self.to_clients if m.type == "output"], [])
        reasons = {reason for (_, reason) in self.drops.totals}
        self.assertIn("output for a task not assigned to this engine", reasons)
        self.assertIn("output of an unknown stream", reasons)
        self.assertIn("oversize output", reasons)


class Streamed(ClusterCase):
    @defer.inlineCallbacks
    def test_callbacks_and_iter_output_see_it_while_the_task_runs(self):
        f = yield self.blocking(self.client.submit, chatty, 4, 0.25)
        heard = []
        seen_running = threading.Event()

        def on_output(stream, text):
            heard.append((stream, text))
            if not f.done():
                seen_running.set()

        f.add_output_callback(on_output)
        chunks = yield self.blocking(lambda: list(f.iter_output(timeout=BOUND)))
        self.assertTrue(f.done())
        yield self.blocking(f.result, BOUND)
        self.assertTrue(seen_running.is_set(), "output arrived while the task ran")
        streamed = {"stdout": "", "stderr": ""}
        for stream, text in chunks:
            streamed[stream] += text
        self.assertEqual(streamed, {"stdout": f.stdout, "stderr": f.stderr}, "every line was streamed, in order")
        self.assertGreater(len(chunks), 2, "in several chunks")
        late = []
        f.add_output_callback(lambda stream, text: late.append((stream, text)))  # replays what came before
        yield until(lambda: len(heard) == len(late) == len(f.output), what="the output callbacks")
        self.assertEqual(heard, f.output)
        self.assertEqual(late, f.output)

    @defer.inlineCallbacks
    def test_a_quick_task_streams_nothing_and_a_flood_is_bounded(self):
        quick = yield self.blocking(self.client.submit, chatty, 2, 0)
        yield self.blocking(quick.result, BOUND)
        self.assertEqual((quick.output, quick.stdout), ([], "line 0\nline 1\n"))
        self.assertEqual(list(quick.iter_output()), [])
        big = yield self.blocking(self.client.submit, flood, 2 * MAX_STREAMED)
        yield self.blocking(big.result, BOUND)
        streamed = sum(len(t) for _, t in big.output)
        self.assertEqual(streamed, MAX_STREAMED + len(TRUNCATED))
        self.assertEqual(len(big.stdout), 2 * MAX_STREAMED // 1000 * 1000, "the result has all of it")
