"""Relays (docs/protocol.md section 8), sans-IO: the messages, and a relay's book of
reservations and circuits with its limits.

A node behind a NAT that drops inbound connections keeps a **reservation** on a relay: a control
channel it opened to the relay, over which it sent ``reserve``. Someone who wants to reach it
connects to the relay instead and asks for a **circuit** to it (``connect``); the relay tells the
reserved node over its control channel (``circuit``, with a one-time token), the node opens a new
connection to the relay and gives the token (``accept``), and from then on the relay copies bytes
between the two connections. The Noise handshake and everything after it run end to end, between
the dialler and the reserved node: the relay sees ciphertext only.

:class:`RelayBook` holds what a relay has granted and decides every request against its
:class:`RelayPolicy`; the I/O lives in :mod:`peerkit.net.relay`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Final

from peerkit.errors import ProtocolError
from peerkit.model import printable, quoted
from peerkit.proto import messages
from peerkit.proto.admission import group_of
from peerkit.proto.framing import encode_frame
from peerkit.proto.requests import seen_address
from peerkit.proto.shares import FairShare

__all__ = (
    "ACCEPT_TIMEOUT",
    "PREAMBLE",
    "RESERVATION_TTL",
    "TOKEN_SIZE",
    "Accept",
    "Circuit",
    "Connect",
    "Opened",
    "RelayBook",
    "RelayPolicy",
    "RelayRefused",
    "decode_reply",
    "decode_request",
    "encode_accept",
    "encode_connect",
    "encode_error",
    "encode_ok",
)

#: The first frame of a connection to a relay (in place of the Noise preamble of section 2).
PREAMBLE: Final = b"peerkit/1 relay"
#: Bytes in a circuit token.
TOKEN_SIZE: Final = 16
#: Seconds a reservation lasts unless renewed (the reserved node renews it well before).
RESERVATION_TTL: Final = 180
#: Seconds a reserved node has to answer a ``circuit`` notice with its ``accept`` connection.
ACCEPT_TIMEOUT: Final = 10.0

#: The error codes a relay answers ``connect`` with.
NO_RESERVATION: Final = "no-reservation"
LIMIT: Final = "limit"
NO_ANSWER: Final = "no-answer"


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayPolicy:
    """What a relay grants (every figure is a cap a peer cannot push it past).

    ``open``: whether it takes reservations from anyone (``False``: only from its contacts).
    """

    open: bool = False
    #: Reservations held at once. On an open relay, strangers' are shared fairly by source group
    #: (when every one is taken, a stranger whose group holds fewer than the busiest group by more
    #: than one takes the place of that group's oldest), and a contact takes a stranger's place.
    max_reservations: int = 128
    #: Circuits open at once, in all, shared fairly by source group: when every one is taken, a
    #: group that holds fewer than the busiest group by more than one takes the place of that
    #: group's oldest circuit (which is closed).
    max_circuits: int = 256
    #: Circuits open at once to one reserved node.
    max_circuits_per_peer: int = 16
    #: Circuits open at once asked for from one source's group (an IPv4 address, or the /64s of
    #: an IPv6 /48 together: see :func:`~peerkit.proto.admission.group_of`).
    max_circuits_per_source: int = 8
    #: Bytes one circuit may carry, both directions together; then it is closed.
    max_bytes: int = 1 << 30
    #: Seconds one circuit may stay open; then it is closed.
    max_duration: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("max_reservations", "max_circuits", "max_circuits_per_peer", "max_circuits_per_source"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"relay {name} must be an integer of at least 1, not {value!r}")
        if not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ValueError(f"relay max_bytes must be a positive integer, not {self.max_bytes!r}")
        if not self.max_duration > 0:
            raise ValueError(f"relay max_duration must be positive, not {self.max_duration!r}")


# -- messages -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Connect:
    """``{"t": "connect", "to": id}``: a dialler asks for a circuit to the reserved node ``to``."""

    to: bytes


@dataclass(frozen=True, slots=True)
class Accept:
    """``{"t": "accept", "token": bytes}``: a reserved node takes the circuit it was told of."""

    token: bytes


def encode_connect(to: bytes) -> bytes:
    """The relay preamble and ``connect`` frames a dialler sends."""
    return encode_frame(PREAMBLE) + encode_frame(messages.encode({"t": "connect", "to": bytes(to)}))


def encode_accept(token: bytes) -> bytes:
    """The relay preamble and ``accept`` frames a reserved node sends."""
    return encode_frame(PREAMBLE) + encode_frame(messages.encode({"t": "accept", "token": bytes(token)}))


def decode_request(frame: bytes | memoryview) -> Connect | Accept:
    """The request in the frame after the relay preamble.

    :raises ProtocolError: when it is not a well-formed ``connect`` or ``accept``.
    """
    message = messages.decode_message(frame)
    kind = message["t"]
    if kind == "connect":
        to = message.get("to")
        if not isinstance(to, bytes) or len(to) != 32:
            raise ProtocolError('relay "connect" needs "to", a 32-byte peer id')
        return Connect(to)
    if kind == "accept":
        token = message.get("token")
        if not isinstance(token, bytes) or len(token) != TOKEN_SIZE:
            raise ProtocolError(f'relay "accept" needs "token", {TOKEN_SIZE} bytes')
        return Accept(token)
    raise ProtocolError(f"unknown relay request {quoted(kind)}")


def encode_ok(seen: tuple[str, int] | None = None) -> bytes:
    """The frame a relay answers a ``connect`` with when the circuit is open; ``seen`` is the
    dialler's address and port as the relay sees them."""
    message: dict[str, object] = {"t": "connected"}
    if seen is not None:
        message["seen"] = [seen[0], seen[1]]
    return encode_frame(messages.encode(message))


