"""peerkit.net.tcp directly: TCP streams on asyncio protocols, the listener, and the transport's
error mapping (``unreachable``). These streams are the asyncio fast path; trio uses anyio's own."""

from __future__ import annotations

import asyncio
import errno
import gc
import itertools
import socket
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute
from conftest import bulk_read_sizes, stuck

from peerkit import Identity, PeerUnreachable
from peerkit.net import tcp
from peerkit.net.channel import SecureChannel
from peerkit.net.fds import FdBudget
from peerkit.net.tcp import TcpListener, TcpStream, connect_tcp
from peerkit.net.transport import TcpTransport, unreachable

pytestmark = [pytest.mark.anyio, pytest.mark.network]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[TcpStream, TcpStream]]:
    """A client stream and the server's stream of the same connection, on loopback."""
    listener = await TcpListener.bind("127.0.0.1", 0)
    port = listener.extra_attributes[SocketAttribute.local_address]()[1]
    accepted: anyio.abc.ObjectSendStream[TcpStream]
    accepted, taken = anyio.create_memory_object_stream[TcpStream](1)
    async with anyio.create_task_group() as tg, accepted, taken:
        tg.start_soon(listener.serve, accepted.send)
        client = await connect_tcp("127.0.0.1", port)
        with anyio.fail_after(5):
            server = await taken.receive()
        try:
            yield client, server
        finally:
            await client.aclose()
            await server.aclose()
            await listener.aclose()
            tg.cancel_scope.cancel()


async def drain_to_the_end(stream: TcpStream) -> None:
    try:
        while True:
            await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return


async def write_until_broken(stream: TcpStream) -> None:
    for _ in range(100):
        await stream.send(b"into the void")
        await anyio.sleep(0.01)


