"""The chat application (:mod:`peerkit.chat`, :mod:`peerkit.proto.chat`): its messages over a real
application stream, how a chat ends, and what a peer's malformed bytes do."""

from __future__ import annotations

import anyio
import pytest
from conftest import accept_all
from hypothesis import given
from hypothesis import strategies as st

from peerkit import AppStream, InvitationResponse, Presence, PresenceStatus, ProtocolError
from peerkit.chat import Chat, PresenceNote, Said, Typing
from peerkit.proto.chat import MAX_LINE, Bye, ChatDecoder, Hello, encode_chat
from peerkit.proto.framing import encode_frame
from peerkit.proto.messages import encode
from peerkit.testing import MemoryNetwork, node_pair
from peerkit.wellknown import CHAT

pytestmark = pytest.mark.anyio

PRESENCES = st.builds(Presence, st.sampled_from(PresenceStatus), st.text(max_size=20))


async def test_an_invited_chat_carries_hello_lines_typing_presence_and_bye() -> None:
    async with node_pair(network=MemoryNetwork(), discovery=False) as (alice, bob):
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)
        seen: list[object] = []

        async def bob_side(stream: object) -> None:
            async with Chat(stream, "bob", Presence(PresenceStatus.BUSY, "coding")) as chat:  # type: ignore[arg-type]
                seen.append(await chat.greeting())
                await chat.say("hi alice")
                async for message in chat:
                    seen.append(message)
                seen.append(chat.ended)

        bob.add_stream_handler(CHAT, bob_side)
        bob.add_invitation_handler(CHAT, accept_all)
        peer = alice.peer(bob.id, bob.endpoint)
        assert await peer.invite(CHAT) is InvitationResponse.ACCEPTED
        async with Chat(await peer.open_stream(CHAT), "alice") as chat:
            hello = await chat.greeting()
            assert (hello.nickname, hello.presence) == ("bob", Presence(PresenceStatus.BUSY, "coding"))
            async for message in chat:
                assert message == Said("hi alice")
                break
            await chat.typing(True)
            await chat.say("hello bob")
            await chat.set_presence(Presence(PresenceStatus.AWAY))
            with pytest.raises(ValueError, match="at most 2000 characters"):
                await chat.say("x" * (MAX_LINE + 1))
            with pytest.raises(ValueError, match=r"a chat line holds '\\udcff', which is no character"):
                await chat.say("caf\udcff")  # (a byte of input that was not UTF-8: said, not a crash)
            with pytest.raises(TypeError, match="takes a Presence, not str"):
                await chat.set_presence("away")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="greeting timeout"):
                await chat.greeting(timeout=-1)
        with anyio.fail_after(5):
            while chat.ended is None and len(seen) < 6:
                await anyio.sleep(0.01)
        assert seen == [
            Hello("alice", Presence()),
            Typing(True),
            Said("hello bob"),
            PresenceNote(Presence(PresenceStatus.AWAY)),
            Bye(),
            "bye",
        ]


@pytest.mark.parametrize(
    ("other_side", "ended"),
    [
        ("hello, then close", {"closed"}),  # (its stream ended with no goodbye)
        ("hello, then garbage", {"malformed"}),
        # (closed before this side's hello went: whether its end is read first or the hello's
        # sending finds the connection gone is a race; either way the chat starts, and ends)
        ("close at once", {"closed", "cut"}),
    ],
)
async def test_a_chat_tells_how_it_ended_when_the_other_side_says_no_goodbye(
    other_side: str, ended: set[str]
) -> None:
    async with node_pair(network=MemoryNetwork(), discovery=False) as (alice, bob):
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)

        async def bob_side(stream: AppStream) -> None:
            async with stream:
                if other_side != "close at once":
                    await stream.send(encode_chat(Hello("bob", Presence())))
                    await stream.receive()  # (alice's hello: her side started)
                if other_side == "hello, then garbage":
                    await stream.send(encode_frame(b"\xff\xff not cbor"))
                    await anyio.sleep(5)  # (the chat closes the stream itself)

        bob.add_stream_handler(CHAT, bob_side)
        bob.add_invitation_handler(CHAT, accept_all)
        peer = alice.peer(bob.id, bob.endpoint)
        assert await peer.invite(CHAT) is InvitationResponse.ACCEPTED
        with anyio.fail_after(5):
            async with Chat(await peer.open_stream(CHAT), "alice") as chat:
                if other_side == "close at once":
                    with pytest.raises(
                        ProtocolError, match=r"the chat ended before the other side said hello"
                    ):
                        await chat.greeting()
                else:
                    assert (await chat.greeting()).nickname == "bob"
                assert [message async for message in chat] == []
                assert chat.ended in ended
                assert [message async for message in chat] == []  # (ended: it stays so)


def test_messages_round_trip_in_any_chunking_and_unknown_types_are_skipped() -> None:
    wire = b"".join(
        [
            encode_chat(Hello("bob", Presence(PresenceStatus.ON_THE_PHONE, "call"))),
            encode_frame(encode({"type": "sticker", "id": 7})),  # a later version's message
            encode_chat(Said("ünïcode ✓")),
            encode_chat(Typing(False)),
            encode_chat(Bye()),
        ]
    )
    decoder = ChatDecoder()
    got = [m for i in range(len(wire)) for m in decoder.feed(wire[i : i + 1])]
    decoder.check_eof()
    assert got == [
        Hello("bob", Presence(PresenceStatus.ON_THE_PHONE, "call")),
        Said("ünïcode ✓"),
        Typing(False),
        Bye(),
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"type": "say", "text": "before hello"}, "no hello first"),
        ({"type": 3}, "a map with a text 'type'"),
        ([1, 2], "a map with a text 'type'"),
    ],
)
def test_a_chat_must_start_with_hello(body: object, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        ChatDecoder().feed(encode_frame(encode(body)))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"type": "hello", "nick": "b", "status": 7}, "one hello"),
        ({"type": "say", "text": "x" * (MAX_LINE + 1)}, "at most 2000 characters"),
        ({"type": "say", "text": b"bytes"}, "'text' is not text"),
        ({"type": "typing", "on": 1}, "'on' is not a boolean"),
        ({"type": "presence", "status": 9, "text": ""}, "not a presence status"),
        ({"type": "presence", "status": 7, "text": "y" * 256}, "presence text"),
    ],
)
def test_malformed_messages_after_hello_are_refused_by_name(body: object, problem: str) -> None:
    decoder = ChatDecoder()
    decoder.feed(encode_chat(Hello("bob", Presence())))
    with pytest.raises(ProtocolError, match=problem):
        decoder.feed(encode_frame(encode(body)))


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_the_decoder_raises_only_protocol_errors_on_any_bytes(data: bytes, step: int) -> None:
    decoder = ChatDecoder()
    try:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
        decoder.check_eof()
    except ProtocolError:
        pass


@given(
    st.lists(
        st.one_of(
            st.builds(Said, st.text(max_size=50)),
            st.builds(Typing, st.booleans()),
            st.builds(PresenceNote, PRESENCES),
        ),
        max_size=8,
    )
)
def test_whatever_is_encoded_decodes_to_itself(messages: list[object]) -> None:
    hello = Hello("x", Presence())
    wire = encode_chat(hello) + b"".join(encode_chat(m) for m in messages)  # type: ignore[arg-type]
    assert ChatDecoder().feed(wire) == [hello, *messages]
