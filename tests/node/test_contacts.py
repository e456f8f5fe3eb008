"""The contact store (R7): SQLite persistence, the manager's API and events, contact cards, crash safety."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import sqlite3
import sys
import time
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from conftest import facing_mallory

from peerkit import (
    Application,
    ChangeType,
    Contact,
    ContactChanged,
    ContactExists,
    EndPoint,
    Identity,
    InvalidRecord,
    Invitation,
    InvitationPolicy,
    InvitationResponse,
    LimitExceeded,
    Node,
    NotAllowed,
    NotRunning,
    ProtocolError,
    Scope,
    SecureChannel,
    StoreError,
    SubscribePermission,
    SubscriptionListChanged,
    UnknownContact,
)
from peerkit.contacts import CARD_PREFIX, read_card
from peerkit.node import nearby as nearby_module
from peerkit.proto import records
from peerkit.store import DATABASE_FILE, SCHEMA_VERSION
from peerkit.testing import MemoryNetwork, node_pair, nodes

pytestmark = pytest.mark.anyio

CHAT = Application(id=uuid.UUID("6f1c2a4e-0000-4000-8000-0000000000c1"), description="chat")


def pair(tmp_path: Path | None = None, **options: Any) -> AbstractAsyncContextManager[tuple[Node, Node]]:
    """Alice and Bob near each other (keeping their data under ``tmp_path`` when given)."""
    return node_pair(data_dir=tmp_path, **options)


# -- the store -----------------------------------------------------------------------------------
async def test_contacts_persist_across_restarts_in_a_wal_database_with_a_schema_version(
    tmp_path: Path,
) -> None:
    someone = Identity.generate().id
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:
        added = await node.contacts.add(
            someone,
            nickname="bob",
            display_name="Bob B.",
            email="bob@example.org",
            endpoints=[EndPoint("10.1.2.3", 7000)],
        )
        await node.contacts.update(node.contacts.me.replace(display_name="Alice A.", email="a@example.org"))
    database = tmp_path / DATABASE_FILE
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert database.stat().st_mode & 0o077 == 0
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:
        again = await node.contacts.get(someone)
        assert again == added
        assert (again.nickname, again.display_name, again.email) == ("bob", "Bob B.", "bob@example.org")
        assert again.endpoints == (EndPoint("10.1.2.3", 7000),)
        assert (again.endpoints[0].relay, again.endpoints[0].how) == (None, "")  # every field is there
        assert again.subscribe_allowed is SubscribePermission.ALLOWED
        assert not again.is_subscribed
        assert node.contacts.me.display_name == "Alice A."
        assert node.contacts.me.email == "a@example.org"
        assert [c.id for c in await node.contacts.list()] == [someone]


def files_open_under(path: Path) -> list[str]:
    """The files under ``path`` this process holds open (Linux: /proc/self/fd)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor is gone by now)
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{path}/"):
                found.append(target)
    return found


async def test_a_node_that_stopped_holds_no_file_of_its_data_dir_open(tmp_path: Path) -> None:
    # The database stayed open as long as the Node object lived (closed only when collected:
    # Python 3.13 warns of it then, and the data dir could not be removed on Windows).
    node = Node(data_dir=tmp_path, listen=("127.0.0.1", 0), discovery=[])
    async with node:
        assert str(tmp_path / DATABASE_FILE) in files_open_under(tmp_path)
    assert files_open_under(tmp_path) == []
    assert node._store._connection is None


async def test_a_database_from_a_newer_peerkit_or_another_program_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer"
    newer.mkdir()
    with contextlib.closing(sqlite3.connect(newer / DATABASE_FILE)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="schema version 2, newer than this peerkit's 1"):
        async with Node(data_dir=newer, listen=("127.0.0.1", 0)):
            pass
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with contextlib.closing(sqlite3.connect(foreign / DATABASE_FILE)) as db:
        db.execute("CREATE TABLE t (x)")
        db.commit()
    with pytest.raises(StoreError, match="not a peerkit database"):
        async with Node(data_dir=foreign, listen=("127.0.0.1", 0)):
            pass
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / DATABASE_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not usable"):
        async with Node(data_dir=garbage, listen=("127.0.0.1", 0)):
            pass


