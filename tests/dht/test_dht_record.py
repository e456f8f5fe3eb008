"""peerkit.dht.record: a node's record sealed in one BEP 44 item, always fitting, readable by
holders of the locator key only."""

from __future__ import annotations

import pytest

from peerkit import Identity
from peerkit.dht.bencode import encode
from peerkit.dht.bep44 import MAX_VALUE, MutableItem
from peerkit.dht.record import (
    MAX_DEVICES,
    MAX_SEALED_ENVELOPE,
    SALT,
    STALE,
    TAG_SIZE,
    LocatorError,
    carries,
    fit_record,
    merged_item,
    new_locator_key,
    open_item,
    seal,
    sealed_item,
    unseal,
)
from peerkit.discovery.base import MAX_RELAYS, make_record, read_record
from peerkit.errors import InvalidRecord
from peerkit.proto.records import sign_record

ENDPOINTS = [(f"2001:db8:{i:x}:ffff:ffff:ffff:ffff:{i:x}", 65000 + i) for i in range(16)]


def test_sealing_is_deterministic_and_needs_the_key() -> None:
    key = new_locator_key()
    assert seal(b"record", key) == seal(b"record", key)  # a republish is the same value
    assert seal(b"record", key) != seal(b"record", new_locator_key())
    assert unseal(seal(b"record", key), key) == b"record"
    with pytest.raises(LocatorError, match="does not open"):
        unseal(seal(b"record", key), new_locator_key())


def test_a_maximal_record_is_cut_by_the_rule_and_always_fits() -> None:
    alice = Identity.generate()
    full = make_record(alice, 7, nickname="n" * 255, endpoint_name="e" * 255, endpoints=ENDPOINTS)
    assert len(full) > MAX_SEALED_ENVELOPE
    fitted = fit_record(alice, 7, nickname="n" * 255, endpoint_name="e" * 255, endpoints=ENDPOINTS)
    assert len(fitted) <= MAX_SEALED_ENVELOPE
    record, nickname, name, endpoints = read_record(fitted)
    assert record.seq == 7
    assert name == ""  # the endpoint name goes first
    assert nickname == "n" * 255  # addresses go before the nickname
    assert [(e.host, e.port) for e in endpoints] == ENDPOINTS[: len(endpoints)]  # the first kept
    assert 1 <= len(endpoints) < 16
    item = sealed_item(alice, fitted, 7, new_locator_key())
    assert len(encode(item.decoded())) <= MAX_VALUE
    # A small record is left whole.
    small = fit_record(alice, 8, nickname="alice", endpoint_name="desk", endpoints=ENDPOINTS[:2])
    assert read_record(small)[2] == "desk"


def test_relays_survive_the_cut_longer_than_addresses_and_nickname() -> None:
    alice = Identity.generate()
    relays = [(f"2001:db8::{i + 1}", 7000 + i, Identity.generate().id.key) for i in range(MAX_RELAYS)]
    fitted = fit_record(
        alice, 9, nickname="n" * 255, endpoint_name="e" * 255, endpoints=ENDPOINTS, relays=relays
    )
    assert len(fitted) <= MAX_SEALED_ENVELOPE
    _, nickname, name, endpoints = read_record(fitted)
    # The endpoint name and addresses went first; the nickname and every relay stayed.
    assert (name, nickname) == ("", "n" * 255)
    assert [(e.host, e.port, e.relay.key) for e in endpoints if e.relay] == relays
    # At every size the rule holds: relays go after the nickname and the addresses but one, and
    # the last address before the last relay; what is kept is always the first ones.
    seen_cuts = set()
    for limit in range(1000, 180, -10):
        cut = fit_record(
            alice, 9, nickname="n" * 255, endpoint_name="e", endpoints=ENDPOINTS, relays=relays, limit=limit
        )
        _, nickname, name, endpoints = read_record(cut)
        own = [(e.host, e.port) for e in endpoints if e.relay is None]
        through = [(e.host, e.port, e.relay.key) for e in endpoints if e.relay]
        assert len(cut) <= limit
        assert own == ENDPOINTS[: len(own)]
        assert through == relays[: len(through)]
        if len(own) > 1 or nickname:
            assert len(through) == MAX_RELAYS
        if not own:
            assert len(through) <= 1
        seen_cuts.add((len(own), bool(nickname), len(through)))
    assert (0, False, 1) in seen_cuts  # the tightest: one relay, nothing else
    assert (1, False, 2) in seen_cuts  # relays being cut while an address stays


