from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit import Identity, InvalidRecord, StaleRecord
from peerkit.proto import messages
from peerkit.proto.records import CARD_DOMAIN, RECORD_DOMAIN, SeqTracker, open_record, sign_record


def test_round_trip(alice: Identity) -> None:
    envelope = sign_record(alice, 7, {"nick": "alice", "addrs": [["10.0.0.1", 7000]]})
    record = open_record(envelope)
    assert record.id == alice.id.key
    assert record.seq == 7
    assert record.body["nick"] == "alice"
    assert record.body["addrs"] == [["10.0.0.1", 7000]]
    body = messages.decode(messages.decode(envelope)["body"])
    assert messages.encode(body) == messages.decode(envelope)["body"]  # canonical


def test_the_signature_covers_the_domain_and_the_body(alice: Identity) -> None:
    envelope = sign_record(alice, 1, {"nick": "a"})
    outer = messages.decode(envelope)
    alice.id.verify_key().verify(RECORD_DOMAIN + outer["body"], outer["sig"])


def test_tampered_body_is_rejected(alice: Identity) -> None:
    outer = messages.decode(sign_record(alice, 1, {"nick": "alice"}))
    body = messages.decode(outer["body"])
    body["nick"] = "mallory"
    forged = messages.encode({"body": messages.encode(body), "sig": outer["sig"]})
    with pytest.raises(InvalidRecord, match="signature does not verify"):
        open_record(forged)


def test_a_record_signed_by_another_key_is_rejected(alice: Identity, bob: Identity) -> None:
    # Mallory (bob) advertises alice's id with his own signature.
    body = messages.encode({"id": alice.id.key, "seq": 5, "nick": "alice"})
    forged = messages.encode({"body": body, "sig": bob.sign(RECORD_DOMAIN + body)})
    with pytest.raises(InvalidRecord, match="signature does not verify"):
        open_record(forged)


def test_domains_are_separated(alice: Identity) -> None:
    card = sign_record(alice, 1, {"nick": "a"}, domain=CARD_DOMAIN)
    assert open_record(card, domain=CARD_DOMAIN).seq == 1
    with pytest.raises(InvalidRecord, match="signature does not verify"):
        open_record(card)


def test_replayed_older_seq_is_rejected(alice: Identity) -> None:
    tracker = SeqTracker()
    old = open_record(sign_record(alice, 10, {}))
    new = open_record(sign_record(alice, 11, {}))
    tracker.accept(old)
    tracker.accept(new)
    with pytest.raises(StaleRecord, match="seq 10 is not newer than 11"):
        tracker.accept(old)
    with pytest.raises(StaleRecord, match="seq 11 is not newer than 11"):
        tracker.accept(new)
    assert tracker.last(alice.id.key) == 11


def test_seq_tracker_stays_bounded(alice: Identity) -> None:
    tracker = SeqTracker(capacity=3)
    for _ in range(10):
        tracker.accept(open_record(sign_record(Identity.generate(), 1, {})))
    assert len(tracker) == 3


def test_seq_tracker_never_forgets_a_kept_id(alice: Identity) -> None:
    tracker = SeqTracker(capacity=3)
    tracker.accept(open_record(sign_record(alice, 5, {})), kept=True)
    for _ in range(10):
        tracker.accept(open_record(sign_record(Identity.generate(), 1, {})))
    assert tracker.last(alice.id.key) == 5
    assert len(tracker) == 4
    with pytest.raises(StaleRecord, match="seq 4 is not newer than 5"):
        tracker.accept(open_record(sign_record(alice, 4, {})))


def test_non_canonical_body_is_rejected(alice: Identity) -> None:
    # Keys in the wrong order: valid CBOR, valid signature, but not the deterministic encoding.
    body = b"\xa2" + b"\x63seq\x01" + b"\x62id\x58\x20" + alice.id.key
    envelope = messages.encode({"body": body, "sig": alice.sign(RECORD_DOMAIN + body)})
    with pytest.raises(InvalidRecord, match="not in canonical CBOR"):
        open_record(envelope)


@pytest.mark.parametrize(
    ("envelope", "match"),
    [
        (b"", "malformed"),
        (messages.encode([1, 2]), 'exactly "body" and "sig"'),
        (messages.encode({"body": b"x", "sig": b"short"}), '"sig" 64 bytes'),
        (messages.encode({"body": messages.encode([1]), "sig": bytes(64)}), "body is not a map"),
        (messages.encode({"body": messages.encode({"seq": 1}), "sig": bytes(64)}), '32-byte "id"'),
        (messages.encode({"body": messages.encode({"id": bytes(32), "seq": -1}), "sig": bytes(64)}), '"seq"'),
        (bytes(40000), "limit is 32768"),
    ],
)
def test_malformed_envelopes_are_rejected(envelope: bytes, match: str) -> None:
    with pytest.raises(InvalidRecord, match=match):
        open_record(envelope)


def test_sign_record_checks_its_arguments(alice: Identity) -> None:
    with pytest.raises(ValueError, match="seq"):
        sign_record(alice, -1, {})
    with pytest.raises(ValueError, match='must not set "id"'):
        sign_record(alice, 1, {"id": b"x"})


@given(st.binary(max_size=300))
def test_open_record_only_ever_raises_invalid_record(data: bytes) -> None:
    with contextlib.suppress(InvalidRecord):
        open_record(data)


def test_bodies_use_rfc_8949_key_order_even_where_cbor2_canonical_differs(alice: Identity) -> None:
    envelope = sign_record(alice, 1, {"m": {1000: "int key", "a": "text key"}})
    body = messages.decode(envelope)["body"]
    # 1000 encodes as 19 03 e8 and sorts before "a" (61 61) bytewise; length-first would not.
    assert body.index(bytes.fromhex("1903e8")) < body.index(bytes.fromhex("6161"))
    assert open_record(envelope).body["m"] == {1000: "int key", "a": "text key"}
