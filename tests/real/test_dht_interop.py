"""peerkit's DHT beside the independent implementations users run today, on loopback: webtorrent's
``bittorrent-dht`` (npm, installed by .ci/run in tests/interop) and libtorrent (the PyPI wheel, a
test extra), each beside peerkit and all three in one testnet. An item peerkit puts is read
byte-exact by each, and an item each puts is read and verified by peerkit. Where they disagree,
peerkit copes: bittorrent-dht answers 302 to an identical refresh and drops a badly signed put
without a word (both checked here); libtorrent takes another value under the seq it holds (how
readers choose between two such values is checked in tests/dht).

The nodes are on loopback addresses, one each, rather than in network namespaces: what is
checked is the datagrams they exchange (tests/real/test_dht_lan.py runs the DHT across
namespaces)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from conftest import loopback_dht, needed

from peerkit import Identity
from peerkit.dht.bep44 import MutableItem, target
from peerkit.dht.krpc import Error, Node, Response
from peerkit.dht.node import QUERY_TIMEOUT, DhtNode

pytestmark = [pytest.mark.anyio, pytest.mark.network]

INTEROP = Path(__file__).resolve().parents[1] / "interop"
AGENT = INTEROP / "dht_agent.mjs"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (INTEROP / "node_modules" / "bittorrent-dht").is_dir():
        return "bittorrent-dht is not installed (cd tests/interop && npm install)"
    return None


@pytest.fixture
def js_dht_ready() -> None:
    needed("DHT interop tests", _missing())


class JsAgent:
    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.buffer = b""
        #: The UDP ports of its nodes (on 127.0.0.1).
        self.ports: list[int] = []

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        with anyio.fail_after(30):
            while b"\n" not in self.buffer:
                self.buffer += await self.process.stdout.receive()
        line, _, self.buffer = self.buffer.partition(b"\n")
        result: dict[str, Any] = json.loads(line)
        return result

    async def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(command) + "\n").encode())
        return await self.line()


@contextlib.asynccontextmanager
async def mixed_testnet(peerkit_nodes: int, js_nodes: int) -> AsyncIterator[tuple[list[DhtNode], JsAgent]]:
    async with loopback_dht(peerkit_nodes, base=20) as nodes:
        host, port = nodes[0].address
        process = await anyio.open_process(["node", str(AGENT), str(js_nodes), f"{host}:{port}"], cwd=INTEROP)
        agent = JsAgent(process)
        try:
            ready = await agent.line()
            assert len(ready["ready"]) == js_nodes
            agent.ports = ready["ready"]
            await nodes[0].join()
            for node in nodes[1:]:
                await node.join()
            yield nodes, agent
        finally:
            process.kill()
            await process.wait()
            await process.aclose()


async def test_peerkit_and_bittorrent_dht_read_each_others_items(js_dht_ready: None) -> None:
    async with mixed_testnet(6, 6) as (nodes, agent):
        assert any(n.address[0] == "127.0.0.1" for node in nodes for n in node.table.nodes())
        # peerkit puts; bittorrent-dht reads it byte-exact.
        alice = Identity.generate()
        ours = MutableItem.create(alice.sign, alice.id.key, b"sealed record bytes", 7, b"peerkit-locator-v1")
        assert (await nodes[2].put(ours)).stored >= 4
        got = (await agent.ask(cmd="get", target=ours.target.hex(), salt=ours.salt.hex()))["got"]
        assert got == {"k": alice.id.key.hex(), "seq": 7, "v": b"sealed record bytes".hex()}
        # The same item again: bittorrent-dht nodes answer 302 to an identical refresh (peerkit's
        # take it as a refresh); the put copes, and nothing changes.
        again = await nodes[2].put(ours)
        assert again.stored >= 1
        assert set(again.refused) <= {302}
        # bittorrent-dht puts; peerkit reads and verifies it.
        seed = os.urandom(32)
        theirs_key = Identity.from_seed(seed).id.key
        put = await agent.ask(cmd="put", seed=seed.hex(), v=b"from node".hex(), seq=3, salt=b"s".hex())
        assert put["put"] == target(theirs_key, b"s").hex()
        found = await nodes[4].get(theirs_key, b"s")
        assert found is not None
        assert (found.seq, found.decoded()) == (3, b"from node")
        assert found.verify()
        # A put with a bad signature: a peerkit node refuses it with 206, a bittorrent-dht node
        # says nothing at all; the asker gives up on it at its query timeout, no later.
        js = Node(b"", ("127.0.0.1", agent.ports[0]))
        for peer, expected in ((Node(b"", nodes[3].address), 206), (js, None)):
            answer = await nodes[2].query(peer, b"get", {b"target": ours.target})
            assert isinstance(answer, Response)
            args: dict[bytes, Any] = {b"k": alice.id.key, b"salt": ours.salt, b"seq": 9, b"v": b"x"}
            args |= {b"sig": bytes(64), b"token": answer.values[b"token"]}
            with anyio.fail_after(QUERY_TIMEOUT + 1):
                refused = await nodes[2].query(peer, b"put", args)
            assert (refused.code if isinstance(refused, Error) else None) == expected


@pytest.fixture
def libtorrent_ready() -> None:
    missing = "libtorrent is not installed (pip install libtorrent)"
    needed("DHT interop tests", missing if importlib.util.find_spec("libtorrent") is None else None)


def _expanded_secret(seed: bytes) -> bytes:
    # The 64-byte secret key libtorrent signs with: SHA-512 of the seed, its first half clamped.
    key = bytearray(hashlib.sha512(seed).digest())
    key[0] &= 248
    key[31] &= 63
    key[31] |= 64
    return bytes(key)


class Libtorrent:
    """A libtorrent session with its DHT joined through ``bootstrap`` (never a public router)."""

    def __init__(self, bootstrap: tuple[str, int], interface: str) -> None:
        import libtorrent as lt

        self.lt = lt
        categories = lt.alert.category_t
        self.session = lt.session(
            {
                "enable_dht": True,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "listen_interfaces": f"{interface}:0",
                "dht_bootstrap_nodes": f"{bootstrap[0]}:{bootstrap[1]}",
                # Loopback nodes are all on one /24: let libtorrent keep them and use them.
                "dht_restrict_routing_ips": False,
                "dht_restrict_search_ips": False,
                "dht_enforce_node_id": False,
                "alert_mask": categories.dht_notification | categories.dht_operation_notification,
            }
        )

    async def alert(self, kind: type, check: Any = lambda a: True) -> Any:
        with anyio.fail_after(15):
            while True:
                for each in self.session.pop_alerts():
                    if isinstance(each, kind) and check(each):
                        return each
                await anyio.sleep(0.1)

    async def get(self, key: bytes, salt: bytes) -> tuple[bytes, int, bytes, bytes]:
        """An item as libtorrent reads it from the nodes nearest it: key, seq, signature, value."""
        self.session.dht_get_mutable_item(key, salt)
        got = await self.alert(
            self.lt.dht_mutable_item_alert, lambda a: a.authoritative and bytes(a.key) == key
        )
        return bytes(got.key), got.seq, bytes(got.signature), got.item

    async def put(self, seed: bytes, value: bytes, salt: bytes) -> int:
        """Put ``value`` (libtorrent bencodes it) under the key of ``seed``; returns its seq."""
        self.session.dht_put_mutable_item(
            _expanded_secret(seed), Identity.from_seed(seed).id.key, value, salt
        )
        put = await self.alert(self.lt.dht_put_alert)
        assert put.num_success >= 1
        return int(put.seq)

    def close(self) -> None:
        self.session.pause()  # (the session stops when the test drops it)


async def test_peerkit_and_libtorrent_read_each_others_items(libtorrent_ready: None) -> None:
    async with loopback_dht(5, base=40) as nodes:
        libtorrent = Libtorrent(nodes[0].address, "127.0.0.2")
        try:
            with anyio.fail_after(15):
                while not any(n.address[0] == "127.0.0.2" for n in nodes[0].table.nodes()):
                    await anyio.sleep(0.1)  # libtorrent has joined through node 0
            # peerkit puts; libtorrent reads it (authoritative: from the nodes nearest it).
            alice = Identity.generate()
            ours = MutableItem.create(
                alice.sign, alice.id.key, b"sealed record bytes", 7, b"peerkit-locator-v1"
            )
            assert (await nodes[2].put(ours)).stored >= 4
            got = await libtorrent.get(alice.id.key, ours.salt)
            assert got == (alice.id.key, 7, ours.sig, b"sealed record bytes")
            # libtorrent puts (it bencodes the string itself); peerkit reads and verifies it.
            seed = os.urandom(32)
            seq = await libtorrent.put(seed, b"from libtorrent", b"s")
            found = await nodes[4].get(Identity.from_seed(seed).id.key, b"s")
            assert found is not None
            assert found.verify()
            assert (found.seq, found.decoded()) == (seq, b"from libtorrent")
        finally:
            libtorrent.close()


async def test_the_three_implementations_in_one_testnet(js_dht_ready: None, libtorrent_ready: None) -> None:
    async with mixed_testnet(6, 6) as (nodes, agent):
        libtorrent = Libtorrent(nodes[0].address, "127.0.0.3")
        try:
            # libtorrent joined once a peerkit node knows it. Not necessarily the one it bootstrapped
            # through: among 12 other nodes, that one's bucket for libtorrent's id may be full
            # already, and a full bucket keeps its nodes (newcomers wait for one to fail).
            with anyio.fail_after(30):
                while not any(n.address[0] == "127.0.0.3" for node in nodes for n in node.table.nodes()):
                    await anyio.sleep(0.1)
            # peerkit's item, read byte-exact by both others.
            alice = Identity.generate()
            ours = MutableItem.create(alice.sign, alice.id.key, b"where alice is", 4, b"peerkit-locator-v1")
            assert (await nodes[1].put(ours)).stored >= 4
            got = (await agent.ask(cmd="get", target=ours.target.hex(), salt=ours.salt.hex()))["got"]
            assert got == {"k": alice.id.key.hex(), "seq": 4, "v": b"where alice is".hex()}
            assert await libtorrent.get(alice.id.key, ours.salt) == (
                alice.id.key,
                4,
                ours.sig,
                b"where alice is",
            )
            # bittorrent-dht's item and libtorrent's, each read and verified by peerkit.
            js_seed, lt_seed = os.urandom(32), os.urandom(32)
            await agent.ask(cmd="put", seed=js_seed.hex(), v=b"from node".hex(), seq=2, salt=b"j".hex())
            lt_seq = await libtorrent.put(lt_seed, b"from libtorrent", b"l")
            for seed, salt, seq, value in (
                (js_seed, b"j", 2, b"from node"),
                (lt_seed, b"l", lt_seq, b"from libtorrent"),
            ):
                found = await nodes[5].get(Identity.from_seed(seed).id.key, salt)
                assert found is not None
                assert found.verify()
                assert (found.seq, found.decoded()) == (seq, value)
        finally:
            libtorrent.close()