# -- the manager -----------------------------------------------------------------------------------
async def test_add_get_list_update_delete_with_their_errors_and_events() -> None:
    async with pair() as (alice, bob):
        changes: list[ContactChanged | SubscriptionListChanged] = []
        async with alice.contacts.watch() as watch:
            contact = await alice.contacts.add(bob.id, nickname="bob")
            assert contact.added > 0
            assert contact.last_seen is None
            with pytest.raises(ContactExists, match="already a contact"):
                await alice.contacts.add(bob.id)
            assert (await alice.contacts.get(bob.id)).nickname == "bob"
            stranger = Identity.generate().id
            with pytest.raises(UnknownContact, match=f"{stranger.fingerprint} is not a contact"):
                await alice.contacts.get(stranger)
            assert await alice.contacts.find(stranger) is None
            with pytest.raises(UnknownContact):
                await alice.contacts.update(Contact(alice, stranger))
            with pytest.raises(UnknownContact):
                await alice.contacts.delete(stranger)
            updated = await alice.contacts.update(
                contact.replace(display_name="Bob", subscribe_allowed=SubscribePermission.BLOCKED)
            )
            assert (await alice.contacts.get(bob.id)) == updated
            assert alice.contacts.permission(bob.id) is SubscribePermission.BLOCKED
            await alice.contacts.delete(bob.id)
            assert await alice.contacts.list() == []
            assert not alice.contacts.has(bob.id)
            while watch.pending:
                changes.append(await watch.__anext__())
        # ADDED then DELETED of one contact merge to nothing for a reader that was not reading.
        assert changes == []
        async with alice.contacts.watch() as watch:
            await alice.contacts.add(bob.id, nickname="bob")
            first = await watch.__anext__()
            assert isinstance(first, ContactChanged)
            assert first.change is ChangeType.ADDED
            await alice.contacts.update(first.contact.replace(email="b@example.org"))
            second = await watch.__anext__()
            assert isinstance(second, ContactChanged)
            assert second.change is ChangeType.UPDATED
            assert second.contact.email == "b@example.org"
            await alice.contacts.delete(bob.id)
            third = await watch.__anext__()
            assert isinstance(third, ContactChanged)
            assert third.change is ChangeType.DELETED


async def test_contact_fields_are_checked_and_me_changes_only_its_names() -> None:
    async with pair() as (alice, bob):
        with pytest.raises(LimitExceeded, match="nickname is 256 characters; the limit is 255"):
            await alice.contacts.add(bob.id, nickname="x" * 256)
        endpoints = [EndPoint("10.9.0.1", port) for port in range(1000, 1051)]
        with pytest.raises(LimitExceeded, match="51 endpoints; the limit is 50"):
            await alice.contacts.add(bob.id, endpoints=endpoints)
        with pytest.raises(TypeError, match="Contact or a PeerId"):
            await alice.contacts.add("bob")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="own id"):
            await alice.contacts.add(alice.id)
        assert not alice.contacts.has(bob.id)  # nothing was half-added
        contact = await alice.contacts.add(bob.id, endpoints=endpoints[:50])
        assert len(contact.endpoints) == 50
        with pytest.raises(TypeError, match="no field 'id'"):
            contact.replace(id=alice.id)
        me = alice.contacts.me
        assert me.is_me
        assert me.is_subscribed
        assert me.subscribe_allowed is SubscribePermission.ALLOWED
        with pytest.raises(ValueError, match="only the nickname, display name and email of me"):
            await alice.contacts.update(me.replace(subscribe_allowed=SubscribePermission.BLOCKED))
        with pytest.raises(ValueError, match="me cannot be deleted"):
            await alice.contacts.delete(alice.id)
        await alice.contacts.update(me.replace(nickname="alicia"))
        assert alice.nickname == "alicia"
        assert (await alice.contacts.get(alice.id)).nickname == "alicia"
    with pytest.raises(NotRunning):
        await alice.contacts.list()


