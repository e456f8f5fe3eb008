"""Untrusted cards and subscription messages never fail but with the documented error."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerkit import InvalidRecord, ProtocolError
from peerkit.contacts import CARD_PREFIX, read_card
from peerkit.presence import Watched


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400).map(lambda t: CARD_PREFIX + t)))
def test_card_decoding_never_fails_but_with_invalid_record(data: bytes | str) -> None:
    with contextlib.suppress(InvalidRecord):
        read_card(data)


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.text(max_size=20), st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_items = st.fixed_dictionaries(
    {"id": st.one_of(st.binary(min_size=16, max_size=16), _scalars)},
    optional={"desc": _values, "data": st.one_of(st.binary(max_size=40), _values)},
)
_notify = st.fixed_dictionaries(
    {"t": st.just("notify"), "k": st.sampled_from(["presence", "name", "app", "object", "x"])},
    optional={"c": st.one_of(st.integers(-1, 3), _scalars), "v": st.one_of(_items, _values)},
)
_state = st.one_of(
    _values,
    st.fixed_dictionaries(
        {},
        optional={
            "presence": st.one_of(st.tuples(st.integers(-1, 9), st.text(max_size=5)).map(list), _values),
            "name": _values,
            "apps": st.lists(_items, max_size=3),
            "objects": st.lists(_items, max_size=3),
        },
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_state, st.lists(_notify, max_size=8))
def test_a_watcher_takes_any_state_and_notifications_or_refuses_them_with_protocol_error(
    state: Any, notifications: list[dict[str, Any]]
) -> None:
    watched = Watched()
    with contextlib.suppress(ProtocolError):
        watched.apply_state(state)
    for message in notifications:
        before = (watched.presence, watched.name, dict(watched.apps), dict(watched.objects))
        try:
            watched.apply_notify(message)
        except ProtocolError:
            # Nothing is half-applied.
            assert (watched.presence, watched.name, dict(watched.apps), dict(watched.objects)) == before