async def read_all(stream: TcpStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive()
    return data


async def test_bytes_go_both_ways_with_addresses() -> None:
    async with connected() as (client, server):
        await client.send(b"hello")
        assert await server.receive() == b"hello"
        server.send_nowait(b"back")
        assert await client.receive() == b"back"
        local = client.extra_attributes[SocketAttribute.local_address]()
        assert server.extra_attributes[SocketAttribute.remote_address]() == local
        assert client.extra_attributes[SocketAttribute.family]() == socket.AF_INET


async def test_receive_takes_at_most_max_bytes_and_keeps_the_rest() -> None:
    async with connected() as (client, server):
        await client.send(b"abcdef")
        with anyio.fail_after(5):
            while server._buffered < 6:  # wait for both to arrive in one chunk or more
                await anyio.sleep(0.01)
        assert await server.receive(4) == b"abcd"
        assert await server.receive(4) == b"ef"


async def test_small_reads_allocate_what_they_read_only() -> None:
    # Every connection receives into one buffer and keeps a copy of what it read: a read of a
    # ping does not allocate the most a read may take (asyncio's plain protocols allocate 256 KiB
    # for each read, then shrink it).
    async with connected() as (client, server):
        await client.send(b"warm")
        assert await server.receive() == b"warm"
        tracemalloc.start()
        try:
            for i in range(50):
                await client.send(b"ping %d" % i)
                assert await server.receive() == b"ping %d" % i
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < tcp.READ_SIZE // 4


async def test_no_read_makes_an_object_of_128_kib_or_more() -> None:
    # glibc's malloc may give a block of 128 KiB or more back to the system at every free and
    # fault it in again at the next read: bulk receiving ran at half speed in some processes.
    async with connected() as (client, server):
        assert max(await bulk_read_sizes(client, server)) == tcp.READ_SIZE < 128 * 1024


class _Transport(asyncio.Transport):
    # What a TcpStream asks of its transport while receiving.
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False


def test_one_read_takes_up_to_what_a_connection_may_hold_in_objects_under_128_kib() -> None:
    # A reader that keeps up takes what a fast sender sent in few reads (each read a turn of the
    # event loop); what it reads is copied out in objects of at most READ_SIZE, and a read never
    # takes more than MAX_UNREAD less what waits unread.
    protocol = tcp._Protocol()
    transport = _Transport()
    protocol.connection_made(transport)
    stream = protocol.stream
    assert stream is not None
    landing = protocol.get_buffer(-1)
    assert len(landing) == tcp.MAX_UNREAD > 4 * tcp.READ_SIZE
    data = bytes(itertools.islice(itertools.cycle(range(251)), 500_000))
    landing[: len(data)] = data
    protocol.buffer_updated(len(data))
    assert transport.paused  # (over READ_HIGH)
    assert protocol.get_buffer(-1).nbytes == tcp.MAX_UNREAD - len(data)
    pieces = []
    while (piece := stream.receive_waiting(1 << 30)) is not None:
        pieces.append(piece)
    assert b"".join(pieces) == data
    assert max(map(len, pieces)) == tcp.READ_SIZE < 128 * 1024
    assert not transport.paused


async def test_interleaved_reads_of_many_connections_keep_their_own_bytes() -> None:
    async with connected() as (a1, b1), connected() as (a2, b2):
        for i in range(20):
            await a1.send(b"one %d;" % i)
            await a2.send(b"two %d;" % i)
        sizes = len(b"".join(b"one %d;" % i for i in range(20)))
        with anyio.fail_after(5):
            assert await read_all(b1, sizes) == b"".join(b"one %d;" % i for i in range(20))
            assert await read_all(b2, sizes) == b"".join(b"two %d;" % i for i in range(20))


async def test_a_reader_that_does_not_read_slows_the_writer_and_loses_nothing() -> None:
    # Ten megabytes: far over the socket buffers and the stream's own read limit, so the
    # receiving side pauses reading and the sender's send() waits (backpressure).
    payload = bytes(range(256)) * 40960
    async with connected() as (client, server):
        sent = anyio.Event()

        async def send() -> None:
            await client.send(payload)
            await client.send_eof()
            sent.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await anyio.sleep(0.2)
            assert server._reading_paused  # more than READ_HIGH waited unread
            assert server._buffered <= tcp.MAX_UNREAD
            with anyio.fail_after(20):
                received = await read_all(server, len(payload))
        assert received == payload
        assert sent.is_set()
        with pytest.raises(anyio.EndOfStream):
            await server.receive()


async def test_a_trickle_of_tiny_segments_to_a_reader_that_does_not_read_makes_few_objects() -> None:
    # Two bytes a segment, each read on its own while nothing reads the stream: the reads wait
    # joined (a few chunks, not thousands of objects of about 50 bytes each), in order.
    pieces = [b"%02d" % (i % 100) for i in range(3000)]
    async with connected() as (client, server):
        for piece in pieces:
            await client.send(piece)
            await anyio.lowlevel.checkpoint()  # (the server's loop reads it as a segment of its own)
        with anyio.fail_after(5):
            while server._buffered < 6000:
                await anyio.sleep(0.01)
        assert server._chunks is not None
        assert len(server._chunks) <= 2  # 6,000 bytes in pieces of up to 8 KiB
        assert await read_all(server, 6000) == b"".join(pieces)


async def test_send_nowait_refuses_while_congested() -> None:
    async with connected() as (client, server):
        chunk = bytes(1 << 20)
        for _ in range(1000):  # bounded: the socket buffers hold a few megabytes at most
            if not client.send_ready():
                break
            client.send_nowait(chunk)
        with pytest.raises(anyio.WouldBlock):
            client.send_nowait(b"x")
        assert not client.send_ready()
        drained = 0
        while not client.send_ready():
            drained += len(await server.receive())
        assert drained > 0
        client.send_nowait(b"x")


async def test_half_close_ends_one_direction_only() -> None:
    async with connected() as (client, server):
        await client.send(b"last words")
        await client.send_eof()
        assert await read_all(server, 10) == b"last words"
        with pytest.raises(anyio.EndOfStream):
            await server.receive()
        await server.send(b"still here")
        assert await read_all(client, 10) == b"still here"


async def test_a_closed_stream_refuses_use_and_a_reset_breaks_the_peer() -> None:
    async with connected() as (client, server):
        await client.aclose()
        await client.aclose()  # twice is harmless
        with pytest.raises(anyio.ClosedResourceError):
            await client.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await client.send(b"x")
        with anyio.fail_after(5):
            await drain_to_the_end(server)
            # Writing to a peer that is gone: the reset comes back, and the stream is broken.
            with pytest.raises(anyio.BrokenResourceError):
                await write_until_broken(server)
        assert not server.send_ready()


async def test_closing_while_the_peer_takes_the_last_bytes_fails_nothing() -> None:
    # close() left bytes to send; asyncio's transport wrote them during aclose's one turn of the
    # loop and called connection_lost (without counting it), and the abort() that followed failed
    # inside asyncio: "'NoneType' object has no attribute 'call_soon'" ('peerkit send' stopped
    # with Ctrl-C ended so, now and then). A peer that reads at once, in a thread of its own.
    def read_all_of(server: socket.socket) -> None:
        connection, _ = server.accept()
        with connection:
            while connection.recv(1 << 20):
                pass

    for size in [1 << 20, 2 << 20, 4 << 20] * 20:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, read_all_of, server)
                client = await connect_tcp("127.0.0.1", server.getsockname()[1])
                client.send_nowait(b"x" * size)  # (what the socket does not take waits in asyncio)
                await anyio.lowlevel.checkpoint()
                with anyio.fail_after(10):
                    await client.aclose()


