"""``peerkit chat``: invite a peer to chat (or wait for an invitation), then a line-based encrypted
chat in the terminal, with who is typing, presence changes and a clean end."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final

import anyio
import typer

import peerkit
from peerkit.chat import Bye, Chat, PresenceNote, Said, Typing
from peerkit.clikit import (
    EXIT_DECLINED,
    EXIT_EXPIRED,
    DataDir,
    Discovery,
    Expected,
    accept_invitation,
    cancel_on_signal,
    console,
    existing_data_dir,
    inviting_node,
    parse_listen,
    peer_named,
    providers_for,
    providers_named,
    reached,
    reaching,
    senders_named,
    target_of,
)
from peerkit.discovery.base import DiscoveryProvider
from peerkit.model import Presence, PresenceStatus, check_text, printable
from peerkit.streams import AppStream
from peerkit.terminal import Line, Terminal, TypingChanged
from peerkit.wellknown import CHAT

__all__ = ("HELP", "ChatDesk", "chat_command", "presence_words", "run_chat")

logger = logging.getLogger(__name__)

#: What ``/help`` shows in a chat.
HELP: Final = (
    "/away [TEXT], /busy [TEXT], /back: your presence; /quit (or Ctrl-D): end the chat; anything else is said"
)

_COMMANDS: Final = {
    "/away": PresenceStatus.AWAY,
    "/busy": PresenceStatus.BUSY,
    "/back": PresenceStatus.ONLINE,
}


def presence_words(presence: Presence) -> str:
    """A presence as people say it: ``away: at lunch``."""
    words = presence.status.name.lower().replace("_", " ")
    return f"{words}: {printable(presence.text)}" if presence.text else words


def chat_command(
    peer: Annotated[
        str | None,
        typer.Argument(
            help="Who to chat with: a contact (its name, fingerprint or id), a peer near you by its "
            "nickname (with --discovery), or HOST:PORT. Without it, wait to be invited."
        ),
    ] = None,
    message: Annotated[str, typer.Option(help="The invitation message (at most 255 characters).")] = "",
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Waiting: accept the first invitation without asking.")
    ] = False,
    senders: Annotated[
        list[str] | None,
        typer.Option(
            "--from",
            metavar="PEER",
            help="Waiting: accept invitations from this peer alone, a contact (its name, fingerprint "
            "or id) or anyone's full id; repeatable. Anyone else's are declined without asking.",
            show_default=False,
        ),
    ] = None,
    listen_at: Annotated[
        str,
        typer.Option(
            "--listen",
            help="Waiting: HOST:PORT, or a PORT alone, to listen on (port 0 picks one; no HOST: IPv4 "
            "and IPv6).",
        ),
    ] = ":0",
    discovery: Discovery = None,
    timeout: Annotated[
        float, typer.Option(min=0.001, max=300, help="Seconds to wait for an answer (at most 300).")
    ] = 300.0,
    data_dir: DataDir = None,
) -> None:
    """Chat with a peer: invite it to chat, or (without PEER) wait for an invitation to chat and
    accept it at a prompt. Lines you type are sent encrypted; the other side sees when you type.

    Exits with 0 after a chat (or when stopped with Ctrl-C before one: an invitation sent is
    withdrawn), 3 when the peer declined, 4 when it did not answer in time.

    In the chat: /away [TEXT], /busy [TEXT] and /back set your presence, /quit or Ctrl-D ends it.
    """
    check_text(message, "invitation message")
    directory = existing_data_dir(data_dir)
    if peer is None:
        host, port = parse_listen(listen_at)
        anyio.run(_wait_for_chat, directory, (host, port), providers_named(discovery), yes, senders)
        return
    if senders:
        raise typer.BadParameter("is for waiting to be invited (without PEER)", param_hint="--from")
    target = target_of(peer)
    code = anyio.run(
        _start_chat, directory, target, providers_for(target, discovery), message, timeout, bool(discovery)
    )
    if code:
        raise typer.Exit(code)


async def _start_chat(
    directory: Path,
    target: str | tuple[str, int],
    providers: list[DiscoveryProvider],
    message: str,
    timeout: float,
    by_nickname: bool,
) -> int:
    # The exit code: 0 after a chat, or stopped before one; else why there was none.
    code = 0
    who = ""
    answer = None
    async with inviting_node(directory, providers) as node:
        named = await peer_named(node, target, providers, min(timeout, 10.0), by_nickname=by_nickname)
        await node.register_application(CHAT)
        async with Terminal() as terminal, anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_signal, tg.cancel_scope)
            peer = await reached(node, target, named)
            who = printable(peer.nickname) or peer.id.fingerprint
            terminal.show(f"inviting {who} ({peer.id.fingerprint}) to chat...")
            with reaching(peer):
                answer = await peer.invite(CHAT, message, timeout=timeout)
            if answer is peerkit.InvitationResponse.ACCEPTED:
                async with Chat(await peer.open_stream(CHAT), node.nickname, _presence(node)) as chat:
                    await run_chat(node, chat, terminal)
            else:
                code = _refused(terminal, who, answer)
            tg.cancel_scope.cancel()
    if answer is None:  # (Ctrl-C or SIGTERM before the answer)
        console.print(f"stopped: the invitation to {who} is withdrawn" if who else "stopped", highlight=False)
    return code


def _presence(node: peerkit.Node) -> Presence:
    # Who chats is there: the presence 'peerkit presence set' saved, online unless it says else.
    from peerkit.contacts import saved_presence

    saved = saved_presence(node.contacts.settings())
    return saved if saved is not None and saved.status is not PresenceStatus.OFFLINE else Presence()


def _refused(terminal: Terminal, who: str, answer: peerkit.InvitationResponse) -> int:
    if answer is peerkit.InvitationResponse.DECLINED:
        terminal.show(f"{who} declined")
        return EXIT_DECLINED
    terminal.show(f"{who} did not answer in time")
    return EXIT_EXPIRED


async def _wait_for_chat(
    directory: Path,
    listen: tuple[str, int],
    providers: list[DiscoveryProvider],
    yes: bool,
    senders: list[str] | None,
) -> None:
    def question(invitation: peerkit.Invitation) -> str:
        who = printable(invitation.nickname) or invitation.sender_id.fingerprint
        said = f": {invitation.message!r}" if invitation.message else ""
        return f"{who} ({invitation.sender_id.fingerprint}) invites you to chat{said}. Accept? [y/N]"

    async with peerkit.Node(data_dir=directory, listen=listen, discovery=providers) as node:
        named = await senders_named(node, senders) if senders else None
        waiting_for = "an invitation to chat" + (f" from {', '.join(named.values())}" if named else "")
        async with Terminal() as terminal, anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_signal, tg.cancel_scope)
            _, stream = await accept_invitation(node, CHAT, terminal, waiting_for, question, yes, named)
            async with Chat(stream, node.nickname, _presence(node)) as chat:
                await run_chat(node, chat, terminal)
            tg.cancel_scope.cancel()


async def run_chat(node: peerkit.Node, chat: Chat, terminal: Terminal) -> None:
    """Chat in ``terminal`` until either side ends it: the other side's lines, typing and presence
    shown, the user's lines said, and ``/away``, ``/busy``, ``/back`` setting ``node``'s presence."""
    hello = await chat.greeting()
    name = printable(hello.nickname) or chat.stream.peer.id.fingerprint
    terminal.show(
        f"chatting with {name} ({chat.stream.peer.id.fingerprint}), {presence_words(hello.presence)}; "
        "/help for commands"
    )

    async def listen(scope: anyio.CancelScope) -> None:
        async for message in chat:
            if isinstance(message, Said):
                terminal.set_status("")
                terminal.show(f"{name}: {printable(message.text)}")
            elif isinstance(message, Typing):
                terminal.set_status(f"{name} is typing to you..." if message.on else "")
            elif isinstance(message, PresenceNote):
                terminal.show(f"{name} is now {presence_words(message.presence)}")
            elif isinstance(message, Bye):
                break
        terminal.set_status("")
        ended = {"bye": "left the chat", "closed": "left the chat", "cut": "is gone (the connection broke)"}
        terminal.show(f"{name} {ended.get(chat.ended or 'bye', 'broke the chat protocol')}")
        scope.cancel()

    async def speak(scope: anyio.CancelScope) -> None:
        async for item in terminal.input():
            if isinstance(item, TypingChanged):
                await chat.typing(item.on)
            elif item.text.strip() in ("/quit", "/exit"):
                break
            elif item.text.strip() == "/help":
                terminal.show(HELP)
            elif item.text.split(" ", 1)[0] in _COMMANDS:
                await _set_presence(node, chat, terminal, item)
            elif item.text:
                try:
                    await chat.say(item.text)
                except ValueError as exc:
                    terminal.show(f"not sent: {exc}")
        terminal.show("you left the chat")
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen, tg.cancel_scope)
        tg.start_soon(speak, tg.cancel_scope)


async def _set_presence(node: peerkit.Node, chat: Chat, terminal: Terminal, line: Line) -> None:
    command, _, text = line.text.partition(" ")
    try:
        presence = Presence(_COMMANDS[command], text.strip())
    except ValueError as exc:
        terminal.show(f"not set: {exc}")
        return
    await node.set_presence(presence)
    await chat.set_presence(presence)
    terminal.show(f"you are now {presence_words(presence)}")


class ChatDesk:
    """The chats of ``peerkit serve --accept chat``: each accepted invitation's chat is printed as
    it goes (``say(text, **fields)``: text, or JSON lines), and lines read from stdin are said in the
    chat that started last. A chat stream from a peer whose invitation was not accepted is closed."""

    def __init__(self, node: peerkit.Node, say: Callable[..., None]) -> None:
        self._node = node
        self._say = say
        self._invited: Expected[bool] = Expected()
        self._chats: dict[peerkit.PeerId, Chat] = {}

    async def invited(self, invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
        """The invitation handler: accept, and expect the inviter's chat stream."""
        if not self._invited.expect(invitation.sender_id, True, trusted=invitation.trusted):
            return peerkit.InvitationResponse.DECLINED
        return peerkit.InvitationResponse.ACCEPTED

    async def chat(self, stream: AppStream) -> None:
        """The stream handler: one chat, printed until it ends."""
        peer_id = stream.peer.id
        if not self._invited.take(peer_id):
            await stream.aclose()
            return
        async with Chat(stream, self._node.nickname, _presence(self._node)) as chat:
            hello = await chat.greeting()
            name = printable(hello.nickname) or peer_id.fingerprint
            fields = {"peer": str(peer_id), "nickname": hello.nickname}
            self._chats[peer_id] = chat
            try:
                self._say(
                    f"chat with {name} ({peer_id.fingerprint}), {presence_words(hello.presence)}: lines "
                    "typed here are said to them",
                    event="chat_started",
                    **fields,
                )
                async for message in chat:
                    if isinstance(message, Said):
                        said = f"{name}: {printable(message.text)}"
                        self._say(said, event="chat", line=message.text, **fields)
                    elif isinstance(message, PresenceNote):
                        words = presence_words(message.presence)
                        self._say(f"{name} is now {words}", event="chat_presence", presence=words, **fields)
                    elif isinstance(message, Typing):
                        self._say("", event="chat_typing", on=message.on, **fields)
            finally:
                self._chats.pop(peer_id, None)
                self._say(f"{name} left the chat", event="chat_ended", how=chat.ended or "closed", **fields)

    async def read_lines(self) -> None:
        """Say each line of stdin in the chat that started last, until stdin ends (or at once,
        when there is no stdin to read)."""
        try:
            async with Terminal(keys=False) as terminal:
                async for item in terminal.input():
                    if isinstance(item, Line) and item.text and self._chats:
                        chat = list(self._chats.values())[-1]
                        with contextlib.suppress(
                            ValueError, anyio.BrokenResourceError, anyio.ClosedResourceError
                        ):
                            await chat.say(item.text)
        except (OSError, ValueError, AttributeError) as exc:  # (closed, or no stdin at all)
            logger.info("stdin is not read for chats: %s", exc)
