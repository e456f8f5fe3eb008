"""Write tokens and the items this node stores for others, both bounded (sans-IO).

A write token is ``SHA1(address + secret)``: given in answer to a ``get``, it lets the asker
``put`` for a while, and only from the same address. The secret is replaced every
:data:`TOKEN_ROTATION` seconds and the previous one still accepted, so a token lives 5 to 10
minutes. Items are kept at most :data:`ITEM_LIFETIME` seconds after their last put, at most
``max_items`` and ``max_bytes`` of them. Each item belongs to the group of the address that first
put it here (the caller says which: an IPv4 address, an IPv6 /48); past a bound, the busiest
group's oldest item goes first. Keys and valid signatures cost nothing to make, so one group that
puts without end only pushes out its own items once it holds the most: everyone else's items stay.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from dataclasses import dataclass
from typing import Final

from peerkit.dht.bep44 import MutableItem, check_put
from peerkit.dht.krpc import Address
from peerkit.proto.shares import FairShare

__all__ = ("ITEM_LIFETIME", "TOKEN_ROTATION", "ItemStore", "Tokens")

#: Seconds between secret rotations (a token is accepted for up to twice this).
TOKEN_ROTATION: Final = 300.0
#: Seconds an item is kept after its last put.
ITEM_LIFETIME: Final = 7200.0


class Tokens:
    """Write tokens (see the module docstring); ``random`` gives secrets (for tests)."""

    def __init__(self, now: float, random: object = None) -> None:
        self._random = random if callable(random) else secrets.token_bytes
        self._secrets = [self._random(16), self._random(16)]
        self._rotated = now

    def _rotate(self, now: float) -> None:
        while now - self._rotated >= TOKEN_ROTATION:
            self._secrets = [self._random(16), self._secrets[0]]
            self._rotated += TOKEN_ROTATION

    def token(self, address: Address, now: float) -> bytes:
        """The token to give ``address`` now."""
        self._rotate(now)
        return _token(address, self._secrets[0])

    def valid(self, address: Address, token: bytes, now: float) -> bool:
        """Whether ``token`` was given to ``address`` within the last one or two rotations."""
        self._rotate(now)
        return any(hmac.compare_digest(token, _token(address, secret)) for secret in self._secrets)


def _token(address: Address, secret: bytes) -> bytes:
    return hashlib.sha1(address[0].encode() + secret, usedforsecurity=False).digest()[:8]


class ItemStore:
    """Mutable items stored for others, bounded (see the module docstring)."""

    def __init__(self, *, max_items: int = 2048, max_bytes: int = 4 << 20) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: dict[bytes, _Stored] = {}
        # Each group's targets, least lately put first. No place is refused there (its places
        # are not a bound): the store's own bounds decide when the busiest group's oldest goes.
        self._groups: FairShare[bytes] = FairShare(sys.maxsize)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes held (values, salts, keys and signatures)."""
        return self._bytes

    def held_by(self, group: str) -> int:
        """Items that belong to ``group``."""
        return self._groups.held_by(group)

    def get(self, target: bytes, now: float) -> MutableItem | None:
        """The item stored under ``target``, if it has not expired."""
        held = self._items.get(target)
        if held is None:
            return None
        if now - held.put_at > ITEM_LIFETIME:
            self._drop(target)
            return None
        return held.item

    def put(self, item: MutableItem, now: float, cas: int | None = None, *, group: str = "") -> None:
        """Store ``item`` (or refresh it), put by ``group`` (this node's own: the empty string).

        :raises ItemRefused: as :func:`~peerkit.dht.bep44.check_put` says.
        """
        target = item.target
        stored = self.get(target, now)
        changed = check_put(item, stored, cas)
        if stored is not None:
            group = self._items[target].group  # it stays with whoever put it first
            if not changed:
                item = stored
            self._drop(target)
        self._items[target] = _Stored(item, now, group)
        self._groups.take(group, target)
        self._bytes += _size(item)
        while len(self._items) > self.max_items or self._bytes > self.max_bytes:
            oldest = self._groups.evict()
            assert oldest is not None  # (items are held)
            self._drop(oldest)

    def _drop(self, target: bytes) -> None:
        # Out of the store and of its group (given back already when it was evicted).
        held = self._items.pop(target)
        self._bytes -= _size(held.item)
        self._groups.give_back(held.group, target)


@dataclass(slots=True)
class _Stored:
    item: MutableItem
    put_at: float
    group: str


def _size(item: MutableItem) -> int:
    return len(item.value) + len(item.salt) + len(item.key) + len(item.sig)
