"""How peers reach a node: its port mapped through the home router (:mod:`peerkit.node.mapping`),
serving as a relay (``Node(relay=True)``), and keeping reservations on relays
(``Node(relays=[...])``) so that peers that cannot dial this node reach it through them.

A reservation is a control channel this node keeps open to the relay, renewed with ``reserve``
every :data:`RENEW` seconds; while it holds, the relay's endpoint is in this node's signed record
(``"relays"``), and a peer that dials it gets a circuit that this node takes by opening a new
connection to the relay (docs/protocol.md section 8). The channel over a circuit is an ordinary
secure channel: the handshake and everything after it are end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from peerkit.discovery.base import offers_relay, read_record
from peerkit.errors import PeerkitError, PeerUnreachable, ProtocolError
from peerkit.identity import PeerId
from peerkit.model import EndPoint
from peerkit.net.channel import SecureChannel
from peerkit.net.control import ControlChannel, Reply
from peerkit.net.punch import ATTEMPT_TIMEOUT, MAX_CANDIDATES, Punch
from peerkit.net.relay import Announce, RelayService, RelayStats, take_circuit
from peerkit.net.transport import ON_LINK, TcpTransport, Transport, is_public, local_addresses
from peerkit.node.connections import Connections, Me
from peerkit.node.mapping import PortMapping
from peerkit.node.reachability import Reachability
from peerkit.peers import Peer
from peerkit.proto import relay as wire
from peerkit.proto.admission import source_of
from peerkit.proto.messages import USE_CONTROL, USE_STREAM
from peerkit.proto.relay import RelayPolicy, RelayRefused
from peerkit.proto.requests import (
    BadRequest,
    ErrorCode,
    PunchRequest,
    Refused,
    ReserveRequest,
    check_reply,
    error_reply,
    is_uint,
    read_addresses,
    seen_address,
)
from peerkit.sync import Flag

__all__ = ("AUTO_RELAYS", "MAX_TAKING", "RENEW", "Reach", "ReachStep", "Reaching", "may_punch")

log = logging.getLogger(__name__)

#: Seconds between renewals of a reservation (at most; a third of its lifetime when shorter).
RENEW: Final = 60.0
#: Seconds between tries to reserve on a relay that cannot be reached or refused: from the first
#: to the last, doubling.
RETRY: Final = (1.0, 60.0)
#: Circuits this node takes at once from its relays (further announcements are ignored).
MAX_TAKING: Final = 64
#: Holes being punched at once (asked for or answered); with strangers, three quarters of them at
#: most (the rest is kept for contacts).
MAX_PUNCHES: Final = 16
#: Holes being punched at once with one peer (a control channel's, then its streams').
MAX_PUNCHES_PER_PEER: Final = 4
#: Seconds a punch request may wait for its answer.
PUNCH_TIMEOUT: Final = 10.0
#: Relays among its contacts a node keeps reservations on while it cannot be reached directly.
AUTO_RELAYS: Final = 2
#: Seconds between looks at this node's reachability and for contacts that relay.
AUTO_CHECK: Final = 30.0
#: Looks asked for sooner (each channel a contact opens asks for one) are taken at once up to
#: this many, then one every AUTO_GAP seconds: a thousand contacts coming at once cost a look a
#: second, not a thousand (each look goes through every channel).
AUTO_BURST: Final = 4
AUTO_GAP: Final = 1.0
#: Seconds before a contact's record is asked for again (whether it relays).
AUTO_ASK_AGAIN: Final = 600.0
#: Contacts asked at once whether they relay, and the seconds each answer may take.
AUTO_ASK_AT_ONCE: Final = 16
ASK_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Reach:
    """How a node can be reached now (:meth:`peerkit.Node.reach`)."""

    #: The relays it holds a reservation on (peers that cannot dial it reach it through them).
    reservations: tuple[EndPoint, ...]
    #: The relays it is configured to keep reservations on.
    relays: tuple[EndPoint, ...]
    #: Whether it serves as a relay.
    relaying: bool
    #: Whether peers elsewhere can dial it directly, as far as it can tell: with a mapped port,
    #: or at an address of its own that peers on the Internet see it at (or, before any says, a
    #: public address of its own). While not, it keeps reservations on contacts that relay.
    reachable: bool = False
    #: The relays among its contacts it chose to keep reservations on (it is not reachable).
    auto_relays: tuple[EndPoint, ...] = ()
    #: The router's public address and the port it maps to the node (None: no mapping).
    mapped: EndPoint | None = None
    #: How the port is mapped (``"nat-pmp"``, ``"upnp"``), or None.
    mapping: str | None = None
    #: Why the port is not mapped, when it is not.
    mapping_problem: str | None = None
    #: As a relay: reservations peers hold on it, and circuits open through it now.
    reserved_here: int = 0
    circuits_now: int = 0
    #: As a relay: what it did since it started (circuits, refusals, bytes carried).
    stats: RelayStats | None = None
    #: Channels moved from a relay to a hole punched through both NATs, and punches that failed
    #: (the relayed channel was kept).
    punched: int = 0
    punch_failures: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReachStep:
    """One way tried to a peer by :meth:`peerkit.Node.trace`."""

    #: ``"resolve"`` (through the discovery providers), ``"direct"`` (one of its own addresses),
    #: ``"mapped"`` (the port its router maps to it), ``"relayed"`` (through a relay it names) or
    #: ``"punched"`` (a hole beside a relayed channel).
    way: str
    #: The endpoint tried (None for resolve and punched).
    endpoint: EndPoint | None
    #: Whether it worked.
    ok: bool
    #: How long it took (connect and handshake, for an endpoint).
    seconds: float
    #: What happened, for people.
    detail: str


class Reaching:
    """Both sides of relaying for one node; see the module docstring.

    ``take(stream)`` hands a circuit's stream to the node's listener, as if it had accepted it.
    """

    def __init__(
        self,
        *,
        policy: RelayPolicy | None,
        relays: Sequence[EndPoint],
        is_contact: Callable[[PeerId], bool],
        connections: Connections,
        network: Transport,
        me: Callable[[], Me],
        changed: Callable[[], None],
        port_mapping: bool = False,
        renew: float = RENEW,
        auto_relay: bool = True,
        record_of: Callable[[ControlChannel], Awaitable[bytes]] | None = None,
        internet: Callable[[], bool] = lambda: False,
    ) -> None:
        #: The node's port mapped through the router.
        self.mapping = PortMapping(enabled=port_mapping, changed=self._mapping_changed)
        self._auto_relay = auto_relay
        self._internet = internet
        self._record_of = record_of
        self._is_contact = is_contact
        #: Whether peers elsewhere can dial this node directly (see :attr:`Reach.reachable`).
        self.reachable = False
        #: How that is told (and the ``dialback`` requests of contacts answered).
        self.reachability = Reachability(
            connections=connections,
            network=network,
            is_contact=is_contact,
            mapped=lambda: self.mapping.endpoint is not None,
            seen_host=lambda: self.seen_host,
            listening=lambda: (self._listen_host, self._me().endpoint.host, self._me().endpoint.port),
        )
        #: Relays among its contacts this node keeps reservations on, and the scope of each.
        self._auto: dict[EndPoint, anyio.CancelScope] = {}
        #: When each contact was last asked whether it relays, and the endpoint to reserve on
        #: when it does.
        self._asked: dict[PeerId, tuple[float, EndPoint | None]] = {}
        self._wake = Flag()
        #: The relay this node serves as (None: it is not one).
        self.service = RelayService(policy, allowed=lambda key: is_contact(PeerId(key))) if policy else None
        self._relays = tuple(relays)
        self._connections = connections
        self._control_to = connections.control_to
        connections.on_relayed = self._relayed
        self._network = network
        self._me = me
        self._changed = changed
        self._renew = renew
        self._take: Callable[[anyio.abc.ByteStream], Coroutine[Any, Any, None]] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        #: The relays this node holds a reservation on now, and the channel each is held by.
        self._reserved: dict[EndPoint, ControlChannel] = {}
        #: The relays that said this node's reservation gave way, and the waits for renewal.
        self._unreserved: set[EndPoint] = set()
        self._renewing: dict[EndPoint, anyio.CancelScope] = {}
        self._announces: dict[ControlChannel, Announce] = {}
        self._taking = 0
        self._full_said = False  # (the warning that circuits are ignored, said once while full)
        #: This node's address as a relay it holds a reservation on sees it (behind a NAT: the
        #: router's public address).
        self.seen_host: str | None = None
        #: Holes punched and punches that failed (the seconds each success took).
        self.punched: list[float] = []
        self.punch_failures = 0
        #: Punches under way, per peer (asked for or answered).
        self._punching: dict[PeerId, int] = {}
        #: The control channels moved to a punched hole, and the public address this side was
        #: seen at then.
        self._holes: dict[PeerId, tuple[ControlChannel, str | None]] = {}
        self._punch_ended = anyio.Event()
        self._listen_host = "0.0.0.0"

    @property
    def endpoints(self) -> tuple[EndPoint, ...]:
        """The relays this node can be reached through now (those it holds a reservation on)."""
        return tuple(e for e in (*self._relays, *self._auto) if e in self._reserved)

    @property
    def advertises(self) -> bool:
        """Whether this node's record says it serves as a relay (it does, and can be reached)."""
        return self.service is not None and self.reachable

    def reach(self) -> Reach:
        """What :meth:`peerkit.Node.reach` reports of relays."""
        service = self.service
        return Reach(
            reservations=self.endpoints,
            relays=self._relays,
            relaying=service is not None,
            reachable=self.reachable,
            auto_relays=tuple(self._auto),
            mapped=self.mapping.endpoint,
            mapping=self.mapping.method if self.mapping.endpoint is not None else None,
            mapping_problem=self.mapping.problem,
            reserved_here=service.book.reservations if service is not None else 0,
            circuits_now=service.book.circuits if service is not None else 0,
            stats=dataclasses.replace(service.stats) if service is not None else None,
            punched=len(self.punched),
            punch_failures=self.punch_failures,
        )

    def start(
        self,
        tg: anyio.abc.TaskGroup,
        take: Callable[[anyio.abc.ByteStream], Coroutine[Any, Any, None]],
        listening: tuple[str, int],
        *,
        accepted_publicly: Callable[[], float | None] = lambda: None,
    ) -> None:
        """Keep the port mapped and the reservations from now on, in ``tg``; circuits go to
        ``take``. The node listens at ``listening`` (its bind address, or the empty host for IPv4
        and IPv6, and its port); ``accepted_publicly()`` says when its listener last accepted a
        connection from a public address (proof that it can be reached)."""
        self._tg, self._take = tg, take
        self._listen_host, port = listening
        tg.start_soon(self.mapping.run, self._listen_host, port)
        for relay in self._relays:
            tg.start_soon(self._keep, relay)
        self.reachability.start(accepted_publicly)
        self.reachable = self.reachability.evident() is not False  # (asked of a contact later)
        tg.start_soon(self._look_after_reachability)

    def clear(self) -> None:
        """Forget everything (the node stopped)."""
        self._reserved.clear()
        self._unreserved.clear()
        self._announces.clear()
        self._holes.clear()
        self._auto.clear()
        self._asked.clear()
        self._tg = self._take = None

    # -- as a relay ---------------------------------------------------------------------------
    async def on_reserve(self, control: ControlChannel, request: ReserveRequest) -> Reply:
        """Answer a ``reserve`` request."""
        if self.service is None:
            return error_reply(ErrorCode.NOT_ALLOWED, "this node is not a relay")
        announce = self._announces.get(control)
        if announce is None:
            announce = self._announces[control] = _announcer(control)
        address = control.channel.peer.address
        source = "" if address is None else source_of(address, ON_LINK)
        try:
            ttl = self.service.reserve(control.peer_id.key, announce, source)
        except RelayRefused as exc:
            self._announces.pop(control, None)
            code = ErrorCode.LIMIT if exc.code == wire.LIMIT else ErrorCode.NOT_ALLOWED
            return error_reply(code, exc.text)
        for displaced in self.service.book.take_displaced():  # (told at once, not at its renewal)
            holder = next((c for c, a in self._announces.items() if a is displaced), None)
            if holder is not None and self._tg is not None:
                del self._announces[holder]
                self._tg.start_soon(_tell_unreserved, holder)
        reply: dict[str, Any] = {"t": "reserve_reply", "ttl": ttl}
        if address is not None:
            reply["seen"] = [address[0], address[1]]  # behind a NAT: the router's public address
        return reply

    def closed(self, control: ControlChannel) -> None:
        """``control`` closed: a reservation held by it ends."""
        announce = self._announces.pop(control, None)
        if announce is not None and self.service is not None:
            self.service.release(control.peer_id.key, announce)

    # -- reserving ------------------------------------------------------------------------------
    def on_unreserved(self, control: ControlChannel, message: dict[str, Any]) -> None:
        """A relay this node holds a reservation on gave it to another: stop counting on it, and
        reserve again (there or, for a contact that relays, elsewhere)."""
        relay = next((e for e, c in self._reserved.items() if c is control), None)
        if relay is None:
            return
        log.info("%s gave this node's reservation to another", relay)
        self._unreserved.add(relay)
        waiting = self._renewing.get(relay)
        if waiting is not None:
            waiting.cancel()

    def on_circuit(self, control: ControlChannel, message: dict[str, Any]) -> None:
        """A relay this node holds a reservation on announced a circuit: take it."""
        relay = next((e for e, c in self._reserved.items() if c is control), None)
        token = message.get("token")
        if relay is None or not isinstance(token, bytes) or len(token) != wire.TOKEN_SIZE:
            log.info("ignoring a circuit notice from %s", control.peer_id.fingerprint)
            return
        if self._tg is None or self._taking >= MAX_TAKING:
            if not self._full_said:  # (once while full: a relay may announce circuits in a loop)
                self._full_said = True
                log.warning("ignoring circuits while %d are being taken already", self._taking)
            return
        self._full_said = False
        self._taking += 1
        self._tg.start_soon(self._take_circuit, relay, token)

    async def _take_circuit(self, relay: EndPoint, token: bytes) -> None:
        try:
            try:
                stream = await take_circuit(
                    self._network, relay.host, relay.port, token, local_host=self._me().endpoint.host
                )
            except PeerkitError as exc:
                log.info("could not take a circuit from %s: %s", relay, exc)
                return
            assert self._take is not None
            await self._take(stream)
        finally:
            self._taking -= 1

    async def _keep(self, relay: EndPoint, *, chosen: bool = False) -> None:
        # Hold a reservation on ``relay`` until cancelled: reserve, renew, and after a failure
        # try again later. A relay ``chosen`` among the contacts is given up when it refuses.
        assert relay.relay is not None
        delay = RETRY[0]
        while True:
            control: ControlChannel | None = None
            try:
                control = await self._control_to(relay.relay, EndPoint(relay.host, relay.port), exact=True)
                while True:
                    ttl = await self._reserve(control)
                    if self._reserved.get(relay) is not control:
                        self._reserved[relay] = control
                        log.info("holding a reservation on %s", relay)
                        self._changed()
                    delay = RETRY[0]
                    self._unreserved.discard(relay)  # (a grant since a notice is what holds)
                    with anyio.move_on_after(min(self._renew, ttl / 3)) as waiting:
                        self._renewing[relay] = waiting
                        try:
                            await control.wait_closed()
                        finally:
                            del self._renewing[relay]
                    if control.closed:
                        raise ProtocolError("the channel to the relay closed")
                    if relay in self._unreserved:
                        raise ProtocolError("the relay gave the reservation to another")
            except Refused as exc:
                log.info("no reservation on %s: %s", relay, exc)
                if chosen:
                    self._reserved.pop(relay, None)
                    self._changed()
                    return
            except (PeerkitError, ValueError, TimeoutError) as exc:
                log.info("no reservation on %s: %s", relay, exc)
            if self._reserved.pop(relay, None) is not None:
                self._changed()
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY[1])

    async def _reserve(self, control: ControlChannel) -> int:
        request = await control.start_request({"t": "reserve"})
        with anyio.fail_after(10):
            reply = check_reply(await request.wait(), "reserve_reply")
        ttl = reply.get("ttl")
        if not is_uint(ttl) or ttl < 3:
            raise ProtocolError(f"the relay answered reserve with a bad ttl {ttl!r}")
        seen = seen_address(reply.get("seen"))
        if seen is not None:
            self.seen_host = seen[0]
        return ttl

    # -- reachability, and relays among the contacts ---------------------------------------------
    def wake(self) -> None:
        """Look at reachability and for contacts that relay soon (a channel opened, a contact came)."""
        self._wake.set()

    def _mapping_changed(self) -> None:
        self._wake.set()
        self._changed()

    async def _look_after_reachability(self) -> None:
        spare, last = float(AUTO_BURST), anyio.current_time()  # a token bucket of looks
        while True:
            with anyio.move_on_after(AUTO_CHECK):
                await self._wake.wait()
            now = anyio.current_time()
            spare, last = min(float(AUTO_BURST), spare + (now - last) / AUTO_GAP), now
            if spare < 1:
                await anyio.sleep((1 - spare) * AUTO_GAP)
                spare, last = 1.0, anyio.current_time()
            spare -= 1
            self._wake = Flag()
            reachable = await self.reachability.assess()
            if reachable != self.reachable:
                self.reachable = reachable
                log.info("this node %s be reached directly", "can" if reachable else "cannot")
                self._changed()
            await self._choose_relays()

    async def _choose_relays(self) -> None:
        # While this node cannot be reached and is signed in to the Internet scope (where peers
        # elsewhere look for it), keep reservations on up to AUTO_RELAYS contacts whose records
        # say they relay (asked over the channels open to them while fewer are known; each
        # answer remembered for AUTO_ASK_AGAIN); else release them.
        wanted = not self.reachable and self._auto_relay and self._internet()
        for relay, scope in list(self._auto.items()):
            if not wanted:
                scope.cancel()
                del self._auto[relay]
        if not wanted or self._record_of is None or self._tg is None:
            return
        now = anyio.current_time()
        self._asked = {p: (t, e) for p, (t, e) in self._asked.items() if now - t < AUTO_ASK_AGAIN}
        chosen = {e.relay for e in self._auto} | {e.relay for e in self._relays}
        if len(self._auto) + len(self._relaying(chosen)) < AUTO_RELAYS:  # (else no one is asked)
            unasked = (
                p
                for p in self._connections.peers()
                if p not in self._asked and p not in chosen and self._is_contact(p)
            )
            async with anyio.create_task_group() as tg:  # at once: one that does not answer delays none
                for peer_id in itertools.islice(unasked, AUTO_ASK_AT_ONCE):
                    controls = self._connections.controls(peer_id)
                    if controls:
                        self._asked[peer_id] = (now, None)
                        tg.start_soon(self._ask_relay, peer_id, controls[0], now)
        known = self._relaying(chosen)
        for relay in known[: AUTO_RELAYS - len(self._auto)]:
            log.info("keeping a reservation on %s, a contact that relays", relay)
            self._auto[relay] = scope = anyio.CancelScope()
            self._tg.start_soon(self._keep_chosen, relay, scope)

    def _relaying(self, chosen: set[PeerId | None]) -> list[EndPoint]:
        # The contacts that said they relay, not chosen yet.
        return [e for _, e in self._asked.values() if e is not None and e.relay not in chosen]

    async def _ask_relay(self, peer_id: PeerId, control: ControlChannel, now: float) -> None:
        # Whether ``peer_id`` relays (its record says so): the endpoint to reserve on, or None.
        assert self._record_of is not None
        try:
            with anyio.fail_after(ASK_TIMEOUT):
                envelope = await self._record_of(control)
            record, _, _, endpoints = read_record(envelope)
        except (PeerkitError, TimeoutError) as exc:
            log.debug("could not ask %s whether it relays: %s", peer_id.fingerprint, exc)
            return
        public = [e for e in endpoints if e.relay is None and (e.how == "mapped" or is_public(e.host))]
        if offers_relay(record) and public:
            self._asked[peer_id] = (now, EndPoint(public[0].host, public[0].port, relay=peer_id))

    async def _keep_chosen(self, relay: EndPoint, scope: anyio.CancelScope) -> None:
        with scope:
            await self._keep(relay, chosen=True)  # returns when the relay refuses
            assert relay.relay is not None
            self._asked[relay.relay] = (anyio.current_time(), None)  # asked again after AUTO_ASK_AGAIN
        if self._auto.get(relay) is scope:
            del self._auto[relay]
        if self._reserved.pop(relay, None) is not None:
            self._changed()

    # -- tracing ---------------------------------------------------------------------------------
    async def trace(
        self,
        peer_id: PeerId,
        known: Sequence[EndPoint],
        timeout: float,
        *,
        resolve: Callable[[PeerId], Awaitable[Peer]],
    ) -> list[ReachStep]:
        """Look ``peer_id`` up with ``resolve`` (again and again within ``timeout``: a provider
        that just started may need a moment), then try its endpoints and the ``known`` ones
        each on a channel of its own (at most 8, at once, each within ``timeout``), then a hole
        beside the first relay that worked."""
        start = anyio.current_time()
        found: tuple[EndPoint, ...] = ()
        problem = ""
        with anyio.move_on_after(timeout):
            while not found:
                try:
                    found = tuple((await resolve(peer_id)).endpoints)
                except PeerkitError as exc:
                    problem = str(exc)
                    await anyio.sleep(0.25)
        took = anyio.current_time() - start
        detail = f"{len(found)} endpoints" if found else problem or "not found in time"
        steps = [ReachStep(way="resolve", endpoint=None, ok=bool(found), seconds=took, detail=detail)]
        tried = list(dict.fromkeys((*found, *known)))[:8]
        results: dict[EndPoint, ReachStep] = {}

        async def attempt(endpoint: EndPoint) -> None:
            way = (
                "relayed"
                if endpoint.relay is not None
                else "mapped"
                if endpoint.how == "mapped"
                else "direct"
            )
            start = anyio.current_time()
            try:
                with anyio.fail_after(timeout):
                    channel = await self._connections.connect(peer_id, endpoint, use=USE_CONTROL)
                await channel.aclose()
            except (PeerkitError, TimeoutError) as exc:
                took, ok, detail = anyio.current_time() - start, False, str(exc) or "no answer in time"
            else:
                took, ok, detail = anyio.current_time() - start, True, "connected, handshake done"
            results[endpoint] = ReachStep(way=way, endpoint=endpoint, ok=ok, seconds=took, detail=detail)

        async with anyio.create_task_group() as tg:  # all at once: a silent address costs its timeout once
            for endpoint in tried:
                tg.start_soon(attempt, endpoint)
        steps += [results[e] for e in tried]
        relay = next((s.endpoint for s in steps if s.ok and s.way == "relayed"), None)
        if (
            relay is not None
            and isinstance(self._network, TcpTransport)
            and not any(s.ok and s.way in ("direct", "mapped") for s in steps)
        ):
            steps.append(await self._trace_punch(peer_id, relay))
        return steps

    async def _trace_punch(self, peer_id: PeerId, relay: EndPoint) -> ReachStep:
        before = (len(self.punched), self.punch_failures)
        start = anyio.current_time()
        try:
            await self._control_to(peer_id, relay, exact=True)  # a new relayed channel punches
        except PeerkitError as exc:
            return ReachStep(way="punched", endpoint=None, ok=False, seconds=0.0, detail=str(exc))
        with anyio.move_on_after(PUNCH_TIMEOUT + ATTEMPT_TIMEOUT + 1):
            while (len(self.punched), self.punch_failures) == before:
                await self._punch_ended.wait()
        took = anyio.current_time() - start
        if len(self.punched) > before[0]:
            return ReachStep(
                way="punched", endpoint=None, ok=True, seconds=took, detail="a hole through both NATs"
            )
        if self.punch_failures > before[1]:
            detail = "the SYNs did not cross (a NAT that changes ports?): the relay carries on"
        else:
            detail = "no punch was tried (a channel to the peer was open already)"
        return ReachStep(way="punched", endpoint=None, ok=False, seconds=took, detail=detail)

    # -- hole punching ---------------------------------------------------------------------------
    def _candidates(self, port: int, seen: str | None) -> list[list[object]]:
        # Where the other side may reach the port this side dials from: its public address (as a
        # relay saw it), then its own addresses (a peer on the same LAN).
        listening = self._listen_host
        hosts = [seen] if seen else []
        hosts += [h for h in local_addresses(listening, fallback=self._me().endpoint.host) if ":" not in h]
        return [[host, port] for host in dict.fromkeys(hosts)][:MAX_CANDIDATES]

    @staticmethod
    def _targets(theirs: Sequence[tuple[str, int]], mine: str | None) -> list[tuple[str, int]]:
        # Which of the other side's addresses to dial: behind the same NAT (the same public
        # address), its own addresses; else its public one. (A SYN from the punching port to an
        # address that cannot be reached disturbs the one that can: it is not sent.)
        if mine is not None and any(host == mine for host, _ in theirs):
            return [(h, p) for h, p in theirs if h != mine] or list(theirs)
        public = [(h, p) for h, p in theirs if not ipaddress.ip_address(h).is_private]
        return public or list(theirs)

    def _relayed(self, control: ControlChannel) -> None:
        # A control channel this node dialled through a relay: try to punch a hole beside it.
        peer = control.peer_id
        if not isinstance(self._network, TcpTransport) or self._tg is None:
            return
        if self._punching.get(peer) or not self._may_punch(peer):
            return
        self._punching[peer] = 1
        self._tg.start_soon(self._punch, control)

    def holed(self, peer_id: PeerId) -> bool:
        """Whether this node's control channel to ``peer_id`` runs through a hole it punched (its
        streams to the peer are punched too: a NAT lets in only the connections it saw leave)."""
        hole = self._holes.get(peer_id)
        return hole is not None and not hole[0].closed

    async def punch_stream(self, peer_id: PeerId) -> SecureChannel:
        """A stream channel to ``peer_id`` through a new hole, asked for over the punched control
        channel (see :meth:`holed`).

        :raises PeerUnreachable: when there is no punched channel, or the SYNs did not cross.
        :raises HandshakeError: when the handshake over the hole fails.
        """
        hole = self._holes.get(peer_id)
        if hole is None or hole[0].closed:
            raise PeerUnreachable(f"no hole punched to {peer_id.fingerprint}")
        if not self._may_punch(peer_id):
            raise PeerUnreachable(f"{MAX_PUNCHES_PER_PEER} holes are being punched to {peer_id.fingerprint}")
        self._punching[peer_id] = self._punching.get(peer_id, 0) + 1
        try:
            channel, _remote = await self._hole(hole[0], hole[1], USE_STREAM)
        except (Refused, BadRequest, OSError, TimeoutError) as exc:
            raise PeerUnreachable(f"no hole to {peer_id.fingerprint} for a stream: {exc}") from None
        finally:
            self._punched_one(peer_id)
        return channel

    async def _hole(
        self, control: ControlChannel, seen: str | None, use: str
    ) -> tuple[SecureChannel, EndPoint]:
        # Ask the peer over ``control`` to punch, dial its addresses from a bound port, and run
        # the handshake (as initiator, for ``use``) over the connection the SYNs made.
        punch = Punch(self._listen_host)
        try:
            port = punch.open()
            request = await control.start_request({"t": "punch", "addrs": self._candidates(port, seen)})
            with anyio.fail_after(PUNCH_TIMEOUT):
                reply = check_reply(await request.wait(), "punch_reply")
            theirs = self._targets(read_addresses(reply.get("addrs")), seen)
            log.info("punching from port %d to %s", port, theirs)
            made = await punch.connect(theirs)
        finally:
            punch.close()
        for extra in made[1:]:
            await anyio.aclose_forcefully(extra)
        if not made:
            raise PeerUnreachable("no hole: the SYNs did not cross (a NAT that changes ports?)")
        stream = made[0]
        remote = stream.extra(SocketAttribute.remote_address)
        channel = await self._connections.handshake(stream, control.peer_id, use=use)
        return channel, EndPoint(str(remote[0]), int(remote[1]))

    def _may_punch(self, peer_id: PeerId) -> bool:
        return may_punch(self._punching, peer_id, self._is_contact)

    def _punched_one(self, peer_id: PeerId) -> None:
        left = self._punching.pop(peer_id, 1) - 1
        if left > 0:
            self._punching[peer_id] = left

    async def _punch(self, relayed: ControlChannel) -> None:
        start = anyio.current_time()
        seen = relayed.channel.relay_seen
        seen_host = seen[0] if seen is not None else None
        try:
            channel, remote = await self._hole(relayed, seen_host, USE_CONTROL)
            control = self._connections.take_dialled(channel, remote)
            self._holes = {p: h for p, h in self._holes.items() if not h[0].closed}
            self._holes[relayed.peer_id] = (control, seen_host)
            self.punched.append(anyio.current_time() - start)
            log.info("punched a hole to %s in %.0f ms", relayed.peer_id.fingerprint, self.punched[-1] * 1000)
            await relayed.retire()  # what is under way on it finishes; what comes next goes direct
        except (PeerkitError, Refused, BadRequest, OSError, TimeoutError) as exc:
            self.punch_failures += 1
            log.info(
                "could not punch a hole to %s (the relay carries on): %s", relayed.peer_id.fingerprint, exc
            )
        finally:
            self._punched_one(relayed.peer_id)
            self._punch_ended.set()
            self._punch_ended = anyio.Event()

    async def on_punch(self, control: ControlChannel, request: PunchRequest) -> Reply:
        """Answer a ``punch`` request: say where this side dials from, and dial back at once."""
        if not isinstance(self._network, TcpTransport) or self._tg is None:
            return error_reply(ErrorCode.UNAVAILABLE, "this node does not punch holes")
        peer = control.peer_id
        if not self._may_punch(peer):
            return error_reply(ErrorCode.LIMIT, "too many punches are under way")
        punch = Punch(self._listen_host)
        try:
            port = punch.open()
        except OSError as exc:
            return error_reply(ErrorCode.UNAVAILABLE, f"no port to punch from: {exc}")
        self._punching[peer] = self._punching.get(peer, 0) + 1
        # This side's SYNs leave first (each opens this side's NAT for the asker's), then the
        # answer tells the asker where to dial: its SYNs arrive to a hole already open.
        theirs = self._targets(request.addrs, self.seen_host)
        self._tg.start_soon(self._answer_punch, control.peer_id, punch, theirs)
        with anyio.move_on_after(1):
            await punch.armed.wait()
        return {"t": "punch_reply", "addrs": self._candidates(port, self.seen_host)}

    async def _answer_punch(self, peer: PeerId, punch: Punch, theirs: list[tuple[str, int]]) -> None:
        # Dial back from the port this side named; each connection made is taken as if accepted
        # (the asker runs the handshake as initiator over the one it keeps).
        try:
            log.info("punching back to %s", theirs)
            made = await punch.connect(theirs, listen=True)
            take, tg = self._take, self._tg
            for stream in made:
                if take is None or tg is None:  # the node stopped meanwhile
                    await anyio.aclose_forcefully(stream)
                else:
                    tg.start_soon(take, stream)
        finally:
            punch.close()
            self._punched_one(peer)


def may_punch(punching: dict[PeerId, int], peer_id: PeerId, is_contact: Callable[[PeerId], bool]) -> bool:
    """Whether another hole may be punched with ``peer_id``, given the holes being punched with
    each peer: fewer than :data:`MAX_PUNCHES_PER_PEER` with it and :data:`MAX_PUNCHES` in all,
    and, with a stranger, fewer than three quarters of them with strangers."""
    if punching.get(peer_id, 0) >= MAX_PUNCHES_PER_PEER or sum(punching.values()) >= MAX_PUNCHES:
        return False
    if is_contact(peer_id):
        return True
    return sum(n for p, n in punching.items() if not is_contact(p)) < MAX_PUNCHES * 3 // 4


async def _tell_unreserved(control: ControlChannel) -> None:
    # A relay's notice to a node whose reservation gave way (a channel that fails is let go).
    with anyio.move_on_after(10), contextlib.suppress(PeerkitError):
        await control.notify({"t": "unreserved"})


def _announcer(control: ControlChannel) -> Announce:
    async def announce(token: bytes) -> None:
        await control.notify({"t": "circuit", "token": token})

    return announce
