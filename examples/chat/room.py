"""A group chat room in the terminal: the host invites people to the room, each who accepts joins
it, and everyone sees what the others say, who joins and leaves, and their presence. Someone who
joins late gets the room's history of the session first.

    python room.py alice --host --listen 127.0.0.1:7001     # alice's room
    python room.py bob --listen 127.0.0.1:7002              # bob waits for an invitation
    (alice types)  /invite 127.0.0.1:7002

In the room: a line says it, /invite HOST:PORT invites, /away [TEXT] and /back set your presence,
/who lists the room, /quit leaves (the host's /quit closes the room).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import uuid
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel

import peerkit

ROOM = peerkit.Application(id=uuid.UUID("2f6b8d4a-1e3c-4a5b-9c7d-8e9f0a1b2c3d"), description="chat room")
#: The most lines of history a room keeps (and sends to someone who joins).
HISTORY = 100


def say(text: str) -> None:
    # A line on the terminal: what peers wrote in it (names, lines) is shown as text, its escape
    # sequences and line breaks written as escapes rather than acted on.
    print(peerkit.printable(text), flush=True)


async def send(stream: peerkit.AppStream, message: dict[str, Any]) -> None:
    await stream.send(json.dumps(message).encode() + b"\n")


async def messages(stream: peerkit.AppStream) -> Any:
    """The stream's messages: one JSON object per line."""
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield json.loads(line)


def show(message: dict[str, Any]) -> None:
    if "say" in message:
        say(f"[{message['from']}] {message['say']}")
    elif "joined" in message:
        say(f"* {message['joined']} joined")
    elif "left" in message:
        say(f"* {message['left']} left")
    elif "presence" in message:
        say(f"* {message['from']} is {message['presence']}")


class Host:
    """The room: the host's node keeps the members' streams and passes every message to all."""

    def __init__(self, node: peerkit.Node) -> None:
        self.node = node
        self.members: dict[peerkit.PeerId, tuple[str, peerkit.AppStream]] = {}
        self.history: list[dict[str, Any]] = []
        self.invited: set[peerkit.PeerId] = set()

    async def tell_all(self, message: dict[str, Any]) -> None:
        show(message)
        if "say" in message:
            self.history = [*self.history, message][-HISTORY:]
        for _, stream in list(self.members.values()):
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await send(stream, message)  # (a member gone: its own task sees it leave)

    async def member(self, stream: peerkit.AppStream) -> None:
        # Only those the host invited may join; each gets the history, then the room.
        if stream.peer.id not in self.invited:
            await stream.aclose()
            return
        nickname = stream.peer.nickname or stream.peer.id.fingerprint
        await send(stream, {"history": self.history, "members": [n for n, _ in self.members.values()]})
        self.members[stream.peer.id] = (nickname, stream)
        await self.tell_all({"joined": nickname})
        try:
            async for message in messages(stream):
                if "say" in message:
                    await self.tell_all({"from": nickname, "say": str(message["say"])})
                elif "presence" in message:
                    await self.tell_all({"from": nickname, "presence": str(message["presence"])})
        except (anyio.BrokenResourceError, peerkit.PeerkitError):
            pass
        finally:
            self.members.pop(stream.peer.id, None)
            self.invited.discard(stream.peer.id)
            with anyio.CancelScope(shield=True):
                await self.tell_all({"left": nickname})

    async def invite(self, address: str) -> None:
        try:
            where = peerkit.EndPoint.parse(address)
            peer = await self.node.peer_at(where.host, where.port)
        except (ValueError, peerkit.PeerkitError) as exc:  # (a PeerkitError names the address)
            say(f"* {exc}")
            return
        self.invited.add(peer.id)
        answer = await peer.invite(ROOM, f"join {self.node.nickname}'s room", timeout=60)
        if answer is not peerkit.InvitationResponse.ACCEPTED:
            self.invited.discard(peer.id)
            say(f"* {peer.nickname or address} answered {answer.name.lower()}")

    async def line(self, text: str) -> None:
        await self.tell_all(line_message(self.node.nickname, text))


