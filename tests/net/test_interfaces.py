"""What is read from this host's interfaces: the addresses a node listening on a wildcard shows,
and the on-link IPv6 /64s (whose neighbours are sources of their own, see ``source_of``)."""

from __future__ import annotations

import ifaddr
import pytest

from peerkit.net.transport import OnLink, listening, local_addresses
from peerkit.proto.admission import source_of


def adapters(*ips: tuple[str | tuple[str, int, int], int]) -> list[ifaddr.Adapter]:
    return [ifaddr.Adapter("eth0", "eth0", [ifaddr.IP(ip, prefix, "eth0") for ip, prefix in ips])]


def test_the_slash_64s_of_the_interfaces_ipv6_addresses_are_on_link(monkeypatch: pytest.MonkeyPatch) -> None:
    found = adapters(
        (("fd00:1:2::5", 0, 0), 64),
        (("2001:db8:7::1", 0, 0), 48),  # a shorter prefix: its /64 is on the link too
        (("2001:db8:9::1", 0, 0), 128),  # a single address: no neighbour known by it
        ("192.0.2.2", 24),
    )
    monkeypatch.setattr(ifaddr, "get_adapters", lambda: found)
    on_link = OnLink()
    assert "fd00:1:2::/64" in on_link
    assert "2001:db8:7::/64" in on_link
    assert "2001:db8:9::/64" not in on_link
    assert source_of(("fd00:1:2::9", 1), on_link) == "fd00:1:2::9"
    assert source_of(("2001:db8:9::2", 1), on_link) == "2001:db8:9::/64"


def test_the_interfaces_are_read_again_after_the_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    found = adapters((("fd00:1:2::5", 0, 0), 64))

    def get_adapters() -> list[ifaddr.Adapter]:
        reads.append(1)
        return found

    monkeypatch.setattr(ifaddr, "get_adapters", get_adapters)
    kept = OnLink(refresh=3600)
    assert "fd00:1:2::/64" in kept
    found = adapters((("fd00:1:3::5", 0, 0), 64))  # the address changed
    assert "fd00:1:2::/64" in kept  # (believed for an hour)
    assert len(reads) == 1
    fresh = OnLink(refresh=0)
    assert "fd00:1:3::/64" in fresh
    found = adapters((("fd00:1:4::5", 0, 0), 64))
    assert "fd00:1:4::/64" in fresh
    assert "fd00:1:3::/64" not in fresh
    assert len(reads) == 4


def test_a_wildcard_shows_the_addresses_of_its_family(monkeypatch: pytest.MonkeyPatch) -> None:
    # "::" listens on IPv6 only (its socket takes no IPv4): it shows no IPv4 address, which would
    # be refused. Loopback and link-local addresses are never shown.
    found = adapters(
        ("192.0.2.2", 24),
        (("fd00:1:2::5", 0, 0), 64),
        (("fe80::1", 0, 2), 64),
        ("127.0.0.1", 8),
        (("::1", 0, 0), 128),
    )
    monkeypatch.setattr(ifaddr, "get_adapters", lambda: found)
    assert local_addresses("0.0.0.0", fallback="x") == ("192.0.2.2",)
    assert local_addresses("::", fallback="x") == ("fd00:1:2::5",)
    assert local_addresses("", fallback="x") == ("192.0.2.2", "fd00:1:2::5")
    assert local_addresses("10.1.2.3", fallback="x") == ("10.1.2.3",)
    monkeypatch.setattr(ifaddr, "get_adapters", lambda: adapters(("192.0.2.2", 24)))
    assert local_addresses("::", fallback="::1") == ("::1",)


def test_the_empty_host_stays_what_a_node_listens_on() -> None:
    # Its listener reports the address of one family ("0.0.0.0" on asyncio, "::" on trio).
    assert listening("", ("::", 7000)) == ("", 7000)
    assert listening("", ("0.0.0.0", 7000)) == ("", 7000)
    assert listening("0.0.0.0", ("0.0.0.0", 7000)) == ("0.0.0.0", 7000)
    assert listening("localhost", ("127.0.0.1", 7000)) == ("127.0.0.1", 7000)
