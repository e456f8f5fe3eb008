"""``peerkit demo``: two identities on loopback complete real Noise handshakes over TCP."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from peerkit.identity import Identity
from peerkit.net.channel import SecureChannel, connect, listen

__all__ = ("DemoRound", "run_demo")


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoRound:
    """What one handshake of the demo showed."""

    #: The Noise protocol name that ran.
    protocol: str
    #: The handshake hash, as both sides computed it.
    handshake_hash: bytes
    #: What the dialler learned about the listener, and the other way round.
    alice_saw: str
    bob_saw: str
    #: Messages exchanged, in order, as (sender, text).
    exchanged: tuple[tuple[str, str], ...]
    #: Round-trip time of one message and its reply, seconds.
    rtt: float
    #: Time from TCP connect to an open channel, seconds.
    handshake_time: float


async def run_demo(alice: Identity, bob: Identity, messages: int = 3) -> list[DemoRound]:
    """Run bob as a listener on 127.0.0.1 and have alice dial him with XX, then with IK."""
    rounds: list[DemoRound] = []
    bob_sides: list[SecureChannel] = []

    async def bob_handler(channel: SecureChannel) -> None:
        bob_sides.append(channel)
        async for message in channel:
            await channel.send({"t": "chat", "text": f"bob got {message['text']!r}"})

    listener = await listen(bob, "127.0.0.1", 0, nickname="bob", endpoint_name="bob's laptop")
    async with listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, bob_handler)
        host, port = listener.address
        for peer_id in (None, bob.id):  # XX when alice does not know bob yet, IK when she does
            start = anyio.current_time()
            async with await connect(host, port, alice, peer_id=peer_id, nickname="alice") as channel:
                handshake_time = anyio.current_time() - start
                exchanged: list[tuple[str, str]] = []
                rtts = []
                for i in range(messages):
                    text = f"hello #{i + 1} from alice"
                    sent = anyio.current_time()
                    await channel.send({"t": "chat", "text": text})
                    reply = await channel.receive()
                    rtts.append(anyio.current_time() - sent)
                    exchanged += [("alice", text), ("bob", reply["text"])]
                server_side = bob_sides[-1]
                if server_side.handshake_hash != channel.handshake_hash:
                    raise AssertionError("the two sides disagree on the handshake hash")
                rounds.append(
                    DemoRound(
                        protocol=channel.protocol,
                        handshake_hash=channel.handshake_hash,
                        alice_saw=f"{channel.peer.nickname} ({channel.peer.endpoint_name}) "
                        f"{channel.peer.id.fingerprint}",
                        bob_saw=f"{server_side.peer.nickname} {server_side.peer.id.fingerprint}",
                        exchanged=tuple(exchanged),
                        rtt=min(rtts),
                        handshake_time=handshake_time,
                    )
                )
        tg.cancel_scope.cancel()
    return rounds