# -- contact cards ---------------------------------------------------------------------------------
async def test_a_card_exported_as_text_or_file_imports_with_its_details(tmp_path: Path) -> None:
    async with pair() as (alice, bob):
        await bob.sign_in(Scope.ALL)
        await bob.contacts.update(
            bob.contacts.me.replace(display_name="Bob Builder", email="bob@example.org")
        )
        text = bob.contacts.me.export_card()
        assert text.startswith(CARD_PREFIX)
        assert len(text) < 600
        contact = await alice.contacts.import_card(text)
        assert contact.id == bob.id
        assert contact.nickname == "bob"
        assert (contact.display_name, contact.email) == ("Bob Builder", "bob@example.org")
        assert contact.endpoints == (bob.endpoint,)
        # A contact's own card is passed on unchanged and still verifies.
        assert read_card(contact.export_card()).id == bob.id
        await alice.contacts.delete(bob.id)
        path = tmp_path / "bob.peerkit-card"
        bob.contacts.me.save_card(path)
        assert (await alice.contacts.import_card(path)).id == bob.id
        (tmp_path / "bob.txt").write_text(text + "\n")
        assert alice.contacts.read_card(tmp_path / "bob.txt").id == bob.id
        with pytest.raises(ContactExists):
            await alice.contacts.import_card(text)
        added_by_id = await bob.contacts.add(alice.id)
        with pytest.raises(ValueError, match="added by id, not from its card"):
            added_by_id.export_card()


async def test_a_contacts_newer_card_updates_it_and_an_older_one_changes_nothing() -> None:
    async with pair() as (alice, bob):
        first = bob.contacts.me.export_card()
        kept = await alice.contacts.import_card(first)
        await alice.contacts.update(kept.replace(subscribe_allowed=SubscribePermission.BLOCKED))
        bob.nickname = "bobby"
        newer = bob.contacts.me.export_card()
        renewed = await alice.contacts.import_card(newer, update=True)
        assert (renewed.nickname, renewed.card) == ("bobby", read_card(newer).envelope)
        assert renewed.subscribe_allowed is SubscribePermission.BLOCKED  # the permission stays
        assert (await alice.contacts.get(bob.id)).nickname == "bobby"
        older = await alice.contacts.import_card(first, update=True)
        assert (older.nickname, older.card) == ("bobby", read_card(newer).envelope)
        with pytest.raises(ContactExists):
            await alice.contacts.import_card(newer)  # without update=True


async def test_a_card_imported_over_a_contact_is_verified_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async with pair() as (alice, bob):
        await alice.contacts.import_card(bob.contacts.me.export_card())
        bob.nickname = "bobby"
        newer = bob.contacts.me.export_card()
        verified: list[object] = []

        def counted(card: str | bytes) -> Any:
            verified.append(card)
            return read_card(card)

        monkeypatch.setattr("peerkit.contacts.read_card", counted)
        assert (await alice.contacts.import_card(newer, update=True)).nickname == "bobby"
        assert len(verified) == 2  # the new card, and the one kept (to compare their seq)
        assert verified[0] == newer


def _tamper(text: str) -> str:
    envelope = bytearray(base64.urlsafe_b64decode(text[len(CARD_PREFIX) :] + "=" * (-len(text) % 4)))
    where = bytes(envelope).index(b"bob")
    envelope[where : where + 3] = b"eve"
    return CARD_PREFIX + base64.urlsafe_b64encode(bytes(envelope)).rstrip(b"=").decode()


