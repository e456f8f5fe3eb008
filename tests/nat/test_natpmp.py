"""NAT-PMP (RFC 6886): the messages byte for byte, answers that are not answers, and the client
against a router written here from the RFC (on loopback)."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest
from conftest import natpmp_router
from hypothesis import given
from hypothesis import strategies as st

from peerkit.nat.client import NatPmpClient
from peerkit.nat.mapper import PortMapper, default_gateway_from
from peerkit.nat.natpmp import (
    ExternalAddress,
    Mapping,
    NatPmpError,
    Protocol,
    epoch_is_continuous,
    external_address_request,
    mapping_request,
    parse_response,
)


def test_requests_are_the_rfcs_bytes() -> None:
    assert external_address_request() == b"\x00\x00"
    assert mapping_request("tcp", 7000, 7000, 3600) == bytes.fromhex("0002 0000 1b58 1b58 00000e10")
    assert mapping_request("udp", 6881) == bytes.fromhex("0001 0000 1ae1 0000 00001c20")
    assert mapping_request("tcp", 7000, 0, 0) == bytes.fromhex("0002 0000 1b58 0000 00000000")  # removal
    for bad in (("sctp", 1, 0, 1), ("tcp", 0, 0, 1), ("tcp", 1, 70000, 1), ("tcp", 1, 0, -1)):
        with pytest.raises(ValueError, match=r"ports are|lifetime|udp or tcp"):
            mapping_request(*bad)  # type: ignore[arg-type]


def test_answers_are_read_and_checked_against_the_request() -> None:
    ask = external_address_request()
    answer = bytes.fromhex("0080 0000 00000064 cb007109")
    assert parse_response(answer, ask) == ExternalAddress("203.0.113.9", 100)
    mapping = mapping_request("tcp", 7000, 0, 3600)
    got = parse_response(bytes.fromhex("0082 0000 00000065 1b58 9c40 00000708"), mapping)
    assert got == Mapping("tcp", 7000, 40000, 1800, 101)
    with pytest.raises(NatPmpError, match="not authorized") as refused:
        parse_response(bytes.fromhex("0082 0002 00000065 1b58 0000 00000000"), mapping)
    assert refused.value.code == 2
    for wrong in (
        bytes.fromhex("0081 0000 00000065 1b58 9c40 00000708"),  # an answer for udp
        bytes.fromhex("0182 0000 00000065 1b58 9c40 00000708"),  # version 1
        bytes.fromhex("0082 0000 00000065 1b59 9c40 00000708"),  # another port's mapping
        bytes.fromhex("0082 0000 00000065 1b58"),  # cut short
        b"",
    ):
        with pytest.raises(NatPmpError) as error:
            parse_response(wrong, mapping)
        assert error.value.code is None


@given(st.binary(max_size=40), st.sampled_from([external_address_request(), mapping_request("udp", 6881)]))
def test_any_bytes_are_an_answer_or_a_clear_error(data: bytes, request: bytes) -> None:
    try:
        answer = parse_response(data, request)
    except NatPmpError:
        return
    assert isinstance(answer, ExternalAddress | Mapping)


def test_a_router_that_lost_its_mappings_is_told_by_its_epoch() -> None:
    assert epoch_is_continuous(1000, 50.0, 1100, 150.0)  # 100 s later, 100 s on
    assert epoch_is_continuous(1000, 50.0, 1088, 150.0)  # a slow clock: within an eighth
    assert not epoch_is_continuous(1000, 50.0, 5, 150.0)  # it restarted


@pytest.mark.anyio
async def test_the_client_asks_maps_and_unmaps_through_a_router(request: pytest.FixtureRequest) -> None:
    async with natpmp_router(drop_first=1) as (made, client):
        request.getfixturevalue("no_worker_thread")  # the client's sockets take none (the router's may)
        assert await client.external_address() == ExternalAddress("203.0.113.9", 7)
        assert made.requests == 2  # the first was lost: sent again
        mapping = await client.map("tcp", 7000, lifetime=7200)
        assert mapping == Mapping("tcp", 7000, 17000, 3600, 7)  # the router chose the port and time
        assert made.mappings == {(2, 7000): (17000, 3600)}
        await client.unmap("tcp", 7000)
        assert made.mappings == {}


@pytest.mark.anyio
async def test_a_refusing_router_and_no_router_are_clear_errors() -> None:
    async with natpmp_router(refuse=4) as (_, client):
        with pytest.raises(NatPmpError, match="out of resources") as refused:
            await client.map("udp", 6881)
        assert refused.value.code == 4
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as idle:
        port = idle.extra(anyio.abc.SocketAttribute.local_port)  # nothing listens there afterwards
    silent = NatPmpClient("127.0.0.1", port=port, tries=2, first_wait=0.05)
    with anyio.fail_after(2), pytest.raises(NatPmpError, match=r"no NAT-PMP router at 127\.0\.0\.1"):
        await silent.external_address()


def test_the_default_gateway_is_read_from_the_route_table() -> None:
    table = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "garbage line\n"
    )
    assert default_gateway_from(table) == "192.0.2.1"  # the default route of the lowest metric
    assert default_gateway_from(table.splitlines()[0]) is None


@pytest.mark.anyio
async def test_the_mapper_maps_renews_follows_a_restart_and_unmaps() -> None:
    async with natpmp_router(max_lifetime=1) as (made, client):
        mapper = PortMapper(client, [("tcp", 7000), ("udp", 7000)], lifetime=7200)
        async with anyio.create_task_group() as tg:
            await tg.start(mapper.run)
            assert mapper.external == ExternalAddress("203.0.113.9", 7)
            assert made.mappings == {(2, 7000): (7000, 1), (1, 7000): (7000, 1)}  # its own port asked
            asked = made.requests
            with anyio.fail_after(3):  # renewed at half the lifetime the router gave
                while made.requests <= asked:
                    await anyio.sleep(0.05)
            made.mappings.clear()  # the router restarts: it forgot them
            made.epoch = 0
            with anyio.fail_after(3):
                while len(made.mappings) < 2:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        assert made.mappings == {}  # removed when it stopped
        assert mapper.mappings == {}


@pytest.mark.anyio
async def test_without_a_router_the_mapper_starts_and_maps_nothing() -> None:
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as idle:
        port = idle.extra(anyio.abc.SocketAttribute.local_port)
    mapper = PortMapper(NatPmpClient("127.0.0.1", port=port, tries=1, first_wait=0.05), [("tcp", 7000)])
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(2):
            await tg.start(mapper.run)
        assert mapper.mappings == {}
        assert mapper.external is None
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_mapping_whose_answer_never_came_is_removed_at_stop() -> None:
    # The router took the request and mapped the port, but the mapper was stopped before the
    # answer: it cannot know whether the port is mapped, so it removes it too.
    mapped: set[tuple[str, int]] = set()
    asked = anyio.Event()

    class SlowRouter:
        async def external_address(self) -> ExternalAddress:
            return ExternalAddress("203.0.113.9", 7)

        async def map(
            self, protocol: Protocol, internal_port: int, *, external_port: int = 0, lifetime: int = 7200
        ) -> Mapping:
            mapped.add((protocol, internal_port))
            asked.set()
            await anyio.sleep_forever()  # (the answer is lost)
            raise AssertionError

        async def unmap(self, protocol: Protocol, internal_port: int) -> None:
            mapped.discard((protocol, internal_port))

    mapper = PortMapper(SlowRouter(), [("tcp", 7000)], lifetime=7200)
    async with anyio.create_task_group() as tg:
        tg.start_soon(mapper.run)
        await asked.wait()
        assert mapped == {("tcp", 7000)}
        tg.cancel_scope.cancel()
    assert mapped == set()