async def test_a_receive_waiting_when_the_stream_closes_ends() -> None:
    async with connected() as (client, _server), anyio.create_task_group() as tg:

        async def wait() -> None:
            with pytest.raises(anyio.ClosedResourceError):
                await client.receive()

        tg.start_soon(wait)
        await anyio.sleep(0.05)
        await client.aclose()


async def test_a_reader_may_wait_on_a_future_and_take_what_waits_without_waiting() -> None:
    async with connected() as (client, server):
        assert server.receive_waiting() is None  # nothing yet
        ready = server.readable()
        assert not ready.done()
        assert server.readable() is ready  # (one future while it waits)
        await client.send(b"hello")
        with anyio.fail_after(5):
            await ready
        assert server.receive_waiting(3) == b"hel"
        assert server.readable().done()  # the rest waits: done at once
        assert server.receive_waiting() == b"lo"
        assert server.receive_waiting() is None
        # A wait cancelled leaves the stream as it was.
        with anyio.move_on_after(0.05):
            await server.readable()
        await client.send(b"again")
        with anyio.fail_after(5):
            assert await server.receive() == b"again"
        await client.send_eof()
        with anyio.fail_after(5):
            await server.readable()
        with pytest.raises(anyio.EndOfStream):
            server.receive_waiting()
        await server.aclose()
        assert server.readable().done()
        with pytest.raises(anyio.ClosedResourceError):
            server.receive_waiting()


async def test_a_secure_channel_waits_on_an_idle_tcp_stream_without_a_coroutine_of_the_streams(
    alice: Identity, bob: Identity
) -> None:
    # (a node reads thousands of idle connections: a coroutine frame is 0.25 KB each)
    async with connected() as (client, server), anyio.create_task_group() as tg:
        channels: dict[str, SecureChannel] = {}

        async def respond() -> None:
            channels["b"] = await SecureChannel.wrap(server, bob, initiator=False)

        tg.start_soon(respond)
        channels["a"] = await SecureChannel.wrap(client, alice, initiator=True)
        with anyio.fail_after(5):
            while "b" not in channels:
                await anyio.sleep(0.01)
        reading = asyncio.get_running_loop().create_task(channels["b"].receive())
        await anyio.sleep(0.05)
        coro, chain = reading.get_coro(), []
        while coro is not None:
            chain.append(getattr(coro, "__qualname__", type(coro).__name__))
            coro = getattr(coro, "cr_await", None)
        assert chain[:1] == ["SecureChannel.receive"]
        assert "TcpStream.receive" not in chain
        await channels["a"].send({"t": "hi"})
        with anyio.fail_after(5):
            assert await reading == {"t": "hi"}


