"""Contacts and presence: alice and bob trust each other through their signed cards, bob watches
alice, and sees her presence and a published object change as they happen.

Run: python examples/contacts_and_presence.py
"""

import uuid

import anyio

import peerkit

PICTURE = uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a2002")


def node(nickname: str) -> peerkit.Node:
    identity = peerkit.Identity.generate()  # or data_dir=...: contacts are then kept in SQLite there
    return peerkit.Node(nickname=nickname, identity=identity, listen=("127.0.0.1", 0))


async def main() -> None:
    async with node("alice") as alice, node("bob") as bob:
        await alice.sign_in(peerkit.Scope.ALL)
        await bob.sign_in(peerkit.Scope.ALL)
        # Cards are self-signed: send them by mail, chat, QR code... A tampered card is refused.
        card = alice.contacts.me.export_card()  # "peerkit:omNzaWdYQ..."
        alice_in_bob = await bob.contacts.import_card(card)
        await alice.contacts.import_card(bob.contacts.me.export_card())  # bob may watch alice
        busy, done = anyio.Event(), anyio.Event()

        @bob.on_presence_changed
        async def presence(event: peerkit.PresenceChanged) -> None:
            text = f": {event.presence.text}" if event.presence.text else ""
            print(f"{event.contact.nickname} is {event.presence.status.name}{text}")
            if event.presence.status is peerkit.PresenceStatus.BUSY:
                busy.set()

        @bob.on_object_changed
        async def picture(event: peerkit.ObjectChanged) -> None:
            print(f"{event.contact.nickname}'s picture {event.change.name}: {event.object.data!r}")
            done.set()

        await alice_in_bob.subscribe()  # kept in the contact store: it resumes after a restart
        await alice.set_presence(peerkit.Presence(peerkit.PresenceStatus.BUSY, "in a call"))
        await busy.wait()  # handlers run on their own: wait, so that the output has one order
        await alice.set_object(peerkit.PeerObject(id=PICTURE, data=b"<png>", scope=peerkit.Scope.ALL))
        await done.wait()
        print(await alice_in_bob.get_presence())  # a one-shot fetch, no subscription needed


anyio.run(main)
