"""Every reader of untrusted messages takes maps whose keys are integers or bytes as well as text
(CBOR allows all three, and so does peerkit's decoder) and fails only with its documented error.

The other fuzz tests build maps from the keys each reader knows; these mix in the keys no honest
peer sends, at every level a reader looks into."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerkit.errors import ProtocolError
from peerkit.presence import Watched, read_app, read_object, read_presence
from peerkit.proto import chat, files, pairing, relay
from peerkit.proto.control import ReplyParts
from peerkit.proto.framing import encode_frame
from peerkit.proto.messages import encode
from peerkit.proto.requests import BadRequest, Refused, check_reply, decode_request, decode_stream_request

#: The keys the readers know, and keys no reader knows: integers and bytes among them.
_KNOWN = [
    "t", "rid", "more", "type", "app", "msg", "data", "ttl", "what", "id", "desc", "state",
    "presence", "name", "apps", "objects", "k", "c", "v", "token", "files", "want", "n", "card",
]  # fmt: skip
_KEYS = st.sampled_from(_KNOWN) | st.integers(-2, 3) | st.binary(max_size=2) | st.text(max_size=3)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 2**64 - 1)
    | st.text(max_size=6)
    | st.binary(max_size=20)
    | st.sampled_from(["invite", "get", "get_reply", "stream", "notify", "hello", "said", "pake"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=16,
)
_MAPS = st.dictionaries(_KEYS, _VALUES, max_size=6)
#: Messages as a control channel hands them on: maps with a text "t" (checked before any reader).
_MESSAGES = st.builds(lambda t, rest: {**rest, "t": t}, _SCALARS.filter(lambda v: isinstance(v, str)), _MAPS)


Errors = tuple[type[Exception], ...]


def _refused_only_with(errors: Errors, read: Callable[[Any], object], value: Any) -> None:
    with contextlib.suppress(*errors):
        read(value)


_MAP_READERS: list[tuple[str, Callable[[Any], object], Errors, st.SearchStrategy[Any]]] = [
    ("decode_request", decode_request, (BadRequest,), _MESSAGES),
    ("decode_stream_request", decode_stream_request, (BadRequest,), _MESSAGES),
    # (an "error" reply is the peer's refusal: Refused, as check_reply documents)
    ("check_reply", lambda m: check_reply(m, "get_reply"), (ProtocolError, Refused), _MESSAGES),
    ("Watched.apply_notify", lambda m: Watched().apply_notify(m), (ProtocolError,), _MESSAGES),
    ("read_presence", read_presence, (ProtocolError,), _MAPS | _VALUES),
    ("read_app", read_app, (ProtocolError,), _MAPS | _VALUES),
    ("read_object", read_object, (ProtocolError,), _MAPS | _VALUES),
    ("Watched.apply_state", lambda m: Watched().apply_state(m), (ProtocolError,), _MAPS | _VALUES),
]


@pytest.mark.parametrize(("name", "read", "errors", "values"), _MAP_READERS, ids=[r[0] for r in _MAP_READERS])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decoded_maps_with_any_keys(
    name: str,
    read: Callable[[Any], object],
    errors: Errors,
    values: st.SearchStrategy[Any],
    data: st.DataObject,
) -> None:
    _refused_only_with(errors, read, data.draw(values))


def _chat(frame: bytes) -> object:
    decoder = chat.ChatDecoder()
    decoder.feed(encode_frame(encode({"type": "hello", "nick": "m", "presence": [1, ""]})))
    return decoder.feed(encode_frame(frame))


_FRAME_READERS: list[tuple[str, Callable[[bytes], object]]] = [
    ("relay.decode_request", relay.decode_request),
    ("relay.decode_reply", relay.decode_reply),
    ("pairing.decode_pairing", pairing.decode_pairing),
    ("files.decode_message", files.decode_message),
    ("files.decode_summary", files.decode_summary),
    ("chat", _chat),
]


@pytest.mark.parametrize(("name", "read"), _FRAME_READERS, ids=[r[0] for r in _FRAME_READERS])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_MAPS | _VALUES)
def test_frames_of_maps_with_any_keys(name: str, read: Callable[[bytes], object], value: Any) -> None:
    _refused_only_with((ProtocolError, relay.RelayRefused), read, encode(value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_MAPS, max_size=4))
def test_reply_parts_with_any_keys(parts: list[dict[Any, Any]]) -> None:
    assembler = ReplyParts()
    with contextlib.suppress(ProtocolError):
        first = {"t": "get_reply", "rid": 1, "more": True, "objects": [], "state": {"apps": []}}
        for part in [first, *parts]:
            assembler.add(part)
