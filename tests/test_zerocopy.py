"""Zero-copy payloads: pickle-5 out-of-band buffers as frames of their own (``transport.buffers``),
large frames signed by their Poly1305 tags (``wire``), sent and received without copies (``zmqfast``)."""
from __future__ import annotations

import os

import msgpack
import zmq
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipcluster import errors
from ipcluster.client.core import ClientCore
from ipcluster.transport import buffers, joined, wire
from ipcluster.transport.wire import BadMessage, Codec
from ipcluster.transport.zmqfast import recv_frames, send_frames

from .cluster import BOUND, connect_client, start_controller, start_engines, within

try:
    import numpy
except ImportError:  # numpy is not a dependency
    numpy = None

KEY = b"k" * 32
BIG = 200_000


def needs_numpy(f):
    if numpy is None:
        f.skip = "numpy is not installed"
    return f


def echo(x):
    return x


def describe_array(a):
    return (str(a.dtype), a.shape, bool(a.flags.writeable), float(a.sum()))


class PickleBuffers(SynchronousTestCase):
    """``buffers.dumps``/``loads``: large buffers out of band, small ones in the pickle."""

    def round_trip(self, value, expect_buffers):
        payload, bufs = buffers.dumps(value)
        self.assertEqual(len(bufs), expect_buffers)
        return buffers.loads(payload, [bytearray(b) for b in bufs])  # as received: writable frames

    @needs_numpy
    def test_numpy_array_keeps_dtype_shape_and_values(self):
        a = numpy.arange(BIG, dtype=numpy.int32).reshape(400, 500)
        b = self.round_trip(a, 1)
        self.assertEqual((b.dtype, b.shape), (a.dtype, a.shape))
        self.assertTrue((a == b).all())
        self.assertTrue(b.flags.writeable)

    @needs_numpy
    def test_a_fortran_array_and_a_non_contiguous_one(self):
        f = numpy.asfortranarray(numpy.arange(BIG, dtype=numpy.float64).reshape(400, 500))
        self.assertTrue((self.round_trip(f, 1) == f).all())
        strided = numpy.arange(BIG, dtype=numpy.float64)[::2]  # no buffer to take: pickled in-band
        self.assertTrue((self.round_trip(strided, 0) == strided).all())

    def test_bytearray_bytes_and_memoryview(self):
        data = os.urandom(BIG)
        got = self.round_trip([bytearray(data), data, memoryview(data)], 3)
        self.assertEqual([type(v) for v in got], [bytearray, bytes, memoryview])
        self.assertEqual([bytes(v) for v in got], [data] * 3)

    def test_small_buffers_stay_in_band(self):
        value = [b"x" * 100, bytearray(100), {"a": 1}]
        self.assertEqual(self.round_trip(value, 0), value)

    def test_at_most_max_buffers_out_of_band(self):
        value = [bytes([i]) * buffers.THRESHOLD for i in range(buffers.MAX_BUFFERS + 3)]
        self.assertEqual(self.round_trip(value, buffers.MAX_BUFFERS), value)

    def test_joined_blob_round_trips_and_a_plain_pickle_is_its_own_blob(self):
        payload, bufs = buffers.dumps([os.urandom(BIG), os.urandom(BIG)])
        blob = joined.join(payload, bufs)
        self.assertEqual(buffers.loads(blob), buffers.loads(payload, bufs))
        small, none = buffers.dumps({"a": 1})
        self.assertIs(joined.join(small, none), small)
        self.assertEqual(joined.split(small), (small, []))


def result_frames(codec, value_buffers, payload=b"\x80p"):
    return codec.encode("result", {"task": "t", "ok": True}, [payload, b"", b"", *value_buffers])


