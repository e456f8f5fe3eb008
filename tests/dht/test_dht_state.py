"""The DHT node's sans-IO state: routing table, write tokens, item store, answers, lookups."""

from __future__ import annotations

import functools
import hashlib
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerkit import Identity
from peerkit.dht.bencode import decode
from peerkit.dht.bep44 import MutableItem
from peerkit.dht.krpc import Error, KrpcError, Node, Query, Response, compact_nodes, parse
from peerkit.dht.lookup import MIN_SOFT_TIMEOUT, SOFT_TIMEOUT, Lookup, RoundTrips
from peerkit.dht.routing import MAX_FAILURES, K, RoutingTable, distance
from peerkit.dht.server import Responder
from peerkit.dht.storage import ITEM_LIFETIME, TOKEN_ROTATION, ItemStore, Tokens

OWN = bytes(20)


def node(n: int, prefix: bytes = b"") -> Node:
    node_id = (prefix + hashlib.sha1(str(n).encode()).digest())[:20]
    return Node(node_id, (f"10.0.{n // 250}.{n % 250 + 1}", 6881))


def test_buckets_hold_k_and_a_failed_node_gives_way_to_a_waiting_one() -> None:
    table = RoutingTable(OWN)
    far = [Node(bytes([0x80 | i]) + bytes(19), (f"10.0.0.{i + 1}", 1000)) for i in range(K + 2)]
    for n in far:
        table.seen(n, 1.0)
    assert len(table) == K  # one bucket (the far half of the id space) holds K
    for _ in range(MAX_FAILURES):
        table.failed(far[0])
    assert far[0] not in table.nodes()
    assert far[K + 1] in table.nodes()  # the newest waiting node took its place
    assert len(table) == K


def test_an_address_holds_one_place_whatever_ids_it_shows() -> None:
    table = RoutingTable(OWN)
    sybils = [Node(os.urandom(20), ("10.6.6.6", 6881 + n)) for n in range(40)]
    for sybil in sybils:
        table.seen(sybil, 1.0)
    assert len(table) == 1
    table.seen(node(1), 1.0)  # another address is not kept out
    assert len(table) == 2
    assert sybils[0] in table.nodes()  # the first came first
    for _ in range(MAX_FAILURES):
        table.failed(sybils[0])
    table.seen(sybils[-1], 2.0)  # the address's place is free again
    assert sybils[0] not in table.nodes()
    assert sybils[-1] in table.nodes()


def test_a_bucket_holds_one_node_of_a_public_network_and_loopback_is_exempt() -> None:
    table = RoutingTable(OWN)
    far = [bytes([0x80 | i]) + bytes(19) for i in range(6)]  # all in the far bucket
    table.seen(Node(far[0], ("93.184.216.1", 6881)), 1.0)
    table.seen(Node(far[1], ("93.184.216.2", 6881)), 1.0)  # the same /24: not in this bucket
    table.seen(Node(bytes([0x40]) + bytes(19), ("93.184.216.3", 6881)), 1.0)  # another bucket
    table.seen(Node(far[2], ("2001:4860:1:1::1", 6881)), 1.0)
    table.seen(Node(far[3], ("2001:4860:1:1::2", 6881)), 1.0)  # the same /64
    table.seen(Node(far[4], ("2001:4860:1:2::1", 6881)), 1.0)  # another /64
    assert sorted(n.address[0] for n in table.nodes()) == [
        "2001:4860:1:1::1",
        "2001:4860:1:2::1",
        "93.184.216.1",
        "93.184.216.3",
    ]
    local = RoutingTable(OWN)
    for n in range(K):  # a testnet on one machine; a LAN's hosts in one /24
        local.seen(Node(bytes([0x80 | n]) + bytes(19), ("127.0.0.1", 7000 + n)), 1.0)
        local.seen(Node(bytes([0x40 | n]) + bytes(19), (f"192.168.1.{n + 1}", 6881)), 1.0)
    assert len(local) == 2 * K


