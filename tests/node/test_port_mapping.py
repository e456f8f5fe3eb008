"""The node's port mapped through a router: published first in its record while held, removed at
the end. The router here is a NAT-PMP router written from RFC 6886 on loopback (see
tests/nat/test_natpmp.py); miniupnpd is the router in the namespace tests."""

from __future__ import annotations

import anyio
import pytest
from conftest import natpmp_router

from peerkit import EndPoint, Identity, Node, Scope
from peerkit.discovery.memory import MemoryDiscovery
from peerkit.nat.client import PcpClient
from peerkit.nat.igd import IgdClient
from peerkit.nat.upnp import UpnpError
from peerkit.node import mapping
from peerkit.node.mapping import PortMapping, default_on
from peerkit.testing import MemoryNetwork, nodes


def test_the_environment_turns_the_default_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERKIT_PORT_MAPPING", "off")
    assert not default_on()
    assert not Node(identity=Identity.generate()).config.port_mapping
    assert Node(identity=Identity.generate(), port_mapping=True).config.port_mapping  # told: on
    monkeypatch.delenv("PEERKIT_PORT_MAPPING")
    assert default_on()
    assert Node(identity=Identity.generate()).config.port_mapping
    assert not Node(identity=Identity.generate(), port_mapping=False).config.port_mapping
    # A network of one's own (the testing kit's, in memory) has no router to ask.
    assert not Node(identity=Identity.generate(), network=MemoryNetwork()).config.port_mapping
    assert Node(identity=Identity.generate(), network=MemoryNetwork(), port_mapping=True).config.port_mapping


@pytest.mark.anyio
async def test_the_testing_kits_nodes_ask_no_router_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEERKIT_PORT_MAPPING")  # as in an application's own tests
    async with nodes(2) as (alice, _):
        assert not alice.config.port_mapping
        assert alice.reach().mapped is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("enabled", "host", "problem"),
    [
        (False, "0.0.0.0", "port mapping is off"),
        (True, "127.0.0.1", "the node listens on 127.0.0.1, not behind a router"),
        (True, "100.64.0.1", "not behind a router"),  # (a carrier-grade NAT address)
    ],
)
async def test_a_node_not_behind_a_router_asks_no_router(
    enabled: bool, host: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_gateway_asked() -> str:
        raise AssertionError("the gateway was looked up")

    monkeypatch.setattr(mapping, "default_gateway", no_gateway_asked)
    part = PortMapping(enabled=enabled, changed=lambda: None)
    await part.run(host, 7000)
    assert part.endpoint is None
    assert part.problem is not None
    assert problem in part.problem


@pytest.mark.anyio
async def test_a_node_on_ipv4_and_ipv6_maps_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # Listening on the empty host (IPv4 and IPv6), a node is a host behind a router as one on
    # 0.0.0.0 is, on asyncio and on trio (whose listener reports its IPv6 address, "::"): it looks
    # for its gateway (none here).
    asked: list[str] = []

    async def no_gateway() -> None:
        asked.append("gateway")

    monkeypatch.setattr(mapping, "default_gateway", no_gateway)
    async with Node(identity=Identity.generate(), listen=("", 0), discovery=[], port_mapping=True) as node:
        with anyio.fail_after(5):
            while not asked:
                await anyio.sleep(0.01)
        assert node.reach().mapping_problem == "this host has no default gateway"
        assert node.endpoint.host == "127.0.0.1"  # (on trio too, whose listener reports "::")


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["pcp", "nat-pmp"])
async def test_a_mapped_port_is_published_first_and_removed_at_the_end(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    # A router that speaks PCP is asked over PCP; one that speaks only NAT-PMP answers PCP with
    # "unsupported version", and NAT-PMP maps.
    async with natpmp_router(pcp=method == "pcp") as (router, client):

        async def loopback_gateway() -> str:
            return "127.0.0.1"

        async def no_ssdp(**options: object) -> IgdClient:
            raise UpnpError("no SSDP search from the test's host")  # multicast would leave loopback

        monkeypatch.setattr(mapping, "default_gateway", loopback_gateway)
        monkeypatch.setattr(mapping, "NatPmpClient", lambda gateway: client)
        monkeypatch.setattr(
            mapping, "PcpClient", lambda gateway: PcpClient(gateway, port=router.port, first_wait=0.05)
        )
        monkeypatch.setattr(IgdClient, "discover", no_ssdp)
        net, medium = MemoryNetwork(), MemoryDiscovery()
        bob = Node(
            identity=Identity.generate(),
            network=net,
            listen=("10.0.0.2", 7000),  # a private address: behind a router
            discovery=[medium],
            port_mapping=True,
        )
        alice = Node(identity=Identity.generate(), network=net, listen=("10.0.0.3", 7000), discovery=[medium])
        async with bob, alice:
            await bob.sign_in(Scope.NEAR_ME)
            await alice.sign_in(Scope.NEAR_ME)
            public = EndPoint("203.0.113.9", 7000)
            held = router.pcp_mappings if method == "pcp" else router.mappings
            with anyio.fail_after(10):
                while len(held) < 2 or [p.endpoints[0] for p in alice.nearby()] != [public]:
                    await anyio.sleep(0.05)
            assert alice.nearby()[0].endpoints[1] == EndPoint("10.0.0.2", 7000)
            assert [e.how for e in alice.nearby()[0].endpoints] == ["mapped", "interface"]
            reach = bob.reach()
            assert (reach.mapped, reach.mapping, reach.mapping_problem) == (public, method, None)
            assert reach.reachable  # a mapped port: peers elsewhere can dial it
            udp, tcp = (17, 6) if method == "pcp" else (1, 2)  # the protocol numbers each speaks
            assert {k: v[-2:] for k, v in held.items()} == {
                (udp, 7000): (7000, 3600),
                (tcp, 7000): (7000, 3600),
            }
            assert (router.mappings if method == "pcp" else router.pcp_mappings) == {}  # one way only
        assert held == {}  # removed when the node stopped
