"""The wire format: signed envelopes (Codec) and heartbeat pings (PingCodec)."""
import msgpack
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.transport import wire
from ipcluster.transport.wire import ACCEPTS, MAX_HEADER_BYTES, BadMessage, Codec, PingCodec

KEY = b"k" * 32


def signed(codec, header, *payloads):
    """Correctly signed frames around an arbitrary (possibly invalid) header."""
    header_bytes = header if isinstance(header, bytes) else msgpack.packb(header, use_bin_type=True)
    body = [header_bytes, *payloads]
    return [codec.sign(body), *body]


def header(mtype, **fields):
    return dict({"v": wire.PROTOCOL_VERSION, "type": mtype, "id": "m.1", "s": "", "n": 1}, **fields)


class CodecRoundTripTests(SynchronousTestCase):
    def setUp(self):
        self.codec = Codec(KEY)

    def test_roundtrip(self):
        frames = self.codec.encode("task", {"task": "t1"}, [b"\x00payload\xff"], msg_id="abc.1")
        self.assertEqual(len(frames), 3)
        self.assertEqual(len(frames[0]), wire.SIGNATURE_BYTES)
        msg = self.codec.decode(frames)
        self.assertEqual(msg.type, "task")
        self.assertEqual(msg.id, "abc.1")
        self.assertEqual(msg["task"], "t1")
        self.assertEqual(msg.payloads, (b"\x00payload\xff",))

    def test_roundtrip_optional_fields_and_other_codec_same_key(self):
        frames = self.codec.encode("reply", {"ref": "x.1", "ok": False, "error": {"type": "BadRequest"}})
        msg = Codec(KEY).decode(frames, ACCEPTS["control"])
        self.assertEqual(msg.type, "reply")
        self.assertIs(msg["ok"], False)
        self.assertEqual(msg.get("error"), {"type": "BadRequest"})
        self.assertIsNone(msg.get("absent"))

    def test_fresh_ids_are_unique(self):
        ids = {self.codec.decode(self.codec.encode("connect")).id for _ in range(100)}
        self.assertEqual(len(ids), 100)

    def test_empty_key_refused(self):
        self.assertRaises(ValueError, Codec, b"")