def test_closest_orders_by_xor_distance_and_ignores_our_own_id() -> None:
    table = RoutingTable(OWN)
    nodes = [node(i) for i in range(60)]
    for n in nodes:
        table.seen(n, 1.0)
    table.seen(Node(OWN, ("10.9.9.9", 1)), 1.0)
    target = os.urandom(20)
    closest = table.closest(target, 5)
    assert closest == sorted(table.nodes(), key=lambda n: distance(n.id, target))[:5]
    assert all(n.id != OWN for n in table.nodes())


def test_an_id_does_not_move_to_another_address_on_one_packet() -> None:
    table = RoutingTable(OWN)
    table.seen(node(1), 1.0)
    table.seen(Node(node(1).id, ("10.66.6.6", 1)), 2.0)
    assert table.nodes() == [node(1)]


def test_tokens_live_five_to_ten_minutes_and_are_bound_to_the_address() -> None:
    tokens = Tokens(0.0)
    token = tokens.token(("10.0.0.1", 1), 10.0)
    assert tokens.valid(("10.0.0.1", 9999), token, 10.0)  # the address, not the port
    assert not tokens.valid(("10.0.0.2", 1), token, 10.0)
    assert tokens.valid(("10.0.0.1", 1), token, TOKEN_ROTATION + 1)
    assert not tokens.valid(("10.0.0.1", 1), token, 2 * TOKEN_ROTATION + 1)


def item(identity: Identity, value: bytes, seq: int, salt: bytes = b"") -> MutableItem:
    return MutableItem.create(identity.sign, identity.id.key, value, seq, salt)


def test_the_store_is_bounded_and_expires_items() -> None:
    store = ItemStore(max_items=3, max_bytes=10**6)
    people = [Identity.generate() for _ in range(4)]
    for n, person in enumerate(people):
        store.put(item(person, b"x", 1), float(n))
    assert len(store) == 3
    assert store.get(item(people[0], b"x", 1).target, 4.0) is None  # the oldest went first
    assert store.get(item(people[3], b"x", 1).target, 4.0) is not None
    assert store.get(item(people[3], b"x", 1).target, 3.0 + ITEM_LIFETIME + 1) is None
    small = ItemStore(max_items=100, max_bytes=300)
    for person in people:
        small.put(item(person, bytes(100), 1), 0.0)
    assert small.size <= 300


def test_a_group_that_puts_without_end_pushes_out_only_its_own_items() -> None:
    store = ItemStore(max_items=10, max_bytes=10**6)
    alice, bob, mallory = (Identity.generate() for _ in range(3))
    mine = [item(alice, b"a", 1, bytes([n])) for n in range(2)]
    for n, own in enumerate(mine):
        store.put(own, float(n), group="10.0.0.1")
    store.put(item(bob, b"b", 1), 2.0, group="10.0.0.2")
    flood = [item(mallory, b"m", 1, n.to_bytes(2, "big")) for n in range(40)]
    for n, junk in enumerate(flood):
        store.put(junk, 3.0 + n, group="10.6.6.6")
        assert len(store) <= 10
    assert all(store.get(own.target, 50.0) == own for own in mine)  # the oldest, and kept
    assert store.get(item(bob, b"b", 1).target, 50.0) is not None
    assert store.held_by("10.6.6.6") == 7
    assert [store.get(junk.target, 50.0) is not None for junk in flood[-8:]] == [False] + [True] * 7
    # A stranger's item when the store is full pushes out the busiest group's oldest.
    store.put(item(bob, b"b", 1, b"2"), 60.0, group="10.0.0.3")
    assert store.held_by("10.6.6.6") == 6
    assert store.get(flood[-7].target, 60.0) is None


def test_an_item_stays_with_the_group_that_put_it_first() -> None:
    store = ItemStore(max_items=4, max_bytes=10**6)
    alice, mallory = Identity.generate(), Identity.generate()
    hers = item(alice, b"a", 1)
    store.put(hers, 0.0, group="10.0.0.1")
    store.put(hers, 1.0, group="10.6.6.6")  # a copy put again from elsewhere
    store.put(item(alice, b"a2", 2), 2.0, group="10.6.6.6")  # even a newer one
    assert (store.held_by("10.0.0.1"), store.held_by("10.6.6.6")) == (1, 0)
    for n in range(10):
        store.put(item(mallory, b"m", 1, bytes([n])), 3.0 + n, group="10.6.6.6")
    assert store.get(hers.target, 20.0) == item(alice, b"a2", 2)


