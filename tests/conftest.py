from __future__ import annotations

import functools
import gc
import ipaddress
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from peerkit import Application, EndPoint, Invitation, InvitationResponse, Node, Peer, SecureChannel
from peerkit.identity import Identity
from peerkit.nat.client import NatPmpClient
from peerkit.testing import MemoryNetwork, NamespaceLan, memory_stream_pair

# No node of the suite (nor of a subprocess it starts) asks this machine's router for a port
# mapping: only the tests of port mapping turn it on, against routers of their own.
os.environ["PEERKIT_PORT_MAPPING"] = "off"
# Nor does a command the suite runs use mDNS on the host's network by default: its default
# discovery finds nobody. The tests of mDNS name it, or run in network namespaces of their own.
os.environ["PEERKIT_DISCOVERY"] = "static:127.0.0.1:9"


@pytest.fixture
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture
def bob() -> Identity:
    return Identity.generate()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


#: A parameter for tests that run on IPv6 loopback (skipped where the machine has no IPv6).
IPV6 = pytest.param("::1", marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback"), id="ipv6")


@pytest.fixture(autouse=True)
def no_pairing_mdns_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any in-process test that would announce or ask for a pairing rendezvous by mDNS on the
    host's own network (the tests in namespaces run the command in processes of their own)."""
    import peerkit.node.pairing

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a pairing rendezvous by mDNS on the host's network, from a test")

    monkeypatch.setattr(peerkit.node.pairing, "publish_rendezvous", refuse)
    monkeypatch.setattr(peerkit.node.pairing, "lookup_rendezvous", refuse)


@asynccontextmanager
async def facing_mallory(
    application: Application, script: Callable[[SecureChannel, Any], Awaitable[None]]
) -> AsyncIterator[tuple[Node, Peer]]:
    """alice's node (with ``application`` registered) and a Peer for mallory: a hand-written peer on
    the same in-memory network that completes the handshake and then runs ``script(channel, raw)``
    (``raw`` is the byte stream under the channel, for bytes no honest peer would send)."""
    net = MemoryNetwork()
    mallory = Identity.generate()
    listener = await net.listen("10.0.6.6", 7000)

    async def serve(raw: Any) -> None:
        async with await SecureChannel.wrap(raw, mallory, initiator=False) as channel:
            await script(channel, raw)

    async with (
        listener,
        Node(identity=Identity.generate(), network=net, listen=("10.0.0.1", 0)) as alice,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, serve)
        await alice.register_application(application)
        yield alice, alice.peer(mallory.id, EndPoint("10.0.6.6", 7000))
        tg.cancel_scope.cancel()


#: A peer process (``python -c WAITING_PEER APP_UUID``): a node on 127.0.0.1 whose handler for the
#: application never answers. It prints "PORT ID", then "handler ended: REASON" when its handler is
#: withdrawn, and exits after 60 s.
WAITING_PEER = """
import sys, uuid, anyio, peerkit

async def main():
    async with peerkit.Node(identity=peerkit.Identity.generate(), listen=("127.0.0.1", 0)) as node:
        app = peerkit.Application(id=uuid.UUID(sys.argv[1]))
        await node.register_application(app)

        @node.on_invitation(app)
        async def wait(invitation):
            try:
                await anyio.sleep_forever()
            finally:
                print("handler ended:", invitation.withdrawn_reason, flush=True)

        print(node.endpoint.port, node.id, flush=True)
        await anyio.sleep(60)

anyio.run(main)
"""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The node tests marked ``anyio`` run on both of anyio's backends."""
    return str(request.param)


@pytest.fixture
def no_worker_thread(monkeypatch: pytest.MonkeyPatch, anyio_backend_name: str) -> None:
    """Fail the test when asyncio's default executor is asked for a thread (it resolves every
    name it is given there, literal addresses too, and its threads live as long as the loop).
    (Trio resolves a literal address without a thread.)"""
    if anyio_backend_name == "asyncio":
        import asyncio

        def refuse(*args: object) -> None:
            raise AssertionError("a worker thread was asked for (asyncio's default executor)")

        monkeypatch.setattr(asyncio.BaseEventLoop, "run_in_executor", refuse)


#: ``python -c ON_BACKEND BACKEND FILE`` runs the example FILE with anyio.run's backend set to
#: BACKEND (the examples call ``anyio.run(main)`` as users do).
ON_BACKEND = """
import functools, runpy, sys, anyio
anyio.run = functools.partial(anyio.run, backend=sys.argv[1])
runpy.run_path(sys.argv[2], run_name="__main__")
"""


# -- shared by the node tests ------------------------------------------------------------------
CHAT = Application(id=uuid.UUID("6f1c2a4e-0000-4000-8000-000000000001"), description="chat")
GAME = Application(id=uuid.UUID("6f1c2a4e-0000-4000-8000-000000000002"), description="game")
ACCEPTED, DECLINED, EXPIRED = (
    InvitationResponse.ACCEPTED,
    InvitationResponse.DECLINED,
    InvitationResponse.EXPIRED,
)


async def accept_all(invitation: Invitation) -> InvitationResponse:
    return ACCEPTED


async def accept_chat(*group: Node) -> None:
    """Register CHAT on every node of ``group``, each accepting every invitation to it."""
    for node in group:
        await node.register_application(CHAT)
        node.add_invitation_handler(CHAT, accept_all)


async def raw_channel(alice: Node, bob: Node) -> SecureChannel:
    """A bare channel from alice's identity to bob's node, bypassing alice's Node."""
    stream = await alice._network.connect(bob.endpoint.host, bob.endpoint.port, local_host="10.0.5.5")
    return await SecureChannel.wrap(stream, alice.identity, initiator=True, expected_peer=bob.id)


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A resource left unclosed warns (an error here) in the test that left it, not in a later one."""
    yield
    gc.collect()


async def stuck(started: anyio.Event, events: list[str], name: str, *, cleanup: float = 0.0) -> None:
    """A task that is cancelled at last: set ``started``, wait until cancelled, then take
    ``cleanup`` seconds (shielded, as a task's cleanup would) and note ``name`` in ``events``."""
    started.set()
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(cleanup)
        events.append(name)


async def channel_pair(
    alice: Identity, bob: Identity, *, ik: bool = False
) -> tuple[SecureChannel, SecureChannel]:
    """Two open secure channels, alice's and bob's ends of one in-memory connection."""
    a_stream, b_stream = memory_stream_pair()
    result: dict[str, SecureChannel] = {}

    async def respond() -> None:
        result["b"] = await SecureChannel.wrap(
            b_stream, bob, initiator=False, nickname="bob", endpoint_name="desk"
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(respond)
        a = await SecureChannel.wrap(
            a_stream, alice, initiator=True, expected_peer=bob.id if ik else None, nickname="alice"
        )
    return a, result["b"]


#: Where a test's DHT sockets may send: loopback, and the networks of the namespaces tests make.
TESTNET_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "fd00::/8")
)


def outside_testnet(host: str) -> bool:
    """Whether ``host`` is anything but an address of the tests' own networks (a name, too)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True
    return not any(address in network for network in TESTNET_NETWORKS)


@pytest.fixture(autouse=True)
def dht_sends_outside(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Fail any test whose DHT socket sends outside loopback or the tests' own namespaces (the
    public bootstrap routers above all): the send raises, and the test fails at its end."""
    from peerkit.dht.transport import UdpDatagrams

    outside: list[tuple[str, int]] = []
    send = UdpDatagrams.send

    @functools.wraps(send)
    async def guarded(self: UdpDatagrams, data: bytes, address: tuple[str, int]) -> None:
        if outside_testnet(address[0]):
            outside.append(address)
            raise AssertionError(f"a DHT socket sent to {address[0]}:{address[1]}, outside the testnet")
        await send(self, data, address)

    monkeypatch.setattr(UdpDatagrams, "send", guarded)
    yield outside  # (a test of this guard empties it)
    assert not outside, f"DHT datagrams were sent outside the testnet: {outside}"


@asynccontextmanager
async def loopback_dht(count: int, *, base: int = 10, ipv6: bool = False) -> AsyncIterator[list[Any]]:
    """``count`` DHT nodes over UDP on 127.0.0.{base} and up (an address each, as on hosts of
    their own), or all on ::1 with ``ipv6``, each joined through the first, which then looks
    itself up to learn the rest."""
    from peerkit.dht.node import DhtNode
    from peerkit.dht.transport import UdpDatagrams

    async with anyio.create_task_group() as tg:
        nodes: list[DhtNode] = []
        for i in range(count):
            transport = await UdpDatagrams.bind("::1" if ipv6 else f"127.0.0.{base + i}", 0)
            node = DhtNode(transport, bootstrap=[nodes[0].address] if nodes else [])
            await tg.start(node.run)
            nodes.append(node)
        await anyio.sleep(0.2)
        await nodes[0].join()
        yield nodes
        tg.cancel_scope.cancel()


# -- agents in network namespaces (tests/real) ---------------------------------------------------
def needed(what: str, missing: str | None) -> None:
    """Skip the test when something it needs is ``missing`` (the reason), except in CI, where
    the test fails instead: CI never passes without ``what``."""
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the {what}, but {missing}")
        pytest.skip(missing)


@pytest.fixture
def lan() -> Iterator[NamespaceLan]:
    needed("LAN tests", NamespaceLan.available())
    with NamespaceLan() as made:
        yield made


class Agent:
    """A lan_agent.py process in a namespace: send commands, wait for lines."""

    def __init__(self, process: anyio.abc.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self.arrived = anyio.Event()
        #: What its "ready" line said (a node's id).
        self.ready: Any = None
        #: Its whole "ready" line.
        self.hello: dict[str, Any] = {}

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self.lines.append(json.loads(line))
            self.arrived.set()

    async def expect(self, check: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        with anyio.move_on_after(timeout):
            while True:
                for index, line in enumerate(self.lines):
                    if check(line):
                        del self.lines[: index + 1]
                        return line
                self.arrived = anyio.Event()
                await self.arrived.wait()
        raise AssertionError(f"{self.name}: nothing matched within {timeout} s; lines: {self.lines}")

    def seen(self, check: Callable[[dict[str, Any]], bool]) -> bool:
        return any(check(line) for line in self.lines)

    async def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(command).encode() + b"\n")


@asynccontextmanager
async def agents(script: str) -> AsyncIterator[Callable[..., Any]]:
    """Start processes of the agent ``script`` with ``await start(namespace, mode, *args)``;
    each must print a line with "ready" first. All are killed at the end."""
    started: list[Agent] = []
    async with anyio.create_task_group() as tg:

        async def start(namespace: str, *args: str) -> Agent:
            process = await anyio.open_process(
                ["ip", "netns", "exec", namespace, sys.executable, script, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
            )
            agent = Agent(process, f"{namespace} {' '.join(args)}")
            started.append(agent)
            tg.start_soon(agent.read)
            agent.hello = await agent.expect(lambda line: "ready" in line, timeout=30)
            agent.ready = agent.hello["ready"]
            return agent

        try:
            yield start
        finally:
            for agent in started:
                if agent.process.returncode is None:
                    agent.process.kill()
                await agent.process.wait()
                await agent.process.aclose()
            tg.cancel_scope.cancel()


# -- a NAT-PMP router on loopback ------------------------------------------------------------
class NatPmpRouter:
    """A NAT-PMP router on loopback, written from RFC 6886: public address 203.0.113.9, each
    mapping given the suggested port (or internal + 10000) for at most an hour. With ``pcp`` it
    also speaks PCP (RFC 6887: ANNOUNCE and MAP, a mapping kept by its nonce); without, it answers
    PCP as a NAT-PMP router does ("unsupported version")."""

    def __init__(
        self,
        sock: anyio.abc.UDPSocket,
        *,
        drop_first: int = 0,
        refuse: int = 0,
        max_lifetime: int = 3600,
        pcp: bool = False,
    ) -> None:
        self.sock = sock
        self.drop = drop_first
        self.refuse = refuse
        self.max_lifetime = max_lifetime
        self.pcp = pcp
        #: The UDP port it answers on.
        self.port: int = sock.extra(anyio.abc.SocketAttribute.local_port)
        self.epoch = 7
        self.mappings: dict[tuple[int, int], tuple[int, int]] = {}
        #: PCP mappings: (protocol number, internal port) -> (nonce, external port, lifetime).
        self.pcp_mappings: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        self.requests = 0

    def _pcp_answer(self, data: bytes) -> bytes:
        opcode, lifetime = data[1], struct.unpack("!I", data[4:8])[0]
        code, body = 0, b""
        if self.refuse:
            code = self.refuse
        elif opcode == 1:  # MAP
            nonce, number, internal, suggested = struct.unpack("!12sB3xHH", data[24:44])
            held = self.pcp_mappings.get((number, internal))
            if held is not None and held[0] != nonce:
                code = 2  # NOT_AUTHORIZED: another client's mapping
            elif lifetime == 0:
                self.pcp_mappings.pop((number, internal), None)
                suggested = 0
            else:
                suggested = suggested or internal + 10000
                lifetime = min(lifetime, self.max_lifetime)
                self.pcp_mappings[(number, internal)] = (nonce, suggested, lifetime)
            public = bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 9])
            body = struct.pack("!12sB3xHH16s", nonce, number, internal, suggested, public)
        elif opcode != 0:
            code = 4  # UNSUPP_OPCODE
        return struct.pack("!BBxBII12x", 2, 0x80 | opcode, code, lifetime, self.epoch) + body

    async def serve(self) -> None:
        async for data, source in self.sock:
            self.requests += 1
            if self.drop:
                self.drop -= 1  # lost on the way: the client must send again
                continue
            opcode = data[1]
            if data[0] == 2:  # PCP
                if self.pcp:
                    reply = self._pcp_answer(data)
                else:  # RFC 6887 section 9: a NAT-PMP router answers "unsupported version"
                    reply = struct.pack("!BBHI", 0, 128 + opcode, 1, self.epoch)
            elif self.refuse:
                reply = struct.pack("!BBHI", 0, 128 + opcode, self.refuse, self.epoch) + bytes(8)
            elif opcode == 0:
                reply = struct.pack("!BBHI4s", 0, 128, 0, self.epoch, bytes([203, 0, 113, 9]))
            else:
                _, _, _, internal, suggested, lifetime = struct.unpack("!BBHHHI", data)
                if lifetime == 0:
                    self.mappings.pop((opcode, internal), None)
                    external = 0
                else:
                    external = suggested or internal + 10000
                    lifetime = min(lifetime, self.max_lifetime)
                    self.mappings[(opcode, internal)] = (external, lifetime)
                reply = struct.pack("!BBHIHHI", 0, 128 + opcode, 0, self.epoch, internal, external, lifetime)
            await self.sock.sendto(reply, *source[:2])


async def bulk_read_sizes(client: anyio.abc.ByteStream, server: anyio.abc.ByteStream) -> list[int]:
    """Send 4 MiB from ``client`` and read them at ``server`` with room for 1 MiB a read, once
    more than 128 KiB waits in the socket; the size of each read (the bytes are checked)."""
    payload = bytes(range(256)) * 16384
    sizes: list[int] = []
    received = bytearray()
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.send, payload)
        await anyio.sleep(0.1)
        with anyio.fail_after(10):
            while len(received) < len(payload):
                chunk = await server.receive(1 << 20)
                sizes.append(len(chunk))
                received += chunk
    assert received == payload
    return sizes


