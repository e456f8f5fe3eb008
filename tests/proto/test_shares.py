"""peerkit.proto.shares: places shared fairly between groups, taken out round robin."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit.proto.shares import FairShare, GroupCounts, Taken


class Item:
    """Hashed by identity, like the entries the node keeps."""

    def __init__(self, group: str, n: int) -> None:
        self.group = group
        self.n = n

    def __repr__(self) -> str:
        return f"{self.group}{self.n}"


def fill(share: FairShare[Item], group: str, count: int) -> list[Item]:
    items = [Item(group, n) for n in range(count)]
    for item in items:
        assert share.take(group, item) == Taken(None)
    return items


def test_places_fill_in_order_and_a_group_holds_at_most_its_cap() -> None:
    share: FairShare[Item] = FairShare(8, per_group=3)
    fill(share, "a", 3)
    assert share.take("a", Item("a", 9)) is None  # its cap
    fill(share, "b", 3)
    assert len(share) == 6
    assert share.held_by("a") == 3
    assert share.held_by("c") == 0


def test_a_newcomer_takes_the_oldest_place_of_the_busiest_group_when_every_place_is_taken() -> None:
    share: FairShare[Item] = FairShare(6)
    a = fill(share, "a", 4)
    b = fill(share, "b", 2)
    newcomer = Item("c", 0)
    assert share.take("c", newcomer) == Taken(a[0])
    assert share.held_by("a") == 3
    assert len(share) == 6
    assert not share.give_back("a", a[0])  # evicted: it holds no place
    # a holds 3, c 1: c takes one more of a's, b (2) takes none: it holds one fewer than a only
    assert share.take("c", Item("c", 1)) == Taken(a[1])
    assert share.take("b", Item("b", 9)) is None
    assert share.take("a", Item("a", 9)) is None  # the busiest takes nothing of anyone's
    assert Counter({g: share.held_by(g) for g in "abc"}) == Counter(a=2, b=2, c=2)
    assert b  # b's kept their places


def test_full_counts_every_place_as_taken() -> None:
    share: FairShare[Item] = FairShare(10)
    a = fill(share, "a", 3)
    assert share.take("a", Item("a", 3), full=True) is None
    assert share.take("b", Item("b", 0), full=True) == Taken(a[0])
    assert len(share) == 3


def test_items_leave_their_place_once() -> None:
    share: FairShare[Item] = FairShare(2)
    [a] = fill(share, "a", 1)
    assert share.give_back("a", a)
    assert not share.give_back("a", a)
    assert not share.give_back("z", Item("z", 0))
    assert len(share) == 0
    assert share.held_by("a") == 0
    fill(share, "b", 2)  # the place given back is free again


def test_pop_serves_groups_in_turn_oldest_first() -> None:
    share: FairShare[Item] = FairShare(20)
    a = fill(share, "a", 4)
    b = fill(share, "b", 2)
    c = fill(share, "c", 1)
    order = [share.pop() for _ in range(7)]
    assert order == [a[0], b[0], c[0], a[1], b[1], a[2], a[3]]
    with pytest.raises(IndexError, match="empty"):
        share.pop()


def test_a_group_that_comes_back_waits_for_its_turn_behind_the_others() -> None:
    share: FairShare[Item] = FairShare(20)
    a = fill(share, "a", 2)
    b = fill(share, "b", 2)
    assert share.pop() is a[0]
    [c] = fill(share, "c", 1)
    assert [share.pop() for _ in range(4)] == [b[0], a[1], c, b[1]]


def test_evict_takes_the_busiest_groups_oldest_whatever_the_newcomer() -> None:
    share: FairShare[Item] = FairShare(10)
    assert share.evict() is None
    fill(share, "a", 1)
    b = fill(share, "b", 2)
    assert share.evict() is b[0]
    assert share.held_by("b") == 1
    assert len(share) == 2


def test_admit_takes_a_groups_place_or_lets_one_that_outranks_every_group_in() -> None:
    share: FairShare[Item] = FairShare(10)
    outside = Item("contact", 0)
    assert share.admit(None, outside, full=True) is None  # full, and no group's item to give way
    assert share.admit(None, outside, full=False) == Taken()  # room: nothing gives way
    assert len(share) == 0  # (not held here)
    fill(share, "a", 1)
    b = fill(share, "b", 2)
    assert share.admit(None, outside, full=True) == Taken(b[0])
    assert share.admit("c", Item("c", 0), full=True) is None  # (b holds 1, c none: not more by 2)
    assert share.admit("c", Item("c", 0), full=False) == Taken()
    assert share.held_by("c") == 1


def test_newest_first_gives_up_the_busiest_groups_newest() -> None:
    share: FairShare[Item] = FairShare(4, newest_first=True)
    a = fill(share, "a", 3)
    fill(share, "b", 1)
    assert share.take("c", Item("c", 0)) == Taken(a[2])
    assert share.evict() is a[1]


def test_places_must_be_positive() -> None:
    with pytest.raises(ValueError, match="places must be at least 1"):
        FairShare(0)


@given(
    places=st.integers(1, 12),
    per_group=st.integers(1, 12),
    steps=st.lists(st.tuples(st.sampled_from(["take", "give", "pop"]), st.integers(0, 4)), max_size=80),
)
def test_the_share_keeps_its_bounds_and_every_group_its_fair_share(
    places: int, per_group: int, steps: list[tuple[str, int]]
) -> None:
    share: FairShare[Item] = FairShare(places, per_group)
    held: dict[str, list[Item]] = {}  # what the share should hold, per group, oldest first
    for n, (verb, g) in enumerate(steps):
        group = "g" + str(g)
        if verb == "take":
            item = Item(group, n)
            counts = {name: len(items) for name, items in held.items() if items}
            busiest = max(counts.values(), default=0)
            taken = share.take(group, item)
            mine = counts.get(group, 0)
            if mine >= per_group:
                assert taken is None
                continue
            if sum(counts.values()) < places:
                assert taken == Taken(None)
            elif busiest > mine + 1:
                assert taken is not None
                assert taken.evicted is not None
                victim = taken.evicted
                assert counts[victim.group] == busiest
                assert held[victim.group][0] is victim
                held[victim.group].pop(0)
            else:
                assert taken is None
                continue
            held.setdefault(group, []).append(item)
        elif verb == "give" and held.get(group):
            assert share.give_back(group, held[group].pop())
        elif verb == "pop" and len(share):
            item = share.pop()
            assert held[item.group][0] is item
            held[item.group].pop(0)
        assert len(share) == sum(map(len, held.values())) <= places
        assert all(share.held_by(name) == len(items) <= per_group for name, items in held.items())


@given(steps=st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=80))
def test_group_counts_know_the_busiest_at_every_step(steps: list[tuple[bool, int]]) -> None:
    counts = GroupCounts()
    model: dict[str, int] = {}
    for adding, g in steps:
        group = f"g{g}"
        if adding:
            counts.add(group)
            model[group] = model.get(group, 0) + 1
        elif model.get(group):
            counts.remove(group)
            model[group] -= 1
        top = max(model.values(), default=0)
        assert counts.top == top
        assert all(counts.of(name) == held for name, held in model.items())
        if top:
            assert model[counts.busiest()] == top
        else:
            with pytest.raises(KeyError):
                counts.busiest()
