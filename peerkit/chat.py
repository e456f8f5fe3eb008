"""A chat between two people over an application stream of the well-known ``chat`` application
(:data:`peerkit.wellknown.CHAT`): lines, who is typing, presence changes and a clean end.

``peerkit chat`` is built on it; so can any program::

    if await peer.invite(CHAT) is InvitationResponse.ACCEPTED:
        async with Chat(await peer.open_stream(CHAT), node.nickname, node.presence) as chat:
            await chat.say("hello")
            async for message in chat:
                ...

The invitee gets the stream from its stream handler for :data:`~peerkit.wellknown.CHAT` and wraps
it the same way. What goes over the stream is in the protocol document ("The chat application").
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Final, Literal

import anyio

from peerkit.errors import ProtocolError
from peerkit.model import Presence, check_seconds
from peerkit.proto.chat import Bye, ChatDecoder, ChatMessage, Hello, PresenceNote, Said, Typing, encode_chat
from peerkit.streams import AppStream

__all__ = ("GREETING_TIMEOUT", "Bye", "Chat", "ChatMessage", "Hello", "PresenceNote", "Said", "Typing")

#: Seconds a chat waits for the other side's hello.
GREETING_TIMEOUT: Final = 30.0

Ending = Literal["bye", "closed", "cut", "malformed"]


class Chat:
    """One side of a chat, over ``stream``.

    ``async with`` sends this side's hello (``nickname`` and ``presence``) and, on the way out, a
    ``bye`` and the end of data. Iterate it for the other side's messages: :class:`Said`,
    :class:`Typing`, :class:`PresenceNote` and finally :class:`Bye` when it said goodbye. The
    iteration ends when the other side is gone; :attr:`ended` then says how.
    """

    def __init__(self, stream: AppStream, nickname: str = "", presence: Presence | None = None) -> None:
        self._stream = stream
        self._nickname = nickname
        self._presence = presence or Presence()
        self._decoder = ChatDecoder()
        self._pending: list[ChatMessage] = []
        self._said_bye = False
        #: The other side's hello, once read (its nickname and presence).
        self.peer_hello: Hello | None = None
        #: How the chat ended: ``"bye"`` (the other side left), ``"closed"`` (its stream ended without
        #: a goodbye), ``"cut"`` (the connection broke) or ``"malformed"`` (it broke the protocol);
        #: None while it goes on.
        self.ended: Ending | None = None

    @property
    def stream(self) -> AppStream:
        """The application stream the chat runs over (its ``peer`` is the other side)."""
        return self._stream

    async def __aenter__(self) -> Chat:
        # The other side may be gone already (it said its piece and left): the chat still starts,
        # and what it said before is read as usual.
        with contextlib.suppress(anyio.BrokenResourceError):
            await self._send(Hello(self._nickname, self._presence))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def greeting(self, timeout: float = GREETING_TIMEOUT) -> Hello:
        """The other side's hello, waiting up to ``timeout`` seconds for it.

        :raises TimeoutError: when it does not come in time.
        :raises ProtocolError: when the stream ends or breaks first.
        :raises ValueError: when ``timeout`` is not a positive number of seconds.
        """
        with anyio.fail_after(check_seconds(timeout, "greeting timeout")):
            while self.peer_hello is None:
                if not await self._read():
                    raise ProtocolError(f"the chat ended before the other side said hello ({self.ended})")
        return self.peer_hello

    async def say(self, text: str) -> None:
        """Send a line.

        :raises ValueError: when it is longer than :data:`~peerkit.proto.chat.MAX_LINE` characters.
        :raises anyio.BrokenResourceError: when the connection broke.
        """
        await self._send(Said(text))

    async def typing(self, on: bool) -> None:
        """Tell the other side this side started (True) or stopped (False) typing."""
        await self._send(Typing(on))

    async def set_presence(self, presence: Presence) -> None:
        """Tell the other side this side's presence changed.

        :raises TypeError: when ``presence`` is not a :class:`~peerkit.Presence`.
        """
        if not isinstance(presence, Presence):
            raise TypeError(f"set_presence takes a Presence, not {type(presence).__name__}")
        self._presence = presence
        await self._send(PresenceNote(presence))

    async def aclose(self) -> None:
        """Say goodbye (unless the connection is gone) and close the stream."""
        if not self._said_bye:
            self._said_bye = True
            with (
                anyio.move_on_after(1, shield=True),
                contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
            ):
                await self._stream.send(encode_chat(Bye()))
        await self._stream.aclose()

    def __aiter__(self) -> Chat:
        return self

    async def __anext__(self) -> ChatMessage:
        # (a plain iterator, not a generator: leaving a loop early leaves nothing to finalize)
        while True:
            while self._pending:
                message = self._pending.pop(0)
                if not isinstance(message, Hello):  # (read by greeting(); kept in peer_hello)
                    return message
            if self.ended == "bye" or not await self._read():
                raise StopAsyncIteration

    async def _read(self) -> bool:
        # More messages into the queue; False once the other side is gone (``ended`` says how).
        if self.ended is not None:
            return False
        try:
            data = await self._stream.receive()
            messages = self._decoder.feed(data)
        except anyio.EndOfStream:
            self.ended = "closed"
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.ended = "cut"
            return False
        except ProtocolError:
            self.ended = "malformed"
            await self._stream.aclose()
            return False
        for message in messages:
            if isinstance(message, Hello):
                self.peer_hello = message
            elif isinstance(message, Bye):
                self.ended = "bye"
        self._pending += messages
        return True

    async def _send(self, message: ChatMessage) -> None:
        await self._stream.send(encode_chat(message))