def encode_error(code: str, text: str) -> bytes:
    """The frame a relay answers a ``connect`` with when it refuses it."""
    return encode_frame(messages.encode({"t": "error", "code": code, "text": text[:255]}))


class RelayRefused(Exception):
    """A relay refused a request; ``code`` says why (``no-reservation``, ``limit``, ``no-answer``)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def decode_reply(frame: bytes | memoryview) -> tuple[str, int] | None:
    """Read a relay's answer to ``connect``: returns when the circuit is open, with the dialler's
    address as the relay saw it (None when it did not say, or not validly).

    :raises RelayRefused: when the relay refused it.
    :raises ProtocolError: when the answer is malformed.
    """
    message = messages.decode_message(frame)
    if message["t"] == "connected":
        return seen_address(message.get("seen"))
    if message["t"] == "error":
        code, text = message.get("code"), message.get("text")
        raise RelayRefused(  # (a relay's words, shown as text and cut short)
            printable(code, 32) if isinstance(code, str) else "?",
            printable(text, 200) if isinstance(text, str) else "refused",
        )
    raise ProtocolError(f"unknown relay answer {quoted(message['t'])}")


# -- the book -----------------------------------------------------------------------------------
@dataclass(slots=True, eq=False)
class Circuit:
    """One circuit the relay agreed to: from a source (its group) to a reserved node."""

    target: bytes
    source: str
    token: bytes
    opened: float
    #: Set once the reserved node's ``accept`` connection arrived.
    accepted: bool = False
    #: Bytes copied so far, both directions together.
    carried: int = 0
    #: The I/O side's handle on the circuit, to close it when another takes its place: anything
    #: with a ``cancel()``.
    handle: Any = None


@dataclass(frozen=True, slots=True)
class Opened:
    """A circuit granted: the circuit, the handle of its target's reservation, and the circuits
    whose places it took (close them): one of the busiest group's in all, one of the busiest
    group's to the same target, or none."""

    circuit: Circuit
    handle: Any
    evicted: tuple[Circuit, ...] = ()


@dataclass(slots=True)
class _Reservation:
    expires: float
    #: Whatever the I/O side keeps to reach the reserved node (its control channel).
    handle: Any
    #: A stranger's source group (None: a contact's).
    group: str | None = None


