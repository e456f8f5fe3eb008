"""peerkit.dht.record: a node's record sealed in one BEP 44 item, always fitting, readable by
holders of the locator key only."""

from __future__ import annotations

import pytest

from peerkit import Identity
from peerkit.dht.bencode import encode
from peerkit.dht.bep44 import MAX_VALUE
from peerkit.dht.record import (
    MAX_SEALED_ENVELOPE,
    SALT,
    LocatorError,
    fit_record,
    new_locator_key,
    open_item,
    seal,
    sealed_item,
    unseal,
)
from peerkit.discovery.base import make_record, read_record

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


def test_an_item_opens_to_its_keys_record_at_its_seq_only() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    key = new_locator_key()
    envelope = make_record(alice, 5, nickname="alice", endpoint_name="", endpoints=[("192.0.2.1", 7000)])
    item = sealed_item(alice, envelope, 5, key)
    assert item.salt == SALT
    assert item.key == alice.id.key
    assert open_item(item, key) == envelope
    with pytest.raises(LocatorError, match="does not open"):
        open_item(item, new_locator_key())  # a stranger, or a contact after rotation
    assert b"192.0.2.1" not in item.value  # nothing of where alice is shows
    old = sealed_item(alice, envelope, 9, key)  # an old record under a newer seq
    with pytest.raises(LocatorError, match="at the item's seq"):
        open_item(old, key)
    theirs = sealed_item(mallory, envelope, 5, key)  # alice's record under mallory's key
    with pytest.raises(LocatorError, match="key's record"):
        open_item(theirs, key)