async def test_a_tampered_or_malformed_card_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    async with pair() as (alice, bob):
        text = bob.contacts.me.export_card()
        with pytest.raises(
            InvalidRecord, match="contact card rejected: signed record signature does not verify"
        ):
            await alice.contacts.import_card(_tamper(text))
        with pytest.raises(InvalidRecord, match="starts with 'peerkit:'"):
            await alice.contacts.import_card(text[len(CARD_PREFIX) :])
        with pytest.raises(InvalidRecord, match="not valid base64url"):
            await alice.contacts.import_card(CARD_PREFIX + "a")
        with pytest.raises(InvalidRecord, match="malformed"):
            await alice.contacts.import_card(CARD_PREFIX + "AAAA")
        # A card's text pasted in part: said to be cut short, before what the decoder found.
        with pytest.raises(InvalidRecord, match=r"its text is cut short or damaged \(copy all of it"):
            await alice.contacts.import_card(text[: len(CARD_PREFIX) + len(text) // 8 * 4])
        # A file of text with no card in it is said to be one (not decoded as a card's bytes).
        notes = tmp_path / "notes.txt"
        notes.write_text("root:x:0:0:root:/root:/bin/bash\n")
        with pytest.raises(InvalidRecord, match=r"notes\.txt holds no contact card: a card's text starts"):
            await alice.contacts.import_card(notes)
        envelope = tmp_path / "card.bin"  # (a card's bytes cut short: no word of text)
        envelope.write_bytes(base64.urlsafe_b64decode(text[len(CARD_PREFIX) :] + "==")[:40])
        with pytest.raises(InvalidRecord, match=r"^contact card rejected: signed record is malformed"):
            await alice.contacts.import_card(envelope)
        with pytest.raises(TypeError):
            await alice.contacts.import_card(12)  # type: ignore[arg-type]
        # A discovery record is not a card: the domains differ.
        record = records.sign_record(bob.identity, 1, {"nick": "bob"})
        with pytest.raises(InvalidRecord, match="does not verify"):
            read_card(record)
        assert await alice.contacts.list() == []


async def test_add_from_fetches_the_peers_signed_card_over_the_channel() -> None:
    async with pair() as (alice, bob):
        await alice.sign_in(Scope.ALL)
        await bob.sign_in(Scope.ALL)
        await bob.contacts.update(bob.contacts.me.replace(email="bob@example.org"))
        near = await alice.find_nearby(nickname="bob", timeout=5)
        contact = await alice.contacts.add_from(near)
        assert contact.id == bob.id
        assert contact.email == "bob@example.org"
        assert contact.card is not None
        assert (await alice.contacts.get(bob.id)).email == "bob@example.org"
        with pytest.raises(ContactExists):
            await alice.contacts.add_from(near)
        await bob.sign_out()
        await alice.contacts.delete(bob.id)
        with pytest.raises(Exception, match="not signed in"):
            await alice.contacts.add_from(alice.peer(bob.id, bob.endpoint))
        assert not alice.contacts.has(bob.id)


async def test_add_from_refuses_a_card_of_another_peer() -> None:
    other = Identity.generate()
    card = records.sign_record(other, 5, {"nick": "not mallory"}, domain=records.CARD_DOMAIN)

    async def script(channel: SecureChannel, raw: Any) -> None:
        async for message in channel:
            if message.get("t") == "card":
                await channel.send({"t": "card_reply", "rid": message["rid"], "card": card})

    async with facing_mallory(CHAT, script) as (alice, mallory):
        with pytest.raises(ProtocolError, match="card of another peer"):
            await alice.contacts.add_from(mallory)
        assert len(alice.contacts) == 0


@pytest.mark.parametrize(
    ("asked", "answer", "problem"),
    [
        ("card", {"t": "card_reply"}, "answered a card request without a card"),
        ("card", {"t": "card_reply", "card": b"\xa1not a card"}, "sent a card that does not verify"),
        ("apps", {"t": "get_reply", "apps": "chat"}, '"apps" must be a list of at most 64'),
        ("apps", {"t": "get_reply", "apps": [b"x"] * 65}, '"apps" must be a list of at most 64'),
        ("objects", {"t": "get_reply"}, '"objects" must be a list of at most'),
        (
            "presence",
            {"t": "get_reply", "presence": "online"},
            "sent a bad answer to a request for its presence",
        ),
    ],
)
async def test_a_peers_bad_answer_to_a_fetch_is_named_and_changes_nothing(
    asked: str, answer: dict[str, Any], problem: str
) -> None:
    async def script(channel: SecureChannel, raw: Any) -> None:
        async for message in channel:
            if message.get("t") in ("card", "get"):
                await channel.send({**answer, "rid": message["rid"]})

    async with facing_mallory(CHAT, script) as (alice, mallory):
        fetch = {
            "card": lambda: alice.contacts.add_from(mallory),
            "apps": mallory.get_applications,
            "objects": mallory.get_objects,
            "presence": mallory.get_presence,
        }[asked]
        with pytest.raises(ProtocolError, match=re.escape(problem)):
            await fetch()
        assert len(alice.contacts) == 0


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"t": "error", "code": "not-allowed", "msg": "no"}, "refused a record request: not-allowed: no"),
        ({"t": "record_reply"}, "answered a record request without a record"),
        ({"t": "record_reply", "rec": b"\xa0"}, "sent a record that does not verify"),
        ("another's", "sent the record of another peer"),
    ],
)
async def test_a_peers_bad_answer_to_a_record_request_is_named(answer: Any, problem: str) -> None:
    # (what the static discovery provider asks the peers it is given; a failure is "not found")
    if answer == "another's":
        answer = {"t": "record_reply", "rec": records.sign_record(Identity.generate(), 1, {"nick": "x"})}

    async def script(channel: SecureChannel, raw: Any) -> None:
        async for message in channel:
            if message.get("t") == "record":
                await channel.send({**answer, "rid": message["rid"]})

    async with facing_mallory(CHAT, script) as (alice, mallory):
        where = mallory.endpoints[0]
        with pytest.raises(ProtocolError, match=re.escape(problem)):
            await alice._requests.fetch_record(where.host, where.port, mallory.id)