@functools.cache
def pool() -> list[MutableItem]:
    person = Identity.generate()
    return [item(person, b"v" * n, 1, bytes([n])) for n in range(12)]


@given(puts=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 3)), max_size=60))
def test_the_store_keeps_its_bounds_and_drops_the_busiest_groups_least_lately_put(
    puts: list[tuple[int, int]],
) -> None:
    # Against a model: items least lately put first; past a bound, the group that holds the most
    # (of those, the one that came to that count first) loses its least lately put.
    store = ItemStore(max_items=5, max_bytes=450)
    model: dict[bytes, tuple[str, int]] = {}  # target: (group, size)
    came: dict[str, int] = {}  # when each group came to the count it holds
    tick = itertools.count()

    def held(group: str) -> int:
        return sum(1 for g, _ in model.values() if g == group)

    for now, (n, g) in enumerate(puts):
        put = pool()[n]
        group = model.pop(put.target, (f"g{g}", 0))[0]
        came[group] = next(tick)
        model[put.target] = (group, len(put.value) + len(put.salt) + 64 + 32)
        came[group] = next(tick)
        while len(model) > 5 or sum(size for _, size in model.values()) > 450:
            busiest = max({g for g, _ in model.values()}, key=lambda g: (held(g), -came[g]))
            del model[next(t for t, (g, _) in model.items() if g == busiest)]
            came[busiest] = next(tick)
        store.put(put, float(now), group=f"g{g}")
        assert {t for t in (p.target for p in pool()) if store.get(t, float(now))} == set(model)
        assert len(store) == len(model) <= 5
        assert store.size == sum(size for _, size in model.values()) <= 450
        assert all(store.held_by(g) == held(g) for g in came)


def ask(
    responder: Responder, method: bytes, source: tuple[str, int] = ("10.1.1.1", 7), **args: object
) -> object:
    query = Query(b"tt", method, {b"id": bytes([9]) * 20, **{k.encode(): v for k, v in args.items()}})  # type: ignore[misc]
    parsed = parse(query.encode())
    assert isinstance(parsed, Query)
    return parse(responder.answer(parsed, source, 100.0))


def test_the_responder_answers_get_and_put_with_beps_rules() -> None:
    table = RoutingTable(OWN)
    for i in range(20):
        table.seen(node(i), 1.0)
    responder = Responder(table, Tokens(0.0), ItemStore())
    pong = ask(responder, b"ping")
    assert isinstance(pong, Response)
    assert pong.sender == OWN
    assert pong.ip == ("10.1.1.1", 7)
    assert Node(bytes([9]) * 20, ("10.1.1.1", 7)) in table.nodes()  # the querier was added
    alice = Identity.generate()
    first = item(alice, b"here", 5, b"pk")
    got = ask(responder, b"get", target=first.target)
    assert isinstance(got, Response)
    assert b"v" not in got.values
    assert len(got.nodes()) == K
    token = got.values[b"token"]
    put = {"token": token, "k": first.key, "salt": first.salt, "seq": 5, "sig": first.sig, "v": b"here"}
    assert isinstance(ask(responder, b"put", **put), Response)
    got = ask(responder, b"get", target=first.target)
    assert isinstance(got, Response)
    assert (got.values[b"v"], got.values[b"seq"], got.values[b"k"]) == (b"here", 5, alice.id.key)
    newer_than = ask(responder, b"get", target=first.target, seq=5)
    assert isinstance(newer_than, Response)
    assert b"v" not in newer_than.values  # nothing above seq 5
    older = item(alice, b"old", 4, b"pk")
    refused = ask(responder, b"put", **{**put, "seq": 4, "sig": older.sig, "v": b"old"})
    assert refused == Error(b"tt", 302, "sequence number less than current")
    stale_cas = item(alice, b"new", 6, b"pk")
    assert ask(responder, b"put", **{**put, "seq": 6, "sig": stale_cas.sig, "v": b"new", "cas": 3}) == Error(
        b"tt", 301, "CAS mismatch"
    )
    assert ask(responder, b"put", **{**put, "sig": bytes(64)}) == Error(b"tt", 206, "invalid signature")
    assert ask(responder, b"put", **put, source=("10.1.1.2", 7)) == Error(b"tt", 203, "invalid token")


