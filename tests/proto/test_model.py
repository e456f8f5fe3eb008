from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit import (
    Application,
    ChangeType,
    EndPoint,
    InvitationResponse,
    LimitExceeded,
    PeerObject,
    Presence,
    PresenceStatus,
    Scope,
    SubscribePermission,
)
from peerkit.model import host_and_port, seconds_text


def test_numeric_values_are_those_of_the_original_api() -> None:
    assert [Scope.NONE, Scope.NEAR_ME, Scope.INTERNET, Scope.ALL] == [0, 1, 2, 3]
    assert Scope.NEAR_ME | Scope.INTERNET == Scope.ALL
    assert [s.value for s in PresenceStatus] == list(range(8))
    assert PresenceStatus.OFFLINE == 0
    assert PresenceStatus.ON_THE_PHONE == 6
    assert PresenceStatus.ONLINE == 7
    assert (InvitationResponse.DECLINED, InvitationResponse.ACCEPTED, InvitationResponse.EXPIRED) == (0, 1, 2)
    assert (ChangeType.ADDED, ChangeType.DELETED, ChangeType.UPDATED) == (0, 1, 2)
    assert (SubscribePermission.BLOCKED, SubscribePermission.ALLOWED) == (0, 1)


def test_presence_limits() -> None:
    assert Presence(PresenceStatus.BUSY, "x" * 255).text == "x" * 255
    with pytest.raises(LimitExceeded, match="presence text is 256 characters; the limit is 255"):
        Presence(PresenceStatus.BUSY, "x" * 256)
    assert Presence(5).status is PresenceStatus.BUSY  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a presence status"):
        Presence(9)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="presence text must be str"):
        Presence(PresenceStatus.BUSY, b"x")  # type: ignore[arg-type]


def test_text_that_utf8_cannot_carry_is_refused_where_it_is_given() -> None:
    # A lone surrogate is how Python reads a byte that is not UTF-8 (an argument, a file name):
    # it was taken, then failed as the store or the wire wrote it, far from where it came in.
    for make in (
        lambda: Presence(PresenceStatus.AWAY, "lunch \udcff"),
        lambda: Application(id=uuid.uuid4(), description="\ud800"),
        lambda: EndPoint("h", 80, "desk\udcff"),
    ):
        with pytest.raises(ValueError, match=r"holds '\\ud[8c]\w\w', which is no character"):
            make()
    assert Presence(PresenceStatus.AWAY, "déjeuner 🍜").text == "déjeuner 🍜"


