"""peerkit.presence: what a subscriber is told (the outbox) and how the wire form is read."""

from __future__ import annotations

import uuid

import pytest

from peerkit import Presence, PresenceStatus, ProtocolError
from peerkit.model import PeerObject, Scope
from peerkit.presence import KINDS, Outbox, presence_wire, read_presence

PICTURE = PeerObject(id=uuid.UUID(int=7), data=b"p", scope=Scope.ALL)
BUSY = Presence(PresenceStatus.BUSY, "in a call")


@pytest.mark.parametrize("kinds", [set(KINDS), list(reversed(KINDS)), ("object", "presence")])
def test_a_difference_comes_in_the_order_of_kinds_whatever_order_it_is_asked_in(kinds: object) -> None:
    outbox = Outbox()
    outbox.diff(Scope.ALL, BUSY, "laptop", [], [PICTURE])
    told = outbox.diff(Scope.NONE, BUSY, "laptop", [], [PICTURE], kinds)  # type: ignore[arg-type]
    order = [m["k"] for m in told]
    assert order == sorted(order, key=KINDS.index)
    assert order[0] == "presence"  # the watcher sees Offline before what it can no longer see goes
    assert told[0]["v"] == presence_wire(Presence(PresenceStatus.OFFLINE))
    assert outbox.diff(Scope.NONE, BUSY, "laptop", [], [PICTURE], kinds) == []  # type: ignore[arg-type]


def test_only_the_kinds_asked_for_are_told() -> None:
    outbox = Outbox()
    outbox.diff(Scope.ALL, BUSY, "laptop", [], [PICTURE])
    told = outbox.diff(Scope.NONE, BUSY, "", [], [PICTURE], {"name"})
    assert [m["k"] for m in told] == ["name"]


@pytest.mark.parametrize("status", list(PresenceStatus))
def test_every_status_reads_back_as_itself(status: PresenceStatus) -> None:
    presence = read_presence(presence_wire(Presence(status, "x")))
    assert presence.status is status
    assert presence == Presence(status, "x")


@pytest.mark.parametrize("bad", [[8, ""], [-1, ""], [True, ""], ["1", ""], [1], [1, 2], "busy"])
def test_a_bad_presence_is_a_protocol_error(bad: object) -> None:
    with pytest.raises(ProtocolError, match="presence"):
        read_presence(bad)