@functools.cache
def kademlia_world(count: int) -> tuple[list[Node], dict[Node, list[Node]]]:
    # ``count`` nodes, each with a Kademlia table: up to K nodes per bucket (distance bit length).
    world = [node(i) for i in range(count)]
    tables: dict[Node, list[Node]] = {}
    for me in world:
        buckets: dict[int, list[Node]] = {}
        for other in world:
            if other is not me:
                bucket = buckets.setdefault(distance(me.id, other.id).bit_length(), [])
                if len(bucket) < K:
                    bucket.append(other)
        tables[me] = [n for bucket in buckets.values() for n in bucket]
    return world, tables


@pytest.mark.parametrize("seed", range(20))
def test_a_lookup_converges_on_the_nearest_nodes_and_dead_ones_do_not_hold_it(seed: int) -> None:
    world, tables = kademlia_world(400)
    dead = set(world[::4])  # a quarter never answers
    target = hashlib.sha1(b"target %d" % seed).digest()

    def answer(asked: Node) -> Response:
        nearest = sorted(tables[asked], key=lambda n: distance(n.id, target))[:K]
        return Response(b"t", {b"id": asked.id, b"nodes": compact_nodes(nearest, ipv6=False)})

    lookup = Lookup(target, width=8)
    lookup.add(tables[world[1]][:8])
    now, rounds = 0.0, 0
    while not lookup.done(now) and rounds < 200:
        for asked in lookup.due(now):
            if asked not in dead:
                lookup.answered(asked, answer(asked))
        now += 0.1  # dead nodes go silent past the soft timeout as time passes
        rounds += 1
    assert lookup.done(now)
    assert now < 5.0
    live_nearest = [n for n in sorted(world, key=lambda n: distance(n.id, target)) if n not in dead][:8]
    found = [n for n, _ in lookup.answers()][:8]
    # Answers name K nodes, dead ones among them (they are still in every table), so the live
    # nodes just past the K nearest may go unnamed; the nearest are always found.
    assert found[:4] == live_nearest[:4]
    assert len(set(found) & set(live_nearest)) >= 5


def test_made_up_nodes_at_one_address_take_one_place_among_a_lookups_candidates() -> None:
    # One answer names 40 made-up ids nearer the target than anything, all at the answerer's own
    # address (40 ports): one of them becomes a candidate, and the real nodes are still asked.
    world, tables = kademlia_world(200)
    target = hashlib.sha1(b"eclipse").digest()
    liar = Node(bytes(20), ("10.66.6.6", 6881))
    near = [Node(target[:-1] + bytes([n]), ("10.66.6.6", 7000 + n)) for n in range(40)]
    near += [Node(target[:-2] + bytes([1, n]), (f"93.184.216.{n + 1}", 6881)) for n in range(40)]
    lookup = Lookup(target, width=8)
    lookup.add([liar])
    for asked in lookup.due(0.0):
        lookup.answered(asked, Response(b"t", {b"id": liar.id, b"nodes": compact_nodes(near, ipv6=False)}))
    lookup.add(tables[world[1]][:8])
    addresses = [c.node.address[0] for c in lookup._candidates.values()]
    assert addresses.count("10.66.6.6") == 1  # the liar itself (the first of its address)
    assert sum(a.startswith("93.184.216.") for a in addresses) == 1  # one of the public /24
    assert len(lookup._candidates) == 2 + 8
    # A candidate that fails gives its network's place to the next one named.
    (public,) = [c.node for c in lookup._candidates.values() if c.node.address[0].startswith("93.")]
    lookup.failed(public)
    lookup.add(near[40:])
    assert sum(c.node.address[0].startswith("93.184.216.") for c in lookup._candidates.values()) == 2
    loopback = Lookup(target)
    loopback.add([Node(bytes([n]) * 20, ("127.0.0.1", 7000 + n)) for n in range(5)])
    assert len(loopback._candidates) == 5  # a testnet on one machine: each port