class BufferFrames(SynchronousTestCase):
    """The envelope carries buffers after the type's payloads; each is covered by the signature."""

    def setUp(self):
        self.codec = Codec(KEY)

    def assertBad(self, frames, reason):
        e = self.assertRaises(BadMessage, self.codec.decode, frames)
        self.assertEqual(e.reason, reason)

    def test_buffers_decode_apart_from_the_payloads(self):
        data = os.urandom(BIG)
        frames = result_frames(self.codec, [data, memoryview(data)[:100]])
        msg = self.codec.decode(frames)
        self.assertEqual((len(msg.payloads), [bytes(b) for b in msg.buffers]), (3, [data, data[:100]]))
        self.assertEqual(msg["b"], 2)
        self.assertEqual(len(frames[0]), wire.SIGNATURE_BYTES + wire.NONCE_BYTES)

    def test_a_forged_buffer_byte_is_refused(self):
        frames = result_frames(self.codec, [os.urandom(BIG)])
        forged = bytearray(frames[-1])
        forged[BIG // 2] ^= 1
        self.assertBad(frames[:-1] + [bytes(forged)], "bad signature")

    def test_a_truncated_buffer_is_refused(self):
        frames = result_frames(self.codec, [os.urandom(BIG)])
        self.assertBad(frames[:-1] + [frames[-1][:-1]], "bad signature")
        self.assertBad(frames[:-1] + [frames[-1][: wire.LARGE_FRAME - 1]], "bad signature")

    def test_a_missing_or_extra_buffer_frame_is_refused(self):
        frames = result_frames(self.codec, [os.urandom(BIG), os.urandom(BIG)])
        self.assertBad(frames[:-1], "bad signature")  # the signature covers the frame count too
        header = msgpack.unpackb(frames[1])
        header["b"] = 1
        body = [msgpack.packb(header), *frames[2:]]  # signed, but says one buffer and carries two
        self.assertBad([self.codec.sign(body, os.urandom(16)), *body], "wrong frame count")

    def test_another_nonce_or_no_nonce_is_refused(self):
        frames = result_frames(self.codec, [os.urandom(BIG)])
        self.assertBad([frames[0][:32] + os.urandom(16), *frames[1:]], "bad signature")
        self.assertBad([frames[0][:32], *frames[1:]], "bad signature")

    def test_buffers_only_on_types_that_take_them(self):
        header = {"v": wire.PROTOCOL_VERSION, "type": "cancel", "id": "m.1", "s": "", "n": 1, "task": "t", "b": 1}
        body = [msgpack.packb(header), b"x"]
        self.assertBad([self.codec.sign(body), *body], "bad buffer count")
        header.update(type="result", ok=True, b=wire.MAX_BUFFERS + 1)
        body = [msgpack.packb(header), b"", b"", b"", *[b"x"] * (wire.MAX_BUFFERS + 1)]
        self.assertBad([self.codec.sign(body), *body], "bad buffer count")

    def test_small_messages_are_as_before(self):
        frames = self.codec.encode("submit", {"task": "t"}, [b"small pickle"])
        self.assertEqual(len(frames), 3)
        self.assertEqual(len(frames[0]), wire.SIGNATURE_BYTES)
        self.assertNotIn("b", msgpack.unpackb(frames[1]))
        self.assertEqual(self.codec.decode(frames).buffers, ())

    def test_a_large_in_band_payload_is_signed_by_its_tag_too(self):
        frames = self.codec.encode("submit", {"task": "t"}, [os.urandom(BIG)])
        self.assertEqual(len(frames[0]), wire.SIGNATURE_BYTES + wire.NONCE_BYTES)
        self.assertEqual(self.codec.decode(frames).buffers, ())


class ZeroCopyFrames(SynchronousTestCase):
    """Large frames cross a socket as views of the ZeroMQ message, not copies."""

    def setUp(self):
        self.context = zmq.Context()
        self.a, self.b = self.context.socket(zmq.PAIR), self.context.socket(zmq.PAIR)
        self.a.bind("inproc://zerocopy")
        self.b.connect("inproc://zerocopy")
        self.addCleanup(self.context.destroy, 0)

    @needs_numpy
    def test_a_received_array_is_a_writable_view_of_the_frame(self):
        codec = Codec(KEY)
        a = numpy.arange(BIG, dtype=numpy.float64)
        payload, bufs = buffers.dumps(a)
        send_frames(self.a, codec.encode("result", {"task": "t", "ok": True}, [payload, b"", b"", *bufs]), 0)
        frames = recv_frames(self.b, 0)
        self.assertIsInstance(frames[-1], memoryview)
        self.assertIsInstance(frames[1], bytes)
        msg = codec.decode(frames)
        b = buffers.loads(msg.payloads[0], msg.buffers)
        self.assertTrue((a == b).all())
        b[0] = 42.0  # writable, and the very memory of the frame
        self.assertEqual(numpy.frombuffer(frames[-1], dtype=numpy.float64)[0], 42.0)


class ResultsAsInputs(SynchronousTestCase):
    """A result with buffers that another task takes as input is joined into one value."""

    def test_the_joined_value_reaches_the_dependent_and_loads(self):
        from ipcluster.futureinputs import _input, supplying
        from ipcluster.scheduler.inputs import InputValues

        class Dependent:
            id = "b"
            inputs = ("a",)
            input_values: dict = {}

        class Finished:
            id = "a"
            inputs = ()
            input_values: dict = {}

        inputs = InputValues({})
        dependent = Dependent()
        inputs.wanted["a"] = {"b": dependent}
        data = os.urandom(BIG)
        payload, bufs = buffers.dumps(data)
        inputs.finished(Finished(), True, [payload, b"", b"", *bufs])
        with supplying({"a": dependent.input_values["a"]}):
            self.assertEqual(_input("a"), data)


class SubmitLimit(SynchronousTestCase):
    def test_buffers_count_against_max_message_size(self):
        core = ClientCore(KEY, max_message_size=150_000)
        e = self.assertRaises(errors.PayloadTooLarge, core.submit, len, (bytearray(BIG),), {}, {}, lambda r: None)
        self.assertIn("1 buffer(s)", str(e))
        self.assertFalse(core.waiting())

    def test_the_submit_carries_its_buffers_as_frames(self):
        core = ClientCore(KEY)
        data = os.urandom(BIG)
        _, frames = core.submit(len, (data,), {}, {}, lambda r: None)
        msg = core.codec.decode(frames)
        self.assertEqual([bytes(b) for b in msg.buffers], [data])


class RoundTrip(TestCase):
    """Through a real controller and engine: the value comes back equal, stored or not."""

    timeout = 4 * BOUND

    @defer.inlineCallbacks
    def setUp(self):
        self.controller = yield start_controller(self, max_message_size=64 * 1024 * 1024)
        yield start_engines(self, self.controller, ["e0"])
        self.client = yield connect_client(self, self.controller)

    @needs_numpy
    @defer.inlineCallbacks
    def test_numpy_array_there_and_back(self):
        a = numpy.arange(4_000_000, dtype=numpy.float32).reshape(2000, 2000)  # 16 MB: not stored
        got = yield within(self.client.submit(echo, a), BOUND, "the echo")
        self.assertEqual((got.dtype, got.shape), (a.dtype, a.shape))
        self.assertTrue((got == a).all())
        summary = yield within(self.client.submit(describe_array, a), BOUND, "the description")
        self.assertEqual(summary, (str(a.dtype), a.shape, True, float(a.sum())))

    @defer.inlineCallbacks
    def test_bytearray_there_and_back_and_fetched_from_the_store(self):
        data = bytearray(os.urandom(1_000_000))  # stored: within --store-max-result
        d = self.client.submit(echo, data)
        got = yield within(d, BOUND, "the echo")
        self.assertEqual((type(got), got), (bytearray, data))
        again = yield within(self.client.fetch(d.task_id), BOUND, "the fetch")
        self.assertEqual(again, data)
