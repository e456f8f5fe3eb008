"""Admission control for incoming connections, before any expensive work (sans-IO).

A listener asks :meth:`Admission.admit` before it starts a handshake, and calls
:meth:`Admission.release` when the handshake ends. Every source (an IPv4 address, an IPv6 /64,
or an IPv6 neighbour on this host's links: see :func:`source_of`) gets:

- at most ``max_per_source`` handshakes under way at once;
- a token bucket of handshake starts (``rate`` per second, up to ``burst`` at once), shared by its
  group (see below), so that a flood of initiations from one address, or from the /64s of one
  IPv6 /48, costs the node little: a start over the budget is refused before any Diffie-Hellman;
- a fair share of the ``max_pending`` handshakes of all sources: when all are taken, a source whose
  *group* holds fewer under way than the busiest group takes the oldest slot of that group's
  busiest source (that handshake is evicted), so that stalled connections from a few addresses
  never starve the rest. A group is the /48 of an IPv6 /64 (one site's prefix: a tunnel broker
  gives one away, with 65,536 /64s in it), and any other source by itself.

:class:`RefusalCounter` turns refusals into one log line per interval instead of one per
connection. Once a peer is authenticated, :class:`RequestBudget` bounds the requests it makes.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import ipaddress
import itertools
from collections import Counter, OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = (
    "MAX_SOURCES",
    "REPLAY_WINDOW",
    "REPORT_INTERVAL",
    "Admission",
    "AdmissionPolicy",
    "Admitted",
    "Charge",
    "Refusal",
    "RefusalCounter",
    "Refused",
    "ReplayGuard",
    "RequestBudget",
    "RequestPolicy",
    "Ticket",
    "group_of",
    "source_of",
)

#: Sources whose budgets are remembered at most (the idle ones are forgotten first).
MAX_SOURCES: Final = 4096
#: Nanoseconds of hello timestamps a :class:`ReplayGuard` remembers per peer.
REPLAY_WINDOW: Final = 60 * 10**9


def source_of(address: object, on_link: Container[str] = ()) -> str:
    """The source an address belongs to: the IPv4 address, or the /64 of an IPv6 address (a host
    on another network holds a whole /64); anything else (a name, an in-memory host) as its text.

    An IPv6 neighbour on one of this host's links is its address, as an IPv4 one is: the hosts of
    a LAN share its /64. It is a link-local address, or one whose /64 is in ``on_link`` (the /64s
    of this host's interfaces, as :func:`ipaddress.ip_network` writes them).
    """
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and ":" not in host:
        return host  # IPv4 (as accept gives it), or a name: itself (the fast path under a flood)
    text, network, link_local = _parsed(str(host))
    if network is None:
        return text
    return text if link_local or network in on_link else network


#: Hosts whose parse :func:`source_of` remembers (a peer asks again and again from one address).
_PARSED: Final = 4096


@functools.lru_cache(maxsize=_PARSED)
def _parsed(host: str) -> tuple[str, str | None, bool]:
    # ``host`` as source_of needs it: its text (an IP address's, without a scope; else itself),
    # the /64 of an IPv6 address (None for any other), and whether that one is link-local.
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host, None, False
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip), None, False
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), None, False
    return str(ip), str(ipaddress.ip_network(f"{ip}/64", strict=False)), ip.is_link_local


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionPolicy:
    """The limits of :class:`Admission` (see the module docstring)."""

    #: Handshakes under way at once, from every source together.
    max_pending: int = 256
    #: Handshakes under way at once from one source.
    max_per_source: int = 16
    #: Handshake starts per second one source may make, on average.
    rate: float = 50.0
    #: Handshake starts one source may make at once.
    burst: int = 100

    def __post_init__(self) -> None:
        for name in ("max_pending", "max_per_source", "burst"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"admission {name} must be a positive integer, not {value!r}")
        if not isinstance(self.rate, (int, float)) or not self.rate > 0:
            raise ValueError(f"admission rate must be a positive number, not {self.rate!r}")

    @classmethod
    def within(cls, places: int, base: AdmissionPolicy | None = None) -> AdmissionPolicy:
        """``base`` (default: the default limits), shrunk so that handshakes hold at most a quarter
        of ``places`` connections (file descriptors to spare): the rest are for the channels they
        make."""
        default = base or cls()
        pending = max(8, min(default.max_pending, places // 4))
        per_source = max(2, min(default.max_per_source, pending // 4))
        return cls(max_pending=pending, max_per_source=per_source, rate=default.rate, burst=default.burst)


class Refusal(enum.StrEnum):
    """Why a connection was refused."""

    #: Its source has ``max_per_source`` handshakes under way.
    PER_SOURCE = "too many handshakes from one source"
    #: Its source started handshakes faster than its budget.
    RATE = "handshakes started too fast"
    #: Every slot is taken, and its source holds at least as many as any other.
    FULL = "every handshake slot is taken"


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted handshake; the owner keeps what it needs to abort it in ``handle``."""

    source: str
    seq: int
    #: The owner's handle on the handshake (a cancel scope), to abort it when it is evicted.
    handle: Any = None


@dataclass(frozen=True, slots=True)
class Admitted:
    """The handshake may start; abort the ``evicted`` ones (their slots went to it)."""

    ticket: Ticket
    evicted: tuple[Ticket, ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """The connection is to be closed at once."""

    reason: Refusal


@functools.lru_cache(maxsize=_PARSED)
def group_of(source: str) -> str:
    """The group whose fair share a source's handshakes (and channels) count against: the /48 of
    an IPv6 /64 (one site's prefix, given away by tunnel brokers), any other source itself."""
    if source.endswith("/64"):
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_network(source).supernet(new_prefix=48))
    return source


@dataclass(slots=True)
class _Bucket:
    # The handshake starts of one group: a token bucket, shared by the group's sources.
    tokens: float
    at: float
    # Connections of the group that passed the screen and have not asked admit() yet (forgotten
    # after a second, as a source's are).
    screened: int = 0
    screened_at: float = 0.0
    # Sources that share it (it is forgotten with the last).
    sources: int = 0


@dataclass(slots=True)
class _Source:
    group: str
    bucket: _Bucket
    pending: OrderedDict[int, Ticket] = field(default_factory=OrderedDict)
    # Connections that passed the screen and have not asked admit() yet (forgotten after a
    # second: one whose transport could not be made never asks).
    screened: int = 0
    screened_at: float = 0.0


class Admission:
    """Which incoming connections may start a handshake; see the module docstring."""

    def __init__(self, policy: AdmissionPolicy | None = None) -> None:
        self.policy = policy or AdmissionPolicy()
        self._sources: dict[str, _Source] = {}
        self._buckets: dict[str, _Bucket] = {}  # group -> its handshake starts
        self._pending = 0
        self._seq = itertools.count()
        self._held: dict[str, int] = {}  # group -> handshakes its sources hold (none: absent)
        self._levels: Counter[int] = Counter()  # handshakes a group holds -> groups holding that
        self._screened = 0  # connections past the screen that have not asked admit() yet

    @property
    def pending(self) -> int:
        """Handshakes under way."""
        return self._pending

    def pending_from(self, source: str) -> int:
        """Handshakes under way from ``source``."""
        state = self._sources.get(source)
        return len(state.pending) if state is not None else 0

    def screen(self, source: str, now: float) -> Refusal | None:
        """Why :meth:`admit` will refuse ``source`` at ``now`` (its handshakes under way, its
        budget, or every slot taken by sources holding no more than it), or None. A listener asks
        this as soon as a connection is accepted, to close it before anything is made for it; a
        connection that passes is counted against its source's limits until it asks
        :meth:`admit`, so that a burst accepted at once cannot all pass."""
        policy = self.policy
        state = self._source(source, now)
        bucket = state.bucket
        if now - state.screened_at > 1.0:
            self._screened -= state.screened
            state.screened = 0
        if now - bucket.screened_at > 1.0:
            bucket.screened = 0
        held = len(state.pending)
        if held + state.screened >= policy.max_per_source:
            return Refusal.PER_SOURCE
        if bucket.tokens + (now - bucket.at) * policy.rate - bucket.screened < 1.0:
            return Refusal.RATE
        if (
            self._pending + self._screened >= policy.max_pending
            and self._busiest() <= self._held.get(state.group, 0) + state.screened + 1
        ):
            return Refusal.FULL
        state.screened += 1
        self._screened += 1
        state.screened_at = now
        bucket.screened += 1
        bucket.screened_at = now
        return None

    def admit(self, source: str, now: float) -> Admitted | Refused:
        """Whether a connection from ``source`` may start a handshake at time ``now``."""
        policy = self.policy
        state = self._source(source, now)
        bucket = state.bucket
        bucket.tokens = min(float(policy.burst), bucket.tokens + (now - bucket.at) * policy.rate)
        bucket.at = now
        if state.screened:
            state.screened -= 1  # it was counted by the screen until now
            self._screened -= 1
        if bucket.screened:
            bucket.screened -= 1
        if len(state.pending) >= policy.max_per_source:
            return Refused(Refusal.PER_SOURCE)
        if bucket.tokens < 1.0:
            return Refused(Refusal.RATE)
        evicted: tuple[Ticket, ...] = ()
        if self._pending >= policy.max_pending:
            if self._busiest() <= self._held.get(state.group, 0) + 1:
                return Refused(Refusal.FULL)
            group = max(self._held, key=self._held.__getitem__)
            busiest = max(
                (s for s in self._sources.values() if s.group == group), key=lambda s: len(s.pending)
            )
            self._count(group, -1)
            _, oldest = busiest.pending.popitem(last=False)
            self._pending -= 1
            evicted = (oldest,)
        bucket.tokens -= 1.0
        ticket = Ticket(source, next(self._seq))
        self._count(state.group, +1)
        state.pending[ticket.seq] = ticket
        self._pending += 1
        return Admitted(ticket, evicted)

    def release(self, ticket: Ticket) -> None:
        """The handshake of ``ticket`` ended (done, failed or evicted); releasing twice is harmless."""
        state = self._sources.get(ticket.source)
        if state is not None and ticket.seq in state.pending:
            self._count(state.group, -1)
            del state.pending[ticket.seq]
            self._pending -= 1

    def _source(self, source: str, now: float) -> _Source:
        # The state of ``source``, made (with its group's bucket, if new) when there is none.
        state = self._sources.get(source)
        if state is None:
            self._forget_idle(now)
            group = group_of(source)
            bucket = self._buckets.get(group)
            if bucket is None:
                bucket = self._buckets[group] = _Bucket(float(self.policy.burst), now)
            bucket.sources += 1
            state = self._sources[source] = _Source(group, bucket)
        return state

    def _forget(self, source: str) -> None:
        # Forget ``source`` (nothing under way), and its group's bucket with its last source.
        state = self._sources.pop(source)
        self._screened -= state.screened
        state.bucket.sources -= 1
        if not state.bucket.sources:
            del self._buckets[state.group]

    def _count(self, group: str, step: int) -> None:
        # A source of ``group`` takes one more handshake (+1) or gives one up (-1).
        levels = self._levels
        held = self._held.get(group, 0)
        if held:
            levels[held] -= 1
            if not levels[held]:
                del levels[held]
        if held + step:
            levels[held + step] += 1
            self._held[group] = held + step
        else:
            del self._held[group]

    def _busiest(self) -> int:
        # Handshakes held by the busiest group (at most max_pending levels to look at).
        return max(self._levels, default=0)

    def _forget_idle(self, now: float) -> None:
        # Bounded memory: past MAX_SOURCES, forget the sources with nothing under way whose
        # bucket has refilled (forgetting them changes nothing).
        if len(self._sources) < MAX_SOURCES:
            return
        policy = self.policy
        for key, state in list(self._sources.items()):
            bucket = state.bucket
            full = bucket.tokens + (now - bucket.at) * policy.rate >= policy.burst
            if not state.pending and not state.screened and full:
                self._forget(key)
        if len(self._sources) >= MAX_SOURCES:  # all busy or recent: drop the idle ones anyway
            for key, state in list(self._sources.items()):
                if not state.pending:
                    self._forget(key)


#: Seconds between two reports of a :class:`RefusalCounter`, at least (the first refusal is told at
#: once; those after it, together, once this much time has passed).
REPORT_INTERVAL: Final = 10.0


class RefusalCounter:
    """Refusals counted by reason, reported at most once per ``interval`` seconds: ``what`` names
    the refused things in the report, ``verb`` what was done to them."""

    def __init__(
        self, interval: float | None = None, *, what: str = "incoming connection", verb: str = "refused"
    ) -> None:
        self._interval = REPORT_INTERVAL if interval is None else interval
        self._what = what
        self._verb = verb
        self._counts: Counter[str] = Counter()
        self._since: float | None = None

    def note(self, reason: str, now: float) -> str | None:
        """Count a refusal; the line to log when an interval is over (None otherwise)."""
        self._counts[str(reason)] += 1
        if self._since is None:
            self._since = now
            return self._report(now)  # the first one is told at once
        if now - self._since >= self._interval:
            return self._report(now)
        return None

    @property
    def interval(self) -> float:
        """Seconds between two reports, at least."""
        return self._interval

    def due_at(self) -> float | None:
        """When the refusals counted since the last report are due to be told (None: there are none)."""
        return None if not self._counts or self._since is None else self._since + self._interval

    def due(self, now: float) -> str | None:
        """The report of the refusals counted since the last one, once their interval is over (None
        before, and when there are none): what a timer of the owner logs, so that a burst that
        ended is told without waiting for a next refusal to tell it."""
        at = self.due_at()
        return self._report(now) if at is not None and now >= at else None

    def flush(self) -> str | None:
        """The report of the refusals counted since the last one (None when there are none): what
        an owner that stops logs, so that the last ones are told too."""
        if not self._counts:
            return None
        return self._report(self._since or 0.0)

    def _report(self, now: float) -> str:
        total = sum(self._counts.values())
        parts = ", ".join(f"{count} {reason}" for reason, count in self._counts.most_common())
        self._counts.clear()
        self._since = now
        return f"{self._verb} {total} {self._what}{'s' if total != 1 else ''}: {parts}"


class ReplayGuard:
    """Refuses a replayed IK message 1, by the hello timestamp (``"ts"``) inside it.

    An IK message 1 is a whole handshake message: recorded, it can be sent again, and without this
    each copy would become a channel "of" its sender. Every initiator stamps its hello with its own
    clock. Per peer, the guard accepts a stamp it has not seen that is newer than the newest one it
    accepted minus ``window`` (so concurrent dials that arrive out of order pass) and refuses the
    rest. Memory is bounded: ``per_peer`` stamps for each of ``max_peers`` peers (a forgotten peer's
    next stamp is accepted, as after a restart). The stamps of a peer given as ``kept`` (a contact)
    are never forgotten to make room: otherwise a stranger who dialled with ``max_peers`` new ids
    would push a contact out, and its recorded handshakes would pass again (each becoming a channel
    of the contact's, until the contact's own are refused at their limit). Kept peers are as many
    as the node's contacts that dialled it, about 0.3 KB each.
    """

    def __init__(self, *, window: int = REPLAY_WINDOW, per_peer: int = 64, max_peers: int = 4096) -> None:
        self._window = window
        self._per_peer = per_peer
        self._max_peers = max_peers
        # peer -> (floor: stamps at or below it are refused, stamps seen above the floor, in order:
        # a tuple, a quarter the size of a set for the one or two stamps a peer usually has)
        self._peers: OrderedDict[bytes, tuple[int, tuple[int, ...]]] = OrderedDict()
        self._kept: dict[bytes, tuple[int, tuple[int, ...]]] = {}  # (the same, never forgotten)

    def fresh(self, peer: bytes, ts: int, *, kept: bool = False) -> bool:
        """Whether ``ts`` from ``peer`` is new (and remember it if so, for good when ``kept``)."""
        known = self._kept.pop(peer, None)
        floor, seen = known if known is not None else self._peers.pop(peer, (-1, ()))
        new = ts > floor and ts not in seen
        if new:
            stamps = sorted((*seen, ts))
            floor = max(floor, stamps[-1] - self._window)
            seen = tuple(t for t in stamps if t > floor)
            if len(seen) > self._per_peer:  # the oldest go, and nothing at or below them is taken again
                floor = seen[-self._per_peer - 1]
                seen = seen[-self._per_peer :]
        (self._kept if kept else self._peers)[peer] = (floor, seen)
        if len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)
        return new


