"""SecureChannel over in-memory stream pairs and over loopback TCP."""

from __future__ import annotations

import contextlib
import functools
import gc
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from conftest import channel_pair

from peerkit import (
    HandshakeError,
    Identity,
    PeerId,
    PeerInfo,
    PeerUnreachable,
    ProtocolError,
    SecureChannel,
    connect,
    listen,
)
from peerkit.net import channel, stamps
from peerkit.proto import crypto, messages
from peerkit.proto.admission import ReplayGuard, Ticket
from peerkit.proto.connection import Connection, StaticKeys
from peerkit.proto.framing import encode_frame
from peerkit.testing import memory_stream_pair

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("ik", [False, True])
async def test_memory_pair_both_patterns(alice: Identity, bob: Identity, ik: bool) -> None:
    a, b = await channel_pair(alice, bob, ik=ik)
    async with a, b:
        assert a.peer.id == bob.id
        assert a.peer.nickname == "bob"
        assert a.peer.endpoint_name == "desk"
        assert b.peer.id == alice.id
        assert b.peer.nickname == "alice"
        assert a.handshake_hash == b.handshake_hash
        assert a.protocol == b.protocol == ("Noise_IK" if ik else "Noise_XX") + "_25519_ChaChaPoly_BLAKE2b"
        await a.send({"t": "ping", "n": 1})
        assert await b.receive() == {"t": "ping", "n": 1}
        await b.send({"t": "pong", "n": 1})
        assert await a.receive() == {"t": "pong", "n": 1}


async def test_closing_gives_end_of_stream_to_the_peer(alice: Identity, bob: Identity) -> None:
    a, b = await channel_pair(alice, bob)
    await a.send({"t": "last"})
    await a.aclose()
    await a.aclose()  # twice is harmless
    assert [m async for m in b] == [{"t": "last"}]
    with pytest.raises(anyio.EndOfStream):
        await b.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await a.send({"t": "x"})
    await b.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await b.receive()


async def test_message_size_limit(alice: Identity, bob: Identity) -> None:
    a, b = await channel_pair(alice, bob)
    async with a, b:
        big = {"t": "d", "d": bytes(65519 - 13)}  # 13 bytes of CBOR around the data
        await a.send(big)
        assert await b.receive() == big
        with pytest.raises(ValueError, match="1 to 65519"):
            await a.send({"t": "d", "d": bytes(65519)})
        await a.send({"t": "still open"})
        assert await b.receive() == {"t": "still open"}


async def test_concurrent_senders_do_not_interleave(alice: Identity, bob: Identity) -> None:
    a, b = await channel_pair(alice, bob)
    async with a, b:

        async def sender(k: int) -> None:
            for i in range(20):
                await a.send({"t": "m", "k": k, "i": i, "pad": bytes(3000)})

        got: list[tuple[int, int]] = []
        async with anyio.create_task_group() as tg:
            for k in range(5):
                tg.start_soon(sender, k)
            for _ in range(100):
                m = await b.receive()
                got.append((m["k"], m["i"]))
        for k in range(5):
            assert [i for kk, i in got if kk == k] == list(range(20))


async def test_garbage_from_the_peer_is_a_protocol_error(alice: Identity, bob: Identity) -> None:
    a_stream, b_stream = memory_stream_pair()
    async with anyio.create_task_group() as tg:

        async def garbage() -> None:
            await b_stream.send(encode_frame(b"HTTP/1.1 200 OK"))

        tg.start_soon(garbage)
        with pytest.raises(HandshakeError):
            await SecureChannel.wrap(a_stream, alice, initiator=True)
    await b_stream.aclose()


async def test_a_silent_peer_times_out(alice: Identity) -> None:
    a_stream, b_stream = memory_stream_pair()
    with pytest.raises(HandshakeError, match=r"within 0\.2 s"):
        await SecureChannel.wrap(a_stream, alice, initiator=True, handshake_timeout=0.2)
    await b_stream.aclose()


async def test_a_peer_that_hangs_up_mid_handshake(alice: Identity, bob: Identity) -> None:
    a_stream, b_stream = memory_stream_pair()
    await b_stream.aclose()
    with pytest.raises((HandshakeError, PeerUnreachable)):
        await SecureChannel.wrap(a_stream, alice, initiator=True)


