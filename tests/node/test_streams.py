"""Application streams: encrypted byte streams between two instances of an application."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import types
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from conftest import IPV6, facing_mallory

from peerkit import (
    Application,
    AppStream,
    Identity,
    InvitationPolicy,
    Node,
    NotAllowed,
    ProtocolError,
    SecureChannel,
    Subscription,
)
from peerkit.node.connections import CIPHERS_REMEMBERED, Connections
from peerkit.proto import connection, crypto
from peerkit.streams import STREAM_CHUNK
from peerkit.testing import MemoryNetwork, node_pair, nodes

pytestmark = pytest.mark.anyio

CHAT = Application(id=uuid.UUID("6f1c2a4e-0000-4000-8000-0000000000aa"), description="chat")


@contextlib.asynccontextmanager
async def pair(where: str = "memory", **options: Any) -> AsyncIterator[tuple[Node, Node]]:
    """Alice and Bob with CHAT registered: in memory, or over real sockets at ``where``."""
    async with contextlib.AsyncExitStack() as stack:
        if where == "memory":
            network = MemoryNetwork(buffer=options.pop("buffer", 64))
            a, b = await stack.enter_async_context(node_pair(network=network, discovery=False, **options))
        else:
            a = await stack.enter_async_context(
                Node(nickname="alice", identity=Identity.generate(), listen=(where, 0), **options)
            )
            b = await stack.enter_async_context(
                Node(nickname="bob", identity=Identity.generate(), listen=(where, 0), **options)
            )
        await a.register_application(CHAT)
        await b.register_application(CHAT)
        yield a, b


async def echo(stream: AppStream) -> None:
    async for chunk in stream:
        await stream.send(chunk)
    await stream.send_eof()


PLACES = [
    "memory",
    "127.0.0.1",
    IPV6,
]


@pytest.mark.parametrize("where", PLACES)
async def test_echo_and_half_close(where: str) -> None:
    async with pair(where) as (alice, bob):
        bob.add_stream_handler(CHAT, echo)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with await peer.open_stream(CHAT) as stream:
            assert stream.peer.id == bob.id
            assert stream.application == CHAT
            await stream.send(b"hello")
            assert await stream.receive() == b"hello"
            await stream.send_eof()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(b"more")
            with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
                await stream.receive()
        # The stream had its own connection and Noise session.
        control = alice._connections.controls(bob.id)[0]
        assert stream.handshake_hash != control.channel.handshake_hash


@pytest.mark.parametrize(
    ("at_hello", "at_dial", "cipher"),
    [
        (True, True, "AESGCM"),
        (False, False, "ChaChaPoly"),
        (True, False, "ChaChaPoly"),
        (False, True, "ChaChaPoly"),
    ],
)
async def test_a_stream_runs_aesgcm_when_both_ends_have_aes_instructions(
    monkeypatch: pytest.MonkeyPatch, at_hello: bool, at_dial: bool, cipher: str
) -> None:
    # Whether "this CPU has AES instructions" when the control channel's hellos are made (bob's
    # asks for AESGCM or not), then when alice dials the stream (whether she wants it too).
    monkeypatch.setattr(crypto, "aes_is_fast", lambda: at_hello)
    payload = os.urandom(300_000)
    async with pair("127.0.0.1") as (alice, bob):
        seen: list[str] = []

        @bob.on_stream(CHAT)
        async def sink(stream: AppStream) -> None:
            seen.append(stream.protocol)
            got = bytearray()
            async for chunk in stream:
                got += chunk
            await stream.send(hashlib.sha256(got).digest())

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        control = alice._connections.controls(bob.id)[0]
        assert control.channel.peer.ciphers == (("AESGCM",) if at_hello else ())
        monkeypatch.setattr(crypto, "aes_is_fast", lambda: at_dial)
        async with await peer.open_stream(CHAT) as stream:
            await stream.send(payload)
            await stream.send_eof()
            with anyio.fail_after(10):
                assert await stream.receive() == hashlib.sha256(payload).digest()
        assert stream.protocol == f"Noise_IK_25519_{cipher}_BLAKE2b"
        assert seen == [stream.protocol]
        assert control.channel.cipher == "ChaChaPoly"  # (control channels: every peer's cipher)


@pytest.mark.parametrize("where", ["memory", "127.0.0.1"])
async def test_large_transfer_arrives_intact(where: str) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB
    async with pair(where) as (alice, bob):
        digests: list[str] = []

        @bob.on_stream(CHAT)
        async def sink(stream: AppStream) -> None:
            digest = hashlib.sha256()
            async for chunk in stream:
                digest.update(chunk)
            digests.append(digest.hexdigest())
            await stream.send(b"done")

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with await peer.open_stream(CHAT) as stream:
            await stream.send(payload[:100])
            await stream.send(payload[100:])
            await stream.send_eof()
            with anyio.fail_after(10):
                assert await stream.receive() == b"done"
        assert digests == [hashlib.sha256(payload).hexdigest()]


async def test_receive_respects_max_bytes_and_cancellation_loses_nothing() -> None:
    async with pair() as (alice, bob):
        ready = anyio.Event()
        go = anyio.Event()

        @bob.on_stream(CHAT)
        async def writer(stream: AppStream) -> None:
            ready.set()
            await go.wait()
            await stream.send(b"abcdef")
            await stream.receive()  # wait for the end

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with await peer.open_stream(CHAT) as stream:
            await ready.wait()
            with anyio.move_on_after(0.05):
                await stream.receive()  # cancelled while nothing came
            go.set()
            assert await stream.receive(2) == b"ab"
            # A bad max_bytes is refused before anything is read (-1 once returned all but the
            # last byte, and 2.5 left the stream unreadable).
            for bad, error in ((-1, ValueError), (0, ValueError), (2.5, TypeError), ("2", TypeError)):
                with pytest.raises(error, match="max_bytes"):
                    await stream.receive(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="not str"):
                await stream.send("text")  # type: ignore[arg-type]
            assert await stream.receive() == b"cdef"


async def test_a_strangers_streams_waiting_unread_never_keep_a_contacts_out() -> None:
    # bob's iterator holds 4 unread streams; strangers may fill 3 of the places.
    async with nodes(3, nicknames=["bob", "carol", "dave"], queue_size=4, discovery=False) as (
        bob,
        carol,
        dave,
    ):
        for node in (bob, carol, dave):
            await node.register_application(CHAT)
        await bob.contacts.add(dave.contacts.me)
        from_carol = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
        from_dave = await dave.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with bob.streams(CHAT) as incoming, contextlib.AsyncExitStack() as opened:
            streams = [await opened.enter_async_context(await from_carol.open_stream(CHAT)) for _ in range(4)]
            with anyio.fail_after(10), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await streams[3].receive()  # the fourth: closed at once, unread
            mine = await opened.enter_async_context(await from_dave.open_stream(CHAT))
            await mine.send(b"dave")
            taken = []
            with anyio.fail_after(10):
                for _ in range(4):
                    stream = await incoming.__anext__()
                    taken.append(stream.peer.id)
                    await stream.aclose()
            assert taken == [dave.id, carol.id, carol.id, carol.id]  # contacts' first


async def test_iterator_form_and_refusals() -> None:
    async with pair() as (alice, bob):
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        with pytest.raises(NotAllowed, match="declined"):
            await peer.open_stream(CHAT)  # registered, but nobody takes streams
        async with bob.streams(CHAT) as incoming:

            async def client() -> None:
                async with await peer.open_stream(CHAT) as stream:
                    await stream.send(b"ping")
                    assert await stream.receive() == b"pong"

            async with anyio.create_task_group() as tg:
                tg.start_soon(client)
                async for stream in incoming:
                    async with stream:
                        assert await stream.receive() == b"ping"
                        await stream.send(b"pong")
                        with pytest.raises(anyio.EndOfStream):
                            await stream.receive()
                    break
        bob.add_stream_handler(CHAT, echo)
        bob.invitation_policy = InvitationPolicy.NOBODY
        with pytest.raises(NotAllowed):
            await peer.open_stream(CHAT)
        bob.invitation_policy = InvitationPolicy.ANYONE
        await bob.unregister_application(CHAT)
        with pytest.raises(NotAllowed):
            await peer.open_stream(CHAT)
        await alice.unregister_application(CHAT)
        with pytest.raises(ValueError, match="not registered"):
            await peer.open_stream(CHAT)


async def test_backpressure_blocks_a_sender_whose_peer_does_not_read() -> None:
    async with pair(buffer=4) as (alice, bob):
        release = anyio.Event()
        received = bytearray()

        @bob.on_stream(CHAT)
        async def lazy(stream: AppStream) -> None:
            await release.wait()
            async for chunk in stream:
                received.extend(chunk)

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with await peer.open_stream(CHAT) as stream:
            sent = 0

            async def writer() -> None:
                nonlocal sent
                for _ in range(40):
                    await stream.send(bytes(60000))
                    sent += 60000
                await stream.send(b"tail")
                await stream.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                await anyio.sleep(0.3)
                assert sent < 60000 * 20  # the writer is held back while nobody reads
                release.set()
            with anyio.fail_after(5):
                while len(received) < sent + 4:
                    await anyio.sleep(0.01)
        assert len(received) == 60000 * 40 + 4
        assert bytes(received[-4:]) == b"tail"


async def test_cut_without_end_of_data_is_broken_not_eof() -> None:
    # A peer whose connection ends without the authenticated end-of-data mark: truncation.
    async def script(channel: SecureChannel, raw: Any) -> None:
        request = await channel.receive()
        await channel.send({"t": "stream_reply", "rid": request["rid"], "r": "accepted"})
        await channel.send({"t": "data", "d": b"partial"})

    async with facing_mallory(CHAT, script) as (_, mallory), await mallory.open_stream(CHAT) as stream:
        assert await stream.receive() == b"partial"
        with anyio.fail_after(2), pytest.raises(anyio.BrokenResourceError):
            await stream.receive()


async def test_stream_connection_must_start_with_a_stream_request() -> None:
    async with pair() as (alice, bob):
        bob.add_stream_handler(CHAT, echo)
        raw = await alice._network.connect(bob.endpoint.host, bob.endpoint.port, local_host="10.0.0.1")
        channel = await SecureChannel.wrap(
            raw, alice.identity, initiator=True, expected_peer=bob.id, use="stream"
        )
        async with channel:
            await channel.send({"t": "data", "d": b"x"})
            with anyio.fail_after(2):
                reply = await channel.receive()
            assert reply["t"] == "error"
            assert reply["code"] == "malformed"


async def test_stream_request_answered_with_garbage() -> None:
    async def script(channel: SecureChannel, raw: Any) -> None:
        await channel.receive()
        await channel.send({"t": "stream_reply", "rid": 1, "r": "perhaps"})

    async with facing_mallory(CHAT, script) as (_, mallory):
        with pytest.raises(ProtocolError, match="perhaps"):
            await mallory.open_stream(CHAT)


async def test_streams_still_open_when_the_node_exits_are_closed() -> None:
    async with pair() as (alice, bob):
        bob.add_stream_handler(CHAT, echo)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        stream = await peer.open_stream(CHAT)  # never closed by its user
        await stream.send(b"x")
    with pytest.raises(anyio.ClosedResourceError):
        await stream.send(b"y")


async def test_an_iterator_left_open_ends_with_the_node() -> None:
    received: list[AppStream] = []
    ended = anyio.Event()

    async def consume(streams: Subscription[AppStream]) -> None:
        async for stream in streams:  # no async with: the node's exit ends it
            received.append(stream)
        ended.set()

    async with anyio.create_task_group() as tg:
        async with pair() as (_, bob):
            tg.start_soon(consume, bob.streams(CHAT))
            await anyio.lowlevel.checkpoint()
        with anyio.fail_after(2):
            await ended.wait()
    assert received == []


async def test_streams_to_a_peer_without_a_control_channel_run_the_cipher_it_asked_for_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No control channel tells alice bob's ciphers: her first stream to him runs ChaChaPoly, and
    # its hello teaches her (and his teaches him) that AESGCM suits them; the next runs AESGCM.
    monkeypatch.setattr(crypto, "aes_is_fast", lambda: True)
    async with pair("127.0.0.1") as (alice, bob):
        seen: list[str] = []

        @bob.on_stream(CHAT)
        async def sink(stream: AppStream) -> None:
            seen.append(stream.protocol)
            async for chunk in stream:
                await stream.send(chunk)

        peer = alice.peer(bob.id, bob.endpoint)

        async def one_stream() -> str:
            async with await peer.open_stream(CHAT) as stream:
                await stream.send(b"ping")
                with anyio.fail_after(10):
                    assert await stream.receive() == b"ping"
                return stream.protocol

        assert await one_stream() == "Noise_IK_25519_ChaChaPoly_BLAKE2b"
        assert alice._connections.controls(bob.id) == []
        assert await one_stream() == "Noise_IK_25519_AESGCM_BLAKE2b"
        assert bob._connections.cipher_for(alice.id, "stream") == "AESGCM"
        assert seen == ["Noise_IK_25519_ChaChaPoly_BLAKE2b", "Noise_IK_25519_AESGCM_BLAKE2b"]

        # Bob no longer takes AESGCM (another program with his identity): alice's remembered
        # cipher fails its handshake, and the stream is opened again with ChaChaPoly.
        monkeypatch.setattr(
            connection, "_SUPPORTED", {k: v for k, v in connection._SUPPORTED.items() if "AESGCM" not in v}
        )
        monkeypatch.setattr(crypto, "aes_is_fast", lambda: False)  # (his hellos ask for nothing)
        assert await one_stream() == "Noise_IK_25519_ChaChaPoly_BLAKE2b"
        assert alice._connections.cipher_for(bob.id, "stream") == "ChaChaPoly"


def test_the_ciphers_a_node_remembers_are_bounded() -> None:
    connections = Connections.__new__(Connections)
    connections._ciphers, connections._controls = collections.OrderedDict(), {}  # (only these parts)
    peer_ids = [Identity.generate().id for _ in range(CIPHERS_REMEMBERED + 5)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(crypto, "aes_is_fast", lambda: True)
        for peer_id in peer_ids:
            connections._heard(types.SimpleNamespace(id=peer_id, ciphers=("AESGCM",)))
        assert len(connections._ciphers) == CIPHERS_REMEMBERED
        assert connections.cipher_for(peer_ids[0], "stream") == "ChaChaPoly"  # the oldest went
        assert connections.cipher_for(peer_ids[-1], "stream") == "AESGCM"
        assert connections.cipher_for(peer_ids[-1], "control") == "ChaChaPoly"
        # A hello that asks for nothing any more is remembered as such.
        connections._heard(types.SimpleNamespace(id=peer_ids[-1], ciphers=()))
        assert connections.cipher_for(peer_ids[-1], "stream") == "ChaChaPoly"


async def test_a_send_leaves_in_one_write_per_four_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 64 KiB send is a full message and a small one: both in one write (the small one alone
    # would be a TCP segment of its own); a larger send, one write for each four messages.
    async with pair() as (alice, bob):
        bob.add_stream_handler(CHAT, echo)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with await peer.open_stream(CHAT) as stream:
            writes: list[int] = []
            inner = stream._channel._stream
            original = inner.send

            async def counting(item: bytes) -> None:
                writes.append(len(item))
                await original(item)

            monkeypatch.setattr(inner, "send", counting)
            payload = os.urandom(65536 + 5 * STREAM_CHUNK)
            await stream.send(payload[:65536])
            assert len(writes) == 1
            await stream.send(payload[65536:])
            assert len(writes) == 3
            got = bytearray()
            with anyio.fail_after(10):
                while len(got) < len(payload):
                    got += await stream.receive()
            assert got == payload
