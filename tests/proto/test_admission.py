"""Admission control, sans-IO: per-source limits, the handshake budget, a fair share, bounded logs."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit.proto.admission import (
    MAX_SOURCES,
    Admission,
    AdmissionPolicy,
    Admitted,
    Charge,
    Refusal,
    RefusalCounter,
    Refused,
    ReplayGuard,
    RequestBudget,
    RequestPolicy,
    Ticket,
    group_of,
    source_of,
)


def admitted(decision: Admitted | Refused) -> Admitted:
    assert isinstance(decision, Admitted), decision
    return decision


def test_sources_are_addresses_and_ipv6_slash_64s() -> None:
    assert source_of(("127.0.0.2", 5000)) == "127.0.0.2"
    assert source_of(("2001:db8:1:2:aaaa::1", 5000, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("2001:db8:1:2:bbbb::9", 1)) == source_of(("2001:db8:1:2::1", 2))
    assert source_of(("::ffff:10.1.2.3", 1)) == "10.1.2.3"
    assert source_of(("fe80::1%eth0", 1)) == "fe80::1"  # a neighbour on a link: itself
    assert source_of(("fe80::2", 1)) == "fe80::2"
    assert source_of(("10.0.0.1", 40001)) == "10.0.0.1"
    assert source_of(None) == "None"


def test_an_ipv6_neighbour_on_this_hosts_links_is_a_source_of_its_own() -> None:
    # The hosts of a LAN share its /64: each is itself, as each IPv4 neighbour is.
    on_link = {"fd00:1:2::/64"}
    assert source_of(("fd00:1:2::5", 1), on_link) == "fd00:1:2::5"
    assert source_of(("fd00:1:2::6", 1, 0, 0), on_link) == "fd00:1:2::6"
    assert source_of(("fd00:1:3::5", 1), on_link) == "fd00:1:3::/64"  # another network: its /64
    assert source_of(("fd00:1:2::5", 1)) == "fd00:1:2::/64"
    assert source_of(("10.0.0.1", 1), on_link) == "10.0.0.1"


def test_what_is_remembered_of_addresses_is_bounded() -> None:
    # A parse is remembered (a peer asks again and again from one address), for 4,096 addresses.
    from peerkit.proto import admission

    for n in range(1, 5001):
        assert group_of(source_of((f"2001:db8:{n:x}:1::1", 1))) == f"2001:db8:{n:x}::/48"
    assert admission._parsed.cache_info().currsize <= admission._PARSED
    assert group_of.cache_info().currsize <= admission._PARSED


def test_one_source_holds_at_most_its_share() -> None:
    gate = Admission(AdmissionPolicy(max_pending=100, max_per_source=3, rate=1000, burst=1000))
    tickets = [admitted(gate.admit("a", 0.0)).ticket for _ in range(3)]
    assert gate.admit("a", 0.0) == Refused(Refusal.PER_SOURCE)
    assert isinstance(gate.admit("b", 0.0), Admitted)  # another source is not affected
    gate.release(tickets[0])
    gate.release(tickets[0])  # twice is harmless
    assert gate.pending_from("a") == 2
    assert isinstance(gate.admit("a", 0.0), Admitted)


def test_a_source_over_its_handshake_budget_is_refused_until_it_refills() -> None:
    gate = Admission(AdmissionPolicy(max_pending=100, max_per_source=100, rate=10, burst=5))
    for _ in range(5):
        gate.release(admitted(gate.admit("a", 0.0)).ticket)
    assert gate.admit("a", 0.0) == Refused(Refusal.RATE)
    assert gate.admit("a", 0.05) == Refused(Refusal.RATE)  # half a token
    assert isinstance(gate.admit("a", 0.1), Admitted)  # one token after 0.1 s at 10/s
    assert isinstance(gate.admit("b", 0.1), Admitted)


def test_when_full_the_busiest_source_gives_up_its_oldest_slot() -> None:
    gate = Admission(AdmissionPolicy(max_pending=4, max_per_source=4, rate=1000, burst=1000))
    hog = [admitted(gate.admit("hog", 0.0)).ticket for _ in range(4)]
    assert gate.pending == 4
    fair = admitted(gate.admit("legit", 0.0))
    assert fair.evicted == (hog[0],)  # the oldest
    assert gate.pending == 4
    assert gate.pending_from("hog") == 3
    gate.release(hog[0])  # the evicted handshake ends later: nothing is counted twice
    assert gate.pending == 4
    admitted(gate.admit("legit", 0.0))  # 2 against 2: still takes from the busiest (3 > 1 + 1)
    assert gate.pending_from("hog") == 2
    # Now every source holds as many as the newcomer would: a full node refuses.
    assert gate.admit("hog", 0.0) == Refused(Refusal.FULL)
    assert gate.admit("legit", 0.0) == Refused(Refusal.FULL)


def test_many_sources_each_with_a_few_cannot_starve_a_new_one() -> None:
    gate = Admission(AdmissionPolicy(max_pending=100, max_per_source=16, rate=1000, burst=1000))
    for i in range(50):
        for _ in range(2):
            admitted(gate.admit(f"10.0.0.{i}", 0.0))
    assert gate.pending == 100
    assert isinstance(gate.admit("192.168.1.1", 0.0), Admitted)  # 0 + 1 < 2


def test_the_slash_64s_of_one_slash_48_share_one_fair_share() -> None:
    # A /48 is free from a tunnel broker: 65,536 /64s, each a source. Were each its own share, one
    # stalled handshake from each would take every slot, and a newcomer's would be evicted by the
    # next /64 at once. Grouped, the /48 is the busiest: its next /64 is refused, the newcomer kept.
    gate = Admission(AdmissionPolicy(max_pending=8, max_per_source=4, rate=1000, burst=1000))
    hog = [admitted(gate.admit(f"2001:db8:1:{i:x}::/64", 0.0)).ticket for i in range(8)]
    newcomer = admitted(gate.admit("2001:db8:2::/64", 0.0))
    assert newcomer.evicted == (hog[0],)  # the group's oldest
    assert gate.admit("2001:db8:1:ff::/64", 0.0) == Refused(Refusal.FULL)
    assert gate.screen("2001:db8:1:fe::/64", 0.0) is Refusal.FULL
    assert gate.pending_from("2001:db8:2::/64") == 1
    # Other sources are their own groups: an IPv4 address, a neighbour's IPv6 address.
    assert isinstance(gate.admit("192.0.2.7", 0.0), Admitted)
    assert isinstance(gate.admit("fd00:1:2::5", 0.0), Admitted)


def test_within_the_busiest_group_the_busiest_source_gives_up_its_oldest() -> None:
    gate = Admission(AdmissionPolicy(max_pending=4, max_per_source=4, rate=1000, burst=1000))
    admitted(gate.admit("2001:db8:1:1::/64", 0.0))  # the group's oldest handshake
    hog = [admitted(gate.admit("2001:db8:1:2::/64", 0.0)).ticket for _ in range(3)]
    assert admitted(gate.admit("198.51.100.1", 0.0)).evicted == (hog[0],)
    assert admitted(gate.admit("198.51.100.2", 0.0)).evicted == (hog[1],)  # 2 of the 3 there
    assert gate.pending_from("2001:db8:1:1::/64") == 1  # (the group's oldest stays)
    assert gate.pending == 4


def test_the_slash_64s_of_one_slash_48_share_one_budget_of_handshake_starts() -> None:
    gate = Admission(AdmissionPolicy(max_pending=100, max_per_source=10, rate=1, burst=2))
    admitted(gate.admit("2001:db8:1:1::/64", 0.0))
    admitted(gate.admit("2001:db8:1:2::/64", 0.0))
    assert gate.screen("2001:db8:1:3::/64", 0.0) is Refusal.RATE  # a third /64: the /48's budget
    assert gate.admit("2001:db8:1:3::/64", 0.0) == Refused(Refusal.RATE)
    admitted(gate.admit("2001:db8:2::/64", 0.0))  # another /48
    admitted(gate.admit("192.0.2.1", 0.0))
    admitted(gate.admit("192.0.2.2", 0.0))  # IPv4 addresses: each its own
    admitted(gate.admit("2001:db8:1:3::/64", 1.0))  # a second later: one more start


def test_memory_is_bounded_by_the_number_of_sources() -> None:
    gate = Admission(AdmissionPolicy(rate=1000, burst=10))
    for i in range(MAX_SOURCES * 2):
        gate.release(admitted(gate.admit(f"s{i}", float(i))).ticket)
    assert len(gate._sources) <= MAX_SOURCES
    for i in range(MAX_SOURCES * 2):  # the /64s of one /48 share a bucket, kept while one is known
        gate.release(admitted(gate.admit(f"2001:db8:0:{i:x}::/64", float(MAX_SOURCES * 2 + i))).ticket)
    assert len(gate._sources) <= MAX_SOURCES
    assert set(gate._buckets) == {state.group for state in gate._sources.values()}


@pytest.mark.parametrize(
    "bad",
    [{"max_pending": 0}, {"max_per_source": -1}, {"burst": 1.5}, {"rate": 0}, {"max_pending": True}],
)
def test_a_bad_policy_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="admission"):
        AdmissionPolicy(**bad)  # type: ignore[arg-type]


def test_refusals_are_reported_once_per_interval() -> None:
    counter = RefusalCounter(interval=10)
    first = counter.note(Refusal.RATE, 0.0)
    assert first == "refused 1 incoming connection: 1 handshakes started too fast"
    lines = [counter.note(Refusal.PER_SOURCE, t / 100) for t in range(1, 999)]
    assert lines == [None] * 998
    report = counter.note(Refusal.RATE, 10.0)
    assert report is not None
    assert report.startswith("refused 999 incoming connections: 998 too many handshakes from one source")
    assert report.endswith("1 handshakes started too fast")
    # What came after the last report is told by flush (when its owner stops), once.
    assert counter.flush() is None
    assert counter.note(Refusal.PER_SOURCE, 11.0) is None
    assert counter.flush() == "refused 1 incoming connection: 1 too many handshakes from one source"
    assert counter.flush() is None


def test_refusals_counted_are_due_once_their_interval_is_over_though_no_refusal_comes() -> None:
    counter = RefusalCounter(interval=10)
    assert counter.interval == 10
    assert (counter.due_at(), counter.due(100.0)) == (None, None)  # (none counted)
    assert counter.note(Refusal.RATE, 0.0) is not None  # (the first: told at once)
    assert (counter.due_at(), counter.due(100.0)) == (None, None)  # (nothing left to tell)
    assert counter.note(Refusal.RATE, 1.0) is None
    assert counter.note(Refusal.PER_SOURCE, 2.0) is None
    assert counter.due_at() == 10.0  # (the interval from the last report)
    assert counter.due(9.9) is None
    assert counter.due(10.0) == (
        "refused 2 incoming connections: 1 handshakes started too fast, 1 too many handshakes from one source"
    )
    assert (counter.due_at(), counter.due(30.0), counter.flush()) == (None, None, None)  # (told once)
    assert counter.note(Refusal.RATE, 12.0) is None  # (within the interval of that report)
    assert counter.due_at() == 20.0


S = 10**9  # a second, in nanoseconds


def test_a_stamp_is_taken_once() -> None:
    guard = ReplayGuard()
    assert guard.fresh(b"alice", 100 * S)
    assert not guard.fresh(b"alice", 100 * S)  # the replay
    assert guard.fresh(b"bob", 100 * S)  # another peer's stamps are its own


def test_dials_that_arrive_out_of_order_pass_but_old_stamps_do_not() -> None:
    guard = ReplayGuard(window=60 * S)
    assert guard.fresh(b"alice", 100 * S)
    assert guard.fresh(b"alice", 99 * S)  # sent before, arrived after: within the window
    assert guard.fresh(b"alice", 200 * S)
    assert not guard.fresh(b"alice", 139 * S)  # more than 60 s older than the newest
    assert guard.fresh(b"alice", 141 * S)
    assert not guard.fresh(b"alice", 99 * S)


def test_memory_per_peer_and_peers_is_bounded() -> None:
    guard = ReplayGuard(per_peer=4, max_peers=3)
    for t in range(10):
        assert guard.fresh(b"alice", t)
    assert not guard.fresh(b"alice", 5)  # dropped from memory, but at or below the floor
    assert len(guard._peers[b"alice"][1]) <= 4
    for name in (b"b", b"c", b"d"):
        guard.fresh(name, 1)
    assert len(guard._peers) == 3
    assert guard.fresh(b"alice", 5)  # alice was forgotten (as after a restart)


def test_strangers_never_push_a_contact_out_of_memory() -> None:
    guard = ReplayGuard(max_peers=3)
    assert guard.fresh(b"alice", 100 * S, kept=True)
    for n in range(1000):  # a stranger's new ids, as many as it likes
        assert guard.fresh(b"id%d" % n, 100 * S)
    assert len(guard._peers) == 3
    assert not guard.fresh(b"alice", 100 * S, kept=True)  # still refused: alice was kept
    assert guard.fresh(b"alice", 101 * S, kept=True)
    # A contact no more (deleted): its stamps move to the strangers' and may be forgotten.
    assert not guard.fresh(b"alice", 101 * S)
    for n in range(3):
        guard.fresh(b"other%d" % n, 1)
    assert guard.fresh(b"alice", 101 * S)


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=40), st.integers(min_value=0, max_value=10))
def test_a_stamp_is_taken_when_new_and_above_the_newest_minus_the_window(
    stamps: list[int], window: int
) -> None:
    # Against a model with unbounded memory (the guard's own is bounded per peer: 64 here is more
    # than it needs).
    guard = ReplayGuard(window=window)
    taken: set[int] = set()
    floor = -1
    for ts in stamps:
        expected = ts > floor and ts not in taken
        assert guard.fresh(b"alice", ts) is expected
        if expected:
            taken.add(ts)
            floor = max(floor, max(taken) - window)


def test_a_peer_with_one_stamp_costs_little() -> None:
    # Thousands of peers dial a node: each is remembered with a small tuple, not a set (216 bytes).
    guard = ReplayGuard()
    assert guard.fresh(b"alice", 100 * S)
    _floor, seen = guard._peers[b"alice"]
    assert seen == (100 * S,)
    assert sys.getsizeof(seen) < sys.getsizeof(set()) / 3


def test_a_request_budget_refuses_over_the_rate_and_disconnects_after_strikes() -> None:
    budget = RequestBudget(RequestPolicy(rate=10, burst=3, strikes=2))
    assert [budget.charge(b"a", 0.0) for _ in range(3)] == [Charge.ANSWER] * 3
    assert budget.charge(b"a", 0.0) is Charge.REFUSE
    assert budget.charge(b"b", 0.0) is Charge.ANSWER  # another peer has its own bucket
    assert budget.charge(b"a", 0.05) is Charge.DISCONNECT  # half a token: the second in a row
    # Refilled to two tokens: strikes start over.
    assert [budget.charge(b"a", 0.2) for _ in range(3)] == [Charge.ANSWER, Charge.ANSWER, Charge.REFUSE]
    assert budget.charge(b"a", 0.35) is Charge.ANSWER


def test_a_request_budget_remembers_a_bounded_number_of_peers() -> None:
    budget = RequestBudget(RequestPolicy(rate=1, burst=1), max_peers=3)
    for peer in (b"a", b"b", b"c", b"d"):
        assert budget.charge(peer, 0.0) is Charge.ANSWER
    assert len(budget._peers) == 3
    assert budget.charge(b"a", 0.0) is Charge.ANSWER  # forgotten: a full bucket again
    assert budget.charge(b"d", 0.0) is Charge.REFUSE


def test_a_request_budget_forgets_the_buckets_that_filled_again() -> None:
    budget = RequestBudget(RequestPolicy(rate=10, burst=3, strikes=2))
    assert budget.charge(b"a", 0.0) is Charge.ANSWER  # two tokens left
    assert budget.charge(b"b", 0.05) is Charge.ANSWER
    assert len(budget) == 2  # a's has 2.5 tokens: not full yet
    assert budget.charge(b"c", 0.2) is Charge.ANSWER
    assert len(budget) == 1  # a's and b's are full again: only c's is kept
    for _ in range(3):
        budget.charge(b"c", 0.2)
    assert budget.charge(b"d", 0.2) is Charge.ANSWER
    assert len(budget) == 2  # c's is empty, and keeps its strike
    assert budget.charge(b"c", 0.2) is Charge.DISCONNECT


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 0.3)), max_size=200))
def test_a_request_budget_that_forgets_full_buckets_charges_as_one_that_keeps_all(
    requests: list[tuple[int, float]],
) -> None:
    policy = RequestPolicy(rate=10, burst=3, strikes=4)
    budget = RequestBudget(policy)
    kept: dict[int, list[float]] = {}  # the model: every bucket, for ever
    now = 0.0
    for peer, wait in requests:
        now += wait
        tokens, at, strikes = kept.setdefault(peer, [3.0, now, 0.0])
        tokens = min(3.0, tokens + (now - at) * 10)
        if tokens >= 1:
            kept[peer], expected = [tokens - 1, now, 0.0], Charge.ANSWER
        else:
            kept[peer] = [tokens, now, strikes + 1]
            expected = Charge.DISCONNECT if strikes + 1 >= 4 else Charge.REFUSE
        assert budget.charge(bytes([peer]), now) is expected
    assert len(budget) <= len(kept)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 0}, "request rate must be a positive number, not 0"),
        ({"burst": 0}, "request burst must be a positive integer, not 0"),
        ({"strikes": True}, "request strikes must be a positive integer, not True"),
    ],
)
def test_a_request_policy_names_a_bad_value(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RequestPolicy(**options)


@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.floats(0, 0.5), st.booleans()),
        max_size=300,
    )
)
def test_screening_refuses_exactly_what_admission_would(steps: list[tuple[int, float, bool]]) -> None:
    # screen() is what a listener asks as soon as a connection is accepted; it must agree with
    # admit() (it counts nothing), whatever happened before. Sources 0 to 4 are IPv6 /64s of two
    # /48s (one group each), 5 to 9 sources by themselves.
    admission = Admission(AdmissionPolicy(max_pending=3, max_per_source=2, rate=10, burst=4))
    sources = [f"2001:db8:{i % 2}:{i}::/64" for i in range(5)] + [f"10.0.0.{i}" for i in range(5, 10)]
    groups = [sources[0:5:2], sources[1:5:2], *([s] for s in sources[5:])]
    now = 0.0
    tickets: list[Ticket] = []
    for source, later, release in steps:
        now += later
        if release and tickets:
            admission.release(tickets.pop(source % len(tickets)))
            continue
        screened = admission.screen(sources[source], now)
        decision = admission.admit(sources[source], now)
        if screened is None:
            assert isinstance(decision, Admitted)
            tickets = [t for t in tickets if t not in decision.evicted]
            tickets.append(decision.ticket)
        else:
            assert isinstance(decision, Refused)
            assert decision.reason is screened
        held = [sum(admission.pending_from(s) for s in group) for group in groups]
        assert set(admission._buckets) == {state.group for state in admission._sources.values()}
        assert admission._busiest() == max(held)
        assert admission.pending == sum(held) <= 3
        assert admission._screened == 0  # each screened connection asked admit()


def test_connections_screened_at_once_count_until_they_ask_admission() -> None:
    # A burst accepted in one go passes the screen only as far as the source's limits go.
    admission = Admission(AdmissionPolicy(max_pending=100, max_per_source=3, rate=10, burst=100))
    assert [admission.screen("a", 0.0) for _ in range(4)] == [None, None, None, Refusal.PER_SOURCE]
    for _ in range(3):
        assert isinstance(admission.admit("a", 0.0), Admitted)
    assert admission.screen("a", 0.0) is Refusal.PER_SOURCE  # now they are handshakes under way
    budget = Admission(AdmissionPolicy(max_pending=100, max_per_source=50, rate=1, burst=2))
    assert [budget.screen("b", 0.0) for _ in range(3)] == [None, None, Refusal.RATE]
    # One that never asks (its transport could not be made) is forgotten after a second.
    assert budget.screen("b", 1.5) is None
