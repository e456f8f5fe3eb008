"""The connections a node holds for authenticated peers, bounded, with contacts first (sans-IO).

Admission control (:mod:`peerkit.proto.admission`) bounds handshakes; this bounds what comes
after: the control channels and application streams that peers opened to the node. A node asks
:meth:`Holdings.hold` when an incoming channel has completed its handshake, and calls
:meth:`Holdings.release` when it closes.

- At most ``max_connections`` are held in all, and ``max_strangers`` of them for peers that are
  not contacts (a stranger can mint identities at will; a contact cannot).
- Strangers from one source (an address, or an IPv6 /64) hold at most ``max_per_source``; when
  the strangers' places are all taken, a source whose group (see
  :func:`~peerkit.proto.admission.group_of`: the /64s of an IPv6 /48 are one) holds fewer than the
  busiest group takes the oldest place of that group's busiest source (that connection is
  closed), as handshake slots are shared.
- A contact that finds every place taken takes a stranger's (the same one), so a crowd of
  strangers never shuts a contact out.
- One peer holds at most ``max_streams_per_peer`` application streams.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from peerkit.proto.admission import group_of

__all__ = ("Held", "Holdings", "HoldingsPolicy", "Kept", "NotKept", "Shortage")


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldingsPolicy:
    """The limits of :class:`Holdings` (see the module docstring)."""

    #: Channels and streams opened to this node, held at once, in all.
    max_connections: int = 1024
    #: Of those, held for strangers (peers that are not contacts).
    max_strangers: int = 768
    #: Held for strangers from one source.
    max_per_source: int = 64
    #: Application streams one peer holds at once (half a source's share: peers behind one NAT
    #: share a source).
    max_streams_per_peer: int = 32

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_strangers", "max_per_source", "max_streams_per_peer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")

    @classmethod
    def within(cls, places: int, base: HoldingsPolicy | None = None) -> HoldingsPolicy:
        """``base`` (default: the default limits), shrunk to fit ``places`` connections (file
        descriptors to spare); unchanged when it fits."""
        default = base or cls()
        total = min(default.max_connections, max(8, places))
        if total == default.max_connections:
            return default
        return cls(
            max_connections=total,
            max_strangers=max(1, min(default.max_strangers, total * 3 // 4)),
            max_per_source=max(1, min(default.max_per_source, total // 4)),
            max_streams_per_peer=max(1, min(default.max_streams_per_peer, total // 8)),
        )


class Shortage(enum.StrEnum):
    """Why a connection was not kept."""

    STREAMS = "too many streams from one peer"
    PER_SOURCE = "too many connections from strangers at one source"
    FULL = "every place is taken"


@dataclass(eq=False, slots=True)
class Held:
    """One held connection; the owner keeps what it needs to close it in ``handle``."""

    peer: bytes
    source: str
    contact: bool
    stream: bool
    seq: int
    #: The owner's handle on the connection, to close it when it is evicted: anything with a
    #: ``cancel()`` (a cancel scope, a control channel).
    handle: Any = None


@dataclass(frozen=True, slots=True)
class Kept:
    """Keep the connection; close the ``evicted`` ones (their places went to it)."""

    held: Held
    evicted: tuple[Held, ...] = ()


@dataclass(frozen=True, slots=True)
class NotKept:
    """Close the connection at once."""

    reason: Shortage


@dataclass(slots=True)
class _Strangers:
    # The strangers' connections of one source, oldest first, and the source's group.
    group: str
    held: OrderedDict[int, Held] = field(default_factory=OrderedDict)


class Holdings:
    """Which connections a node keeps; see the module docstring."""

    def __init__(self, policy: HoldingsPolicy | None = None) -> None:
        self.policy = policy or HoldingsPolicy()
        self._sources: dict[str, _Strangers] = {}
        self._groups: Counter[str] = Counter()  # strangers' connections held per group
        self._strangers = 0
        self._contacts = 0
        self._streams: Counter[bytes] = Counter()
        self._seq = itertools.count()

    @property
    def held(self) -> int:
        """Connections held."""
        return self._strangers + self._contacts

    @property
    def strangers(self) -> int:
        """Connections held for strangers."""
        return self._strangers

    def streams_of(self, peer: bytes) -> int:
        """Application streams held for ``peer``."""
        return self._streams[peer]

    def hold(self, *, peer: bytes, source: str, contact: bool, stream: bool) -> Kept | NotKept:
        """Whether to keep a connection ``peer`` opened from ``source``."""
        policy = self.policy
        if stream and self._streams[peer] >= policy.max_streams_per_peer:
            return NotKept(Shortage.STREAMS)
        evicted: tuple[Held, ...] = ()
        if contact:
            if self.held >= policy.max_connections:
                victim = self._evict(below=None)
                if victim is None:
                    return NotKept(Shortage.FULL)
                evicted = (victim,)
        else:
            mine = self._sources.get(source)
            if mine is not None and len(mine.held) >= policy.max_per_source:
                return NotKept(Shortage.PER_SOURCE)
            if self._strangers >= policy.max_strangers or self.held >= policy.max_connections:
                group = mine.group if mine is not None else group_of(source)
                victim = self._evict(below=self._groups[group] + 1)
                if victim is None:
                    return NotKept(Shortage.FULL)
                evicted = (victim,)
        held = Held(peer, source, contact, stream, next(self._seq))
        if contact:
            self._contacts += 1
        else:
            mine = self._sources.get(source)
            if mine is None:
                mine = self._sources[source] = _Strangers(group_of(source))
            mine.held[held.seq] = held
            self._groups[mine.group] += 1
            self._strangers += 1
        if stream:
            self._streams[peer] += 1
        return Kept(held, evicted)

    def _evict(self, *, below: int | None) -> Held | None:
        # The oldest stranger connection of the busiest group's busiest source, if that group
        # holds more than ``below`` (None: any).
        if not self._groups:
            return None
        group, count = self._groups.most_common(1)[0]
        if below is not None and count <= below:
            return None
        busiest = max((s for s in self._sources.values() if s.group == group), key=lambda s: len(s.held))
        _, oldest = next(iter(busiest.held.items()))
        self.release(oldest)
        return oldest

    def release(self, held: Held) -> None:
        """The connection of ``held`` closed (or was evicted); releasing twice is harmless."""
        if held.contact:
            if held.seq < 0:
                return
            self._contacts -= 1
        else:
            source = self._sources.get(held.source)
            if source is None or source.held.pop(held.seq, None) is None:
                return
            self._strangers -= 1
            self._groups[source.group] -= 1
            if not self._groups[source.group]:
                del self._groups[source.group]
            if not source.held:
                del self._sources[held.source]
        held.seq = -1  # released
        if held.stream:
            self._streams[held.peer] -= 1
            if self._streams[held.peer] <= 0:
                del self._streams[held.peer]