# -- policy --------------------------------------------------------------------------------------
async def test_contacts_only_policy_uses_the_store_and_marks_contacts_trusted() -> None:
    async with pair(invitation_policy=InvitationPolicy.CONTACTS_ONLY) as (alice, bob):
        seen: list[Invitation] = []

        async def accept(invitation: Invitation) -> InvitationResponse:
            seen.append(invitation)
            return InvitationResponse.ACCEPTED

        for node in (alice, bob):
            await node.register_application(CHAT)
        alice.add_invitation_handler(CHAT, accept)
        peer = bob.peer(alice.id, alice.endpoint)
        assert await peer.invite(CHAT, timeout=5) is InvitationResponse.DECLINED
        await alice.contacts.add(bob.id, nickname="bob")
        assert await peer.invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED
        assert seen[0].trusted
        assert seen[0].contact is not None
        assert seen[0].contact.nickname == "bob"
        await alice.contacts.delete(bob.id)
        assert await peer.invite(CHAT, timeout=5) is InvitationResponse.DECLINED


# -- crash safety --------------------------------------------------------------------------------
WRITER = """
import sys, anyio, peerkit
from peerkit.testing import MemoryNetwork

async def main():
    node = peerkit.Node(data_dir=sys.argv[1], network=MemoryNetwork(), listen=("10.0.0.1", 0))
    async with node:
        for i in range(100000):
            peer_id = peerkit.Identity.from_seed(i.to_bytes(32, "big")).id
            where = [peerkit.EndPoint("10.0.0.9", 1 + i % 60000)]
            await node.contacts.add(peer_id, nickname=f"n{i}", endpoints=where)
            if i % 3 == 0:
                await node.contacts.delete(peer_id)
            print(i, flush=True)

anyio.run(main)
"""


async def test_a_writer_killed_mid_write_loses_no_committed_change(tmp_path: Path) -> None:
    output = b""
    async with await anyio.open_process([sys.executable, "-c", WRITER, str(tmp_path)]) as process:
        assert process.stdout is not None
        with anyio.fail_after(60):
            while output.count(b"\n") < 1500:
                output += await process.stdout.receive()
        process.send_signal(signal.SIGKILL)
        with contextlib.suppress(anyio.EndOfStream):
            while True:
                output += await process.stdout.receive()
    assert process.returncode == -signal.SIGKILL
    committed = int(output[: output.rindex(b"\n")].split()[-1])
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_FILE)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    async with Node(data_dir=tmp_path, network=MemoryNetwork(), listen=("10.0.0.1", 0)) as node:
        stored = {c.nickname for c in await node.contacts.list()}
    expected = {f"n{i}" for i in range(committed + 1) if i % 3 != 0}
    # Every change reported committed is there; at most the one under way when killed is too.
    assert expected <= stored
    assert len(stored - expected) <= 1


async def test_last_seen_is_when_a_channel_to_the_contact_last_opened() -> None:
    async with pair() as (alice, bob):
        contact = await alice.contacts.add(bob.id, endpoints=[bob.endpoint])
        assert contact.last_seen is None
        before = time.time()
        await alice.peer_at(bob.endpoint.host, bob.endpoint.port, bob.id)
        with anyio.fail_after(5):
            while (await alice.contacts.get(bob.id)).last_seen is None:
                await anyio.sleep(0.01)
        seen = (await alice.contacts.get(bob.id)).last_seen
        assert seen is not None
        assert before <= seen <= time.time()


async def test_a_database_locked_by_another_process_is_a_clear_store_error(tmp_path: Path) -> None:
    from peerkit.contacts import _insert
    from peerkit.store import Store

    store = Store(tmp_path / DATABASE_FILE, busy_timeout=0.2)
    await store.open()
    try:
        with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_FILE, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            row = (bytes(32), "", "", "", "[]", 1, 0, 0.0, None, None)
            with pytest.raises(StoreError, match="failed: database is locked"):
                await store.write(_insert, row)
            other.execute("ROLLBACK")
        assert await store.write(_insert, row)  # and it works again once the lock is gone
    finally:
        await store.aclose()