async def test_bad_hello_arguments(alice: Identity) -> None:
    a_stream, b_stream = memory_stream_pair()
    with pytest.raises(ValueError, match="nickname is 256 characters"):
        await SecureChannel.wrap(a_stream, alice, initiator=True, nickname="n" * 256)
    await a_stream.aclose()
    await b_stream.aclose()


# -- TCP --------------------------------------------------------------------------------------


async def test_connect_and_listen_name_wrong_values_before_any_socket(alice: Identity) -> None:
    # (listen(port=70000) once bound port 4464, and connect with a text identity dialled first)
    with pytest.raises(ValueError, match=r"port 70000 is outside 0\.\.65535"):
        await listen(alice, "127.0.0.1", 70000)
    with pytest.raises(TypeError, match="port must be int, not str"):
        await listen(alice, "127.0.0.1", "0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="identity must be an Identity, not str"):
        await listen("alice", "127.0.0.1", 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="identity must be an Identity, not str"):
        await connect("127.0.0.1", 9, "alice")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="peer_id must be a PeerId, not str"):
        await connect("127.0.0.1", 9, alice, peer_id="bob")  # type: ignore[arg-type]


def listening(bob: Identity) -> AbstractAsyncContextManager[tuple[str, int]]:
    return listening_on(bob, "127.0.0.1")


@asynccontextmanager
async def listening_on(bob: Identity, host: str) -> AsyncIterator[tuple[str, int]]:
    async def echo(channel: SecureChannel) -> None:
        async for message in channel:
            await channel.send({"t": "echo", "from": str(channel.peer.id), "m": message})

    async with await listen(bob, host, 0, nickname="bob") as listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, echo)
        yield listener.address
        tg.cancel_scope.cancel()


@pytest.mark.network
@pytest.mark.parametrize("know_bob", [False, True])
async def test_tcp_dial(alice: Identity, bob: Identity, know_bob: bool) -> None:
    async with (
        listening(bob) as (host, port),
        await connect(host, port, alice, peer_id=bob.id if know_bob else None, nickname="a") as ch,
    ):
        assert ch.peer.id == bob.id
        assert ch.peer.address == (host, port)
        assert "IK" in ch.protocol if know_bob else "XX" in ch.protocol
        await ch.send({"t": "hi"})
        reply = await ch.receive()
        assert reply == {"t": "echo", "from": str(alice.id), "m": {"t": "hi"}}


@pytest.mark.network
async def test_a_read_full_of_tiny_messages_is_decoded_a_few_at_a_time(
    alice: Identity, bob: Identity
) -> None:
    # 2,000 of the smallest messages arrive in one or two reads; the channel decodes at most
    # DECODE_AHEAD of them ahead of the application (the rest wait as bytes), and loses none.
    from peerkit.net.channel import DECODE_AHEAD

    got: list[SecureChannel] = []
    async with await listen(bob, "127.0.0.1", 0) as listener, anyio.create_task_group() as tg:

        async def keep(channel: SecureChannel) -> bool:
            got.append(channel)
            return True  # (taken over: the test reads it)

        await tg.start(listener.serve, keep)
        host, port = listener.address
        async with await connect(host, port, alice, peer_id=bob.id) as sender:
            for _ in range(2000):
                await sender.send({"t": ""})
            with anyio.fail_after(5):
                while not got:
                    await anyio.sleep(0.01)
            receiver = got[0]
            await anyio.sleep(0.2)  # (all of it read from the socket by now)
            assert await receiver.receive() == {"t": ""}
            assert len(receiver._pending or ()) < DECODE_AHEAD
            assert receiver._conn.frames_waiting
            for _ in range(1999):
                assert await receiver.receive() == {"t": ""}
            assert not receiver._conn.frames_waiting
            await receiver.aclose()
        tg.cancel_scope.cancel()


@pytest.mark.network
async def test_an_accepted_channel_lets_go_of_its_admission_once_open(alice: Identity, bob: Identity) -> None:
    # The listener's task lives as long as the channel: its admission ticket and the cancel scope
    # that could abort the handshake (0.6 KB a connection) must not live with it.
    async with listening(bob) as (host, port), await connect(host, port, alice) as ch:
        await ch.send({"t": "hi"})
        assert (await ch.receive())["t"] == "echo"  # open, and served
        gc.collect()
        assert not [o for o in gc.get_objects() if isinstance(o, Ticket)]


