"""Pairing with a short code: two people become each other's contacts by one reading a code like
``7-guitar-walrus`` to the other, with no card copied by hand (docs/protocol.md, "Pairing").

:meth:`Node.pair` waits with a new code, announced on the LAN under a name made from its number;
:meth:`Node.join_pairing` finds it there (or at an address given) and opens a stream of the
``pair`` application to it. Over the stream, SPAKE2 turns the code into a key, each side proves it
holds the key over its signed card and the stream's handshake hash, and each adds the other's card
as a contact. The waiting side takes one guess: a wrong code fails both sides and uses the code up.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio

from peerkit.discovery.base import read_record
from peerkit.discovery.rendezvous import (
    lookup_dht_rendezvous,
    lookup_rendezvous,
    publish_dht_rendezvous,
    publish_rendezvous,
)
from peerkit.errors import (
    ContactExists,
    DiscoveryError,
    InvalidRecord,
    PairingFailed,
    PeerkitError,
    ProtocolError,
)
from peerkit.handles import Handle
from peerkit.identity import Identity, PeerId
from peerkit.model import EndPoint
from peerkit.peers import Peer
from peerkit.proto.framing import FrameDecoder
from peerkit.proto.pairing import (
    MAX_LAN_NUMBER,
    Code,
    Pake,
    confirmation,
    decode_pairing,
    encode_pairing,
    make_code,
    parse_code,
    rendezvous_name,
)
from peerkit.streams import AppStream
from peerkit.wellknown import PAIR

if TYPE_CHECKING:
    from peerkit.contact import Contact
    from peerkit.contacts import ContactManager
    from peerkit.dht.node import DhtNode
    from peerkit.model import Application
    from peerkit.node.config import NodeConfig
    from peerkit.node.nearby import Nearby
    from peerkit.node.streams import StreamHandler

__all__ = ("EXCHANGE_TIMEOUT", "PAIR_TIMEOUT", "Pairing", "PairingMethods")

#: Seconds a code waits for the other side, by default.
PAIR_TIMEOUT: Final = 600.0
#: Seconds the exchange over the stream may take, once the other side connected.
EXCHANGE_TIMEOUT: Final = 30.0
#: Seconds the joining side looks for the rendezvous on the LAN, at most.
LOOKUP_TIMEOUT: Final = 10.0
#: Where a waiting side is: an address (host, port), or a peer found through the DHT.
Place = tuple[str, int] | Peer

#: Rendezvous numbers tried when the first is in use on the network.
_NUMBER_TRIES: Final = 5


class _Messages:
    # The pairing messages of one stream, one at a time.

    def __init__(self, stream: AppStream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder()
        self._ready: list[bytes | memoryview] = []

    async def next(self, *expected: str) -> dict[str, Any]:
        while not self._ready:
            try:
                data = await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                raise PairingFailed("the other side went away during the pairing") from None
            self._ready += self._decoder.feed(data)
        body = decode_pairing(self._ready.pop(0))
        if body["type"] == "result" and not body["ok"] and "result" not in expected:
            raise PairingFailed(f"the other side stopped the pairing: {body.get('reason') or 'no reason'}")
        if body["type"] not in expected:
            raise ProtocolError(
                f"a pairing {body['type']!r} message came where {' or '.join(expected)} belongs"
            )
        return body

    async def send(self, **body: Any) -> None:
        await self._stream.send(encode_pairing(body))


class Pairing:
    """A code waiting for the other side: from :meth:`Node.pair`, used with ``async with``.

    Show :attr:`code` to the other person; :meth:`wait` returns the contact made once they joined
    with it. Leaving the block withdraws the code.
    """

    def __init__(self, node: PairingMethods, timeout: float, lan: bool) -> None:
        self._node = node
        self._timeout = timeout
        self._lan = lan
        self._stack = contextlib.AsyncExitStack()
        self._done = anyio.Event()
        self._used = False
        self._contact: Contact | None = None
        self._error: PairingFailed | None = None
        self._deadline = 0.0
        self._internet = False
        #: The code to give the other person.
        self.code: Code = make_code()

    async def __aenter__(self) -> Pairing:
        node = self._node
        if any(a.id == PAIR.id for a in node.applications()):
            raise RuntimeError("a pairing is already going on on this node: one code at a time")
        await node.register_application(PAIR)
        self._stack.push_async_callback(node.unregister_application, PAIR)
        try:
            handle = node.add_stream_handler(PAIR, self._serve)
            self._stack.callback(handle.remove)
            dht = node.pairing_dht()
            if dht is not None:
                self._internet = True
                self.code = make_code(internet=True)
            if self._lan:
                await self._announce()
            if dht is not None:
                name = rendezvous_name(self.code.number)
                await publish_dht_rendezvous(dht, name, node.pairing_record())
                self._stack.push_async_callback(_withdraw, dht, name)
        except BaseException:
            await self._stack.aclose()
            raise
        self._deadline = anyio.current_time() + self._timeout
        return self

    async def _announce(self) -> None:
        port = self._node.endpoint.port
        hosts = self._node.pairing_hosts()
        for attempt in range(_NUMBER_TRIES):
            try:
                await self._stack.enter_async_context(
                    publish_rendezvous(rendezvous_name(self.code.number), port, hosts)
                )
                return
            except DiscoveryError as exc:
                if "in use" not in str(exc) or attempt == _NUMBER_TRIES - 1:
                    raise
                self.code = make_code(internet=self._internet)  # (that number is taken near here)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()

    async def wait(self) -> Contact:
        """The contact made when the other side joined with the code.

        :raises PairingFailed: when the code expired, or the other side had another code (the
            code is then used up: start a new pairing).
        """
        with anyio.move_on_after(max(self._deadline - anyio.current_time(), 0)):
            await self._done.wait()
        if not self._done.is_set():
            self._used = True
            raise PairingFailed(f"nobody joined with the code within {self._timeout:g} s: it expired")
        if self._error is not None:
            raise self._error
        assert self._contact is not None
        return self._contact

    async def _serve(self, stream: AppStream) -> None:
        # The stream handler: the first stream takes the one guess; later ones are turned away.
        messages = _Messages(stream)
        if self._used or anyio.current_time() > self._deadline:
            with contextlib.suppress(PeerkitError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await messages.send(type="result", ok=False, reason="this code is used up or expired")
            return
        self._used = True
        try:
            with anyio.fail_after(EXCHANGE_TIMEOUT):
                self._contact = await _as_waiter(self._node, stream, messages, self.code)
        except PairingFailed as exc:
            self._error = exc
        except (ProtocolError, InvalidRecord, TimeoutError, anyio.BrokenResourceError) as exc:
            self._error = PairingFailed(f"the pairing failed: {exc or 'it took too long'}")
        finally:
            if self._contact is None and self._error is None:  # (cancelled, or a fault of ours)
                self._error = PairingFailed("the pairing failed: it ended without an answer")
            self._done.set()


async def _withdraw(dht: DhtNode, name: str) -> None:
    # The DHT rendezvous emptied when the code ends (a stale one would send joiners nowhere).
    with anyio.move_on_after(LOOKUP_TIMEOUT), contextlib.suppress(PeerkitError):
        await publish_dht_rendezvous(dht, name, b"")


async def _as_waiter(node: PairingMethods, stream: AppStream, messages: _Messages, code: Code) -> Contact:
    first = await messages.next("pake")
    pake = Pake(code)
    key = pake.finish(first["msg"])
    hh = stream.handshake_hash
    card = node.contacts.sign_card()
    await messages.send(type="pake", msg=pake.message)
    await messages.send(type="card", card=card, mac=confirmation(key, "waiter", hh, card))
    theirs = await messages.next("card", "result")
    if theirs["type"] == "result":
        raise PairingFailed("the other side typed another code (this one is used up now): pair again")
    if not hmac.compare_digest(theirs["mac"], confirmation(key, "joiner", hh, theirs["card"])):
        await messages.send(type="result", ok=False, reason="wrong code")
        raise PairingFailed("the other side typed another code (this one is used up now): pair again")
    contact = await _add(node, theirs["card"], stream)
    await messages.send(type="result", ok=True, reason="")
    return contact


async def _as_joiner(node: PairingMethods, stream: AppStream, code: Code) -> Contact:
    messages = _Messages(stream)
    pake = Pake(code)
    await messages.send(type="pake", n=code.number, msg=pake.message)
    key = pake.finish((await messages.next("pake"))["msg"])
    hh = stream.handshake_hash
    theirs = await messages.next("card")
    if not hmac.compare_digest(theirs["mac"], confirmation(key, "waiter", hh, theirs["card"])):
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await messages.send(type="result", ok=False, reason="wrong code")
        raise PairingFailed(f"the code {code} is wrong (and now used up): ask for a new one")
    their_contact = node.contacts.read_card(theirs["card"])
    if their_contact.id != stream.peer.id:
        raise ProtocolError("the other side's card is not its own")
    card = node.contacts.sign_card()
    await messages.send(type="card", card=card, mac=confirmation(key, "joiner", hh, card))
    await messages.next("result")  # (a refusal raises)
    return await _add(node, theirs["card"], stream)


async def _add(node: PairingMethods, card: bytes, stream: AppStream) -> Contact:
    # The card's contact, added (or the contact it already is).
    contact = node.contacts.read_card(card)
    if contact.id != stream.peer.id:
        raise ProtocolError("the other side's card is not its own")
    try:
        return await node.contacts.add(contact)
    except ContactExists:
        return await node.contacts.get(contact.id)


class PairingMethods:
    """Pairing by code; mixed into the Node."""

    _nearby: Nearby
    contacts: ContactManager
    config: NodeConfig

    def _check_running(self) -> None:
        """(The Node's: see :class:`~peerkit.Node`.)"""
        raise NotImplementedError  # (the Node's)

    @property
    def endpoint(self) -> EndPoint:
        """(The Node's: see :class:`~peerkit.Node`.)"""
        raise NotImplementedError  # (the Node's)

    def applications(self) -> list[Application]:
        """(The Node's: see :class:`~peerkit.Node`.)"""
        raise NotImplementedError  # (the Node's)

    async def register_application(self, application: Application) -> None:
        """(The Node's: see :class:`~peerkit.Node`.)"""
        raise NotImplementedError  # (the Node's)

    async def unregister_application(self, application: Application) -> None:
        """(The Node's: see :class:`~peerkit.Node`.)"""
        raise NotImplementedError  # (the Node's)

    def add_stream_handler(self, application: Application, handler: StreamHandler) -> Handle:
        """(The Node's: see :class:`~peerkit.Node`.)"""
        raise NotImplementedError  # (the Node's)

    async def peer_at(self, host: str, port: int) -> Peer:
        """(The Node's: see :class:`~peerkit.Node`.)"""
        raise NotImplementedError  # (the Node's)

    def peer(self, peer_id: PeerId, *endpoints: EndPoint, nickname: str = "") -> Peer:
        """(The Node's: see :class:`~peerkit.Node`.)"""
        raise NotImplementedError  # (the Node's)

    @property
    def identity(self) -> Identity:
        """(The Node's: see :class:`~peerkit.Node`.)"""
        raise NotImplementedError  # (the Node's)

    def pairing_hosts(self) -> list[str]:
        """The addresses a pairing code's rendezvous points at: where this node can be reached."""
        return list(self._nearby.hosts())

    def pairing_dht(self) -> DhtNode | None:
        """The DHT node a pairing rendezvous goes through: the running ``dht`` provider's, or None
        (not signed in to the Internet scope with one)."""
        from peerkit.dht.provider import DhtDiscovery

        for provider in self.config.providers:
            if isinstance(provider, DhtDiscovery) and provider.node is not None:
                return provider.node
        return None

    def pairing_record(self) -> bytes:
        """This node's signed record as a DHT rendezvous holds it: every way to reach it (mapped
        port, interface addresses, relays), cut to what a DHT item holds."""
        from peerkit.dht.record import fit_record

        if self._nearby.record is not None:
            _, nickname, name, endpoints = read_record(self._nearby.record)
        else:
            nickname, name = "", ""
            endpoints = tuple(EndPoint(h, self.endpoint.port) for h in self.pairing_hosts())
        return fit_record(
            self.identity,
            int(time.time() * 1000),
            nickname=nickname,
            endpoint_name=name,
            endpoints=[(e.host, e.port, e.how) for e in endpoints if e.relay is None],
            relays=[(e.host, e.port, e.relay.key) for e in endpoints if e.relay is not None],
        )

    def pair(self, *, timeout: float = PAIR_TIMEOUT, lan: bool = True) -> Pairing:
        """Wait with a new pairing code for someone to join (:meth:`join_pairing`)::

            async with node.pair() as pairing:
                print("tell them:", pairing.code)
                contact = await pairing.wait()

        :param timeout: seconds the code stays valid.
        :param lan: announce the code's rendezvous on the LAN (mDNS); without it, the other side
            needs this node's address (``join_pairing(code, at=...)``).
        :raises RuntimeError: (entering) when another pairing waits on this node.
        :raises DiscoveryError: (entering) when mDNS cannot start.
        :raises NotRunning: when the node is not running.
        """
        if not 0 < timeout <= 3600:
            raise ValueError(f"timeout is more than 0 and at most 3600 seconds, not {timeout}")
        self._check_running()  # (entering checks again: register_application raises NotRunning)
        return Pairing(self, timeout, lan)

    async def join_pairing(
        self,
        code: str | Code,
        *,
        at: tuple[str, int] | None = None,
        lan: bool = True,
        timeout: float = EXCHANGE_TIMEOUT,
    ) -> Contact:
        """Join the pairing someone waits on with ``code``: both become each other's contacts.

        :param code: the code as the person typed it (any case, words joined by ``-`` or spaces),
            or a :class:`Pairing`'s ``code``.
        :param at: (host, port) of the waiting node; by default it is looked for on the LAN
            (mDNS) and, when this node is signed in to the Internet scope with a ``dht``
            provider, through the DHT.
        :param lan: look on the LAN (mDNS).
        :param timeout: seconds for finding it and the exchange.
        :raises ValueError: when ``code`` is not a pairing code.
        :raises TypeError: when ``code`` is neither text nor a code.
        :raises PairingFailed: when nobody waits with it, or the code is wrong (it is then used up).
        :raises NotRunning: when the node is not running.

        If cancelled, the connection to the waiting node is closed; if the exchange had begun,
        the code is used up there and the waiting side fails.
        """
        if isinstance(code, Code):
            wanted = code
        elif isinstance(code, str):
            wanted = parse_code(code)
        else:
            raise TypeError(f"a pairing code is text like '7-guitar-walrus', not {type(code).__name__}")
        self._check_running()
        with anyio.fail_after(timeout):
            places: list[Place] = [at] if at is not None else await self._find(wanted, lan, timeout)
            if not places:
                raise PairingFailed(
                    f"nobody waits with code number {wanted.number}: is 'peerkit pair' running on the "
                    "other machine, on the same LAN (or signed in to the DHT, as this one)?"
                )
            registered = any(a.id == PAIR.id for a in self.applications())
            if not registered:
                await self.register_application(PAIR)
            try:
                return await self._join_at(places, wanted)
            finally:
                if not registered:
                    with anyio.CancelScope(shield=True):
                        await self.unregister_application(PAIR)

    async def _find(self, code: Code, lan: bool, timeout: float) -> list[Place]:
        # Where the rendezvous points, from the first of the LAN and the DHT to find it.
        name = rendezvous_name(code.number)
        dht = self.pairing_dht() if code.number > MAX_LAN_NUMBER or not lan else None
        found: list[Place] = []
        wait = min(LOOKUP_TIMEOUT, timeout)

        async def on_lan(scope: anyio.CancelScope) -> None:
            for host, port in await lookup_rendezvous(name, wait):
                found.append((host, port))
            if found:
                scope.cancel()

        async def on_dht(scope: anyio.CancelScope) -> None:
            assert dht is not None
            for envelope in await lookup_dht_rendezvous(dht, name, wait):
                try:
                    record, nickname, _, endpoints = read_record(envelope)
                except InvalidRecord:
                    continue  # (anyone may write a rendezvous: only signed records count)
                peer_id = PeerId.from_verified(record.id)
                if endpoints and peer_id != self.identity.id:
                    found.append(self.peer(peer_id, *endpoints, nickname=nickname))
            if found:
                scope.cancel()

        async with anyio.create_task_group() as tg:
            if lan:
                tg.start_soon(on_lan, tg.cancel_scope)
            if dht is not None:
                tg.start_soon(on_dht, tg.cancel_scope)
        return found

    async def _join_at(self, places: list[Place], code: Code) -> Contact:
        problems = []
        for place in places:
            try:
                peer = await self.peer_at(*place) if isinstance(place, tuple) else place
                stream = await peer.open_stream(PAIR)
            except PeerkitError as exc:
                where = (
                    f"{place[0]}:{place[1]}"
                    if isinstance(place, tuple)
                    else f"the DHT's {place.id.fingerprint}"
                )
                problems.append(f"{where}: {exc}")
                continue
            async with stream:
                try:
                    return await _as_joiner(self, stream, code)
                except (ProtocolError, InvalidRecord) as exc:
                    raise PairingFailed(f"the pairing failed: {exc}") from None
        raise PairingFailed(f"the waiting side could not be reached ({'; '.join(problems)})")