class CodecRejectsTests(SynchronousTestCase):
    def setUp(self):
        self.codec = Codec(KEY)

    def assertBad(self, frames, reason, accept=None):
        e = self.assertRaises(BadMessage, self.codec.decode, frames, accept)
        self.assertEqual(e.reason, reason)
        return e

    def test_bad_signature(self):
        frames = self.codec.encode("connect")
        frames[0] = bytes([frames[0][0] ^ 1]) + frames[0][1:]
        self.assertBad(frames, "bad signature")

    def test_signature_of_wrong_length(self):
        frames = self.codec.encode("connect")
        self.assertBad([frames[0][:-1], *frames[1:]], "bad signature")

    def test_wrong_key(self):
        frames = Codec(b"another key").encode("connect")
        self.assertBad(frames, "bad signature")

    def test_tampered_header(self):
        frames = self.codec.encode("submit", {"task": "t1", "engine": "e1"}, [b"p"])
        frames[1] = frames[1].replace(b"e1", b"e2")
        self.assertBad(frames, "bad signature")

    def test_frames_cannot_be_moved_between_payloads(self):
        frames = self.codec.encode("result", {"task": "t", "ok": True}, [b"ab", b"c", b""])
        self.assertBad(frames[:2] + [b"a", b"bc", b""], "bad signature")

    def test_too_few_frames(self):
        frames = self.codec.encode("connect")
        self.assertBad([], "too few frames")
        self.assertBad(frames[:1], "too few frames")

    def test_dropped_payload_frame(self):
        frames = self.codec.encode("task", {"task": "t1"}, [b"payload"])
        self.assertBad(frames[:-1], "bad signature")

    def test_wrong_frame_count_per_schema(self):
        self.assertBad(self.codec.encode("task", {"task": "t1"}), "wrong frame count")
        e = self.assertBad(self.codec.encode("result", {"task": "t", "ok": True}, [b"x"]), "wrong frame count")
        self.assertIn("3", e.detail)
        self.assertBad(self.codec.encode("connect", None, [b"extra"]), "wrong frame count")

    def test_unknown_type(self):
        self.assertBad(self.codec.encode("no-such-type"), "unexpected type")
        self.assertBad(signed(self.codec, header(42)), "unexpected type")
        self.assertBad(signed(self.codec, {"v": wire.PROTOCOL_VERSION, "id": "m.1"}), "unexpected type")

    def test_type_not_accepted(self):
        frames = self.codec.encode("register", {"engine": "e", "instance": "i", "host": "h", "pid": 1})
        self.assertBad(frames, "unexpected type", ACCEPTS["client"])
        self.assertEqual(self.codec.decode(frames, ACCEPTS["registration"]).type, "register")

    def test_oversize_header(self):
        frames = self.codec.encode("connect", {"pad": "x" * MAX_HEADER_BYTES})
        self.assertBad(frames, "oversize header")

    def test_wrong_protocol_version(self):
        self.assertBad(signed(self.codec, dict(header("connect"), v=1)), "protocol version")  # before sessions
        self.assertBad(signed(self.codec, dict(header("connect"), v=wire.PROTOCOL_VERSION + 1)), "protocol version")
        no_version = header("connect")
        del no_version["v"]
        self.assertBad(signed(self.codec, no_version), "protocol version")

    def test_header_not_a_map(self):
        self.assertBad(signed(self.codec, [1, "connect", "m.1"]), "header is not a map")
        self.assertBad(signed(self.codec, "connect"), "header is not a map")

    def test_undecodable_header(self):
        self.assertBad(signed(self.codec, b"\xc1"), "undecodable header")
        self.assertBad(signed(self.codec, b"\x01\x02"), "undecodable header")  # extra data
        self.assertBad(signed(self.codec, msgpack.packb({1: 2})), "undecodable header")  # non-str key

    def test_missing_or_empty_id(self):
        no_id = header("connect")
        del no_id["id"]
        self.assertBad(signed(self.codec, no_id), "missing id")
        self.assertBad(signed(self.codec, header("connect", id="")), "missing id")
        self.assertBad(signed(self.codec, header("connect", id=7)), "missing id")

    def test_missing_field(self):
        frames = self.codec.encode("register", {"engine": "e", "instance": "i", "host": "h"})
        e = self.assertBad(frames, "bad field")
        self.assertEqual(e.detail, "register.pid")

    def test_field_of_wrong_type(self):
        frames = self.codec.encode("register", {"engine": "e", "instance": "i", "host": "h", "pid": "12"})
        self.assertEqual(self.assertBad(frames, "bad field").detail, "register.pid")
        frames = self.codec.encode("command", {"verb": "beat", "args": []})
        self.assertEqual(self.assertBad(frames, "bad field").detail, "command.args")

    def test_bool_is_not_an_int(self):
        frames = self.codec.encode("register", {"engine": "e", "instance": "i", "host": "h", "pid": True})
        self.assertEqual(self.assertBad(frames, "bad field").detail, "register.pid")
        frames = self.codec.encode("registered", {"engine": "e", "heartbeat_period": False, "nonce": "n"})
        self.assertEqual(self.assertBad(frames, "bad field").detail, "registered.heartbeat_period")

    def test_int_is_not_a_bool(self):
        frames = self.codec.encode("reply", {"ref": "r.1", "ok": 1})
        self.assertEqual(self.assertBad(frames, "bad field").detail, "reply.ok")

    def test_number_field_accepts_int_and_float(self):
        for period in (1, 0.5):
            msg = self.codec.decode(self.codec.encode("registered", {"engine": "e", "heartbeat_period": period, "nonce": "n"}))
            self.assertEqual(msg["heartbeat_period"], period)

    def test_garbage(self):
        self.assertBad([b"garbage", b"\xff\xfe"], "bad signature")
        self.assertBad([b"\x00" * 32, b"\x00" * 10, b"zz"], "bad signature")
        self.assertBad([b""], "too few frames")


class PingCodecTests(SynchronousTestCase):
    def setUp(self):
        self.pings = PingCodec(KEY)

    def test_roundtrip(self):
        ping = self.pings.ping(b"e1", 17, 1234.5)
        self.assertEqual(len(ping), wire.PING_BYTES)
        self.assertEqual(self.pings.pong(b"e1", ping), (17, 1234.5))

    def test_pong_for_another_engine(self):
        ping = self.pings.ping(b"e1", 1, 0.0)
        e = self.assertRaises(BadMessage, self.pings.pong, b"e2", ping)
        self.assertEqual(e.reason, "bad pong")

    def test_tampered_pong(self):
        ping = bytearray(self.pings.ping(b"e1", 1, 0.0))
        ping[7] ^= 1  # the beat number
        e = self.assertRaises(BadMessage, self.pings.pong, b"e1", bytes(ping))
        self.assertEqual(e.reason, "bad pong")

    def test_other_key(self):
        ping = PingCodec(b"other key").ping(b"e1", 1, 0.0)
        self.assertRaises(BadMessage, self.pings.pong, b"e1", ping)

    def test_wrong_length(self):
        ping = self.pings.ping(b"e1", 1, 0.0)
        for data in (b"", ping[:-1], ping + b"\x00"):
            e = self.assertRaises(BadMessage, self.pings.pong, b"e1", data)
            self.assertEqual(e.reason, "bad pong")
