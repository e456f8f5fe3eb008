"""Places shared fairly between the groups of strangers' sources (sans-IO).

A node keeps a bounded number of things for peers that are not contacts: invitations waiting for
their answer, invitations and streams waiting unread in an application's queue, a relay's circuits
and reservations, the people near me, a DHT node's stored items. New peer ids cost nothing, so
these places are counted by the group of the source they came from (see
:func:`~peerkit.proto.admission.group_of`: an IPv4 address, an IPv6 /48, one relay's circuits).

:class:`FairShare` fills its places in the order they are asked for. Once every place is taken,
a newcomer whose group holds fewer places than the busiest group by more than one takes the
oldest place of that group (or its newest, where those that were there first are the ones to
keep); otherwise it is refused. So a few groups may fill whatever is free,
but never keep another group out: a group that asks always ends up with its fair share. Items are
taken out round robin by group (:meth:`FairShare.pop`), so one group's pile does not stand in
front of the others' items either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ("FairShare", "GroupCounts", "Taken")

T = TypeVar("T")


class GroupCounts:
    """How many places each group holds, and which group holds the most, in constant time (the
    groups of each count are kept in the order they came to it)."""

    __slots__ = ("_of", "_top", "_with")

    def __init__(self) -> None:
        self._of: dict[str, int] = {}
        self._with: dict[int, dict[str, None]] = {}
        self._top = 0

    def of(self, group: str) -> int:
        """Places ``group`` holds."""
        return self._of.get(group, 0)

    @property
    def top(self) -> int:
        """Places the busiest group holds (0 when none holds any)."""
        return self._top

    def busiest(self) -> str:
        """A group that holds the most (of those, the first to come to that count).

        :raises KeyError: when no group holds any.
        """
        return next(iter(self._with[self._top]))

    def add(self, group: str) -> None:
        """``group`` holds one place more."""
        count = self._of.get(group, 0)
        self._move(group, count, count + 1)
        self._top = max(self._top, count + 1)

    def remove(self, group: str) -> None:
        """``group`` holds one place fewer (it must hold one)."""
        count = self._of[group]
        self._move(group, count, count - 1)
        while self._top and not self._with.get(self._top):
            self._top -= 1

    def _move(self, group: str, old: int, new: int) -> None:
        if old:
            groups = self._with[old]
            del groups[group]
            if not groups:
                del self._with[old]
        if new:
            self._of[group] = new
            self._with.setdefault(new, {})[group] = None
        else:
            del self._of[group]


@dataclass(frozen=True, slots=True)
class Taken(Generic[T]):
    """A place was given; ``evicted`` is the item whose place it was (now out), if any."""

    evicted: T | None = None


class FairShare(Generic[T]):
    """At most ``places`` items, and at most ``per_group`` of one group; see the module docstring.

    Items are hashed by identity or value: the same item may be held once only. With
    ``newest_first``, the busiest group gives up its newest item rather than its oldest (where
    the items that were there before a flood are the ones to keep).
    """

    def __init__(self, places: int, per_group: int | None = None, *, newest_first: bool = False) -> None:
        if places < 1:
            raise ValueError(f"places must be at least 1, not {places}")
        self.places = places
        self.per_group = places if per_group is None else per_group
        self.newest_first = newest_first
        # Each group's items, oldest first; the groups in the order pop serves them.
        self._groups: dict[str, dict[T, None]] = {}
        self._counts = GroupCounts()
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def held_by(self, group: str) -> int:
        """Places ``group`` holds."""
        return self._counts.of(group)

    def room_for(self, group: str, *, full: bool = False) -> bool:
        """Whether :meth:`take` would give ``group`` a place now (and change nothing)."""
        mine = self.held_by(group)
        if mine >= self.per_group:
            return False
        if not full and self._held < self.places:
            return True
        return self._counts.top > mine + 1

    def take(self, group: str, item: T, *, full: bool = False) -> Taken[T] | None:
        """A place for ``item`` of ``group``, or None when it is refused (the group holds
        ``per_group``, or every place is taken and no group holds more than this one plus one).
        When every place is taken, the busiest group's oldest item (newest, with
        ``newest_first``) gives its place and is :attr:`Taken.evicted`.

        ``full`` counts every place as taken (the caller's own bound is reached): the item gets a
        place only by taking another group's.
        """
        mine = self.held_by(group)
        if mine >= self.per_group:
            return None
        evicted: T | None = None
        if full or self._held >= self.places:
            if self._counts.top <= mine + 1:
                return None
            busiest = self._counts.busiest()
            evicted = self._victim(self._groups[busiest])
            self._remove(busiest, evicted)
        self._groups.setdefault(group, {})[item] = None
        self._counts.add(group)
        self._held += 1
        return Taken(evicted)

    def admit(self, group: str | None, item: T, *, full: bool) -> Taken[T] | None:
        """A place for ``item`` among others held outside: of ``group`` (see :meth:`take`), or,
        with ``group`` None, an item that outranks every group (a contact's) and is not held
        here: once ``full``, the busiest group's item gives way for it (see :meth:`evict`), and
        it is refused only when no group holds any. None when it is refused."""
        if group is not None:
            return self.take(group, item, full=full)
        if not full:
            return Taken()
        evicted = self.evict()
        return None if evicted is None else Taken(evicted)

    def evict(self) -> T | None:
        """The busiest group's oldest (or newest) item, out of its place (for a newcomer that
        outranks every group, such as a contact's); None when no item is held."""
        if not self._groups:
            return None
        busiest = self._counts.busiest()
        evicted = self._victim(self._groups[busiest])
        self._remove(busiest, evicted)
        return evicted

    def _victim(self, items: dict[T, None]) -> T:
        return next(reversed(items)) if self.newest_first else next(iter(items))

    def give_back(self, group: str, item: T) -> bool:
        """``item`` leaves its place; False when it held none (given back already, or evicted)."""
        items = self._groups.get(group)
        if items is None or item not in items:
            return False
        self._remove(group, item)
        return True

    def pop(self) -> T:
        """The oldest item of the group whose turn it is (each group in turn), out of its place.

        :raises IndexError: when no item is held.
        """
        for group, items in self._groups.items():
            item = next(iter(items))
            self._remove(group, item)
            if items:  # its turn is over: to the back of the line
                del self._groups[group]
                self._groups[group] = items
            return item
        raise IndexError("pop from an empty FairShare")

    def _remove(self, group: str, item: T) -> None:
        items = self._groups[group]
        del items[item]
        self._counts.remove(group)
        self._held -= 1
        if not items:
            del self._groups[group]

    def __repr__(self) -> str:
        return f"<FairShare {self._held}/{self.places} places, {len(self._groups)} groups>"
