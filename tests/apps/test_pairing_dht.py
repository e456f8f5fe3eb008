"""Pairing through the DHT (nodes signed in to the Internet scope): the code's rendezvous is a
BEP 44 item holding the waiting node's signed record, found without mDNS or an address, and
withdrawn when the code ends; what others write there is checked."""

from __future__ import annotations

import contextlib

import anyio
import pytest
from conftest import loopback_dht

from peerkit import Identity, Node, PairingFailed, Scope
from peerkit.dht.provider import DhtDiscovery
from peerkit.discovery.rendezvous import lookup_dht_rendezvous, publish_dht_rendezvous
from peerkit.proto.pairing import rendezvous_name

pytestmark = [pytest.mark.anyio, pytest.mark.network]


def node(nickname: str, host: str, bootstrap: tuple[str, int]) -> Node:
    provider = DhtDiscovery(bootstrap=[bootstrap], host=host, host6=None)
    return Node(
        nickname=nickname, identity=Identity.generate(), listen=("127.0.0.1", 0), discovery=[provider]
    )


async def signed_in(each: Node) -> None:
    await each.sign_in(Scope.INTERNET)
    with anyio.fail_after(10):
        while each.pairing_dht() is None:
            await anyio.sleep(0.05)


async def test_a_code_is_found_through_the_dht_and_withdrawn_when_it_ends() -> None:
    async with loopback_dht(8) as dht, contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", dht[0].address))
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", dht[0].address))
        for each in (alice, bob):
            await signed_in(each)
        name = ""
        async with alice.pair(lan=False) as pairing:
            assert 100 <= pairing.code.number <= 9999  # (an Internet code: a wider rendezvous)
            name = rendezvous_name(pairing.code.number)
            await publish_dht_rendezvous(dht[3], name + "x", b"not a record")
            contact = await bob.join_pairing(str(pairing.code), lan=False)
            assert (contact.id, contact.nickname) == (alice.id, "alice")
            assert (await pairing.wait()).id == bob.id
        # Withdrawn: the empty record reaches every node that held the code (a quorum of them at
        # once, the rest moments later; a loaded machine may see a copy of the old one first).
        with anyio.fail_after(20):
            while await lookup_dht_rendezvous(dht[2], name, 5):
                await anyio.sleep(0.5)
        with pytest.raises(PairingFailed, match="nobody waits with code number"):
            await bob.join_pairing(str(pairing.code), lan=False)


async def test_what_others_write_under_a_rendezvous_is_only_used_when_it_is_a_signed_record() -> None:
    async with loopback_dht(8) as dht, contextlib.AsyncExitStack() as stack:
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", dht[0].address))
        await signed_in(bob)
        name = rendezvous_name(4321)
        await publish_dht_rendezvous(dht[4], name, b"\xa1\x00forged")
        assert await lookup_dht_rendezvous(dht[2], name, 5) == [b"\xa1\x00forged"]
        with pytest.raises(PairingFailed, match="nobody waits with code number 4321"):
            await bob.join_pairing("4321-acorn-adult", lan=False)