@asynccontextmanager
async def natpmp_router(**options: int | bool) -> AsyncIterator[tuple[NatPmpRouter, NatPmpClient]]:
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as sock, anyio.create_task_group() as tg:
        made = NatPmpRouter(sock, **options)
        tg.start_soon(made.serve)
        port = sock.extra(anyio.abc.SocketAttribute.local_port)
        yield made, NatPmpClient("127.0.0.1", port=port, first_wait=0.05)
        tg.cancel_scope.cancel()


class _ErrorLogs(logging.Handler):
    # What peerkit's loggers said at ERROR or above, one line each.
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        because = f" ({type(error).__name__}: {error})" if error is not None else ""
        self.seen.append(f"{record.name}: {record.getMessage()}{because}")


@pytest.fixture(autouse=True)
def _no_error_logged(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test in which peerkit logged an error: a handler, task or provider of its own that
    failed. The node lives on (that is why it logs), but it is a bug all the same -- a message
    from a peer that a handler could not take, say. A test that makes one fail on purpose says so
    with ``@pytest.mark.logs_errors``."""
    if request.node.get_closest_marker("logs_errors") is not None:
        yield
        return
    handler = _ErrorLogs()
    logger = logging.getLogger("peerkit")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.seen:
        pytest.fail("peerkit logged an error:\n" + "\n".join(handler.seen[:10]), pytrace=False)