class Charge(enum.Enum):
    """What to do with a peer's request, by its budget."""

    #: Handle it.
    ANSWER = "answer"
    #: Answer it with ``error`` "limit" (the peer is over its budget).
    REFUSE = "refuse"
    #: Answer it with ``error`` "limit" and disconnect the peer: it kept going over its budget.
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestPolicy:
    """How many requests a peer may make: a token bucket per peer (see :class:`RequestBudget`)."""

    #: Requests per second one peer may make, on average.
    rate: float = 1000.0
    #: Requests one peer may make at once.
    burst: int = 2000
    #: Requests refused in a row (none answered between them) after which the peer is disconnected.
    strikes: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.rate, (int, float)) or isinstance(self.rate, bool) or not self.rate > 0:
            raise ValueError(f"request rate must be a positive number, not {self.rate!r}")
        for name in ("burst", "strikes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"request {name} must be a positive integer, not {value!r}")


class RequestBudget:
    """A budget of requests per peer, so that no peer can spend the node's CPU alone.

    Each peer has a token bucket (``rate`` per second, up to ``burst``); a request over it is
    answered with ``error`` "limit", and a peer whose last ``strikes`` requests were all refused is
    disconnected. Buckets are kept for at most ``max_peers`` peers (the least recent one forgotten
    first: its next request finds a full bucket, as after a reconnect), and a bucket that has
    filled again is forgotten at a later request of any peer (a peer absent has a full bucket):
    peers that make a request now and then hold no bucket between their requests.
    """

    def __init__(self, policy: RequestPolicy | None = None, *, max_peers: int = MAX_SOURCES) -> None:
        self.policy = policy or RequestPolicy()
        self._max_peers = max_peers
        # peer -> [tokens, time, refused in a row]
        self._peers: OrderedDict[bytes, list[float]] = OrderedDict()

    def charge(self, peer: bytes, now: float) -> Charge:
        """Charge one request of ``peer`` at time ``now``."""
        policy = self.policy
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = [float(policy.burst), now, 0.0]
            if len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        self._forget_full(now)
        tokens = min(float(policy.burst), state[0] + (now - state[1]) * policy.rate)
        state[1] = now
        if tokens >= 1.0:
            state[0], state[2] = tokens - 1.0, 0.0
            return Charge.ANSWER
        state[0] = tokens
        state[2] += 1
        return Charge.DISCONNECT if state[2] >= policy.strikes else Charge.REFUSE

    def __len__(self) -> int:
        """The peers that have a bucket now."""
        return len(self._peers)

    def _forget_full(self, now: float) -> None:
        # The least recent buckets (up to two: so the table shrinks while peers come and go) if
        # they are full again: the next request finds a full bucket either way, and is answered,
        # which clears the peer's strikes. (The peer just charged is the most recent: never here.)
        burst, rate = float(self.policy.burst), self.policy.rate
        for _ in range(2):
            if len(self._peers) == 1:
                return
            tokens, at, _ = next(iter(self._peers.values()))
            if tokens + (now - at) * rate < burst:
                return
            self._peers.popitem(last=False)
