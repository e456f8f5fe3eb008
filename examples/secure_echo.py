"""An encrypted echo service and a client, both on loopback, in one script.

    python examples/secure_echo.py

The server listens with its own identity; the client dials it twice: once knowing only the address
(Noise XX: the server's identity is learned and printed), once knowing its peer id (Noise IK: the
handshake fails unless the server proves exactly that id).
"""

from __future__ import annotations

import anyio

import peerkit


async def echo(channel: peerkit.SecureChannel) -> None:
    """Answer every message with the same text, until the client closes."""
    async for message in channel:
        await channel.send({"t": "echo", "text": message.get("text", "")})


async def main() -> None:
    server, client = peerkit.Identity.generate(), peerkit.Identity.generate()
    listener = await peerkit.listen(server, "127.0.0.1", 0, nickname="echo-server")
    async with listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, echo)
        host, port = listener.address
        for peer_id in (None, server.id):
            async with await peerkit.connect(host, port, client, peer_id=peer_id) as channel:
                await channel.send({"t": "say", "text": "hello, peer"})
                reply = await channel.receive()
                who = f"{channel.peer.nickname} ({channel.peer.id.fingerprint})"
                print(f"{channel.protocol}: {who} said {reply['text']!r}")
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
