"""``peerkit contacts``: your contacts, their cards, who may watch you and whom you watch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.table import Column, Table

import peerkit
from peerkit.clikit import (
    DataDir,
    Discovery,
    console,
    data_dir_of,
    default_command,
    err_console,
    fingerprint_column,
    nearby_named,
    offline_node,
    parse_address,
    providers_named,
    resolve_contact,
)
from peerkit.model import printable

__all__ = ("contacts_app",)

contacts_app = typer.Typer(
    help="Your contacts: trusted peers, their cards, who may watch you, whom you watch (alone: list them)."
)

ContactId = Annotated[
    str,
    typer.Argument(
        help="The contact: its nickname or display name, its fingerprint, or 8 or more characters of its id."
    ),
]


def _contact_row(contact: peerkit.Contact) -> dict[str, object]:
    return {
        "id": str(contact.id),
        "fingerprint": contact.fingerprint,
        "nickname": contact.nickname,
        "display_name": contact.display_name,
        "email": contact.email,
        "endpoints": [str(e) for e in contact.endpoints],
        "subscribe_allowed": contact.subscribe_allowed.name.lower(),
        "is_subscribed": contact.is_subscribed,
        "added": contact.added,
        "last_seen": contact.last_seen,
    }


@contacts_app.command("list")
def contacts_list(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List your contacts."""

    async def run() -> list[peerkit.Contact]:
        async with offline_node(data_dir) as node:
            return await node.contacts.list()

    contacts = anyio.run(run)
    if as_json:
        print(json.dumps([_contact_row(c) for c in contacts]))
        return
    if not contacts:
        console.print("no contacts yet: add one with 'peerkit contacts add-card CARD'")
        return
    allowed = peerkit.SubscribePermission.ALLOWED
    # Each row's cells by column; a column no contact fills (no display names, say) is left out:
    # on a narrow terminal the others need its room.
    columns: dict[str, list[str]] = {
        "nickname": [printable(c.nickname) for c in contacts],  # (their cards' words, as text)
        "display name": [printable(c.display_name) for c in contacts],
        "email": [printable(c.email) for c in contacts],
        "may watch me": ["yes" if c.subscribe_allowed is allowed else "blocked" for c in contacts],
        "I watch": ["yes" if c.is_subscribed else "no" for c in contacts],
        "endpoints": [", ".join(str(e) for e in c.endpoints) for c in contacts],
    }
    shown = {name: cells for name, cells in columns.items() if any(cells)}
    folded = ("email", "endpoints")  # (long words: cut into lines rather than short)
    table = Table(
        fingerprint_column(),
        *(Column(name, overflow="fold" if name in folded else "ellipsis") for name in shown),
    )
    for row, contact in enumerate(contacts):
        table.add_row(contact.fingerprint, *(cells[row] for cells in shown.values()))
    console.print(table)


default_command(contacts_app, contacts_list)