@pytest.mark.parametrize(
    "relays",
    [
        "nope",
        [["10.0.0.1", 7000]],  # no id
        [["10.0.0.1", 7000, b"short"]],
        [["10.0.0.1", 0, bytes(32)]],  # port out of range (and a zero key)
        [["not an address with spaces", 7000, Identity.generate().id.key]],
        [["10.0.0.1", 7000, Identity.generate().id.key]] * (MAX_RELAYS + 1),
    ],
)
def test_a_record_with_malformed_relays_is_refused_whole(relays: object) -> None:
    alice = Identity.generate()
    envelope = sign_record(alice, 1, {"nick": "", "name": "", "addrs": [], "relays": relays})
    with pytest.raises(InvalidRecord, match="relay"):
        read_record(envelope)


def test_an_item_opens_to_its_keys_record_at_its_seq_only() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    key = new_locator_key()
    envelope = make_record(alice, 5, nickname="alice", endpoint_name="", endpoints=[("192.0.2.1", 7000)])
    item = sealed_item(alice, envelope, 5, key)
    assert item.salt == SALT
    assert item.key == alice.id.key
    assert open_item(item, key) == [envelope]
    with pytest.raises(LocatorError, match="does not open"):
        open_item(item, new_locator_key())  # a stranger, or a contact after rotation
    assert b"192.0.2.1" not in item.value  # nothing of where alice is shows
    old = sealed_item(alice, envelope, 9, key)  # an old record under a newer seq
    with pytest.raises(LocatorError, match="at its entry's seq"):
        open_item(old, key)
    sealed = seal(envelope, key)
    mark = bytes(TAG_SIZE)
    ahead = MutableItem.create(alice.sign, alice.id.key, [[mark, 10, sealed]], 9, SALT)  # past the item
    with pytest.raises(LocatorError, match="at most its seq"):
        open_item(ahead, key)
    malformed = (
        b"sealed",
        [[5]],
        [[mark, 5]],
        [[mark, 5, sealed, 1]],
        [[b"m", 5, sealed]],
        [[mark, b"5", sealed]],
    )
    for value in (*malformed, [[mark, 5, b"x"]] * 5):
        with pytest.raises(LocatorError):
            open_item(MutableItem.create(alice.sign, alice.id.key, value, 9, SALT), key)
    theirs = sealed_item(mallory, envelope, 5, key)  # alice's record under mallory's key
    with pytest.raises(LocatorError, match="key's record"):
        open_item(theirs, key)


def _record(identity: Identity, seq: int, host: str, *, nickname: str = "alice") -> bytes:
    return make_record(identity, seq, nickname=nickname, endpoint_name="", endpoints=[(host, 7000)])


NOW = 1_800_000_000_000  # Unix ms
DESK, LAPTOP, PHONE = b"desk....", b"laptop..", b"phone..."


def test_each_device_of_one_id_keeps_its_own_entry() -> None:
    alice = Identity.generate()
    key = new_locator_key()
    desk = merged_item(alice, _record(alice, NOW, "192.0.2.1"), NOW, key, tag=DESK, current=None, now_ms=NOW)
    laptop = merged_item(
        alice, _record(alice, NOW + 5, "198.51.100.7"), NOW + 5, key, tag=LAPTOP, current=desk, now_ms=NOW + 5
    )
    assert [read_record(e)[3][0].host for e in open_item(laptop, key)] == ["198.51.100.7", "192.0.2.1"]
    # The desk moves: its entry is replaced, not added; the laptop's stays.
    moved = merged_item(
        alice, _record(alice, NOW + 9, "203.0.113.3"), NOW + 9, key, tag=DESK, current=laptop, now_ms=NOW + 9
    )
    assert [read_record(e)[3][0].host for e in open_item(moved, key)] == ["203.0.113.3", "198.51.100.7"]
    # The same entries merged again are the same value (a republish under one seq is identical).
    again = merged_item(
        alice, _record(alice, NOW + 9, "203.0.113.3"), NOW + 9, key, tag=DESK, current=moved, now_ms=NOW + 9
    )
    assert again == moved
    # The desk signs out: only the laptop's entry is left; then the laptop's: nothing.
    out = merged_item(alice, None, NOW + 12, key, tag=DESK, current=moved, now_ms=NOW + 12)
    assert [carries(moved, DESK), carries(moved, LAPTOP), carries(moved, PHONE)] == [True, True, False]
    assert [carries(out, DESK), carries(out, LAPTOP)] == [False, True]
    assert [read_record(e)[3][0].host for e in open_item(out, key)] == ["198.51.100.7"]
    gone = merged_item(alice, None, NOW + 13, key, tag=LAPTOP, current=out, now_ms=NOW + 13)
    assert open_item(gone, key) == []