def test_the_item_value_is_returned_decoded() -> None:
    alice = Identity.generate()
    stored = item(alice, b"v", 1)
    assert decode(stored.value) == b"v"
    with pytest.raises(ValueError, match="20 bytes"):
        RoutingTable(b"short")


def test_packet_budgets_are_per_host_except_on_loopback() -> None:
    from peerkit.dht.node import _budget_key

    assert _budget_key(("192.0.2.7", 6881)) == _budget_key(("192.0.2.7", 7000)) == "192.0.2.7"
    assert _budget_key(("127.0.0.1", 6881)) != _budget_key(("127.0.0.1", 7000))
    assert _budget_key(("::1", 6881)) == "::1:6881"


def test_the_soft_timeout_follows_the_round_trips_seen() -> None:
    trips = RoundTrips()
    assert trips.soft_timeout == SOFT_TIMEOUT  # nothing seen yet: the most
    for seconds in (0.08, 0.07, 0.09, 0.08, 0.08, 0.07, 0.09, 0.08):
        trips.seen(seconds)
    assert 0.1 <= trips.soft_timeout < 0.25  # a few round trips, not half a second
    trips.seen(0.01)
    for _ in range(20):
        trips.seen(0.001)
    assert trips.soft_timeout == MIN_SOFT_TIMEOUT  # never below the floor
    for _ in range(50):
        trips.seen(3.0)  # a slow path: never above the most either
    assert trips.soft_timeout == SOFT_TIMEOUT


def test_nodes_are_given_in_the_askers_family_or_those_it_wants() -> None:
    four, six = RoutingTable(OWN), RoutingTable(OWN)
    for i in range(12):
        four.seen(node(i), 1.0)
        six.seen(Node(node(i + 100).id, (f"fd00::{i + 1:x}", 6881)), 1.0)
    responder = Responder(four, Tokens(0.0), ItemStore(), sibling=six)
    target = hashlib.sha1(b"t").digest()

    def families(source: tuple[str, int], want: list[bytes] | None = None) -> set[bytes]:
        extra = {} if want is None else {"want": want}
        answer = ask(responder, b"find_node", source, target=target, **extra)
        assert isinstance(answer, Response)
        assert len(answer.values.get(b"nodes", b"")) <= 8 * 26  # at most K of each family
        assert len(answer.values.get(b"nodes6", b"")) <= 8 * 38
        return {key for key in (b"nodes", b"nodes6") if key in answer.values}

    assert families(("10.1.1.1", 7)) == {b"nodes"}
    assert families(("fd00::99", 7)) == {b"nodes6"}
    assert families(("10.1.1.1", 7), [b"n4", b"n6"]) == {b"nodes", b"nodes6"}
    assert families(("10.1.1.1", 7), [b"n6"]) == {b"nodes6"}
    assert families(("10.1.1.1", 7), [b"x9"]) == {b"nodes"}  # nothing known asked for: its own
    answer = ask(responder, b"find_node", ("fd00::99", 7), target=target)
    assert isinstance(answer, Response)
    nearest = sorted(six.nodes(), key=lambda n: distance(n.id, target))[:8]
    assert answer.nodes() == nearest


def test_the_newest_item_is_the_highest_seq_then_the_most_held_then_the_greatest_signature() -> None:
    from peerkit.dht.node import _newest

    alice = Identity.generate()
    a, b, newer = item(alice, b"a", 5), item(alice, b"b", 5), item(alice, b"c", 6)
    assert _newest([]) == []
    assert _newest([a, b, a]) == [a, b]  # a split: both, the winner first
    assert _newest([b, a, b]) == [b, a]  # the order met does not matter, only how many hold each
    assert _newest([a, a, b, newer]) == [newer]  # a higher seq wins whatever the counts
    assert _newest([a, b])[0] == _newest([b, a])[0] == max(a, b, key=lambda i: i.sig)