def test_endpoint_equality_ignores_the_name_and_normalises_addresses() -> None:
    assert EndPoint("127.0.0.1", 80, "a") == EndPoint("127.0.0.1", 80, "b")
    assert EndPoint("127.0.0.1", 80) != EndPoint("127.0.0.1", 81)
    assert EndPoint("[::1]", 80).host == "::1"
    assert EndPoint("0:0::1", 80) == EndPoint("::1", 80)
    assert str(EndPoint("::1", 80)) == "[::1]:80"
    assert len({EndPoint("10.0.0.1", 1, "x"), EndPoint("10.0.0.1", 1, "y")}) == 1


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("", 80), ValueError, "not an address"),
        (("a b", 80), ValueError, "not an address"),
        (("h", 0), ValueError, r"outside 1\.\.65535"),
        (("h", 65536), ValueError, r"outside 1\.\.65535"),
        (("h", "80"), TypeError, "port must be int"),
        ((1, 80), TypeError, "host must be str"),
        (("h", 80, "n" * 256), LimitExceeded, "endpoint name is 256 characters; the limit is 255"),
    ],
)
def test_endpoint_rejects(args: tuple[object, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        EndPoint(*args)  # type: ignore[arg-type]


def test_endpoint_parse_reads_what_str_writes() -> None:
    assert EndPoint.parse("192.168.1.20:7000") == EndPoint("192.168.1.20", 7000)
    assert EndPoint.parse("[fd00::2]:41235") == EndPoint("fd00::2", 41235)
    assert EndPoint.parse(" node.example:80 ") == EndPoint("node.example", 80)
    assert host_and_port(":7000", default_host="") == ("", 7000)
    assert host_and_port("[::]:0") == ("::", 0)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("nowhere", ValueError, r"'nowhere' is not HOST:PORT \(for IPv6: \[ADDRESS\]:PORT\)"),
        ("host:", ValueError, "is not HOST:PORT"),
        ("host:x", ValueError, "is not HOST:PORT"),
        ("host:\u00b2", ValueError, "is not HOST:PORT"),  # a digit to isdigit(), not to int()
        ("host:-1", ValueError, "is not HOST:PORT"),
        ("host:70000", ValueError, r"port 70000 is outside 0\.\.65535"),
        ("host:" + "9" * 5000, ValueError, r"the port is outside 0\.\.65535"),
        ("host:0", ValueError, r"endpoint port 0 is outside 1\.\.65535"),
        (":7000", ValueError, "names no host"),
        ("fe80::1", ValueError, r"an IPv6 address goes in brackets, \[ADDRESS\]:PORT"),
        ("::1:7000", ValueError, "an IPv6 address goes in brackets"),
        ("[host]:7000", ValueError, "brackets are for an IPv6 address"),
        ("[]:7000", ValueError, "brackets are for an IPv6 address"),
        ("a b:7000", ValueError, "not an address or host name"),
        (b"host:80", TypeError, "an address must be text"),
    ],
)
def test_endpoint_parse_names_what_is_wrong(text: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as raised:
        EndPoint.parse(text)  # type: ignore[arg-type]
    assert len(str(raised.value)) < 300  # a long text is quoted cut short


@given(st.text(max_size=80))
def test_endpoint_parse_takes_any_text(text: str) -> None:
    try:
        endpoint = EndPoint.parse(text)
    except ValueError:
        return
    assert EndPoint.parse(str(endpoint)) == endpoint


def test_application_limits() -> None:
    app = Application(id=uuid.uuid4(), description="Chat", data=bytearray(16384), scope=Scope.NEAR_ME)
    assert isinstance(app.data, bytes)
    with pytest.raises(LimitExceeded, match="application data is 16385 bytes; the limit is 16384"):
        Application(id=uuid.uuid4(), data=bytes(16385))
    with pytest.raises(LimitExceeded, match="application description is 256 characters"):
        Application(id=uuid.uuid4(), description="d" * 256)
    with pytest.raises(TypeError, match=r"application id must be a uuid\.UUID"):
        Application(id="not-a-uuid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="application scope 7 is not a Scope"):
        Application(id=uuid.uuid4(), scope=7)  # type: ignore[arg-type]


def test_object_limits() -> None:
    PeerObject(id=uuid.uuid4(), data=b"x")
    PeerObject(id=uuid.uuid4(), data=bytes(16384))
    with pytest.raises(LimitExceeded, match="object data is empty"):
        PeerObject(id=uuid.uuid4(), data=b"")
    with pytest.raises(LimitExceeded, match="object data is 16385 bytes; the limit is 16384"):
        PeerObject(id=uuid.uuid4(), data=bytes(16385))
    with pytest.raises(TypeError, match="object data must be bytes"):
        PeerObject(id=uuid.uuid4(), data="text")  # type: ignore[arg-type]


def test_limit_exceeded_is_a_value_error() -> None:
    assert issubclass(LimitExceeded, ValueError)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (10.0, "10 s"),
        (9.9994050160003, "10 s"),
        (0.5, "0.5 s"),
        (9.987, "9.99 s"),
        (300, "300 s"),
        (0.001, "0.001 s"),
        (120.4, "120 s"),
    ],
)
def test_durations_in_messages_are_rounded(value: float, text: str) -> None:
    assert seconds_text(value) == text