@pytest.mark.network
async def test_a_handler_that_returns_true_has_taken_the_channel_over(alice: Identity, bob: Identity) -> None:
    # (a node runs the control channels it accepts in tasks of its own: the listener's task, its
    # coroutines and its cancel scope end with the handshake)
    taken: list[SecureChannel] = []

    async def take_every_other(channel: SecureChannel) -> bool:
        taken.append(channel)
        return len(taken) == 1

    async with await listen(bob) as listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, take_every_other)
        host, port = listener.address
        with anyio.fail_after(5):
            async with await connect(host, port, alice) as kept, await connect(host, port, alice) as closed:
                with pytest.raises(anyio.EndOfStream):
                    await closed.receive()  # the second: closed when its handler returned
                assert not taken[0].closed  # the first: left open, and still carries messages
                await kept.send({"t": "hi"})
                assert await taken[0].receive() == {"t": "hi"}
                await taken[0].aclose()
        tg.cancel_scope.cancel()


@pytest.mark.network
async def test_tcp_dialling_the_wrong_peer_fails(alice: Identity, bob: Identity) -> None:
    someone_else = Identity.generate()
    async with listening(bob) as (host, port):
        with pytest.raises(HandshakeError, match="not the peer that was dialled"):
            await connect(host, port, alice, peer_id=someone_else.id)


@pytest.mark.network
async def test_the_listener_survives_garbage_and_goes_on(alice: Identity, bob: Identity) -> None:
    junks = (
        b"\x00\x00",
        b"GET / HTTP/1.1\r\n\r\n",
        encode_frame(b"peerkit/1 Noise_XX_25519_ChaChaPoly_BLAKE2b"),
    )
    async with listening(bob) as (host, port):
        for junk in junks:
            stream = await anyio.connect_tcp(host, port)
            await stream.send(junk)
            await stream.aclose()
        async with await connect(host, port, alice) as ch:
            await ch.send({"t": "still there?"})
            assert (await ch.receive())["t"] == "echo"


@pytest.mark.network
async def test_tcp_peer_unreachable(alice: Identity) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PeerUnreachable, match=f"could not connect to 127.0.0.1:{port}: connection refused$"):
        await connect("127.0.0.1", port, alice)  # (the same words on asyncio and on trio)


@pytest.mark.network
async def test_listen_on_a_busy_port(alice: Identity, bob: Identity) -> None:
    async with listening(bob) as (host, port):
        with pytest.raises(PeerUnreachable, match=f"cannot listen on 127.0.0.1:{port}"):
            await listen(alice, host, port)


@pytest.mark.network
async def test_transport_garbage_after_handshake_closes_with_protocol_error(
    alice: Identity, bob: Identity
) -> None:
    received: list[BaseException] = []
    serving, handled = anyio.Event(), anyio.Event()

    async def handler(channel: SecureChannel) -> None:
        serving.set()
        try:
            await channel.receive()
        except ProtocolError as exc:
            received.append(exc)
        finally:
            handled.set()

    async with await listen(bob) as listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, handler)
        ch = await connect(*listener.address, alice)
        await serving.wait()
        # Write a frame of random bytes under the channel: it cannot authenticate.
        await ch._stream.send(encode_frame(bytes(40)))
        with pytest.raises(anyio.EndOfStream):
            await ch.receive()
        await ch.aclose()
        with anyio.fail_after(5):  # the channel may close before its reader has seen the error
            await handled.wait()
        tg.cancel_scope.cancel()
    assert len(received) == 1
    assert "decryption failed" in str(received[0])


async def test_breaking_out_of_iteration_leaves_the_channel_usable(alice: Identity, bob: Identity) -> None:
    a, b = await channel_pair(alice, bob)
    async with a, b:
        for i in range(3):
            await a.send({"t": "n", "i": i})
        async for message in b:
            if message["i"] == 1:
                break
        assert await b.receive() == {"t": "n", "i": 2}


async def test_sending_after_the_peer_closed(alice: Identity, bob: Identity) -> None:
    a, b = await channel_pair(alice, bob)
    await b.aclose()
    with pytest.raises(anyio.EndOfStream):
        await a.receive()
    with pytest.raises(PeerUnreachable, match="the peer closed the channel"):
        await a.send({"t": "x"})
    await a.aclose()


