"""Two nodes on loopback: alice invites bob to a chat, then they talk over an encrypted stream."""

import uuid

import anyio

import peerkit

CHAT = peerkit.Application(id=uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1001"), description="Chat")


async def main() -> None:
    alice = peerkit.Node(nickname="alice", identity=peerkit.Identity.generate(), listen=("127.0.0.1", 0))
    bob = peerkit.Node(nickname="bob", identity=peerkit.Identity.generate(), listen=("127.0.0.1", 0))
    async with alice, bob:
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)

        @bob.on_invitation(CHAT)
        async def invited(invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
            print(f"{invitation.nickname} invites bob: {invitation.message}")
            return peerkit.InvitationResponse.ACCEPTED

        @bob.on_stream(CHAT)
        async def chat(stream: peerkit.AppStream) -> None:
            async for line in stream:
                await stream.send(b"bob heard: " + line)

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)  # Noise XX: learns bob's id
        response = await peer.invite(CHAT, message="chat?", timeout=30)
        print(response.name)  # ACCEPTED
        async with await peer.open_stream(CHAT) as stream:
            await stream.send(b"hello")
            print((await stream.receive()).decode())


anyio.run(main)
