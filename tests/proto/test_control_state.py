"""The life of a control channel, sans-IO: rids, replies in parts, retire, close."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerkit.errors import ProtocolError
from peerkit.proto.control import (
    TRANSITIONS,
    ControlState,
    NoticeReceived,
    Phase,
    PingReceived,
    Refuse,
    ReplyReceived,
    RequestReceived,
    RetireReceived,
    Unmatched,
)


def test_every_phase_change_is_listed_and_nothing_leaves_closed() -> None:
    assert {(a, b) for a, b in TRANSITIONS} == {
        (Phase.OPEN, Phase.RETIRING),
        (Phase.OPEN, Phase.CLOSED),
        (Phase.RETIRING, Phase.CLOSED),
    }
    state = ControlState()
    state.close()
    assert state.phase is Phase.CLOSED
    assert state.retire() is False
    with pytest.raises(RuntimeError, match="closed"):
        state.receive({"t": "retire"})
    with pytest.raises(RuntimeError, match="closed control channel takes no new request"):
        state.start_request()


def test_our_requests_are_numbered_and_matched_by_rid() -> None:
    state = ControlState()
    first, second = state.start_request(), state.start_request()
    assert (first, second) == (1, 2)
    assert state.outstanding
    assert state.receive({"t": "get_reply", "rid": 2, "x": 1}) == ReplyReceived(
        2, {"t": "get_reply", "rid": 2, "x": 1}
    )
    # A reply to a request nobody waits for any more is dropped, not matched twice.
    assert isinstance(state.receive({"t": "get_reply", "rid": 2}), Unmatched)
    assert isinstance(state.receive({"t": "pong", "rid": 1}), ReplyReceived)
    assert not state.outstanding


def test_an_idle_state_keeps_no_table_of_requests_once_they_are_done() -> None:
    # An emptied dict keeps its table until it is cleared (160 bytes); a node keeps thousands of
    # idle channels, each with one of these, so each goes back to the size of a new one.
    empty = sys.getsizeof({})
    state = ControlState()
    for _ in range(3):  # answered, abandoned, and the peer's request answered
        rid = state.start_request()
        assert isinstance(state.receive({"t": "pong", "rid": rid}), ReplyReceived)
        state.abandon(state.start_request())
        assert isinstance(state.receive({"t": "get", "rid": 7}), RequestReceived)
        state.answered(7)
    assert not state.outstanding
    assert sys.getsizeof(state._sent) == empty
    assert sys.getsizeof(state._received) == empty


def test_an_abandoned_request_takes_no_reply() -> None:
    state = ControlState()
    rid = state.start_request()
    state.abandon(rid)
    assert isinstance(state.receive({"t": "invite_reply", "rid": rid, "r": "accepted"}), Unmatched)


def test_a_reply_in_parts_is_one_reply() -> None:
    state = ControlState()
    rid = state.start_request()
    assert state.receive({"t": "get_reply", "rid": rid, "objects": [1], "more": True}) is None
    assert state.receive({"t": "get_reply", "rid": rid, "objects": [2], "more": True}) is None
    event = state.receive({"t": "get_reply", "rid": rid, "objects": [3]})
    assert event == ReplyReceived(rid, {"t": "get_reply", "rid": rid, "objects": [1, 2, 3]})
    assert not state.outstanding


def test_parts_that_do_not_fit_together_are_a_protocol_error() -> None:
    state = ControlState()
    rid = state.start_request()
    state.receive({"t": "get_reply", "rid": rid, "objects": [1], "more": True})
    with pytest.raises(ProtocolError, match="part of a 'get_reply' reply is a 'card_reply'"):
        state.receive({"t": "card_reply", "rid": rid})


def test_requests_of_the_peer_are_outstanding_until_answered() -> None:
    state = ControlState()
    event = state.receive({"t": "get", "rid": 7, "what": "apps"})
    assert event == RequestReceived(7, {"t": "get", "rid": 7, "what": "apps"})
    assert state.outstanding
    assert state.handling == 1
    assert state.receive({"t": "ping", "rid": 8}) == PingReceived(8)
    state.answered(7)
    state.answered(8)
    assert not state.outstanding


def test_a_request_received_before_both_retire_keeps_the_channel_open_until_answered() -> None:
    # Both sides retire while a request of the peer is on its way: the channel must not close
    # before that request is answered (the reply would be lost, and its sender would fail).
    state = ControlState()
    assert state.retire() is True
    assert state.phase is Phase.RETIRING
    assert not state.usable
    assert isinstance(state.receive({"t": "invite", "rid": 1, "app": b"a" * 16, "ttl": 5}), RequestReceived)
    assert state.receive({"t": "retire"}) == RetireReceived(answer=False)
    assert not state.done
    state.answered(1)
    assert state.done


def test_retire_received_first_is_answered_once() -> None:
    state = ControlState()
    assert state.receive({"t": "retire"}) == RetireReceived(answer=True)
    assert not state.usable
    assert state.retire() is True
    assert state.retire() is False
    assert state.done


def test_a_retiring_channel_still_takes_pings_and_replies() -> None:
    state = ControlState()
    rid = state.start_request()
    state.retire()
    with pytest.raises(RuntimeError):
        state.start_request()
    ping = state.start_request(keepalive=True)
    state.receive({"t": "retire"})
    assert not state.done
    assert isinstance(state.receive({"t": "card_reply", "rid": rid}), ReplyReceived)
    assert isinstance(state.receive({"t": "pong", "rid": ping}), ReplyReceived)
    assert state.done


def test_closing_fails_every_request_of_ours() -> None:
    state = ControlState()
    rids = [state.start_request() for _ in range(3)]
    state.receive({"t": "subscribe", "rid": 1})
    assert state.close() == rids
    assert not state.outstanding
    assert state.phase is Phase.CLOSED


def test_too_many_requests_at_once_are_refused_with_limit() -> None:
    state = ControlState(max_concurrent=2)
    state.receive({"t": "card", "rid": 1})
    state.receive({"t": "ping", "rid": 2})
    event = state.receive({"t": "card", "rid": 3})
    assert isinstance(event, Refuse)
    assert event.reply["code"] == "limit"
    assert event.reply["rid"] == 3
    assert state.handling == 2
    # Notices and replies are never refused for that.
    assert isinstance(state.receive({"t": "invite_cancel", "rid": 1}), NoticeReceived)
    state.answered(1)
    assert isinstance(state.receive({"t": "card", "rid": 3}), RequestReceived)


def test_a_repeated_rid_is_refused_without_a_rid() -> None:
    state = ControlState()
    state.receive({"t": "card", "rid": 1})
    event = state.receive({"t": "get", "rid": 1, "what": "apps"})
    assert isinstance(event, Refuse)
    assert event.reply["code"] == "malformed"
    assert "rid" not in event.reply


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"t": "ping"}, "malformed"),
        ({"t": "ping", "rid": -1}, "malformed"),
        ({"t": "invite", "rid": True}, "malformed"),
        ({"t": "card", "rid": "1"}, "malformed"),
        ({"t": "frobnicate"}, "unknown-type"),
    ],
)
def test_a_request_without_a_valid_rid_is_refused_at_once(message: dict[str, object], code: str) -> None:
    state = ControlState()
    event = state.receive(message)
    assert isinstance(event, Refuse)
    assert event.reply["code"] == code
    assert "rid" not in event.reply
    assert not state.outstanding


def test_an_error_about_nothing_is_unmatched() -> None:
    state = ControlState()
    assert isinstance(state.receive({"t": "error", "code": "x", "msg": "y"}), Unmatched)
    assert isinstance(state.receive({"t": "error", "rid": 9, "code": "x", "msg": "y"}), Unmatched)


_MESSAGE = st.fixed_dictionaries(
    {
        "t": st.sampled_from(
            ["ping", "pong", "error", "retire", "get", "get_reply", "notify", "invite_cancel", "x"]
        )
    },
    optional={
        "rid": st.one_of(st.integers(-2, 6), st.booleans(), st.text(max_size=2), st.none()),
        "more": st.one_of(st.booleans(), st.integers(0, 2)),
        "objects": st.lists(st.integers(), max_size=3),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_MESSAGE, st.sampled_from(["send", "answer", "retire"])), max_size=40))
def test_any_sequence_keeps_the_books_straight(steps: list[object]) -> None:
    # Whatever a peer sends, the state raises only ProtocolError, never counts a request twice,
    # and is done only when both retired and nothing is outstanding.
    state = ControlState(max_concurrent=4)
    handling: set[int] = set()
    for step in steps:
        if state.phase is Phase.CLOSED:
            break
        if step == "send":
            if state.usable:
                state.start_request()
        elif step == "answer":
            if handling:
                state.answered(handling.pop())
        elif step == "retire":
            state.retire()
        else:
            assert isinstance(step, dict)
            try:
                event = state.receive(dict(step))
            except ProtocolError:
                state.close()
                break
            if isinstance(event, RequestReceived | PingReceived):
                assert event.rid not in handling
                handling.add(event.rid)
        assert state.handling == len(handling) <= 4
        assert state.done == (state.retire_sent and state.retire_received and not state.outstanding)
