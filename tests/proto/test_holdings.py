"""peerkit.proto.holdings: the connections a node keeps for authenticated peers, contacts first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit.proto.holdings import Held, Holdings, HoldingsPolicy, Kept, NotKept, Shortage


def keep(
    holdings: Holdings, peer: bytes, source: str, *, contact: bool = False, stream: bool = False
) -> Kept:
    decision = holdings.hold(peer=peer, source=source, contact=contact, stream=stream)
    assert isinstance(decision, Kept), decision
    return decision


def refused(
    holdings: Holdings, peer: bytes, source: str, *, contact: bool = False, stream: bool = False
) -> Shortage:
    decision = holdings.hold(peer=peer, source=source, contact=contact, stream=stream)
    assert isinstance(decision, NotKept), decision
    return decision.reason


def test_strangers_from_one_source_hold_at_most_their_share() -> None:
    holdings = Holdings(HoldingsPolicy(max_connections=100, max_strangers=50, max_per_source=5))
    for n in range(5):
        keep(holdings, bytes([n]), "10.0.0.1")
    assert refused(holdings, b"x", "10.0.0.1") is Shortage.PER_SOURCE
    keep(holdings, b"y", "10.0.0.2")  # another source is not affected
    assert holdings.strangers == 6


def test_when_strangers_fill_their_places_a_quieter_source_takes_the_busiest_ones_oldest() -> None:
    holdings = Holdings(HoldingsPolicy(max_connections=100, max_strangers=6, max_per_source=6))
    first = [keep(holdings, bytes([n]), "10.0.0.1").held for n in range(6)]
    decision = keep(holdings, b"new", "10.0.0.2")
    assert decision.evicted == (first[0],)
    assert holdings.strangers == 6
    # Shares even out: 10.0.0.2 takes places until both hold three; then nobody takes any.
    keep(holdings, b"n2", "10.0.0.2")
    keep(holdings, b"n3", "10.0.0.2")
    assert refused(holdings, b"n4", "10.0.0.2") is Shortage.FULL
    assert refused(holdings, b"n7", "10.0.0.1") is Shortage.FULL


def test_the_slash_64s_of_one_slash_48_share_one_fair_share() -> None:
    # One stranger from each of a free /48's /64s took every place, and each newcomer was evicted
    # by the next /64; grouped, the /48 is the busiest group and its next /64 is refused.
    holdings = Holdings(HoldingsPolicy(max_connections=100, max_strangers=6, max_per_source=6))
    hog = [keep(holdings, bytes([n]), f"2001:db8:1:{n:x}::/64").held for n in range(6)]
    assert keep(holdings, b"new", "2001:db8:2::/64").evicted == (hog[0],)
    assert refused(holdings, b"next", "2001:db8:1:ff::/64") is Shortage.FULL
    assert keep(holdings, b"ipv4", "192.0.2.1").evicted == (hog[1],)  # (5 against 1 + 1)
    assert holdings.strangers == 6


def test_a_contact_takes_a_strangers_place_and_is_never_evicted() -> None:
    holdings = Holdings(HoldingsPolicy(max_connections=4, max_strangers=4, max_per_source=4))
    strangers = [keep(holdings, bytes([n]), "10.0.0.1").held for n in range(4)]
    contact = keep(holdings, b"friend", "10.0.0.9", contact=True)
    assert contact.evicted == (strangers[0],)
    for n in range(3):
        keep(holdings, bytes([100 + n]), "10.0.0.9", contact=True)
    assert holdings.strangers == 0
    assert holdings.held == 4
    assert refused(holdings, b"friend2", "10.0.0.9", contact=True) is Shortage.FULL
    assert refused(holdings, b"stranger", "10.0.0.5") is Shortage.FULL  # no contact is evicted


def test_streams_per_peer_are_bounded_and_released() -> None:
    holdings = Holdings(HoldingsPolicy(max_streams_per_peer=3))
    streams = [keep(holdings, b"p", "10.0.0.1", contact=True, stream=True).held for _ in range(3)]
    assert refused(holdings, b"p", "10.0.0.1", contact=True, stream=True) is Shortage.STREAMS
    keep(holdings, b"p", "10.0.0.1", contact=True)  # a control channel is not a stream
    holdings.release(streams[0])
    holdings.release(streams[0])  # twice is harmless
    assert holdings.streams_of(b"p") == 2
    keep(holdings, b"p", "10.0.0.1", contact=True, stream=True)


def test_limits_shrink_to_the_places_there_are() -> None:
    policy = HoldingsPolicy.within(168)
    assert policy.max_connections == 168
    assert policy.max_strangers == 126
    assert policy.max_per_source == 42
    assert policy.max_streams_per_peer == 21
    assert HoldingsPolicy.within(10**6) == HoldingsPolicy()
    with pytest.raises(ValueError, match="max_strangers must be a positive integer, not 0"):
        HoldingsPolicy(max_strangers=0)


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3), st.booleans(), st.booleans(), st.booleans()),
        max_size=200,
    )
)
def test_counts_never_exceed_the_limits_whatever_happens(
    steps: list[tuple[int, int, bool, bool, bool]],
) -> None:
    policy = HoldingsPolicy(max_connections=12, max_strangers=8, max_per_source=4, max_streams_per_peer=2)
    holdings = Holdings(policy)
    sources = ["2001:db8:1:1::/64", "2001:db8:1:2::/64", "10.0.0.3", "10.0.0.4"]  # (two in one group)
    live: list[Held] = []
    for peer, source, contact, stream, close in steps:
        if close and live:
            holdings.release(live.pop(peer % len(live)))
            continue
        decision = holdings.hold(peer=bytes([peer]), source=sources[source], contact=contact, stream=stream)
        if isinstance(decision, Kept):
            for victim in decision.evicted:
                assert not victim.contact
                live.remove(victim)
            live.append(decision.held)
        assert holdings.held == len(live) <= policy.max_connections
        assert holdings.strangers == sum(not h.contact for h in live) <= policy.max_strangers
        for s in sources:
            assert sum(1 for h in live if not h.contact and h.source == s) <= policy.max_per_source
        for p in range(6):
            assert holdings.streams_of(bytes([p])) == sum(
                1 for h in live if h.stream and h.peer == bytes([p])
            )
            assert holdings.streams_of(bytes([p])) <= policy.max_streams_per_peer
