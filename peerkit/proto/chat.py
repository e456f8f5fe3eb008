"""The chat application's messages (docs/protocol.md, "The chat application"), sans-IO.

A chat runs over one application stream of the well-known ``chat`` application. Each side sends
frames (section 1), each holding one CBOR map with a ``"type"``: ``hello`` first, then ``say``,
``typing``, ``presence`` in any order, and ``bye`` last. A type this version does not know is
skipped, so later versions may add some.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from peerkit.errors import ProtocolError
from peerkit.model import Presence, PresenceStatus, check_encodable, check_text, quoted
from peerkit.proto.framing import FrameDecoder, encode_frame
from peerkit.proto.messages import decode, encode

__all__ = (
    "MAX_LINE",
    "Bye",
    "ChatDecoder",
    "ChatMessage",
    "Hello",
    "PresenceNote",
    "Said",
    "Typing",
    "check_line",
    "encode_chat",
)

#: Characters in one chat line, at most.
MAX_LINE: Final = 2000


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message: who is chatting, and how available they are."""

    nickname: str
    presence: Presence


@dataclass(frozen=True, slots=True)
class Said:
    """A line of chat."""

    text: str


@dataclass(frozen=True, slots=True)
class Typing:
    """The sender started (``on``) or stopped typing a line."""

    on: bool


@dataclass(frozen=True, slots=True)
class PresenceNote:
    """The sender's presence changed during the chat."""

    presence: Presence


@dataclass(frozen=True, slots=True)
class Bye:
    """The sender ends the chat (its end of data follows)."""


ChatMessage = Hello | Said | Typing | PresenceNote | Bye


def check_line(text: str) -> None:
    """:raises ValueError: when ``text`` is not a chat line (too long, or not text)."""
    if not isinstance(text, str):
        raise TypeError(f"a chat line is text, not {type(text).__name__}")
    if len(text) > MAX_LINE:
        raise ValueError(f"a chat line is at most {MAX_LINE} characters, not {len(text)}")
    check_encodable(text, "a chat line")


def encode_chat(message: ChatMessage) -> bytes:
    """The frame that carries ``message``.

    :raises ValueError: when a text is too long.
    """
    body: dict[str, Any]
    if isinstance(message, Hello):
        check_text(message.nickname, "nickname")
        body = {"type": "hello", "nick": message.nickname, **_presence(message.presence)}
    elif isinstance(message, Said):
        check_line(message.text)
        body = {"type": "say", "text": message.text}
    elif isinstance(message, Typing):
        body = {"type": "typing", "on": bool(message.on)}
    elif isinstance(message, PresenceNote):
        body = {"type": "presence", **_presence(message.presence)}
    else:
        body = {"type": "bye"}
    return encode_frame(encode(body))


def _presence(presence: Presence) -> dict[str, Any]:
    return {"status": int(presence.status), "text": presence.text}


class ChatDecoder:
    """Reads the other side's chat messages out of the bytes of its stream, in any chunking."""

    __slots__ = ("_frames", "_greeted")

    def __init__(self) -> None:
        self._frames = FrameDecoder()
        self._greeted = False

    def feed(self, data: bytes) -> list[ChatMessage]:
        """The messages ``data`` completes, in order (unknown types left out).

        :raises ProtocolError: on a malformed message, or one before ``hello``.
        """
        messages = []
        for frame in self._frames.feed(data):
            message = _message(decode(frame))
            if message is None:
                continue
            if isinstance(message, Hello) == self._greeted:
                raise ProtocolError("a chat starts with one hello" if self._greeted else "no hello first")
            self._greeted = True
            messages.append(message)
        return messages

    def check_eof(self) -> None:
        """:raises ProtocolError: when the stream ended inside a message."""
        self._frames.check_eof()


def _message(body: Any) -> ChatMessage | None:
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ProtocolError("a chat message is a map with a text 'type'")
    kind = body["type"]
    try:
        if kind == "hello":
            nickname = body.get("nick")
            if not isinstance(nickname, str):
                raise ValueError("'nick' is not text")
            check_text(nickname, "nickname")
            return Hello(nickname, _read_presence(body))
        if kind == "say":
            text = body.get("text")
            if not isinstance(text, str):
                raise ValueError("'text' is not text")
            check_line(text)
            return Said(text)
        if kind == "typing":
            if not isinstance(body.get("on"), bool):
                raise ValueError("'on' is not a boolean")
            return Typing(body["on"])
        if kind == "presence":
            return PresenceNote(_read_presence(body))
        if kind == "bye":
            return Bye()
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed chat {quoted(kind)} message: {exc}") from None
    return None


def _read_presence(body: dict[str, Any]) -> Presence:
    status, text = body.get("status"), body.get("text", "")
    if type(status) is not int or not 0 <= status <= max(PresenceStatus):
        raise ValueError(f"{status!r} is not a presence status (0 to 7)")
    if not isinstance(text, str):
        raise ValueError("presence 'text' is not text")
    return Presence(PresenceStatus(status), text)