@dataclass(slots=True)
class RelayBook:
    """A relay's reservations and circuits, decided against ``policy`` (see the module docstring).

    Times are the caller's clock (seconds). Nothing here does I/O.
    """

    policy: RelayPolicy = field(default_factory=RelayPolicy)
    _reservations: dict[bytes, _Reservation] = field(default_factory=dict)
    _strangers: FairShare[bytes] = field(init=False)  # strangers' reservations by source group
    _circuits: dict[bytes, Circuit] = field(default_factory=dict)
    _per_target: dict[bytes, FairShare[Circuit]] = field(default_factory=dict)  # by source group
    _shares: FairShare[Circuit] = field(init=False)  # the circuits by source group
    _displaced: list[Any] = field(default_factory=list)  # handles of reservations that gave way

    def __post_init__(self) -> None:
        self._shares = FairShare(self.policy.max_circuits, self.policy.max_circuits_per_source)
        self._strangers = FairShare(self.policy.max_reservations)

    @property
    def reservations(self) -> int:
        """Reservations held now."""
        return len(self._reservations)

    @property
    def circuits(self) -> int:
        """Circuits open (or waiting for their accept) now."""
        return len(self._circuits)

    def reserve(self, peer: bytes, handle: Any, now: float, *, allowed: bool, source: str = "") -> int:
        """Grant (or renew) ``peer``'s reservation, reached through ``handle``; returns its TTL.
        ``allowed``: whether the peer is a contact; ``source``: where a stranger's request came
        from (an address, or a source of :func:`~peerkit.proto.admission.source_of`).

        :raises RelayRefused: ``not-allowed`` for a stranger of a closed relay, ``limit`` when
            the relay holds as many reservations as it may and none can give way (see
            :attr:`RelayPolicy.max_reservations`). One that gives way is noted for
            :meth:`take_displaced`.
        """
        self.expire(now)
        if not (allowed or self.policy.open):
            raise RelayRefused("not-allowed", "this relay keeps reservations for its contacts only")
        held = self._reservations.get(peer)
        if held is not None:
            held.expires, held.handle = now + RESERVATION_TTL, handle
            return RESERVATION_TTL
        full = len(self._reservations) >= self.policy.max_reservations
        group = None if allowed else group_of(source)
        taken = self._strangers.admit(group, peer, full=full)
        if taken is None:
            raise RelayRefused(LIMIT, self._full())
        if taken.evicted is not None:  # (its place is given already)
            self._displaced.append(self._reservations.pop(taken.evicted).handle)
        self._reservations[peer] = _Reservation(now + RESERVATION_TTL, handle, group)
        return RESERVATION_TTL

    def take_displaced(self) -> list[Any]:
        """The handles of the reservations that gave their place to another since the last call
        (their holders are to be told: ``unreserved``)."""
        displaced, self._displaced = self._displaced, []
        return displaced

    def _full(self) -> str:
        return f"this relay holds its limit of {self.policy.max_reservations} reservations"

    def release(self, peer: bytes, handle: Any | None = None) -> None:
        """End ``peer``'s reservation (only the one made through ``handle``, when given)."""
        held = self._reservations.get(peer)
        if held is not None and (handle is None or held.handle is handle):
            self._end(peer, held)

    def expire(self, now: float) -> None:
        """Drop reservations not renewed in time."""
        for peer, held in [(p, r) for p, r in self._reservations.items() if r.expires <= now]:
            self._end(peer, held)

    def _end(self, peer: bytes, held: _Reservation) -> None:
        del self._reservations[peer]
        if held.group is not None:
            self._strangers.give_back(held.group, peer)

    def open(self, target: bytes, source: str, now: float) -> Opened:
        """A new circuit from ``source`` to ``target``; see :class:`Opened`.

        :raises RelayRefused: ``no-reservation`` when ``target`` holds none, ``limit`` when a
            cap on circuits (in all and no group holds more than the source's plus one, to the
            target, from the source's group) is reached.
        """
        source = group_of(source)
        self.expire(now)
        held = self._reservations.get(target)
        if held is None:
            raise RelayRefused(NO_RESERVATION, "the peer holds no reservation on this relay")
        policy = self.policy
        shares = self._shares
        to_target = self._per_target.get(target) or FairShare(policy.max_circuits_per_peer)
        if not to_target.room_for(source):
            raise RelayRefused(LIMIT, f"the peer has its limit of {policy.max_circuits_per_peer} circuits")
        if not shares.room_for(source):
            if shares.held_by(source) >= policy.max_circuits_per_source:
                raise RelayRefused(
                    LIMIT, f"this source has its limit of {policy.max_circuits_per_source} circuits"
                )
            raise RelayRefused(LIMIT, f"this relay carries its limit of {policy.max_circuits} circuits")
        circuit = Circuit(target, source, secrets.token_bytes(TOKEN_SIZE), now)
        evicted = []
        for share in (shares, to_target):  # both have room (an eviction from the first only adds)
            taken = share.take(source, circuit)
            assert taken is not None
            if taken.evicted is not None:
                evicted.append(taken.evicted)
                self._forget(taken.evicted)
        self._per_target[target] = to_target
        self._circuits[circuit.token] = circuit
        return Opened(circuit, held.handle, tuple(evicted))

    def accept(self, token: bytes) -> Circuit | None:
        """The circuit waiting for ``token`` (each token is taken once), or None."""
        circuit = self._circuits.get(token)
        if circuit is None or circuit.accepted:
            return None
        circuit.accepted = True
        return circuit

    def close(self, circuit: Circuit) -> None:
        """Forget a circuit (closed, refused or never accepted); twice is harmless."""
        self._forget(circuit)

    def _forget(self, circuit: Circuit) -> None:
        # Out of the book and both its shares (one may have given its place away already).
        if self._circuits.get(circuit.token) is circuit:
            del self._circuits[circuit.token]
        self._shares.give_back(circuit.source, circuit)
        to_target = self._per_target.get(circuit.target)
        if to_target is not None:
            to_target.give_back(circuit.source, circuit)
            if not len(to_target):
                del self._per_target[circuit.target]

    def carry(self, circuit: Circuit, count: int, now: float) -> int:
        """Count ``count`` bytes more on ``circuit``; returns how many more it may carry (below
        0: the circuit must close), given its byte and time limits."""
        circuit.carried += count
        if now - circuit.opened >= self.policy.max_duration:
            return -1
        return self.policy.max_bytes - circuit.carried