async def test_a_cancelled_receive_loses_no_message(alice: Identity, bob: Identity) -> None:
    a, b = await channel_pair(alice, bob)
    async with a, b:
        with anyio.move_on_after(0.05):
            await b.receive()
        await a.send({"t": "after"})
        assert await b.receive() == {"t": "after"}


async def test_a_cancelled_handshake_closes_the_stream(alice: Identity) -> None:
    a_stream, b_stream = memory_stream_pair()
    with anyio.move_on_after(0.05):
        await SecureChannel.wrap(a_stream, alice, initiator=True)
    with pytest.raises(anyio.ClosedResourceError):
        await a_stream.send(b"x")
    await b_stream.aclose()


@pytest.mark.network
async def test_the_listener_bounds_pending_handshakes(alice: Identity, bob: Identity) -> None:
    async with await listen(bob, max_handshakes=1) as listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, lambda channel: anyio.lowlevel.checkpoint())
        host, port = listener.address
        silent = await anyio.connect_tcp(host, port)  # takes the only handshake slot
        await anyio.sleep(0.05)
        refused = await anyio.connect_tcp(host, port)
        with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await refused.receive()
        await refused.aclose()
        await silent.aclose()
        await anyio.sleep(0.05)
        async with await connect(host, port, alice, peer_id=bob.id) as channel:
            assert channel.peer.id == bob.id
        tg.cancel_scope.cancel()
    with pytest.raises(ValueError, match="max_handshakes must be at least 1"):
        await listen(bob, max_handshakes=0)


@pytest.mark.network
async def test_ipv6_loopback(alice: Identity, bob: Identity) -> None:
    async with listening_on(bob, "::1") as (host, port):
        assert host == "::1"
        async with await connect(host, port, alice, peer_id=bob.id) as channel:
            assert channel.peer.address == ("::1", port)
            await channel.send({"t": "v6"})
            assert (await channel.receive())["m"] == {"t": "v6"}


async def test_a_message_the_peer_would_refuse_is_refused_locally(alice: Identity, bob: Identity) -> None:
    a, b = await channel_pair(alice, bob)
    async with a, b:
        with pytest.raises(ValueError, match="does not fit in 64 bits"):
            await a.send({"t": "x", "n": 2**70})
        with pytest.raises(TypeError, match="type set"):
            await a.send({"t": "x", "s": {1}})
        await a.send({"t": "fine"})
        assert await b.receive() == {"t": "fine"}


async def test_a_send_cancelled_mid_write_closes_the_channel(alice: Identity, bob: Identity) -> None:
    a, b = await channel_pair(alice, bob)
    # The peer reads nothing: the memory stream's buffer fills and a send blocks.
    with anyio.move_on_after(0.2) as scope:
        for i in range(1000):
            await a.send({"t": "fill", "i": i})
    assert scope.cancelled_caught
    assert a.closed
    with pytest.raises(anyio.ClosedResourceError):
        await a.send({"t": "after"})
    await b.aclose()


@pytest.mark.network
async def test_a_silent_server_fails_the_dial_within_its_timeout(alice: Identity) -> None:
    # A TCP server that accepts and then says nothing: the handshake cannot finish.
    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep(10)

    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with tcp, anyio.create_task_group() as tg:
        tg.start_soon(tcp.serve, silent)
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)
        start = anyio.current_time()
        with pytest.raises(HandshakeError, match="did not complete"):
            await connect("127.0.0.1", port, alice, timeout=0.3)
        assert anyio.current_time() - start < 2
        with pytest.raises(ValueError, match="timeout must be positive"):
            await connect("127.0.0.1", port, alice, timeout=0)
        tg.cancel_scope.cancel()