async def test_near_the_fd_limit_the_listener_stops_accepting_and_resumes_below(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A budget whose limit is just above what is open now: accepting pauses (the connections
    # wait in the kernel's backlog), with one warning, and resumes when there is room again.
    budget = FdBudget(limit=10**6, reserve=0)
    listener = await TcpListener.bind("127.0.0.1", 0, budget=budget)
    port = listener.extra_attributes[SocketAttribute.local_address]()[1]
    taken: list[TcpStream] = []

    async def take(stream: TcpStream) -> None:
        taken.append(stream)

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, take)
        clients = [await connect_tcp("127.0.0.1", port)]
        with anyio.fail_after(5):
            while not taken:
                await anyio.sleep(0.01)
        budget.limit = budget.in_use() + 2  # room for one more connection's descriptor only
        budget._read_at = float("-inf")
        clients += [await connect_tcp("127.0.0.1", port) for _ in range(5)]
        await anyio.sleep(0.5)
        assert len(taken) == 2  # one more, then no room: the rest wait in the backlog
        pauses = [r for r in caplog.records if "not accepting connections" in r.getMessage()]
        assert len(pauses) == 1
        budget.limit = 10**6
        with anyio.fail_after(5):
            while len(taken) < 6:
                await anyio.sleep(0.01)
        assert any("accepting" in r.getMessage() and "free again" in r.getMessage() for r in caplog.records)
        for stream in (*clients, *taken):
            await stream.aclose()
        await listener.aclose()
        tg.cancel_scope.cancel()


async def test_an_accept_out_of_descriptors_pauses_without_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = FdBudget(limit=10**6, reserve=0)
    listener = await TcpListener.bind("127.0.0.1", 0, budget=budget)
    port = listener.extra_attributes[SocketAttribute.local_address]()[1]
    loop = asyncio.get_running_loop()
    real_accept = loop.sock_accept
    attempts: list[float] = []

    async def out_of_descriptors(sock: socket.socket) -> tuple[socket.socket, object]:
        attempts.append(anyio.current_time())
        if len(attempts) <= 3:
            raise OSError(errno.EMFILE, "Too many open files")
        return await real_accept(sock)

    monkeypatch.setattr(loop, "sock_accept", out_of_descriptors)
    in_use = budget.in_use()
    taken: list[TcpStream] = []

    async def take(stream: TcpStream) -> None:
        taken.append(stream)

    async with anyio.create_task_group() as tg:
        budget.limit = in_use + 50
        tg.start_soon(listener.serve, take)
        client = await connect_tcp("127.0.0.1", port)
        with anyio.fail_after(5):
            while not taken:
                await anyio.sleep(0.01)
        # Three failures, then the connection was taken (and the loop waits for the next one).
        assert len(attempts) == 5
        gaps = [later - earlier for earlier, later in itertools.pairwise(attempts[:4])]
        assert min(gaps) >= 0.09  # each failure paused the loop: no spin
        for stream in (client, *taken):
            await stream.aclose()
        await listener.aclose()
        tg.cancel_scope.cancel()


async def test_listening_on_every_address_takes_one_port_for_ipv4_and_ipv6() -> None:
    listener = await TcpListener.bind("", 0)
    try:
        ports = {sock.getsockname()[1] for sock in listener._sockets}
        assert len(ports) == 1
        port = ports.pop()
        client = await connect_tcp("127.0.0.1", port)
        await client.aclose()
        if socket.has_ipv6 and len(listener._sockets) == 2:
            client = await connect_tcp("::1", port)
            await client.aclose()
    finally:
        await listener.aclose()


async def test_connecting_to_a_closed_port_is_unreachable_with_the_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # In the system's words for the error, alike on every loop (asyncio's own: "Connect call
    # failed ('127.0.0.1', N)"; anyio's on trio: "All connection attempts failed").
    with pytest.raises(PeerUnreachable, match=rf"could not connect to 127.0.0.1:{port}: connection refused$"):
        await TcpTransport().connect("127.0.0.1", port, local_host="127.0.0.1")


async def test_listening_on_a_busy_port_is_unreachable_with_the_reason() -> None:
    listener = await TcpListener.bind("127.0.0.1", 0)
    port = listener.extra_attributes[SocketAttribute.local_address]()[1]
    try:
        with pytest.raises(PeerUnreachable, match=rf"cannot listen on 127.0.0.1:{port}: \S"):
            await TcpTransport().listen("127.0.0.1", port)
    finally:
        await listener.aclose()


def test_unreachable_maps_broken_connections_only() -> None:
    with pytest.raises(PeerUnreachable, match=r"^gone$") as caught, unreachable("gone"):
        raise anyio.BrokenResourceError
    assert isinstance(caught.value.__cause__, anyio.BrokenResourceError)
    # The system's words for the error number, whatever the loop wrote; else the error's own.
    with (
        pytest.raises(PeerUnreachable, match=r"^gone: connection refused$"),
        unreachable("gone", detail=True),
    ):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 1)")
    with (
        pytest.raises(PeerUnreachable, match=r"^gone: connection refused$"),
        unreachable("gone", detail=True),
    ):
        raise OSError("All connection attempts failed") from ConnectionRefusedError(errno.ECONNREFUSED, "x")
    with pytest.raises(PeerUnreachable, match=r"^gone: nope$"), unreachable("gone", detail=True):
        raise OSError("nope")
    # A host name that does not resolve: the look-up's words (its number, -2, is not an errno's:
    # it read "unknown error -2").
    with (
        pytest.raises(PeerUnreachable, match=r"^gone: name or service not known$"),
        unreachable("gone", detail=True),
    ):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(PeerUnreachable), unreachable("gone", anyio.WouldBlock):
        raise anyio.WouldBlock
    # Closed here, not broken there: not mapped.
    with pytest.raises(anyio.ClosedResourceError), unreachable("gone"):
        raise anyio.ClosedResourceError
    with pytest.raises(ValueError, match="other"), unreachable("gone"):
        raise ValueError("other")


