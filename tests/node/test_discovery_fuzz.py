"""Whatever a stranger puts in a TXT record or a record envelope, discovery goes on (hypothesis)."""

from __future__ import annotations

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from peerkit.discovery import Directory, make_record
from peerkit.discovery.mdns import _txt_properties, envelope_from_txt
from peerkit.identity import Identity

LOCAL = Identity.generate()
SIGNER = Identity.generate()

txt_keys = st.sampled_from([b"v", b"id", b"r0", b"r1", b"r2", b"x"]) | st.binary(max_size=8)
txt_values = st.none() | st.binary(max_size=300) | st.sampled_from([b"1", str(SIGNER.id).encode()])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(txt_keys, txt_values, max_size=8))
def test_any_txt_record_is_read_or_refused(properties: dict[bytes, bytes | None]) -> None:
    result = envelope_from_txt(properties)
    assert result is None or isinstance(result[1], bytes)


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | cbor_values.map(cbor2.dumps))
def test_any_envelope_is_refused_and_counted(envelope: bytes) -> None:
    directory = Directory(LOCAL.id)
    assert directory.found(envelope, source="fuzz") is None
    assert directory.stats.invalid == 1
    assert len(directory) == 0


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["nick", "name", "addrs", "extra"]),
        cbor_values,
        max_size=4,
    )
)
def test_signed_records_with_any_content_are_read_or_refused(content: dict[str, object]) -> None:
    # Validly signed, but with any content: believed only when the content is well formed.
    from peerkit.proto.records import sign_record

    directory = Directory(LOCAL.id)
    record = directory.found(sign_record(SIGNER, 1, content), source="fuzz")
    assert (record is None) == (directory.stats.invalid == 1)


def test_a_good_record_is_believed() -> None:
    directory = Directory(LOCAL.id)
    envelope = make_record(SIGNER, 1, nickname="s", endpoint_name="", endpoints=[("10.0.0.1", 1)])
    assert directory.found(envelope, source="fuzz") is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_txt_rdata_is_read(text: bytes) -> None:
    properties = _txt_properties(text)
    assert all(isinstance(k, bytes) and k for k in properties)
    envelope_from_txt(properties)  # never raises


PEOPLE = [Identity.generate() for _ in range(8)]
RECORDS = [
    [make_record(p, seq, nickname="p", endpoint_name="", endpoints=[("10.0.0.9", 7000)]) for seq in (1, 2)]
    for p in PEOPLE
]
VERBS = st.sampled_from(["found", "lost", "befriend", "unfriend"])


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.tuples(VERBS, st.integers(0, 5), st.integers(0, 2)),
        max_size=60,
    )
)
def test_the_directory_keeps_its_places_whatever_comes_and_goes(steps: list[tuple[str, int, int]]) -> None:
    # Records from four origins (and none) found and lost, people made contacts and strangers
    # again, in any order: the directory stays within its capacity, a contact is never given up for
    # a stranger, and every stranger's place is counted once.
    contacts: set[object] = set()
    directory = Directory(LOCAL.id, capacity=3, is_contact=contacts.__contains__)
    for verb, who, where in steps:
        person = PEOPLE[who]
        if verb == "found":
            before = {r.id for r in directory.records()}
            origin = None if where == 2 else f"10.0.0.{where}"
            believed = directory.found(RECORDS[who][where % 2], source="s", origin=origin)
            gone = before - {r.id for r in directory.records()}
            assert not gone & contacts  # a contact never gives its place up
            assert believed is None or believed.id == person.id
        elif verb == "lost":
            directory.lost(person.id, source="s")
        elif verb == "befriend":
            contacts.add(person.id)
        else:
            contacts.discard(person.id)
        assert len(directory) <= 3
        held = {r.id for r in directory.records()}
        strangers = directory._strangers
        assert len(strangers) == sum(1 for e in directory._entries.values() if e.group is not None)
        assert all(strangers.held_by(e.group) for e in directory._entries.values() if e.group is not None)
        assert len(held) == len(directory)