@pytest.mark.network
@pytest.mark.parametrize("cipher", ["ChaChaPoly", "AESGCM"])
async def test_a_recorded_ik_message_1_sent_again_never_stands_for_its_sender(
    alice: Identity, bob: Identity, cipher: str
) -> None:
    # What an eavesdropper recorded: alice's preamble and IK message 1 to bob, hello stamped (with
    # either cipher a listener takes).
    hello = messages.Hello(id=alice.id.key, nick="alice", ts=time.time_ns())
    keys = StaticKeys(private=alice.x25519_private, public=alice.x25519_public)
    recorded = Connection.initiate(keys, hello, now=0.0, expected_id=bob.id.key, cipher=cipher).data_to_send()
    seen: list[PeerInfo] = []

    async def handler(channel: SecureChannel) -> None:
        seen.append(channel.peer)

    async with await listen(bob) as listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, handler)
        host, port = listener.address
        for _ in range(3):  # the original, then two replays
            async with await anyio.connect_tcp(host, port) as raw:
                await raw.send(recorded)
                with anyio.fail_after(5), contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        await raw.receive()  # message 2, then the responder closes
        assert [p.id for p in seen] == [alice.id]  # only the first stood for alice
        async with await connect(host, port, alice, peer_id=bob.id) as channel:  # alice herself
            assert channel.peer.id == bob.id
        with anyio.fail_after(5):
            while len(seen) < 2:
                await anyio.sleep(0.01)
        assert seen[1].id == alice.id
        tg.cancel_scope.cancel()


class SetBack:
    """A clock that reads an hour ahead until it is put right."""

    def __init__(self) -> None:
        self.ahead = 3600 * 10**9

    def time_ns(self) -> int:
        return time.time_ns() + self.ahead


@pytest.mark.network
async def test_a_dialler_whose_clock_was_set_back_is_not_taken_for_a_replay(
    alice: Identity, bob: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bob took alice's hello stamped an hour ahead; her clock is put right: her next dials were
    # refused as replays for an hour. Her stamps never go back (peerkit.net.stamps).
    clock = SetBack()
    monkeypatch.setattr(stamps, "time", clock)
    monkeypatch.setattr(stamps, "STAMPS", stamps.HelloStamps())
    monkeypatch.setattr(channel, "STAMPS", stamps.STAMPS)
    seen: list[PeerId] = []

    async def handler(channel: SecureChannel) -> None:
        seen.append(channel.peer.id)

    async with await listen(bob) as listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, handler)
        host, port = listener.address
        for ahead in (clock.ahead, 0, 0):
            clock.ahead = ahead
            async with await connect(host, port, alice, peer_id=bob.id) as dialled:
                assert dialled.peer.id == bob.id
        with anyio.fail_after(5):
            while len(seen) < 3:  # each stood for alice (a refused one would be closed unseen)
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert stamps.STAMPS.last > time.time_ns() + 3000 * 10**9  # (above the hour-ahead one)


