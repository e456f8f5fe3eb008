"""The Internet scope end to end on loopback: a DHT of plain nodes over UDP, and peerkit nodes
with the ``dht`` provider. A contact (who holds the locator key from the card) resolves and
invites a node signed in to INTERNET; a stranger learns nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from conftest import ACCEPTED, CHAT, accept_all, loopback_dht

from peerkit import (
    AppStream,
    DiscoveryError,
    EndPoint,
    Identity,
    Node,
    Peer,
    PeerId,
    PeerUnreachable,
    Presence,
    PresenceStatus,
    Scope,
    SubscribePermission,
)
from peerkit.dht import provider as provider_module
from peerkit.dht.node import DhtNode
from peerkit.dht.provider import DhtDiscovery
from peerkit.dht.record import SALT
from peerkit.dht.transport import UdpDatagrams
from peerkit.testing import check_discovery_provider

pytestmark = [pytest.mark.anyio, pytest.mark.network]


async def found(by: Node, peer_id: PeerId, timeout: float = 15) -> Peer:
    """``peer_id`` as ``by`` resolves it, once its record is there (publishing takes a moment)."""
    with anyio.fail_after(timeout):
        while True:
            with contextlib.suppress(PeerUnreachable):
                return await by.resolve(peer_id)
            await anyio.sleep(0.2)


def node(nickname: str, host: str, bootstrap: tuple[str, int]) -> Node:
    provider = DhtDiscovery(bootstrap=[bootstrap], host=host)
    return Node(
        nickname=nickname, identity=Identity.generate(), listen=("127.0.0.1", 0), discovery=[provider]
    )


async def test_a_contact_resolves_and_invites_a_node_signed_in_to_internet() -> None:
    async with loopback_dht(10) as dht, contextlib.AsyncExitStack() as stack:
        bootstrap = dht[0].address
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", bootstrap))
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", bootstrap))
        carol = await stack.enter_async_context(node("carol", "127.0.0.4", bootstrap))
        for each in (alice, bob):
            await each.register_application(CHAT)
        alice.add_invitation_handler(CHAT, accept_all)
        card = bob.contacts.read_card(alice.contacts.sign_card())
        assert card.locator_key == alice.contacts.locator_key
        await bob.contacts.add(card)
        await alice.sign_in(Scope.INTERNET)
        peer = await found(bob, alice.id)
        assert alice.endpoint in peer.endpoints
        assert await peer.invite(CHAT, timeout=5) == ACCEPTED
        # A stranger learns nothing: no key opens the record, whose bytes name no address.
        with pytest.raises(PeerUnreachable, match="no discovery provider knows"):
            await carol.resolve(alice.id)
        item = await dht[5].get(alice.id.key, SALT)
        assert item is not None
        assert b"127.0.0.1" not in item.value
        assert str(alice.endpoint.port).encode() not in item.value


async def test_an_invitation_to_a_contact_that_moved_falls_back_on_the_dht() -> None:
    async with loopback_dht(10) as dht, contextlib.AsyncExitStack() as stack:
        bootstrap = dht[0].address
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", bootstrap))
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", bootstrap))
        for each in (alice, bob):
            await each.register_application(CHAT)
        alice.add_invitation_handler(CHAT, accept_all)
        # Bob's card of alice names where she used to be (a port nobody listens on now).
        with socket.socket() as gone:
            gone.bind(("127.0.0.1", 0))
            old = EndPoint("127.0.0.1", gone.getsockname()[1])
        contact = await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card([old])))
        assert contact.endpoints == (old,)
        await alice.contacts.add(alice.contacts.read_card(bob.contacts.sign_card()))  # he may fetch
        await alice.sign_in(Scope.INTERNET)
        await found(bob, alice.id)
        # Where bob knew her, she is not; the DHT says where she is now.
        assert await contact.invite(CHAT, timeout=10) == ACCEPTED
        assert await contact.get_applications() == [CHAT]  # fetches fall back the same way

        async def greet(stream: AppStream) -> None:
            await stream.send(b"found me")

        alice.add_stream_handler(CHAT, greet)
        async with await contact.open_stream(CHAT) as stream:  # and streams
            assert await stream.receive() == b"found me"
            assert stream.peer.id == alice.id


async def test_on_the_public_dht_a_node_joins_through_its_contacts_when_the_routers_do_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The public routers blocked (here: a loopback port where nothing answers, as tests send
    # nowhere else): a contact's DHT node listens on the contact's port, so the contacts' last
    # addresses get the node into the DHT all the same (a blocked contact's left out).
    monkeypatch.setattr(provider_module, "DEFAULT_BOOTSTRAP", (("127.0.0.1", 9),))
    async with loopback_dht(10) as dht, contextlib.AsyncExitStack() as stack:
        bob, carol = [
            await stack.enter_async_context(
                Node(
                    nickname=name,
                    identity=Identity.generate(),
                    listen=(host, 0),  # (its DHT node there too, on its port)
                    discovery=[DhtDiscovery(bootstrap=[dht[0].address], host=host)],
                )
            )
            for name, host in (("bob", "127.0.0.3"), ("carol", "127.0.0.4"))
        ]

        def alice(discovery: list[Any]) -> Node:
            return Node(nickname="alice", data_dir=tmp_path, listen=("127.0.0.2", 0), discovery=discovery)

        async with alice([]) as before:  # (her contacts, from an earlier run)
            await before.contacts.add(before.contacts.read_card(bob.contacts.sign_card()))
            blocked = await before.contacts.add(before.contacts.read_card(carol.contacts.sign_card()))
            await before.contacts.update(blocked.replace(subscribe_allowed=SubscribePermission.BLOCKED))
            assert await before.contacts.last_addresses() == [(bob.endpoint.host, bob.endpoint.port)]
            await bob.contacts.add(bob.contacts.read_card(before.contacts.sign_card()))
        await bob.sign_in(Scope.INTERNET)
        public = DhtDiscovery(host="127.0.0.2")  # (no bootstrap given: the public DHT's routers)
        async with alice([public]) as now:
            assert public.bootstrap == (("127.0.0.1", 9),)
            peer = await found(now, bob.id)  # through bob's DHT node alone
            assert bob.endpoint in peer.endpoints
            assert {n.address for n in public.nodes[0].table.nodes()} >= {
                (bob.endpoint.host, bob.endpoint.port)
            }


async def test_a_contact_whose_old_address_is_silent_is_looked_up_within_a_second_not_a_timeout() -> None:
    # Where bob knew alice, something accepts connections and never answers (a firewall that
    # drops, a NAT's port now another host's): each way to her there would wait out the handshake
    # timeout (10 s). The DHT lookup starts beside it once it has had LOOKUP_AFTER (1 s).
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as silent,
        anyio.create_task_group() as tg,
        loopback_dht(10) as dht,
        contextlib.AsyncExitStack() as stack,
    ):
        held: list[Any] = []

        async def hold(connection: Any) -> None:
            held.append(connection)  # accepted, never answered, closed at the end
            await anyio.sleep_forever()

        tg.start_soon(silent.serve, hold)
        old = EndPoint("127.0.0.1", silent.extra(anyio.abc.SocketAttribute.local_port))
        bootstrap = dht[0].address
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", bootstrap))
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", bootstrap))
        for each in (alice, bob):
            await each.register_application(CHAT)
        alice.add_invitation_handler(CHAT, accept_all)

        @alice.on_stream(CHAT)
        async def echo(stream: Any) -> None:
            await stream.send(await stream.receive())

        contact = await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card([old])))
        await alice.contacts.add(alice.contacts.read_card(bob.contacts.sign_card()))
        await alice.sign_in(Scope.INTERNET)
        await found(bob, alice.id)
        for act in ("invite", "fetch", "stream"):
            start = anyio.current_time()
            if act == "invite":
                assert await contact.invite(CHAT, timeout=20) == ACCEPTED
            elif act == "fetch":
                assert await contact.get_applications(timeout=20) == [CHAT]
            else:
                async with await contact.open_stream(CHAT, timeout=20) as stream:
                    await stream.send(b"ping")
                    assert await stream.receive() == b"ping"
            took = anyio.current_time() - start
            assert took < 5, f"{act} waited {took:.1f} s for the silent address"
            await bob.disconnect(alice.id)  # each finds her afresh
        await stack.aclose()
        for connection in held:
            await connection.aclose()
        tg.cancel_scope.cancel()


async def test_blocking_a_contact_rotates_the_key_and_the_allowed_ones_get_the_new_one() -> None:
    async with loopback_dht(10) as dht, contextlib.AsyncExitStack() as stack:
        bootstrap = dht[0].address
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", bootstrap))
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", bootstrap))
        carol = await stack.enter_async_context(node("carol", "127.0.0.4", bootstrap))
        for friend in (bob, carol):  # both hold alice's card (and key); alice has both as contacts
            await friend.contacts.add(friend.contacts.read_card(alice.contacts.sign_card()))
            await alice.contacts.add(alice.contacts.read_card(friend.contacts.sign_card()))
        await alice.sign_in(Scope.INTERNET)

        async def resolved(by: Node) -> bool:
            try:
                await by.resolve(alice.id)
            except PeerUnreachable:
                return False
            return True

        with anyio.fail_after(15):
            while not (await resolved(bob) and await resolved(carol)):
                await anyio.sleep(0.2)
        old_key = alice.contacts.locator_key
        assert await (await bob.contacts.get(alice.id)).get_applications() == []  # bob has a channel open
        # Alice blocks carol: a new key seals her record; bob, allowed and connected, gets it.
        blocked = (await alice.contacts.get(carol.id)).replace(subscribe_allowed=SubscribePermission.BLOCKED)
        await alice.contacts.update(blocked)
        assert alice.contacts.locator_key != old_key
        with anyio.fail_after(15):
            while (await bob.contacts.get(alice.id)).locator_key != alice.contacts.locator_key:
                await anyio.sleep(0.1)
            while await resolved(carol):  # the record is sealed anew: carol's key opens nothing
                await anyio.sleep(0.2)
        assert await resolved(bob)
        assert (await carol.contacts.get(alice.id)).locator_key == old_key


async def test_peerkit_resolve_finds_a_contact_through_the_dht(tmp_path: Path) -> None:
    async with loopback_dht(8) as dht, contextlib.AsyncExitStack() as stack:
        bootstrap = dht[0].address
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", bootstrap))
        async with Node(nickname="bob", data_dir=tmp_path / "bob", discovery=[]) as bob:
            await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card()))
        await alice.sign_in(Scope.INTERNET)
        command = [
            sys.executable,
            "-c",
            "from peerkit.cli import main; main()",
            "resolve",
            str(alice.id)[:10],
        ]
        options = ["--discovery", f"dht:{bootstrap[0]}:{bootstrap[1]}", "--data-dir", str(tmp_path / "bob")]
        done = await anyio.run_process([*command, *options, "--json", "--timeout", "20"], check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        found = json.loads(done.stdout)
        assert found["peer"] == str(alice.id)
        assert str(alice.endpoint) in found["endpoints"]
        assert found["providers"] == ["dht"]
        # A stranger's id is no contact: a clear error, no traceback.
        stranger = str(Identity.generate().id)[:10]
        done = await anyio.run_process([*command[:-1], stranger, *options, "--timeout", "1"], check=False)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr.decode()
        assert "no contact's id starts with" in " ".join(done.stderr.decode().split())


async def test_commands_say_when_their_dht_node_reached_nobody(tmp_path: Path) -> None:
    # A contact not found: through a DHT that answers, the error says only that; through a
    # bootstrap that never answers (this machine offline, UDP blocked), it says that too.
    async with (
        Node(nickname="alice", identity=Identity.generate(), listen="127.0.0.1:0", discovery=[]) as alice,
        Node(nickname="bob", data_dir=tmp_path / "bob", listen="127.0.0.1:0", discovery=[]) as bob,
    ):
        await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card()))
    command = [sys.executable, "-c", "from peerkit.cli import main; main()", "resolve", str(alice.id)[:10]]
    options = ["--data-dir", str(tmp_path / "bob"), "--timeout", "2"]
    env = {**os.environ, "PEERKIT_PORT_MAPPING": "off"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        done = await anyio.run_process(
            [*command, *options, "--discovery", f"dht:{where}"], check=False, env=env
        )
        said = " ".join(done.stderr.decode().split())
        assert done.returncode == 1, said
        assert f"within 2 s; the DHT node reached no other node (bootstrap: {where})" in said
        invite = [*command[:3], "invite", str(alice.id)[:10], "chat", "--data-dir", str(tmp_path / "bob")]
        done = await anyio.run_process([*invite, "--discovery", f"dht:{where}"], check=False, env=env)
        said = " ".join(done.stderr.decode().split())
        assert done.returncode == 1, said
        assert f"; the DHT node reached no other node (bootstrap: {where})" in said  # (so do the others)
        reach = [
            *command[:3],
            "reach",
            str(alice.id)[:10],
            "--timeout",
            "2",
            "--data-dir",
            str(tmp_path / "bob"),
        ]
        done = await anyio.run_process([*reach, "--discovery", f"dht:{where}"], check=False, env=env)
        assert done.returncode == 1
        lines = done.stdout.decode().splitlines()
        assert lines[0] == f"ways to alice ({alice.id.fingerprint}):"
        assert lines[-1].startswith(f"the DHT node reached no other node (bootstrap: {where})")
    async with loopback_dht(4) as dht:
        host, port = dht[0].address
        done = await anyio.run_process(
            [*command, *options, "--discovery", f"dht:{host}:{port}"], check=False, env=env
        )
    said = " ".join(done.stderr.decode().split())
    assert done.returncode == 1, said
    assert said.endswith(f"no provider found {alice.id.fingerprint} within 2 s"), said


async def test_watching_a_contact_that_moved_follows_it_through_the_dht() -> None:
    async with loopback_dht(10) as dht, contextlib.AsyncExitStack() as stack:
        bootstrap = dht[0].address
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", bootstrap))
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", bootstrap))
        with socket.socket() as gone:
            gone.bind(("127.0.0.1", 0))
            old = EndPoint("127.0.0.1", gone.getsockname()[1])
        await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card([old])))
        await alice.contacts.add(alice.contacts.read_card(bob.contacts.sign_card()))
        await alice.sign_in(Scope.INTERNET)
        await alice.set_presence(Presence(PresenceStatus.BUSY, "moved"))
        await bob.sign_in(Scope.INTERNET)
        contact = await bob.contacts.get(alice.id)
        await contact.subscribe(wait=False)
        with anyio.fail_after(30):  # the stored endpoint fails; the DHT says where she is now
            while True:
                presence = contact.presence
                if presence is not None and presence.status is PresenceStatus.BUSY:
                    break
                await anyio.sleep(0.2)
        assert presence.text == "moved"


async def test_a_restart_rejoins_through_the_nodes_it_knew(tmp_path: Path) -> None:
    async with loopback_dht(10) as dht, contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", dht[0].address))
        await alice.sign_in(Scope.INTERNET)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.bind(("127.0.0.1", 0))
            nowhere = ("127.0.0.1", gone.getsockname()[1])  # a bootstrap that answers nothing
        home = tmp_path / "bob"
        first = DhtDiscovery(bootstrap=[dht[0].address], host="127.0.0.3")
        async with Node(nickname="bob", data_dir=home, listen=("127.0.0.1", 0), discovery=[first]) as bob:
            await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card()))
            await anyio.sleep(0.3)
        saved = json.loads((home / "dht-nodes.json").read_text())
        assert len(saved["nodes"]) >= 4  # what its routing table held (K per bucket)
        again = DhtDiscovery(bootstrap=[nowhere], host="127.0.0.3")
        async with Node(nickname="bob", data_dir=home, listen=("127.0.0.1", 0), discovery=[again]) as bob:
            peer = await found(bob, alice.id)
            assert alice.endpoint in peer.endpoints


async def test_the_dht_provider_conforms_in_resolve_mode() -> None:
    async with loopback_dht(8) as dht:
        bootstrap = dht[0].address
        await check_discovery_provider(
            lambda others: DhtDiscovery(bootstrap=[bootstrap], host="127.0.0.1"),
            resolve=True,
            timeout=15,
            settle=1.5,
        )


async def test_a_contact_gone_from_the_network_fails_cleanly_without_a_hang() -> None:
    async with loopback_dht(8) as dht, contextlib.AsyncExitStack() as stack:
        bootstrap = dht[0].address
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", bootstrap))
        await bob.register_application(CHAT)
        async with node("alice", "127.0.0.2", bootstrap) as alice:
            await alice.register_application(CHAT)
            contact = await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card()))
            await alice.sign_in(Scope.INTERNET)
            await found(bob, alice.id)
        # Alice is gone (her node stopped; her last record may linger in the DHT).
        start = anyio.current_time()
        with anyio.fail_after(30), pytest.raises(PeerUnreachable):
            await contact.invite(CHAT, timeout=10)
        assert anyio.current_time() - start < 25


async def test_a_contact_that_moves_is_found_at_its_new_address(tmp_path: Path) -> None:
    async with loopback_dht(8) as dht, contextlib.AsyncExitStack() as stack:
        bootstrap = dht[0].address
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", bootstrap))
        home = tmp_path / "alice"

        def alice_at(host: str) -> Node:
            provider = DhtDiscovery(bootstrap=[bootstrap], host=host)
            return Node(nickname="alice", data_dir=home, listen=(host, 0), discovery=[provider])

        async def where(peer_id: PeerId) -> tuple[EndPoint, ...]:
            return (await found(bob, peer_id)).endpoints

        async with alice_at("127.0.0.2") as alice:
            await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card()))
            await alice.sign_in(Scope.INTERNET)
            first = alice.endpoint
            assert first in await where(alice.id)
        async with alice_at("127.0.0.5") as moved:  # the same identity, on another network
            await moved.sign_in(Scope.INTERNET)
            with anyio.fail_after(15):
                while moved.endpoint not in await where(moved.id):
                    await anyio.sleep(0.2)
            assert first not in await where(moved.id)


async def test_a_record_published_before_the_dht_is_reachable_is_stored_once_it_is() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reserve:
        reserve.bind(("127.0.0.10", 0))
        port = reserve.getsockname()[1]  # where the DHT will be; nothing answers there yet
    async with contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", ("127.0.0.10", port)))
        await alice.sign_in(Scope.INTERNET)  # its first put finds no node
        await anyio.sleep(1.5)
        tg = await stack.enter_async_context(anyio.create_task_group())
        first = DhtNode(await UdpDatagrams.bind("127.0.0.10", port))
        await tg.start(first.run)
        for i in range(7):
            more = DhtNode(await UdpDatagrams.bind(f"127.0.0.{11 + i}", 0), bootstrap=[first.address])
            await tg.start(more.run)
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", first.address))
        await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card()))
        assert alice.endpoint in (await found(bob, alice.id, timeout=30)).endpoints
        tg.cancel_scope.cancel()


async def test_one_identity_signed_in_on_two_machines_is_found_at_both(tmp_path: Path) -> None:
    async with loopback_dht(10) as dht, contextlib.AsyncExitStack() as stack:
        bootstrap = dht[0].address

        def device(host: str, data_dir: Path) -> Node:
            provider = DhtDiscovery(bootstrap=[bootstrap], host=host)
            return Node(nickname="alice", data_dir=data_dir, listen=("127.0.0.1", 0), discovery=[provider])

        async with device("127.0.0.2", tmp_path / "desk") as first:
            card = first.contacts.sign_card()
        shutil.copytree(tmp_path / "desk", tmp_path / "laptop")  # alice's identity, on her laptop too
        desk = await stack.enter_async_context(device("127.0.0.2", tmp_path / "desk"))
        laptop = await stack.enter_async_context(device("127.0.0.5", tmp_path / "laptop"))
        assert desk.id == laptop.id
        assert desk.contacts.locator_key == laptop.contacts.locator_key
        bob = await stack.enter_async_context(node("bob", "127.0.0.3", bootstrap))
        await bob.contacts.add(bob.contacts.read_card(card))
        async with anyio.create_task_group() as tg:  # both at once: their writes conflict, and merge
            tg.start_soon(desk.sign_in, Scope.INTERNET)
            tg.start_soon(laptop.sign_in, Scope.INTERNET)

        async def seen_at() -> set[EndPoint]:
            with contextlib.suppress(PeerUnreachable):
                return set((await bob.resolve(desk.id)).endpoints)
            return set()

        with anyio.fail_after(20):
            while await seen_at() != {desk.endpoint, laptop.endpoint}:
                await anyio.sleep(0.2)
        # The laptop signs out: the desk is still found, the laptop no longer.
        await laptop.sign_out()
        with anyio.fail_after(20):
            while await seen_at() != {desk.endpoint}:
                await anyio.sleep(0.2)


async def test_peerkit_dht_status_says_what_the_running_node_does(tmp_path: Path) -> None:
    cli = [sys.executable, "-c", "from peerkit.cli import main; main()"]
    data_dir = ["--data-dir", str(tmp_path / "alice")]

    async def status() -> tuple[int, str, dict[str, Any] | None]:
        done = await anyio.run_process([*cli, "dht", "status", *data_dir, "--json"], check=False)
        text = done.stdout.decode()
        return done.returncode, done.stderr.decode(), json.loads(text) if text.strip() else None

    code, error, _ = await status()  # nothing has run there yet: a clear error, no traceback
    assert code == 1
    assert "no node with the dht provider has run with" in error
    async with loopback_dht(8) as dht:
        host, port = dht[0].address
        serve = [*cli, "serve", "--listen", "127.0.0.1:0", "--discovery", f"dht:{host}:{port}", *data_dir]
        async with await anyio.open_process(serve) as server:
            try:
                with anyio.fail_after(20):
                    while True:
                        code, _, found = await status()
                        if found is not None and found["last_publish"] is not None:
                            break
                        await anyio.sleep(0.2)
                assert code == 0
                assert found["running"] is True
                assert found["nodes"] >= 7  # the testnet's nodes
                assert found["read_only"] is False  # a DHT of one's own: it serves
                assert found["last_publish"]["stored"] >= 7
                assert found["bootstrap"] == [f"{host}:{port}"]
                done = await anyio.run_process([*cli, "dht", "status", *data_dir], check=False)
                text = done.stdout.decode()
                assert f"routing table: {found['nodes']} nodes" in text
                assert "running (pid" in text
                assert "serving queries" in text
                assert "seen by others at: 127.0.0.1:" in text  # the ip field of the answers
            finally:
                server.terminate()
                await server.wait()
        code, _, found = await status()
        assert code == 1  # stopped: said so, with what it last did
        assert found is not None
        assert found["running"] is False
        done = await anyio.run_process([*cli, "dht", "status", *data_dir], check=False)
        assert "not running (last seen" in done.stdout.decode()
        alone = await anyio.run_process([*cli, "dht", *data_dir], check=False)  # (alone: the status)
        assert (alone.returncode, alone.stdout) == (1, done.stdout)


async def test_a_dual_stack_node_is_found_on_the_ipv4_and_the_ipv6_dht() -> None:
    async with (
        loopback_dht(8) as four,
        loopback_dht(8, ipv6=True) as six,
        contextlib.AsyncExitStack() as stack,
    ):
        both = DhtDiscovery(bootstrap=[four[0].address, six[0].address], host="127.0.0.2", host6="::1")
        alice = Node(
            nickname="alice", identity=Identity.generate(), listen=("127.0.0.1", 0), discovery=[both]
        )
        await stack.enter_async_context(alice)
        only_six = DhtDiscovery(bootstrap=[six[0].address], host=None, host6="::1")
        bob = await stack.enter_async_context(
            Node(nickname="bob", listen=("127.0.0.1", 0), discovery=[only_six])
        )
        carol = await stack.enter_async_context(node("carol", "127.0.0.4", four[0].address))
        assert [n.address[0] for n in both.nodes] == ["127.0.0.2", "::1"]  # one node per family
        assert both.nodes[0].id == both.nodes[1].id  # one id (BEP 32)
        assert [n.address[0] for n in only_six.nodes] == ["::1"]
        for each in (bob, carol):
            await each.contacts.add(each.contacts.read_card(alice.contacts.sign_card()))
        await alice.sign_in(Scope.INTERNET)
        assert alice.endpoint in (await found(bob, alice.id)).endpoints  # through the IPv6 DHT
        assert alice.endpoint in (await found(carol, alice.id)).endpoints  # through the IPv4 DHT
        assert await six[3].get(alice.id.key, SALT) is not None
        assert await four[3].get(alice.id.key, SALT) is not None
        assert only_six.nodes[0].status().nodes >= 7
        assert all(":" in n.address[0] for n in only_six.nodes[0].table.nodes())


async def test_a_node_joins_the_public_dht_through_its_contacts_dht_nodes(tmp_path: Path) -> None:
    async with loopback_dht(8) as dht, contextlib.AsyncExitStack() as stack:
        bootstrap = dht[0].address
        alice = await stack.enter_async_context(node("alice", "127.0.0.2", bootstrap))
        await alice.sign_in(Scope.INTERNET)
        carols_dht = DhtDiscovery(bootstrap=[bootstrap], host="127.0.0.4")
        carol = Node(
            nickname="carol", identity=Identity.generate(), listen=("127.0.0.4", 0), discovery=[carols_dht]
        )
        await stack.enter_async_context(carol)
        assert carols_dht.node is not None
        assert carols_dht.node.address == ("127.0.0.4", carol.endpoint.port)  # one port number
        home = tmp_path / "bob"
        async with Node(nickname="bob", data_dir=home, listen=("127.0.0.3", 0), discovery=[]) as bob:
            for friend in (alice, carol):
                await bob.contacts.add(bob.contacts.read_card(friend.contacts.sign_card()))
        public = DhtDiscovery(host="127.0.0.3")  # the public DHT, as users join it ...
        public.bootstrap = ()  # ... but no public router: only what bob knows of his contacts
        async with Node(nickname="bob", data_dir=home, listen=("127.0.0.3", 0), discovery=[public]) as bob:
            peer = await found(bob, alice.id)  # through carol's DHT node, the only way in
            assert alice.endpoint in peer.endpoints
            assert public.node is not None
            assert ("127.0.0.4", carol.endpoint.port) in public.node.bootstrap_addresses


async def test_a_dht_node_binds_where_its_node_listens() -> None:
    # A node kept to loopback (or to one network) keeps its DHT node there too, unless told.
    async with loopback_dht(3) as dht:
        bootstrap = dht[0].address
        for listen, host, bound in [
            (("127.0.0.5", 0), "", ["127.0.0.5"]),
            (("", 0), "", ["0.0.0.0"]),
            (("127.0.0.5", 0), "0.0.0.0", ["0.0.0.0"]),
            (("::1", 0), "", ["::1"]),  # (an IPv6 address only: no IPv4 node)
        ]:
            provider = DhtDiscovery(bootstrap=[bootstrap], host=host)
            async with Node(identity=Identity.generate(), listen=listen, discovery=[provider]):
                assert [n.transport.local_address[0] for n in provider.nodes] == bound, listen
        nothing = DhtDiscovery(bootstrap=[bootstrap], host6=None)
        with pytest.raises(DiscoveryError, match=r"listens on ::1 only.*host6=None"):
            async with Node(identity=Identity.generate(), listen=("::1", 0), discovery=[nothing]):
                pass
