"""People near me: two nodes find each other over mDNS, then one invites the other it found. They
listen on 127.0.0.1, so mDNS uses the loopback interface alone; a node on every address (leave
out ``listen``) is announced on every interface.

Run: python examples/people_near_me.py
"""

import uuid

import anyio

import peerkit

CHAT = peerkit.Application(id=uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1001"), description="Chat")


def node(nickname: str) -> peerkit.Node:
    identity = peerkit.Identity.generate()
    return peerkit.Node(nickname=nickname, identity=identity, listen="127.0.0.1:0", discovery=["mdns"])


async def main() -> None:
    async with node("alice") as alice, node("bob") as bob:
        await bob.register_application(CHAT)
        await alice.register_application(CHAT)

        @bob.on_invitation(CHAT)
        async def invited(invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
            return peerkit.InvitationResponse.ACCEPTED

        @alice.on_nearby_changed
        async def changed(event: peerkit.NearbyChanged) -> None:
            print(event.change.name, event.peer.nickname)

        await alice.sign_in(peerkit.Scope.NEAR_ME)
        await bob.sign_in(peerkit.Scope.NEAR_ME)
        found = await alice.find_nearby(nickname="bob", timeout=10)  # a NearbyPeer: its signed record
        print((await found.invite(CHAT, message="chat?", timeout=30)).name)  # Noise IK to bob's key
        print([peer.nickname for peer in alice.nearby()])
        bob.nickname = "bobby"  # published at once: alice sees UPDATED
        await anyio.sleep(1)
        await bob.sign_out(peerkit.Scope.NEAR_ME)  # a goodbye: alice sees DELETED
        await anyio.sleep(1)


anyio.run(main)