async def test_a_card_carries_the_locator_key_kept_across_restarts(tmp_path: Path) -> None:
    node = Node(nickname="alice", data_dir=tmp_path / "alice", discovery=[])
    async with node:
        key = node.contacts.locator_key
        assert key is not None
        assert len(key) == 32
        assert read_card(node.contacts.sign_card()).locator_key == key
    async with Node(nickname="alice", data_dir=tmp_path / "alice", discovery=[]) as again:
        assert again.contacts.locator_key == key  # saved with the settings
    identity = Identity.generate()
    old_style = records.sign_record(identity, 1, {"nick": "old"}, domain=records.CARD_DOMAIN)
    assert read_card(old_style).locator_key is None  # a card without one is still a card
    bad = records.sign_record(identity, 2, {"nick": "bad", "loc": b"short"}, domain=records.CARD_DOMAIN)
    with pytest.raises(InvalidRecord, match='"loc" must be a 32-byte key'):
        read_card(bad)


async def test_a_clock_set_back_makes_no_card_look_older_than_the_last_run_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bob's clock ran a day ahead when alice took his card (a wrong clock, or a dual boot); put
    # right, his next run signed cards older than the one she keeps, and she refused them (and
    # their new locator key) for a day. The last sequence number is saved with his settings.
    async with Node(nickname="alice", identity=Identity.generate(), discovery=[]) as alice:
        ahead = time.time() + 86_400
        monkeypatch.setattr(nearby_module, "time", SimpleNamespace(time=lambda: ahead))
        async with Node(nickname="bob", data_dir=tmp_path / "bob", discovery=[]) as bob:
            old = bob.contacts.sign_card()
        await alice.contacts.add(alice.contacts.read_card(old))
        monkeypatch.setattr(nearby_module, "time", time)  # the clock put right
        async with Node(nickname="bob", data_dir=tmp_path / "bob", discovery=[]) as bob:
            new = bob.contacts.sign_card()
        assert read_card(new).seq > read_card(old).seq
        assert await alice.contacts.take_card(read_card(new))  # she keeps the newer card


async def test_card_updates_in_a_flood_are_taken_one_at_a_time_and_a_strangers_not_at_all() -> None:
    async with nodes(3) as (alice, bob, carol):
        await bob.contacts.add(bob.contacts.read_card(alice.contacts.sign_card()))
        taken: list[bytes] = []
        at_once = [0, 0]  # (now, at most)
        original = bob._locator._take

        async def take(sender: Any, card: bytes) -> None:
            taken.append(card)
            at_once[0] += 1
            at_once[1] = max(at_once)
            try:
                await original(sender, card)
            finally:
                at_once[0] -= 1

        bob._locator._take = take  # type: ignore[method-assign]
        controls = []
        for node in (alice, carol):
            peer = await node.peer_at(bob.endpoint.host, bob.endpoint.port)
            with contextlib.suppress(NotAllowed):
                await peer.get_presence()
            controls.append(node._connections.controls(bob.id)[0])
        from_alice, from_carol = controls
        for _ in range(50):
            await from_carol.notify({"t": "card_update", "card": carol.contacts.sign_card()})
        cards = [alice.contacts.sign_card() for _ in range(50)]
        for card in cards:
            await from_alice.notify({"t": "card_update", "card": card})
        with anyio.fail_after(5):
            while (await bob.contacts.get(alice.id)).card != cards[-1]:
                await anyio.sleep(0.02)
        assert cards[-1] in taken
        assert at_once[1] == 1  # one at a time, the latest next: not one task per notice
        assert all(card in cards for card in taken)  # none of carol's
        assert not bob._locator._cards


async def test_a_card_update_is_kept_only_when_it_is_the_senders_own_and_newer() -> None:
    async with nodes(3) as (alice, bob, carol):
        old = alice.contacts.sign_card()
        await bob.contacts.add(bob.contacts.read_card(old))
        newer = alice.contacts.sign_card()
        to_bob = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        await alice.contacts.add(alice.contacts.read_card(bob.contacts.sign_card()))
        with contextlib.suppress(NotAllowed):
            await to_bob.get_presence()  # a channel alice -> bob is open now
        (control,) = alice._connections.controls(bob.id)
        for card in (carol.contacts.sign_card(), old, b"garbage"):
            await control.notify({"t": "card_update", "card": card})  # ignored, each
        await anyio.sleep(0.2)
        assert (await bob.contacts.get(alice.id)).card == old
        await control.notify({"t": "card_update", "card": newer})
        with anyio.fail_after(5):
            while (await bob.contacts.get(alice.id)).card != newer:
                await anyio.sleep(0.02)