def test_a_device_not_heard_from_drops_out_and_the_oldest_go_when_full() -> None:
    alice = Identity.generate()
    key = new_locator_key()
    item = merged_item(alice, _record(alice, NOW, "192.0.2.1"), NOW, key, tag=DESK, current=None, now_ms=NOW)
    later = NOW + STALE * 1000 + 1
    item = merged_item(
        alice, _record(alice, later, "192.0.2.2"), later, key, tag=LAPTOP, current=item, now_ms=later
    )
    assert [read_record(e)[3][0].host for e in open_item(item, key)] == ["192.0.2.2"]  # the desk is stale
    # Devices with long records: the newest that fit are kept, the item never passes 1000 bytes.
    item = None
    for i in range(MAX_DEVICES + 2):
        seq = NOW + i
        long = make_record(alice, seq, nickname="n" * 60, endpoint_name="", endpoints=ENDPOINTS[:3])
        item = merged_item(alice, long, seq, key, tag=bytes([i]) * TAG_SIZE, current=item, now_ms=seq)
        assert len(encode(item.decoded())) <= MAX_VALUE
    assert item is not None
    opened = open_item(item, key)
    assert 1 < len(opened) <= MAX_DEVICES
    assert [read_record(e)[0].seq for e in opened] == [NOW + MAX_DEVICES + 1 - i for i in range(len(opened))]


def test_a_device_with_another_locator_key_is_kept_but_opens_for_its_contacts_only() -> None:
    alice = Identity.generate()
    desk_key, laptop_key = new_locator_key(), new_locator_key()
    desk = merged_item(
        alice, _record(alice, NOW, "192.0.2.1"), NOW, desk_key, tag=DESK, current=None, now_ms=NOW
    )
    both = merged_item(
        alice,
        _record(alice, NOW + 1, "192.0.2.9"),
        NOW + 1,
        laptop_key,
        tag=LAPTOP,
        current=desk,
        now_ms=NOW + 1,
    )
    assert [read_record(e)[3][0].host for e in open_item(both, desk_key)] == ["192.0.2.1"]
    assert [read_record(e)[3][0].host for e in open_item(both, laptop_key)] == ["192.0.2.9"]
    with pytest.raises(LocatorError):
        open_item(both, new_locator_key())
    # Another identity's item is not merged from.
    mallory = Identity.generate()
    theirs = merged_item(
        mallory,
        _record(mallory, NOW + 2, "192.0.2.66"),
        NOW + 2,
        desk_key,
        tag=PHONE,
        current=both,
        now_ms=NOW + 2,
    )
    assert len(theirs.decoded()) == 1  # type: ignore[arg-type]


def test_items_two_devices_wrote_under_one_seq_are_merged_whole() -> None:
    alice = Identity.generate()
    key = new_locator_key()
    desk = merged_item(alice, _record(alice, NOW, "192.0.2.1"), NOW, key, tag=DESK, current=None, now_ms=NOW)
    laptop = merged_item(
        alice, _record(alice, NOW, "192.0.2.2"), NOW, key, tag=LAPTOP, current=None, now_ms=NOW
    )
    assert desk.seq == laptop.seq
    assert desk != laptop  # a split: the same seq, two values
    seq = NOW + 1
    phone = merged_item(
        alice, _record(alice, seq, "192.0.2.3"), seq, key, tag=PHONE, current=[desk, laptop, desk], now_ms=seq
    )
    hosts = sorted(read_record(e)[3][0].host for e in open_item(phone, key))
    assert hosts == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]  # each entry once