def line_message(nickname: str, text: str) -> dict[str, Any]:
    """What a typed line says: a presence for /away and /back, else words."""
    if text.startswith("/away"):
        return {"from": nickname, "presence": "away" + (f": {text[6:]}" if text[6:] else "")}
    if text.startswith("/back"):
        return {"from": nickname, "presence": "back"}
    return {"from": nickname, "say": text}


async def presence_of(node: peerkit.Node, text: str) -> None:
    if text.startswith("/away"):
        await node.set_presence(peerkit.Presence(peerkit.PresenceStatus.AWAY, text[6:]))
    elif text.startswith("/back"):
        await node.set_presence(peerkit.Presence(peerkit.PresenceStatus.ONLINE))


async def host_room(node: peerkit.Node) -> None:
    room = Host(node)
    node.add_stream_handler(ROOM, room.member)
    say(f"{node.nickname}'s room is open at {node.endpoint}; /invite HOST:PORT to invite")
    async with anyio.create_task_group() as tg:
        async for text in lines():
            if text == "/quit":
                break
            if text.startswith("/invite "):
                tg.start_soon(room.invite, text.split(" ", 1)[1])
            elif text == "/who":
                say("* in the room: " + ", ".join([node.nickname, *(n for n, _ in room.members.values())]))
            elif text:
                await presence_of(node, text)
                await room.line(text)
        for _, stream in list(room.members.values()):
            await stream.aclose()
        tg.cancel_scope.cancel()


async def join_room(node: peerkit.Node) -> None:
    say(f"{node.nickname} waits for an invitation at {node.endpoint}")
    async with node.invitations(ROOM) as invitations:
        invitation = await invitations.__anext__()
        say(f"* {invitation.nickname} invites you: {invitation.message}")
        invitation.accept()
    async with await invitation.peer.open_stream(ROOM) as stream, anyio.create_task_group() as tg:

        async def listen() -> None:
            async for message in messages(stream):
                if "history" in message:
                    for earlier in message["history"]:
                        show(earlier)
                    say("* in the room: " + ", ".join([invitation.nickname, *message["members"]]))
                else:
                    show(message)
            say("* the room is closed")
            tg.cancel_scope.cancel()

        tg.start_soon(listen)
        async for text in lines():
            if text == "/quit":
                break
            if text:
                await presence_of(node, text)
                message = line_message(node.nickname, text)
                await send(stream, {k: v for k, v in message.items() if k != "from"})
        tg.cancel_scope.cancel()


async def lines() -> Any:
    """The lines typed, until the end of input. A thread of its own reads them (a daemon: a read
    that waits for the keyboard never keeps the program from ending)."""
    send, receive = anyio.create_memory_object_stream[str](16)
    token = anyio.lowlevel.current_token()

    def read() -> None:
        with contextlib.suppress(RuntimeError, anyio.BrokenResourceError):  # (the program ended)
            for line in sys.stdin:
                anyio.from_thread.run(send.send, line, token=token)
            anyio.from_thread.run_sync(send.close, token=token)

    threading.Thread(target=read, daemon=True).start()
    async with receive:
        async for line in receive:
            yield line.rstrip("\n")


async def main() -> None:
    usage = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=usage)
    parser.add_argument("nickname")
    parser.add_argument("--host", action="store_true", help="open a room and invite people to it")
    parser.add_argument(
        "--listen", default=":0", help="HOST:PORT to listen on (port 0 picks one; no HOST: all)"
    )
    args = parser.parse_args()
    identity = peerkit.Identity.generate()  # or data_dir=...: your own identity and contacts
    try:
        node = peerkit.Node(nickname=args.nickname, identity=identity, listen=args.listen)
    except ValueError as exc:  # a nickname too long, a --listen that is not HOST:PORT
        parser.error(str(exc))
    async with node:
        await node.register_application(ROOM)
        await node.sign_in(peerkit.Scope.ALL)  # (its presence is published while signed in)
        await (host_room(node) if args.host else join_room(node))


if __name__ == "__main__":
    try:
        anyio.run(main)
    except* (OSError, peerkit.PeerkitError) as failed:  # the port is taken, the host is gone...
        error: BaseException = failed
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        sys.exit(f"room: {error}")
