"""Properties of the wire decoder and the replay window, checked on generated input (hypothesis)."""
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.client.core import ClientCore
from ipcluster.transport import wire
from ipcluster.transport.replay import WINDOW, ReplayWindow
from ipcluster.transport.wire import ACCEPTS, PEER_ACCEPTS, SCHEMAS, BadMessage, Codec

KEY = b"k" * 32
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

frames = st.lists(st.binary(max_size=80), max_size=8)
accepts = st.sampled_from([None, *ACCEPTS.values(), *PEER_ACCEPTS.values()])
# msgpack values, nested a little: what a header may hold after its signature was good.
leaves = st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.floats() \
    | st.text(max_size=20) | st.binary(max_size=20)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
known_keys = st.sampled_from(["v", "type", "id", "s", "n", "task", "ok", "engine", "ref", "beat", "instance",
                              "verb", "args", "reason", "host", "pid", "heartbeat_period", "nonce", "version"])
headers = st.dictionaries(known_keys | st.text(max_size=6), values, max_size=10)
plausible = st.fixed_dictionaries(
    {"v": st.just(wire.PROTOCOL_VERSION) | values, "type": st.sampled_from(sorted(SCHEMAS)) | values,
     "id": st.text(max_size=10) | values, "s": st.text(max_size=70) | values, "n": st.integers() | values},
    optional={k: values for k in ("task", "ok", "engine", "ref", "beat", "instance", "verb", "args", "reason")},
)


def signed(codec, header_bytes, payloads):
    body = [header_bytes, *payloads]
    return [codec.sign(body), *body]


def packable(header):
    try:
        return msgpack.packb(header, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return None


class DecodeRaisesOnlyBadMessage(SynchronousTestCase):
    @SETTINGS
    @given(frames, accepts)
    def test_arbitrary_frames(self, data, accept):
        try:
            Codec(KEY).decode(data, accept)
        except BadMessage:
            pass

    @SETTINGS
    @given(st.one_of(headers, plausible), st.lists(st.binary(max_size=16), max_size=4), accepts)
    def test_arbitrary_headers_with_a_good_signature(self, header, payloads, accept):
        """Past the signature: whatever a key holder (or a bug) packs, decode answers BadMessage or a Message."""
        header_bytes = packable(header)
        if header_bytes is None:
            return
        codec = Codec(KEY)
        try:
            msg = codec.decode(signed(codec, header_bytes, payloads), accept)
        except BadMessage:
            return
        self.assertIn(msg.type, SCHEMAS)
        self.assertIsInstance(msg.session, str)
        self.assertGreater(msg.seq, 0)
        self.assertEqual(len(msg.payloads), SCHEMAS[msg.type].payloads)

    @SETTINGS
    @given(st.binary(max_size=200), st.lists(st.binary(max_size=16), max_size=4))
    def test_arbitrary_header_bytes_with_a_good_signature(self, header_bytes, payloads):
        codec = Codec(KEY)
        try:
            codec.decode(signed(codec, header_bytes, payloads))
        except BadMessage:
            pass

    @SETTINGS
    @given(st.one_of(headers, plausible), st.lists(st.binary(max_size=16), min_size=3, max_size=3))
    def test_the_client_survives_anything_signed(self, header, payloads):
        header_bytes = packable(header)
        if header_bytes is None:
            return
        core = ClientCore(KEY)
        core.received(signed(core.codec, header_bytes, payloads))  # never raises


def field_value(types):
    if types == (bool,):
        return st.booleans()
    if types == (int,):
        return st.integers(min_value=-(2**63), max_value=2**64 - 1)
    if types == (int, float):
        return st.integers(min_value=-(2**63), max_value=2**63) | st.floats(allow_nan=False)
    if types == (dict,):
        packable_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
        return st.dictionaries(st.text(max_size=6), packable_ints | st.text(max_size=6), max_size=3)
    if types == (list,):
        return st.lists(st.text(max_size=6), max_size=3)
    return st.text(max_size=30)


@st.composite
def messages(draw):
    mtype = draw(st.sampled_from(sorted(SCHEMAS)))
    schema = SCHEMAS[mtype]
    fields = {name: draw(field_value(types)) for name, types in schema.fields.items()}
    payloads = draw(st.lists(st.binary(max_size=64), min_size=schema.payloads, max_size=schema.payloads))
    session = draw(st.text(max_size=wire.MAX_SESSION_CHARS))
    return mtype, fields, payloads, session


class RoundTrip(SynchronousTestCase):
    @SETTINGS
    @given(messages(), st.integers(min_value=1, max_value=wire.MAX_SEQUENCE))
    def test_encode_then_decode(self, message, first):
        mtype, fields, payloads, session = message
        codec = Codec(KEY, sequence=iter(range(first, first + 1)))
        msg = Codec(KEY).decode(codec.encode(mtype, fields, payloads, session=session))
        self.assertEqual((msg.type, msg.session, msg.seq, msg.payloads), (mtype, session, first, tuple(payloads)))
        for name, value in fields.items():
            self.assertEqual(msg[name], value)

    @SETTINGS
    @given(messages(), st.integers(min_value=0, max_value=10), st.integers(min_value=0, max_value=255))
    def test_any_flipped_bit_is_caught(self, message, which, bit):
        mtype, fields, payloads, session = message
        frames = Codec(KEY).encode(mtype, fields, payloads, session=session)
        i = which % len(frames)
        if not frames[i]:
            return
        frame = bytearray(frames[i])
        frame[bit % len(frame)] ^= 1 << (bit % 8)
        frames[i] = bytes(frame)
        self.assertRaises(BadMessage, Codec(KEY).decode, frames)


class ReplayWindowModel(SynchronousTestCase):
    """The window against a plain model: a set of every number ever accepted."""

    @SETTINGS
    @given(st.lists(st.integers(min_value=-3, max_value=3 * WINDOW), max_size=300))
    def test_accepts_each_number_once_and_refuses_the_old(self, numbers):
        window, seen, highest = ReplayWindow(), set(), 0
        for n in numbers:
            expected = n >= 1 and n not in seen and n > highest - WINDOW
            self.assertEqual(window.accept(n), expected, (n, highest))
            if expected:
                seen.add(n)
                highest = max(highest, n)

    @SETTINGS
    @given(st.permutations(list(range(1, 200))))
    def test_reordering_within_the_window_loses_nothing(self, numbers):
        window = ReplayWindow()
        self.assertTrue(all(window.accept(n) for n in numbers))
        self.assertFalse(any(window.accept(n) for n in numbers))
