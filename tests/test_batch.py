"""Batches (``transport.batch``): framing, the controller's unbatching and its per-turn outbox."""
from __future__ import annotations

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from ipcluster.transport import batch
from ipcluster.transport.wire import BadMessage, Codec

KEY = b"k" * 32


def envelope(codec: Codec, n: int) -> list:
    return codec.encode("submit", {"task": f"t{n}"}, [b"payload %d" % n])


class Framing(SynchronousTestCase):
    def setUp(self):
        self.codec = Codec(KEY)

    def test_a_batch_carries_whole_envelopes_in_order(self):
        envelopes = [envelope(self.codec, i) for i in range(5)]
        frames = batch.pack(envelopes)
        self.assertTrue(batch.is_batch(frames[0]))
        self.assertEqual(batch.unpack(frames), envelopes)
        decoded = [self.codec.decode(e) for e in batch.envelopes(frames)]
        self.assertEqual([m["task"] for m in decoded], [f"t{i}" for i in range(5)])
        self.assertEqual([m.seq for m in decoded], sorted(m.seq for m in decoded), "each keeps its own number")

    def test_a_lone_envelope_is_sent_as_it_is(self):
        one = envelope(self.codec, 1)
        self.assertEqual(batch.pack([one]), one)
        self.assertFalse(batch.is_batch(one[0]), "a signature is never a batch header")
        self.assertEqual(batch.envelopes(one), [one])

    def test_malformed_batches_are_refused(self):
        good = batch.pack([envelope(self.codec, i) for i in range(3)])
        for frames, why in [
            (good[:-1], "a frame missing"),
            (good + [b"extra"], "a frame too many"),
            ([b"B\x00\x01", b"x"], "one envelope of one frame"),
            ([b"B" + b"\x00\x02" * (batch.MAX_ENVELOPES + 1)] + [b"x"] * 2 * (batch.MAX_ENVELOPES + 1), "too many"),
            ([b"B\x00\x00\x00\x00"], "empty envelopes"),
        ]:
            self.assertRaises(BadMessage, batch.unpack, frames)
        self.assertRaises(ValueError, batch.pack, [])

    def test_a_forged_envelope_in_a_batch_fails_alone(self):
        forged = Codec(b"x" * 32).encode("submit", {"task": "evil"}, [b"p"])
        frames = [b"client", *batch.pack([envelope(self.codec, 1), forged, envelope(self.codec, 2)])]
        handled, bad = [], []

        def handler(message):
            try:
                handled.append(self.codec.decode(message[1:])["task"])
            except BadMessage as e:
                bad.append((message[0], e.reason))

        unbatch = batch.Unbatcher(handler, lambda identity, e: bad.append((identity, "batch")))
        unbatch(frames)
        self.assertEqual(handled, ["t1", "t2"])
        self.assertEqual(bad, [(b"client", "bad signature")])
        self.assertEqual((unbatch.batches, unbatch.envelopes), (1, 3))
        unbatch([b"client", *frames[1:-1]])
        self.assertEqual(bad[-1], (b"client", "batch"), "a malformed batch: nothing of it is handled")
        self.assertEqual(handled, ["t1", "t2"])

    def test_packed_keeps_order_and_size(self):
        envelopes = [envelope(self.codec, i) for i in range(600)]
        limit = 5000
        messages = list(batch.packed(envelopes, max_size=limit))
        self.assertTrue(all(sum(len(f) for f in m) <= limit for m in messages))
        self.assertGreater(len(messages), 5)
        self.assertEqual([e for m in messages for e in batch.envelopes(m)], envelopes)
        messages = list(batch.packed(envelopes, max_size=10**9))
        self.assertEqual([len(batch.envelopes(m)) for m in messages], [256, 256, 88], "at most MAX_ENVELOPES each")
        self.assertEqual(len(list(batch.packed(envelopes[:3], max_size=1))), 3, "an oversize envelope goes alone")


class OutboxTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.sent = []
        self.lost = []
        self.reachable = {b"a", b"b"}

        def send(frames):
            self.sent.append(frames)
            return frames[0] in self.reachable

        self.outbox = batch.Outbox(send, lambda f: self.clock.callLater(0, f), 10**6,
                                   lambda identity, n: self.lost.append((identity, n)))
        self.codec = Codec(KEY)

    def test_what_one_turn_makes_for_a_peer_leaves_in_one_message_next_turn(self):
        for i in range(4):
            self.outbox.put([b"a", *envelope(self.codec, i)])
        self.outbox.put([b"b", *envelope(self.codec, 9)])
        self.assertEqual(self.sent, [], "nothing waits longer than the turn, but nothing goes mid-turn")
        self.clock.advance(0)
        self.assertEqual(len(self.sent), 2)
        to_a = [self.codec.decode(e)["task"] for e in batch.envelopes(self.sent[0][1:])]
        self.assertEqual(to_a, ["t0", "t1", "t2", "t3"])
        self.assertEqual(self.sent[1][0], b"b")
        self.assertFalse(batch.is_batch(self.sent[1][1]), "a lone envelope goes as it is")
        self.assertEqual((self.outbox.messages, self.outbox.envelopes, len(self.outbox)), (2, 5, 0))

    def test_undeliverable_messages_are_reported_with_their_envelopes(self):
        self.outbox.put([b"gone", *envelope(self.codec, 1)])
        self.outbox.put([b"gone", *envelope(self.codec, 2)])
        self.outbox.flush()
        self.assertEqual(self.lost, [(b"gone", 2)])
        self.clock.advance(0)  # the scheduled flush finds nothing
        self.assertEqual(len(self.sent), 1)
