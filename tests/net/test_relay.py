"""Relays at the channel layer: a circuit over loopback TCP, the relay's limits and refusals, and
the relay messages fuzzed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit import Identity, PeerUnreachable, ProtocolError, SecureChannel
from peerkit.net.channel import ChannelListener, dial
from peerkit.net.relay import RelayService, take_circuit
from peerkit.net.transport import TcpTransport
from peerkit.proto import relay as wire
from peerkit.proto.framing import encode_frame
from peerkit.proto.relay import RelayBook, RelayPolicy, RelayRefused

pytestmark = pytest.mark.anyio

SECRET = b"the launch code is 0000-hunter2"


class Tap(anyio.abc.ByteStream):
    """A stream that keeps a copy of every byte through it (what the relay sees)."""

    def __init__(self, stream: anyio.abc.ByteStream, seen: bytearray) -> None:
        self._stream, self._seen = stream, seen

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._stream.receive(max_bytes)
        self._seen += data
        return data

    async def send(self, item: bytes) -> None:
        self._seen += item
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


@dataclass
class Setup:
    relay: tuple[str, int]
    service: RelayService
    target: Identity
    seen: bytearray
    echoed: list[dict[str, object]] = field(default_factory=list)
    tg: anyio.abc.TaskGroup | None = None

    def reserve(self, identity: Identity | None = None) -> int:
        """Reserve for ``identity`` (the target): its circuits are taken and echo what they get."""
        return self.service.reserve((identity or self.target).id.key, self._announce)

    async def _announce(self, token: bytes) -> None:
        stream = await take_circuit(TcpTransport(), *self.relay, token)
        assert self.tg is not None
        self.tg.start_soon(self._target_listener.take, stream)

    _target_listener: ChannelListener = field(init=False)


@asynccontextmanager
async def relay_setup(
    bob: Identity,
    policy: RelayPolicy | None = None,
    allowed: Callable[[bytes], bool] = lambda _: True,
    source: Callable[[str], str] = lambda seen: seen,
) -> AsyncIterator[Setup]:
    relay_id = Identity.generate()
    seen = bytearray()
    service = RelayService(policy, allowed=allowed)
    transport = TcpTransport()
    listener = ChannelListener(await transport.listen("127.0.0.1", 0), relay_id)
    listener.relay = lambda stream, rest, seen_from: service.serve(Tap(stream, seen), rest, source(seen_from))
    # The target's own listener is never dialled: it only takes the circuits the relay announces.
    target_listener = ChannelListener(await transport.listen("127.0.0.1", 0), bob, nickname="bob")
    setup = Setup(listener.address, service, bob, seen)
    setup._target_listener = target_listener

    async def echo(channel: SecureChannel) -> None:
        async for message in channel:
            setup.echoed.append(message)
            await channel.send(message)

    async with listener, target_listener, anyio.create_task_group() as tg:
        setup.tg = tg
        await tg.start(listener.serve, lambda channel: anyio.lowlevel.checkpoint())
        await tg.start(target_listener.serve, echo)
        yield setup
        tg.cancel_scope.cancel()


async def relayed(setup: Setup, alice: Identity) -> SecureChannel:
    return await dial(TcpTransport(), *setup.relay, alice, peer_id=setup.target.id, relayed=True, timeout=5)


async def test_a_circuit_carries_an_end_to_end_channel_the_relay_cannot_read(
    alice: Identity, bob: Identity
) -> None:
    async with relay_setup(bob) as setup:
        assert setup.reserve() == wire.RESERVATION_TTL
        async with await relayed(setup, alice) as channel:
            assert channel.peer.id == bob.id
            assert channel.peer.nickname == "bob"
            assert channel.peer.address is None  # through a relay: the peer's address is unknown
            for n in range(20):
                await channel.send({"t": "chat", "n": n, "text": SECRET})
                assert await channel.receive() == {"t": "chat", "n": n, "text": SECRET}
            big = os.urandom(60_000)
            await channel.send({"t": "blob", "b": big})
            assert (await channel.receive())["b"] == big
        assert setup.service.stats.circuits == 1
        assert setup.service.stats.carried > 60_000 + 20 * len(SECRET)
        assert len(setup.seen) > 60_000
        assert SECRET not in setup.seen
        assert big[:64] not in setup.seen
        with anyio.fail_after(5):
            while setup.service.book.circuits:  # the circuit is forgotten once both ends closed
                await anyio.sleep(0.01)


async def test_no_reservation_is_a_clear_unreachable(alice: Identity, bob: Identity) -> None:
    async with relay_setup(bob) as setup:
        with pytest.raises(PeerUnreachable, match="refused the circuit: the peer holds no reservation"):
            await relayed(setup, alice)
        setup.reserve()
        setup.service.release(bob.id.key)
        with pytest.raises(PeerUnreachable, match="no reservation"):
            await relayed(setup, alice)
        assert setup.service.stats.refused == 2


async def test_a_stranger_cannot_reserve_on_a_closed_relay(bob: Identity) -> None:
    async with relay_setup(bob, allowed=lambda key: False) as setup:
        with pytest.raises(RelayRefused, match="contacts only") as caught:
            setup.reserve()
        assert caught.value.code == "not-allowed"
    async with relay_setup(bob, RelayPolicy(open=True), allowed=lambda key: False) as setup:
        assert setup.reserve() == wire.RESERVATION_TTL


async def test_circuits_per_source_are_capped_and_freed(alice: Identity, bob: Identity) -> None:
    async with relay_setup(bob, RelayPolicy(max_circuits_per_source=2)) as setup:
        setup.reserve()
        first, second = await relayed(setup, alice), await relayed(setup, alice)
        with pytest.raises(PeerUnreachable, match="this source has its limit of 2 circuits"):
            await relayed(setup, alice)
        await first.aclose()
        with anyio.fail_after(5):
            while setup.service.book.circuits > 1:
                await anyio.sleep(0.01)
        async with await relayed(setup, alice) as third:
            await third.send({"t": "x"})
            assert await third.receive() == {"t": "x"}
        await second.aclose()


async def test_a_circuit_closes_at_its_byte_limit(alice: Identity, bob: Identity) -> None:
    async with relay_setup(bob, RelayPolicy(max_bytes=20_000)) as setup:
        setup.reserve()
        async with await relayed(setup, alice) as channel:
            with pytest.raises((PeerUnreachable, anyio.EndOfStream)):  # noqa: PT012
                with anyio.fail_after(5):
                    for _ in range(10):
                        await channel.send({"t": "blob", "b": bytes(4000)})
                        await channel.receive()
        assert setup.service.stats.carried < 20_000 + 2 * 65536


async def test_an_unannounced_token_and_garbage_are_dropped(alice: Identity, bob: Identity) -> None:
    async with relay_setup(bob) as setup:
        transport = TcpTransport()
        for payload in (
            wire.encode_accept(os.urandom(wire.TOKEN_SIZE)),
            encode_frame(wire.PREAMBLE) + encode_frame(b"\xa1at\x63xyz"),  # unknown request
            encode_frame(wire.PREAMBLE) + b"\xff\xff" + bytes(100),  # a frame over the limit
        ):
            stream = await transport.connect(*setup.relay, local_host="")
            await stream.send(payload)
            with anyio.fail_after(5):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):  # noqa: PT012
                    while True:
                        assert await stream.receive() == b""  # nothing is answered
            await stream.aclose()
        assert setup.service.stats.refused == 3


def test_book_limits_and_expiry() -> None:
    book = RelayBook(RelayPolicy(max_reservations=1, max_circuits=2, max_circuits_per_peer=1))
    a, b = b"a" * 32, b"b" * 32
    book.reserve(a, "to-a", 0.0, allowed=True)
    with pytest.raises(RelayRefused, match="limit of 1 reservations"):
        book.reserve(b, "to-b", 0.0, allowed=True)
    opened = book.open(a, "10.0.0.1", 1.0)
    circuit = opened.circuit
    assert opened.handle == "to-a"
    assert opened.evicted == ()
    with pytest.raises(RelayRefused, match="the peer has its limit of 1 circuits"):
        book.open(a, "10.0.0.2", 1.0)
    assert book.accept(circuit.token) is circuit
    assert book.accept(circuit.token) is None  # a token is taken once
    assert book.carry(circuit, 100, 2.0) > 0
    assert book.carry(circuit, 100, 1.0 + RelayPolicy().max_duration) < 0  # out of time
    book.close(circuit)
    book.close(circuit)  # twice is harmless
    assert book.circuits == 0
    book.open(a, "10.0.0.2", 2.0)  # room again
    book.expire(wire.RESERVATION_TTL + 1.0)
    assert book.reservations == 0
    with pytest.raises(RelayRefused, match="no reservation"):
        book.open(a, "10.0.0.2", wire.RESERVATION_TTL + 1.0)


def test_the_slash_64s_of_one_slash_48_share_one_sources_circuits() -> None:
    book = RelayBook(RelayPolicy(max_circuits_per_source=2))
    a = b"a" * 32
    book.reserve(a, "to-a", 0.0, allowed=True)
    first = book.open(a, "2001:db8:1:1::/64", 0.0).circuit
    book.open(a, "2001:db8:1:2::/64", 0.0)
    with pytest.raises(RelayRefused, match="this source has its limit of 2 circuits"):
        book.open(a, "2001:db8:1:3::/64", 0.0)  # another /64, the same /48
    book.open(a, "2001:db8:2::/64", 0.0)  # another /48
    book.open(a, "192.0.2.1", 0.0)
    book.close(first)
    book.open(a, "2001:db8:1:3::/64", 0.0)  # freed


def test_an_open_relays_reservations_are_shared_by_source_group_and_contacts_come_first() -> None:
    book = RelayBook(RelayPolicy(open=True, max_reservations=4))
    busy = [bytes([n]) * 32 for n in range(4)]
    for n, peer in enumerate(busy):
        book.reserve(peer, f"to-{n}", float(n), allowed=False, source="10.6.6.6")
    assert book.reserve(busy[0], "again", 4.0, allowed=False, source="10.6.6.6") == wire.RESERVATION_TTL
    assert book.take_displaced() == []
    newcomer = b"n" * 32
    book.reserve(newcomer, "to-n", 5.0, allowed=False, source="2001:db8:1:2::/64")
    assert book.take_displaced() == ["again"]  # (its holder is to be told, by its latest handle)
    assert book.take_displaced() == []
    with pytest.raises(RelayRefused, match="no reservation"):
        book.open(busy[0], "10.0.0.1", 5.0)  # the oldest (renewed or not) gave its place
    book.open(busy[1], "10.0.0.1", 5.0)
    book.reserve(b"m" * 32, "to-m", 6.0, allowed=False, source="2001:db8:1:3::/64")  # the same /48
    assert book.take_displaced() == ["to-1"]
    with pytest.raises(RelayRefused, match="limit of 4 reservations"):
        book.reserve(b"o" * 32, "to-o", 6.0, allowed=False, source="2001:db8:1:4::/64")
    friend = b"f" * 32
    book.reserve(friend, "to-f", 7.0, allowed=True)  # a contact takes a stranger's place
    assert book.reservations == 4
    assert book.take_displaced() == ["to-2"]
    book.open(friend, "10.0.0.1", 7.0)
    book.release(friend)
    book.reserve(b"o" * 32, "to-o", 8.0, allowed=False, source="10.0.0.9")  # room again
    assert book.reservations == 4
    book.expire(8.0 + wire.RESERVATION_TTL)
    assert book.reservations == 0
    for n in range(4):  # every place given back
        book.reserve(bytes([n + 10]) * 32, "x", 9.0 + wire.RESERVATION_TTL, allowed=False, source="10.6.6.6")


def test_a_full_relay_of_contacts_refuses_a_contact() -> None:
    book = RelayBook(RelayPolicy(max_reservations=1))
    book.reserve(b"a" * 32, "to-a", 0.0, allowed=True)
    with pytest.raises(RelayRefused, match="limit of 1 reservations"):
        book.reserve(b"b" * 32, "to-b", 0.0, allowed=True)


def test_a_source_from_a_group_holding_fewer_takes_the_busiest_groups_oldest_circuit() -> None:
    book = RelayBook(RelayPolicy(max_circuits=4, max_circuits_per_source=4))
    a, b = b"a" * 32, b"b" * 32
    book.reserve(a, "to-a", 0.0, allowed=True)
    book.reserve(b, "to-b", 0.0, allowed=True)
    busy = [book.open(a, "10.6.6.6", float(n)).circuit for n in range(3)]
    book.open(b, "10.0.0.1", 3.0)
    opened = book.open(b, "10.0.0.2", 4.0)  # every circuit taken: 10.6.6.6 holds 3, this source 0
    assert opened.evicted == (busy[0],)
    assert book.circuits == 4
    assert book.open(b, "10.0.0.3", 5.0).evicted == (busy[1],)  # 10.6.6.6 held 2: one over
    with pytest.raises(RelayRefused, match="this relay carries its limit of 4 circuits"):
        book.open(b, "10.0.0.4", 5.0)  # every source holds one
    book.close(busy[0])  # closed by its owner after its eviction: nothing more is forgotten
    assert book.circuits == 4
    book.close(busy[2])
    book.open(a, "10.0.0.4", 6.0)  # room again
    assert book.circuits == 4


def test_a_peers_circuits_are_shared_by_source_group_too() -> None:
    # Two addresses could take all 16 circuits to one reserved node; a third takes one of theirs.
    book = RelayBook(RelayPolicy(max_circuits_per_peer=4))
    a, b = b"a" * 32, b"b" * 32
    book.reserve(a, "to-a", 0.0, allowed=True)
    book.reserve(b, "to-b", 0.0, allowed=True)
    busy = [book.open(a, "10.6.6.6", float(n)).circuit for n in range(4)]
    with pytest.raises(RelayRefused, match="the peer has its limit of 4 circuits"):
        book.open(a, "10.6.6.6", 5.0)
    book.open(b, "10.6.6.6", 5.0)  # another peer's circuits are its own
    assert book.open(a, "10.0.0.1", 6.0).evicted == (busy[0],)
    assert book.circuits == 5
    book.close(busy[0])  # (closed by its owner after the eviction)
    assert book.open(a, "10.0.0.2", 7.0).evicted == (busy[1],)
    assert book.open(a, "10.0.0.3", 8.0).evicted == (busy[2],)  # 10.6.6.6 held 2 of a's
    with pytest.raises(RelayRefused, match="the peer has its limit of 4 circuits"):
        book.open(a, "10.0.0.4", 9.0)  # every source holds one of a's


@given(steps=st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.integers(0, 4)), max_size=60))
def test_the_book_keeps_every_cap_whatever_opens_and_closes(steps: list[tuple[bool, int, int]]) -> None:
    policy = RelayPolicy(max_circuits=6, max_circuits_per_peer=4, max_circuits_per_source=3)
    book = RelayBook(policy)
    targets = [bytes([t]) * 32 for t in range(3)]
    for target in targets:
        book.reserve(target, target, 0.0, allowed=True)
    open_now: list[wire.Circuit] = []
    for n, (opening, t, g) in enumerate(steps):
        if opening:
            with suppress(RelayRefused):
                opened = book.open(targets[t], f"10.0.0.{g}", float(n))
                for gone in opened.evicted:
                    open_now.remove(gone)
                open_now.append(opened.circuit)
        elif open_now:
            book.close(open_now.pop(t % len(open_now)))
        assert book.circuits == len(open_now) <= policy.max_circuits
        for target in targets:
            assert sum(c.target == target for c in open_now) <= policy.max_circuits_per_peer
        for other in range(5):
            assert sum(c.source == f"10.0.0.{other}" for c in open_now) <= policy.max_circuits_per_source
    for circuit in list(open_now):
        book.close(circuit)
    assert book.circuits == 0
    book.open(targets[0], "10.0.0.9", 99.0)  # every place given back


async def test_a_relay_full_of_one_sources_circuits_closes_its_oldest_for_another_source(
    alice: Identity, bob: Identity
) -> None:
    # Two circuits in all: 192.0.2.6 takes both, then 192.0.2.7 takes the oldest's place.
    dialling = ["192.0.2.6"]
    policy = RelayPolicy(max_circuits=2, max_circuits_per_source=2)
    async with relay_setup(bob, policy, source=lambda seen: dialling[0]) as setup:
        setup.reserve()
        first = await relayed(setup, alice)
        second = await relayed(setup, alice)
        dialling[0] = "192.0.2.7"
        async with first, second, await relayed(setup, alice) as third:
            for channel in (second, third):
                await channel.send({"t": "hi"})
                assert await channel.receive() == {"t": "hi"}
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await first.receive()  # its circuit was closed
            assert setup.service.book.circuits == 2


@pytest.mark.parametrize("field_name", ["max_reservations", "max_circuits", "max_bytes"])
def test_policy_refuses_nonsense(field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        RelayPolicy(**{field_name: 0})  # type: ignore[arg-type]


def test_messages_round_trip() -> None:
    to, token = os.urandom(32), os.urandom(wire.TOKEN_SIZE)
    connect = wire.encode_connect(to)
    assert connect.startswith(encode_frame(wire.PREAMBLE))
    assert wire.decode_request(connect[len(encode_frame(wire.PREAMBLE)) + 2 :]) == wire.Connect(to)
    accept = wire.encode_accept(token)
    assert wire.decode_request(accept[len(encode_frame(wire.PREAMBLE)) + 2 :]) == wire.Accept(token)
    wire.decode_reply(wire.encode_ok()[2:])
    with pytest.raises(RelayRefused, match="full") as caught:
        wire.decode_reply(wire.encode_error("limit", "full")[2:])
    assert caught.value.code == "limit"


@given(st.binary(max_size=200))
def test_relay_decoders_take_any_bytes(data: bytes) -> None:
    for decode in (wire.decode_request, wire.decode_reply):
        with suppress(ProtocolError, RelayRefused):
            decode(data)