@contacts_app.command("add-card")
def contacts_add_card(
    card: Annotated[str, typer.Argument(help="A card (peerkit:...) or a file holding one.")],
    block: Annotated[bool, typer.Option("--block", help="Add it, but do not let it watch you.")] = False,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Verify a contact card and add the peer it describes to your contacts (a contact's newer card
    updates its names and addresses)."""
    source: str | Path = card if card.strip().startswith("peerkit:") else Path(card)
    if isinstance(source, Path) and not source.is_file():
        raise typer.BadParameter(f"{card!r} is neither a card (peerkit:...) nor a file")

    async def run() -> tuple[peerkit.Contact, str]:
        async with offline_node(data_dir, create=True) as node:
            contact = node.contacts.read_card(source)
            if contact.id == node.id:
                raise typer.BadParameter(
                    f"that is your own card ({contact.fingerprint}): give it to the people who should "
                    "trust you, and add theirs"
                )
            if not node.contacts.has(contact.id):
                if block:
                    contact = contact.replace(subscribe_allowed=peerkit.SubscribePermission.BLOCKED)
                return await node.contacts.add(contact), "added"
            before = await node.contacts.get(contact.id)  # a contact's card again: newer, or not
            contact = await node.contacts.import_card(source, update=True)
            done = "updated" if contact.card != before.card else "unchanged"
            if block and contact.subscribe_allowed is not peerkit.SubscribePermission.BLOCKED:
                contact = contact.replace(subscribe_allowed=peerkit.SubscribePermission.BLOCKED)
                return await node.contacts.update(contact), "updated"
            return contact, done

    contact, done = anyio.run(run)
    if as_json:
        print(json.dumps({**_contact_row(contact), "card": done}))
    elif done == "unchanged":
        console.print(
            f"{contact.fingerprint} is a contact already, with this card or a newer one: nothing changed"
        )
    else:
        name = printable(contact.display_name or contact.nickname) or "?"
        console.print(f"{done} {name} ({contact.fingerprint}); the card's signature checks out")


@contacts_app.command("add-nearby")
def contacts_add_nearby(
    name: Annotated[str, typer.Argument(help="Its nickname as 'peerkit near' shows it, or its fingerprint.")],
    wait: Annotated[float, typer.Option(min=0.1, max=300, help="Seconds to look for it.")] = 10.0,
    discovery: Discovery = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Add a peer near you to your contacts: found by its nickname (or fingerprint), its card asked
    for and checked."""
    providers = providers_named(discovery)

    async def run() -> peerkit.Contact:
        async with peerkit.Node(data_dir=data_dir_of(data_dir), discovery=providers) as node:
            await node.sign_in(peerkit.Scope.NEAR_ME)
            peer = await nearby_named(node, name, wait)
            return await node.contacts.add_from(peer, timeout=wait)

    contact = anyio.run(run)
    if as_json:
        print(json.dumps(_contact_row(contact)))
    else:
        console.print(
            f"added {printable(contact.nickname) or '?'} ({contact.fingerprint}); its card's signature "
            "checks out"
        )


@contacts_app.command("export-card")
def contacts_export_card(
    out: Annotated[Path | None, typer.Option("--out", help="Write the card's file form to FILE.")] = None,
    address: Annotated[
        list[str] | None,
        typer.Option(
            "--address", help="HOST:PORT where 'peerkit serve' reaches you (repeatable) [default: none]"
        ),
    ] = None,
    display_name: Annotated[str | None, typer.Option(help="Set your display name first.")] = None,
    email: Annotated[str | None, typer.Option(help="Set your email first.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Print your contact card (peerkit:...), to give to people who should trust you. Without
    --address it names no address: they find you through discovery."""
    from peerkit.contacts import card_text

    endpoints = [peerkit.EndPoint(*parse_address(a, default_host="127.0.0.1")) for a in address or []]

    async def run() -> str:
        async with offline_node(data_dir) as node:
            me = node.contacts.me
            changes = {k: v for k, v in (("display_name", display_name), ("email", email)) if v is not None}
            if changes:
                me = await node.contacts.update(me.replace(**changes))
            card = node.contacts.sign_card(endpoints)
            if out is not None:
                temporary = out.with_name(f".{out.name}.tmp")
                temporary.write_bytes(card)
                temporary.replace(out)
            return card_text(card)

    try:
        text = anyio.run(run)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    print(text)


def _contact_change(text: str, data_dir: Path | None, **changes: object) -> tuple[str, bool]:
    # Change a contact; its name for people, and whether anything changed (it was so already).
    async def run() -> tuple[peerkit.Contact, bool]:
        async with offline_node(data_dir) as node:
            contact = await resolve_contact(node, text)
            if all(getattr(contact, key) == value for key, value in changes.items()):
                return contact, False
            return await node.contacts.update(contact.replace(**changes)), True

    found, changed = anyio.run(run)
    return printable(found.display_name or found.nickname) or found.fingerprint, changed


@contacts_app.command("remove")
def contacts_remove(
    contact: ContactId,
    data_dir: DataDir = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
) -> None:
    """Delete a contact (after asking, unless --yes)."""

    async def run() -> peerkit.Contact | None:
        async with offline_node(data_dir) as node:
            found = await resolve_contact(node, contact)
            question = f"remove {printable(found.nickname) or '?'} ({found.fingerprint}) from your contacts?"
            if not yes and not await anyio.to_thread.run_sync(_confirm, question):
                return None
            await node.contacts.delete(found)
            return found

    found = anyio.run(run)
    if found is None:
        err_console.print("not removed")
        raise typer.Exit(1)
    console.print(f"removed {printable(found.nickname) or '?'} ({found.fingerprint})")


def _confirm(question: str) -> bool:
    # Yes or no on the terminal; no answer (the end of the input) is no.
    try:
        return typer.confirm(question, default=False)
    except typer.Abort:
        return False


@contacts_app.command("allow")
def contacts_allow(contact: ContactId, data_dir: DataDir = None) -> None:
    """Let a contact watch your presence, applications and objects."""
    name, changed = _contact_change(contact, data_dir, subscribe_allowed=peerkit.SubscribePermission.ALLOWED)
    console.print(f"{name} may watch you" + ("" if changed else " already"))


@contacts_app.command("block")
def contacts_block(contact: ContactId, data_dir: DataDir = None) -> None:
    """Stop a contact from watching you (it may still ask, and hears nothing)."""
    name, changed = _contact_change(contact, data_dir, subscribe_allowed=peerkit.SubscribePermission.BLOCKED)
    console.print(f"{name} is blocked" if changed else f"{name} was blocked already")


@contacts_app.command("watch")
def contacts_watch(contact: ContactId, data_dir: DataDir = None) -> None:
    """Watch a contact (a running 'peerkit serve' or 'peerkit watch' subscribes within a second)."""
    name, changed = _contact_change(contact, data_dir, is_subscribed=True)
    console.print(f"watching {name}" if changed else f"already watching {name}")


@contacts_app.command("unwatch")
def contacts_unwatch(contact: ContactId, data_dir: DataDir = None) -> None:
    """Stop watching a contact."""
    name, changed = _contact_change(contact, data_dir, is_subscribed=False)
    console.print(f"no longer watching {name}" if changed else f"you were not watching {name}")
