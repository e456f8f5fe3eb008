"""Untrusted messages over a node's control channel never break it (hypothesis)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import anyio
from conftest import CHAT, accept_all, facing_mallory, raw_channel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerkit import SecureChannel
from peerkit.net import control as control_module
from peerkit.testing import nodes

# -- untrusted messages never crash a node -----------------------------------------------------
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64) + 1, max_value=2**64 - 1),
    st.binary(max_size=40),
    st.text(max_size=20),
)
#: Values, with the lists and maps (keyed by text, integers or bytes: CBOR allows all three) that
#: no field of a well-formed message holds where a reader may expect a number or a key.
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3) | st.integers(-2, 2) | st.binary(max_size=2), inner, max_size=3)
    ),
    max_leaves=6,
)
_TYPES = (
    *("invite", "invite_cancel", "invite_reply", "error", "ping", "pong", "retire", "notify"),
    *("card_update", "circuit", "get", "subscribe", "unsubscribe", "punch", "dialback", "x"),
)
_messages = st.builds(
    lambda fields, extra: {**extra, **fields},
    st.fixed_dictionaries(
        {"t": st.sampled_from(_TYPES)},
        optional={
            "rid": _values,
            "app": st.one_of(st.just(CHAT.id.bytes), _values),
            "msg": _values,
            "data": _values,
            "ttl": st.one_of(st.integers(min_value=0, max_value=2), _values),
            "r": _values,
            "code": _values,
            "what": st.one_of(st.sampled_from(["presence", "apps", "objects"]), _values),
            "k": _values,
            "v": _values,
            "card": _values,
            "token": _values,
            "addrs": _values,
        },
    ),
    st.dictionaries(st.integers(-2, 2) | st.binary(max_size=2), _values, max_size=2),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_messages, min_size=1, max_size=6))
def test_fuzzed_messages_never_break_a_node(batch: list[dict[str, Any]]) -> None:
    """Whatever a peer sends, the node answers its next ping, and none of its handlers fails (a
    handler that failed is caught and logged as an error, which fails the test: see conftest)."""

    async def main() -> None:
        async with nodes() as (alice, bob):
            await bob.register_application(CHAT)
            bob.add_invitation_handler(CHAT, accept_all)
            async with await raw_channel(alice, bob) as channel:
                for message in batch:
                    if message["t"] != "retire":
                        await channel.send(message)
                await channel.send({"t": "ping", "rid": 2**40})
                with anyio.fail_after(5):
                    while (reply := await channel.receive()).get("rid") != 2**40 or reply["t"] != "pong":
                        assert reply["t"] in ("error", "pong") or reply["t"].endswith("_reply")
            assert bob.running

    with mock.patch.object(control_module, "REFUSE_PAUSE", 0):  # (each refusal pauses the reading)
        anyio.run(main)


_stream_messages = st.one_of(
    st.fixed_dictionaries({"t": st.just("data"), "d": st.one_of(st.binary(max_size=64), _scalars)}),
    st.fixed_dictionaries({"t": st.sampled_from(["eof", "stream_reply", "error", "ping", "x"])}),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_stream_messages, max_size=5), close=st.booleans())
def test_fuzzed_stream_messages_end_in_data_eof_or_broken(batch: list[dict[str, Any]], close: bool) -> None:
    """Whatever a stream peer sends, the reader gets bytes, then EndOfStream or BrokenResourceError:
    never another exception, never a hang."""

    async def script(channel: SecureChannel, raw: Any) -> None:
        request = await channel.receive()
        await channel.send({"t": "stream_reply", "rid": request["rid"], "r": "accepted"})
        for message in batch:
            await channel.send(message)
        if not close:
            await anyio.sleep_forever()

    async def main() -> None:
        async with facing_mallory(CHAT, script) as (_, mallory), await mallory.open_stream(CHAT) as stream:
            expected = b""
            for message in batch:
                if message["t"] != "data" or not isinstance(message["d"], bytes):
                    break
                expected += message["d"]
            got = b""
            with anyio.move_on_after(0.5):  # a peer that sends nothing more and keeps the connection
                try:
                    while True:
                        got += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
            assert got == expected

    anyio.run(main)
