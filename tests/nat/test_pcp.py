"""PCP (RFC 6887): the messages byte for byte, answers that are not answers, a NAT-PMP router's
answer, and the client against a router written here from the RFC (on loopback)."""

from __future__ import annotations

import struct

import anyio
import pytest
from conftest import natpmp_router
from hypothesis import given
from hypothesis import strategies as st

from peerkit.nat.client import PcpClient
from peerkit.nat.mapper import PortMapper
from peerkit.nat.natpmp import ExternalAddress, Mapping
from peerkit.nat.pcp import Announced, PcpError, PcpResult, announce_request, map_request, parse_response

NONCE = bytes(range(1, 13))
MAPPED_CLIENT = "00000000000000000000ffff c0a80114"  # 192.168.1.20, IPv4-mapped
ANY = "00000000000000000000ffff 00000000"


def test_requests_are_the_rfcs_bytes() -> None:
    assert announce_request("192.168.1.20") == bytes.fromhex("02 00 0000 00000000" + MAPPED_CLIENT)
    mapped = map_request(NONCE, "tcp", 7000, 7000, 3600, client_ip="192.168.1.20")
    assert mapped == bytes.fromhex(
        "02 01 0000 00000e10" + MAPPED_CLIENT + NONCE.hex() + "06 000000 1b58 1b58" + ANY
    )
    removal = map_request(NONCE, "udp", 6881, 0, 0, client_ip="192.168.1.20")
    assert (removal[1], removal[4:8], removal[36]) == (1, bytes(4), 17)  # MAP, lifetime 0, UDP
    assert len(mapped) == 60
    for bad in (
        {"nonce": b"short"},
        {"protocol": "sctp"},
        {"internal_port": 0},
        {"external_port": 70000},
        {"lifetime": -1},
    ):
        arguments = {"nonce": NONCE, "protocol": "tcp", "internal_port": 1, "external_port": 0, "lifetime": 1}
        arguments.update(bad)
        with pytest.raises(ValueError, match=r"nonce|udp or tcp|ports are|lifetime"):
            map_request(client_ip="10.0.0.2", **arguments)  # type: ignore[arg-type]


def answer(opcode: int, code: int = 0, lifetime: int = 1800, epoch: int = 101, body: bytes = b"") -> bytes:
    return struct.pack("!BBxBII12x", 2, 0x80 | opcode, code, lifetime, epoch) + body


def map_body(nonce: bytes = NONCE, protocol: int = 6, internal: int = 7000, external: int = 40000) -> bytes:
    public = bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 9])
    return struct.pack("!12sB3xHH16s", nonce, protocol, internal, external, public)


def test_answers_are_read_and_checked_against_the_request() -> None:
    assert parse_response(answer(0), announce_request("10.0.0.2")) == Announced(101)
    asked = map_request(NONCE, "tcp", 7000, client_ip="10.0.0.2")
    got = parse_response(answer(1, body=map_body()), asked)
    assert got == Mapping("tcp", 7000, 40000, 1800, 101, "203.0.113.9")
    with_option = answer(1, body=map_body()) + bytes.fromhex("0100 0004 00000000")  # options are skipped
    assert parse_response(with_option, asked) == got
    with pytest.raises(PcpError, match="not authorized") as refused:
        parse_response(answer(1, code=2, body=map_body()), asked)
    assert refused.value.code == PcpResult.NOT_AUTHORIZED
    with pytest.raises(PcpError, match="speaks NAT-PMP") as old:  # RFC 6887 section 9
        parse_response(bytes.fromhex("0081 0001 00000065"), asked)
    assert old.value.code == PcpResult.UNSUPP_VERSION
    for wrong in (
        answer(1, body=map_body(nonce=bytes(12))),  # another client's nonce
        answer(1, body=map_body(protocol=17)),  # an answer for udp
        answer(1, body=map_body(internal=7001)),  # another port's mapping
        answer(0),  # an answer to ANNOUNCE
        answer(1),  # cut short
        answer(1, body=map_body())[:-2],  # not a multiple of 4
        b"\x02",
        b"",
    ):
        with pytest.raises(PcpError) as error:
            parse_response(wrong, asked)
        assert error.value.code is None


@given(
    st.binary(max_size=80),
    st.sampled_from([announce_request("10.0.0.2"), map_request(NONCE, "udp", 6881, client_ip="10.0.0.2")]),
)
def test_any_bytes_are_an_answer_or_a_clear_error(data: bytes, request: bytes) -> None:
    try:
        got = parse_response(data, request)
    except PcpError:
        return
    assert isinstance(got, Announced | Mapping)


@pytest.mark.anyio
async def test_the_client_maps_renews_with_its_nonce_and_unmaps_through_a_router() -> None:
    async with natpmp_router(pcp=True, drop_first=1) as (made, _):
        client = PcpClient("127.0.0.1", port=made.port, first_wait=0.05)
        assert await client.external_address() == ExternalAddress("", 7)  # no mapping yet
        assert made.requests == 2  # the first was lost: sent again
        mapping = await client.map("tcp", 7000, lifetime=7200)
        assert mapping == Mapping("tcp", 7000, 17000, 3600, 7, "203.0.113.9")
        assert (await client.external_address()).address == "203.0.113.9"
        nonce = made.pcp_mappings[(6, 7000)][0]
        assert (await client.map("tcp", 7000, external_port=17000)).external_port == 17000  # renewed
        assert made.pcp_mappings == {(6, 7000): (nonce, 17000, 3600)}  # the same mapping
        other = PcpClient("127.0.0.1", port=made.port, first_wait=0.05)
        with pytest.raises(PcpError, match="not authorized"):  # another client's nonce
            await other.map("tcp", 7000)
        await client.unmap("tcp", 7000)
        assert made.pcp_mappings == {}


@pytest.mark.anyio
async def test_a_nat_pmp_router_says_so_and_a_silent_one_is_a_clear_error() -> None:
    async with natpmp_router() as (made, _):
        with pytest.raises(PcpError, match="speaks NAT-PMP") as old:
            await PcpClient("127.0.0.1", port=made.port, first_wait=0.05).external_address()
        assert old.value.code == PcpResult.UNSUPP_VERSION
        port = made.port
    silent = PcpClient("127.0.0.1", port=port, tries=2, first_wait=0.05)  # nothing listens there now
    with anyio.fail_after(2), pytest.raises(PcpError, match=r"no PCP router at 127\.0\.0\.1"):
        await silent.external_address()


@pytest.mark.anyio
async def test_the_mapper_learns_the_public_address_from_the_mappings() -> None:
    async with natpmp_router(pcp=True) as (made, _):
        mapper = PortMapper(
            PcpClient("127.0.0.1", port=made.port, first_wait=0.05), [("tcp", 7000), ("udp", 7000)]
        )
        async with anyio.create_task_group() as tg:
            await tg.start(mapper.run)
            assert mapper.external == ExternalAddress("203.0.113.9", 7)
            assert set(made.pcp_mappings) == {(6, 7000), (17, 7000)}
            tg.cancel_scope.cancel()
        assert made.pcp_mappings == {}  # removed when it stopped