def test_the_external_address_is_believed_once_enough_reporters_agree() -> None:
    from peerkit.dht.external import MIN_VOTES, REPORTERS, ExternalAddress

    votes = ExternalAddress()
    public, liar = ("203.0.113.7", 40001), ("198.51.100.66", 1)
    for i in range(MIN_VOTES - 1):
        votes.seen(f"10.0.0.{i}", public)
    assert votes.address is None  # not enough yet
    votes.seen("10.0.0.9", public)
    assert votes.address == public
    for i in range(MIN_VOTES):  # as many say otherwise: a tie believes nothing
        votes.seen(f"10.0.1.{i}", liar)
    assert votes.address is None
    votes.seen("10.0.0.9", public)  # one reporter counts once, however often it reports
    assert votes.address is None
    for i in range(REPORTERS):  # reports of many more: the old ones are forgotten
        votes.seen(f"10.0.2.{i}", public)
    assert votes.address == public


_ARG_VALUES = st.one_of(
    st.binary(max_size=25),
    st.integers(-3, 2**64),
    st.lists(st.binary(max_size=21) | st.integers(0, 9), max_size=3),
    st.dictionaries(st.binary(max_size=3), st.binary(max_size=3) | st.integers(0, 9), max_size=2),
)
_ID = st.binary(min_size=20, max_size=20)
#: Queries whose required arguments are well formed (else the parser refuses them) and whose
#: others are anything, each method's own.
_QUERIES = st.one_of(
    st.tuples(st.just(b"ping"), st.fixed_dictionaries({}, optional={b"want": _ARG_VALUES})),
    st.tuples(
        st.just(b"find_node"), st.fixed_dictionaries({b"target": _ID}, optional={b"want": _ARG_VALUES})
    ),
    st.tuples(
        st.just(b"get"),
        st.fixed_dictionaries({b"target": _ID}, optional={b"seq": _ARG_VALUES, b"want": _ARG_VALUES}),
    ),
    st.tuples(
        st.just(b"get_peers"), st.fixed_dictionaries({b"info_hash": _ID}, optional={b"want": _ARG_VALUES})
    ),
    st.tuples(
        st.just(b"announce_peer"),
        st.fixed_dictionaries(
            {b"info_hash": _ID, b"token": st.binary(max_size=8)},
            optional={b"port": _ARG_VALUES, b"implied_port": _ARG_VALUES},
        ),
    ),
    st.tuples(
        st.just(b"put"),
        st.fixed_dictionaries(
            {b"token": st.binary(max_size=8), b"v": _ARG_VALUES},
            optional={
                b"k": st.binary(min_size=32, max_size=32) | _ARG_VALUES,
                b"sig": st.binary(min_size=64, max_size=64) | _ARG_VALUES,
                b"seq": _ARG_VALUES,
                b"salt": _ARG_VALUES,
                b"cas": _ARG_VALUES,
            },
        ),
    ),
)


@settings(max_examples=600, deadline=None)
@given(
    query=_QUERIES,
    sender=_ID,
    source=st.sampled_from([("10.1.1.1", 7), ("::1", 9), ("127.0.0.1", 6881)]),
    valid_token=st.booleans(),
)
def test_the_responder_answers_any_query_the_parser_lets_through(
    query: tuple[bytes, dict[bytes, object]], sender: bytes, source: tuple[str, int], valid_token: bool
) -> None:
    # (an exception here would end the node's receiving loop: no later query would be answered)
    table = RoutingTable(OWN)
    for i in range(10):
        table.seen(node(i), 1.0)
    responder = Responder(table, Tokens(0.0), ItemStore())
    method, args = query
    if valid_token and b"token" in args:  # (so that a put goes past its token, to its other fields)
        args = {**args, b"token": responder.tokens.token(source, 100.0)}
    try:
        parsed = parse(Query(b"tt", method, {**args, b"id": sender}).encode())  # type: ignore[dict-item]
    except KrpcError:
        return
    if isinstance(parsed, Query):
        assert isinstance(parse(responder.answer(parsed, source, 100.0)), Response | Error)
