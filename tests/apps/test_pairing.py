"""Pairing with a short code (:meth:`Node.pair`, :meth:`Node.join_pairing`): the right code makes
both contacts, a wrong one fails both sides and uses the code up, codes expire, and the pairing
messages take any bytes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit import Identity, Node, PairingFailed, ProtocolError
from peerkit.node.pairing import PAIR
from peerkit.proto.framing import encode_frame
from peerkit.proto.messages import encode
from peerkit.proto.pairing import WORDS, Code, Pake, decode_pairing, make_code, parse_code

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def two_nodes() -> AsyncIterator[tuple[Node, Node]]:
    async with (
        Node(nickname="alice", identity=Identity.generate(), listen=("127.0.0.1", 0)) as alice,
        Node(nickname="bob", identity=Identity.generate(), listen=("127.0.0.1", 0)) as bob,
    ):
        yield alice, bob


async def test_the_right_code_makes_each_the_others_contact() -> None:
    async with two_nodes() as (alice, bob), alice.pair(lan=False) as pairing:
        code = str(pairing.code)
        async with anyio.create_task_group() as tg:
            joined: list[object] = []

            async def join() -> None:
                joined.append(
                    await bob.join_pairing(
                        code.upper().replace("-", " "), at=("127.0.0.1", alice.endpoint.port)
                    )
                )

            tg.start_soon(join)
            contact = await pairing.wait()
        assert (contact.id, contact.nickname) == (bob.id, "bob")
        (theirs,) = joined
        assert (theirs.id, theirs.nickname) == (alice.id, "alice")  # type: ignore[attr-defined]
        assert [c.id for c in await alice.contacts.list()] == [bob.id]
        assert [c.id for c in await bob.contacts.list()] == [alice.id]
        assert not any(a.description == "pairing" for a in bob.applications())  # (only while joining)
    assert not any(a.description == "pairing" for a in alice.applications())  # (withdrawn on exit)


async def test_a_wrong_code_fails_both_sides_and_uses_the_code_up() -> None:
    async with two_nodes() as (alice, bob), alice.pair(lan=False) as pairing:
        words = tuple(w for w in WORDS if w not in pairing.code.words)[:2]
        wrong = str(Code(pairing.code.number, (words[0], words[1])))
        at = ("127.0.0.1", alice.endpoint.port)
        with pytest.raises(PairingFailed, match="is wrong"):
            await bob.join_pairing(wrong, at=at)
        with pytest.raises(PairingFailed, match="another code"):
            await pairing.wait()
        with pytest.raises(PairingFailed, match="used up"):
            await bob.join_pairing(str(pairing.code), at=at)  # the right code, too late
        assert await alice.contacts.list() == []
        assert await bob.contacts.list() == []


async def test_a_stranger_whose_first_message_is_no_pairing_message_fails_the_pairing_cleanly() -> None:
    # Its "type" a list: the pairing fails as a pairing does (not with an error of the code's own).
    async with two_nodes() as (alice, bob), alice.pair(lan=False) as pairing:
        await bob.register_application(PAIR)
        peer = await bob.peer_at("127.0.0.1", alice.endpoint.port)
        async with await peer.open_stream(PAIR) as stream:
            await stream.send(encode_frame(encode({"type": [], "msg": b"x"})))
            with pytest.raises(PairingFailed, match="a pairing message is a map"):
                await pairing.wait()
        assert await alice.contacts.list() == []


async def test_a_code_expires_and_one_pairing_at_a_time() -> None:
    async with two_nodes() as (alice, bob):
        async with alice.pair(lan=False, timeout=0.2) as pairing:
            with pytest.raises(RuntimeError, match="one code at a time"):
                async with alice.pair(lan=False):
                    pass
            with pytest.raises(PairingFailed, match="expired"):
                await pairing.wait()
            with pytest.raises(PairingFailed, match="used up or expired"):
                await bob.join_pairing(str(pairing.code), at=("127.0.0.1", alice.endpoint.port))
        with pytest.raises(PairingFailed, match="could not be reached"):  # nobody waits there now
            await bob.join_pairing(pairing.code, at=("127.0.0.1", alice.endpoint.port))  # a Code too
        with pytest.raises(TypeError, match="not int"):
            await bob.join_pairing(7, at=("127.0.0.1", alice.endpoint.port))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a pairing code"):
            await bob.join_pairing("guitar walrus")
        with pytest.raises(ValueError, match="not a word of pairing codes"):
            await bob.join_pairing("7-guitar-zzz")
        with pytest.raises(ValueError, match="from 1 to 9999"):
            await bob.join_pairing("10000-acorn-adult")
        with pytest.raises(ValueError, match="at most 3600"):
            alice.pair(timeout=0)


def test_codes_read_as_people_type_them() -> None:
    code = make_code(7)
    assert str(parse_code(f"  {str(code).upper()}  ")) == str(code)
    assert parse_code("7 acorn  adult") == Code(7, ("acorn", "adult"))
    a, b = Pake(code), Pake(code)
    assert a.finish(b.message) == b.finish(a.message)
    c, d = Pake(code), Pake(Code(7, ("acorn", "adult")) if code.words != ("acorn", "adult") else make_code(8))
    assert c.finish(d.message) != d.finish(c.message)


@given(st.binary(max_size=200))
def test_pairing_messages_and_spake2_take_any_bytes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_pairing(data)
    with contextlib.suppress(ProtocolError):
        Pake(make_code(1)).finish(data)