async def test_a_screened_out_connection_is_closed_before_a_handler_runs() -> None:
    listener = await TcpListener.bind("127.0.0.1", 0)
    port = listener.extra_attributes[SocketAttribute.local_address]()[1]
    asked: list[object] = []
    taken: list[TcpStream] = []

    def screen(address: object) -> bool:
        asked.append(address)
        return len(asked) != 2  # the second connection is refused

    async def take(stream: TcpStream) -> None:
        taken.append(stream)

    listener.screen = screen
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, take)
        clients = [await connect_tcp("127.0.0.1", port) for _ in range(3)]
        with anyio.fail_after(5):
            while len(taken) < 2:
                await anyio.sleep(0.01)
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await clients[1].receive()  # closed by the listener at once
        assert len(taken) == 2
        assert all(isinstance(a, tuple) and a[0] == "127.0.0.1" for a in asked)
        for stream in (*clients, *taken):
            await stream.aclose()
        await listener.aclose()
        tg.cancel_scope.cancel()


@asynccontextmanager
async def listening() -> AsyncIterator[tuple[TcpListener, int]]:
    listener = await TcpListener.bind("127.0.0.1", 0)
    try:
        yield listener, listener.extra_attributes[SocketAttribute.local_address]()[1]
    finally:
        await listener.aclose()


async def test_a_connection_is_served_by_a_task_without_an_anyio_task_handle() -> None:
    # A node holds thousands of connections: each is served by an asyncio task of the listener's
    # (anyio's handle, cancel scope and event would be 1.3 KB more each).
    served: list[TcpStream] = []
    release = anyio.Event()

    async def hold(stream: TcpStream) -> None:
        served.append(stream)
        await release.wait()

    def handles() -> int:
        return sum(type(o).__name__ == "TaskHandle" for o in gc.get_objects())

    async with listening() as (listener, port), anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        await anyio.sleep(0.05)
        before = handles()
        clients = [await connect_tcp("127.0.0.1", port) for _ in range(20)]
        with anyio.fail_after(5):
            while len(served) < 20:
                await anyio.sleep(0.01)
        assert handles() == before
        release.set()
        for stream in (*clients, *served):
            await stream.aclose()
        tg.cancel_scope.cancel()


@pytest.mark.logs_errors
async def test_a_handler_that_raises_is_logged_and_the_listener_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    served: list[TcpStream] = []

    async def fail_first(stream: TcpStream) -> None:
        served.append(stream)
        if len(served) == 1:
            raise RuntimeError("the first handler fails")
        await stream.send(b"served")

    async with listening() as (listener, port), anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, fail_first)
        first = await connect_tcp("127.0.0.1", port)
        with anyio.fail_after(5):
            while not served:
                await anyio.sleep(0.01)
            second = await connect_tcp("127.0.0.1", port)
            assert await second.receive() == b"served"
        assert "a task of TcpListener._run failed" in caplog.text
        assert "the first handler fails" in caplog.text
        for stream in (first, second, *served):
            await stream.aclose()
        tg.cancel_scope.cancel()


async def test_cancelling_serve_cancels_the_connections_tasks_and_waits_for_them() -> None:
    events: list[str] = []
    started = anyio.Event()

    async def hold(stream: TcpStream) -> None:
        try:
            await stuck(started, events, "handler done", cleanup=0.05)
        finally:
            await stream.aclose()

    async with listening() as (listener, port):
        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                await listener.serve(hold)
                events.append("serve returned")  # (not reached: cancelled)

            tg.start_soon(serve)
            client = await connect_tcp("127.0.0.1", port)
            with anyio.fail_after(5):
                await started.wait()
            tg.cancel_scope.cancel()
        events.append("group done")
        await client.aclose()
    assert events == ["handler done", "group done"]


async def test_with_a_task_group_given_connections_outlive_serve_and_end_with_the_group() -> None:
    events: list[str] = []
    started = anyio.Event()

    async def hold(stream: TcpStream) -> None:
        try:
            await stuck(started, events, "handler cancelled")
        finally:
            await stream.aclose()

    async with listening() as (listener, port):
        client = await connect_tcp("127.0.0.1", port)
        async with anyio.create_task_group() as handlers:
            async with anyio.create_task_group() as serving:
                serving.start_soon(listener.serve, hold, handlers)
                with anyio.fail_after(5):
                    await started.wait()
                serving.cancel_scope.cancel()  # serve stops accepting...
            await anyio.sleep(0.05)
            assert events == []  # ...and its connection goes on, in the group it was given
            handlers.cancel_scope.cancel()
        assert events == ["handler cancelled"]
        await client.aclose()