def test_hello_stamps_only_go_up_and_start_above_a_saved_one(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SetBack()
    monkeypatch.setattr(stamps, "time", clock)
    given = stamps.HelloStamps()
    first = given.next()
    clock.ahead = 0
    assert given.next() == first + 1
    later = stamps.HelloStamps()
    later.at_least(first)
    assert later.next() == first + 1  # a node on the data dir of the run before
    later.at_least(2**64)  # (a saved value no stamp can be above: not believed)
    assert later.next() == first + 2


@pytest.mark.network
async def test_strangers_dialling_with_new_ids_never_open_the_way_for_a_contacts_recorded_handshake(
    alice: Identity, bob: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bob's listener remembers the stamps of one peer besides its contacts (4,096 by default):
    # carol, a stranger, dials once with an id of her own, and alice's recorded handshake must
    # still be refused.
    monkeypatch.setattr(channel, "ReplayGuard", functools.partial(ReplayGuard, max_peers=1))
    hello = messages.Hello(id=alice.id.key, nick="alice", ts=time.time_ns())
    keys = StaticKeys(private=alice.x25519_private, public=alice.x25519_public)
    recorded = Connection.initiate(keys, hello, now=0.0, expected_id=bob.id.key).data_to_send()
    seen: list[PeerId] = []

    async def handler(channel: SecureChannel) -> None:
        seen.append(channel.peer.id)

    async def send_recorded(host: str, port: int) -> None:
        async with await anyio.connect_tcp(host, port) as raw:
            await raw.send(recorded)
            with anyio.fail_after(5), contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await raw.receive()

    async with await listen(bob) as listener, anyio.create_task_group() as tg:
        listener.is_contact = {alice.id}.__contains__
        await tg.start(listener.serve, handler)
        host, port = listener.address
        await send_recorded(host, port)
        for _ in range(2):  # carol: a new id each time
            async with await connect(host, port, Identity.generate(), peer_id=bob.id):
                pass
        await send_recorded(host, port)
        with anyio.fail_after(5):
            while len(seen) < 3:
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        assert seen.count(alice.id) == 1  # the replay stood for nobody
        tg.cancel_scope.cancel()


@pytest.mark.network
async def test_a_silent_connection_gives_its_slot_back_after_the_preamble_timeout(
    alice: Identity, bob: Identity
) -> None:
    async with await listen(bob, handshake_timeout=30) as listener, anyio.create_task_group() as tg:
        listener.preamble_timeout = 0.3
        await tg.start(listener.serve, lambda channel: anyio.lowlevel.checkpoint())
        host, port = listener.address
        async with await anyio.connect_tcp(host, port) as silent:
            start = anyio.current_time()
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await silent.receive()
            assert anyio.current_time() - start < 2  # not the 30 s handshake timeout
        with anyio.fail_after(5):
            while listener.admission.pending:  # released just after the stream was closed
                await anyio.sleep(0.01)
        # A client that sends its preamble at once is not affected.
        async with await connect(host, port, alice, peer_id=bob.id) as channel:
            assert channel.peer.id == bob.id
        tg.cancel_scope.cancel()


async def test_the_channels_of_a_thread_decrypt_large_messages_into_one_buffer(
    alice: Identity, bob: Identity
) -> None:
    # Not a 64 KiB buffer kept by every connection that ever received a message over 4 KiB: a
    # peer's many channels, one large message each, would hold that much each.
    pairs = [await channel_pair(alice, bob) for _ in range(3)]
    buffers = set()
    for a, b in pairs:
        async with a, b:
            await a.send({"t": "d", "d": bytes(10_000)})
            assert (await b.receive())["d"] == bytes(10_000)
            buffers.add(id(b._conn._scratch))
            buffers.add(id(a._conn._scratch))
    assert buffers == {id(channel._SCRATCH.buffer)}

    def elsewhere() -> int:
        return id(channel._SCRATCH.buffer)

    assert await anyio.to_thread.run_sync(elsewhere) not in buffers  # (each thread its own)


def test_choose_cipher_takes_the_first_the_peer_asked_for_that_this_side_wants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def peer(*ciphers: str) -> PeerInfo:
        return PeerInfo(
            id=Identity.generate().id, nickname="", endpoint_name="", address=None, ciphers=ciphers
        )

    monkeypatch.setattr(crypto, "aes_is_fast", lambda: True)
    assert channel.wanted_ciphers() == ("AESGCM",)
    assert channel.choose_cipher(peer("AESGCM")) == "AESGCM"
    assert channel.choose_cipher(peer("Future", "AESGCM")) == "AESGCM"
    assert channel.choose_cipher(peer("Future")) == "ChaChaPoly"
    assert channel.choose_cipher(peer()) == "ChaChaPoly"  # (an implementation of the fixed protocol)
    monkeypatch.setattr(crypto, "aes_is_fast", lambda: False)
    assert channel.wanted_ciphers() == ()
    assert channel.choose_cipher(peer("AESGCM")) == "ChaChaPoly"


X86_CPUINFO = "processor\t: 0\nflags\t\t: fpu vme sse2 aes avx2 vaes\n\nprocessor\t: 1\nflags\t\t: fpu aes\n"
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"
OLD_CPUINFO = "processor\t: 0\nflags\t\t: fpu vme sse2 ssse3\nmodel name\t: aes-less box\n"


def test_aes_instructions_are_read_from_the_cpu_flags() -> None:
    assert crypto.aes_in_cpuinfo(X86_CPUINFO)
    assert crypto.aes_in_cpuinfo(ARM_CPUINFO)
    assert not crypto.aes_in_cpuinfo(OLD_CPUINFO)  # ("aes" in a model name is no flag)
    assert not crypto.aes_in_cpuinfo("")
    if sys.platform == "linux":  # this machine's own answer, as the kernel tells it
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = {word for line in f if line.startswith(("flags", "Features")) for word in line.split()}
        assert crypto.aes_is_fast() == ("aes" in flags)


async def test_connect_refuses_an_unknown_cipher_by_name(alice: Identity) -> None:
    with pytest.raises(ValueError, match="cipher must be one of ChaChaPoly, AESGCM, not 'ChaCha20'"):
        await connect("127.0.0.1", 9, alice, cipher="ChaCha20")
