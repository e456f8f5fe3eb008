"""UPnP IGD: the messages, what a router sends read strictly, and the client against a gateway
written here from the UPnP device architecture and WANIPConnection specifications (on loopback).
The search over SSDP multicast runs against miniupnpd in tests/real (it must stay inside a
network namespace)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import anyio
import anyio.abc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit.nat import igd
from peerkit.nat.igd import IgdClient
from peerkit.nat.mapper import PortMapper
from peerkit.nat.upnp import (
    SEARCH_TARGET,
    Service,
    UpnpError,
    parse_description,
    parse_http_response,
    parse_search_response,
    parse_soap_response,
    search_request,
    soap_body,
)
from peerkit.net.udp import bind_udp

WAN_IP = "urn:schemas-upnp-org:service:WANIPConnection:1"
DESCRIPTION = f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
 <device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
  <serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
   <controlURL>/ctl/L3F</controlURL></service></serviceList>
  <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
   <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
    <serviceList><service><serviceType>{WAN_IP}</serviceType>
     <controlURL>/ctl/IPConn</controlURL></service></serviceList>
   </device></deviceList></device></deviceList>
 </device>
</root>""".encode()


def test_the_search_and_its_answer() -> None:
    request = search_request()
    assert request.startswith(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n" in request
    answer = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nLocation: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n"
    assert parse_search_response(answer) == "http://192.168.1.1:5000/rootDesc.xml"
    for wrong in (
        b"NOTIFY * HTTP/1.1\r\nLOCATION: http://192.168.1.1/\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nLOCATION: https://192.168.1.1/\r\n\r\n",  # not http
        b"HTTP/1.1 200 OK\r\nLOCATION: http://router.example/\r\n\r\n",  # a name, not an address
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"\x00" * 10,
    ):
        assert parse_search_response(wrong) is None


def test_the_description_names_the_wan_service() -> None:
    service = parse_description(DESCRIPTION, "http://192.168.1.1:5000/rootDesc.xml")
    assert service == Service(WAN_IP, "http://192.168.1.1:5000/ctl/IPConn")
    with pytest.raises(UpnpError, match="names no WANIPConnection"):
        parse_description(DESCRIPTION.replace(b"WANIPConnection", b"Other"), "http://192.168.1.1/")
    with pytest.raises(UpnpError, match="document type"):
        parse_description(b'<!DOCTYPE x [<!ENTITY a "aaaa">]><root>&a;</root>', "http://192.168.1.1/")
    with pytest.raises(UpnpError, match="malformed XML"):
        parse_description(b"<root><device>", "http://192.168.1.1/")
    with pytest.raises(UpnpError, match="over 65536 bytes"):
        parse_description(b"<root>" + b" " * 70000 + b"</root>", "http://192.168.1.1/")
    # A control URL elsewhere than an IP address over http is refused.
    with pytest.raises(UpnpError, match="not an http URL"):
        parse_description(
            DESCRIPTION.replace(b"/ctl/IPConn", b"https://192.168.1.1/c"), "http://192.168.1.1/"
        )


def test_soap_answers_and_faults() -> None:
    body = soap_body(
        WAN_IP, "AddPortMapping", [("NewExternalPort", "7000"), ("NewPortMappingDescription", "a<b")]
    )
    assert b"<u:AddPortMapping" in body
    assert b"<NewPortMappingDescription>a&lt;b</NewPortMappingDescription>" in body
    ok = (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        b'<u:GetExternalIPAddressResponse xmlns:u="x">'
        b"<NewExternalIPAddress>203.0.113.9</NewExternalIPAddress>"
        b"</u:GetExternalIPAddressResponse></s:Body></s:Envelope>"
    )
    assert parse_soap_response(200, ok, "GetExternalIPAddress") == {"NewExternalIPAddress": "203.0.113.9"}
    fault = fault_body(718, "ConflictInMappingEntry")
    with pytest.raises(UpnpError, match="ConflictInMappingEntry") as refused:
        parse_soap_response(500, fault, "AddPortMapping")
    assert refused.value.code == 718
    with pytest.raises(UpnpError, match="no DeletePortMappingResponse"):
        parse_soap_response(200, ok, "DeletePortMapping")


def test_http_answers_plain_and_chunked() -> None:
    assert parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiXX") == (
        200,
        {"content-length": "2"},
        b"hi",
    )
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert parse_http_response(chunked)[2] == b"abcde"
    for wrong in (b"garbage", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhi", b"HTTP/1.1 OK\r\n\r\n"):
        with pytest.raises(UpnpError):
            parse_http_response(wrong)
    with pytest.raises(UpnpError, match="chunked"):
        parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


@given(st.binary(max_size=600))
def test_any_bytes_from_a_router_are_read_or_refused_clearly(data: bytes) -> None:
    assert parse_search_response(data) is None or data.startswith(b"HTTP/")
    for read in (
        lambda: parse_http_response(data),
        lambda: parse_description(data, "http://10.0.0.1/"),
        lambda: parse_soap_response(200, data, "AddPortMapping"),
    ):
        with suppress(UpnpError):
            read()


def fault_body(code: int, text: str) -> bytes:
    return (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
        "<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>"
        f'<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>{code}</errorCode>'
        f"<errorDescription>{text}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"
    ).encode()


@dataclass
class Gateway:
    """An Internet gateway on loopback: its description, and WANIPConnection's actions."""

    external: str = "203.0.113.9"
    #: External ports that belong to another host (AddPortMapping answers 718).
    taken: set[int] = field(default_factory=set)
    permanent_only: bool = False
    #: (protocol, external port) -> (internal client, internal port, lease).
    mappings: dict[tuple[str, int], tuple[str, int, int]] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)

    def answer(self, request: bytes) -> bytes:
        head, _, body = request.partition(b"\r\n\r\n")
        line = head.split(b"\r\n")[0].decode()
        if line.startswith("GET /rootDesc.xml"):
            return ok(DESCRIPTION)
        action = head.split(b"#")[-1].split(b'"')[0].decode()
        self.actions.append(action)
        args = {
            part.split(b">")[0].decode(): part.split(b">", 1)[1].split(b"<")[0].decode()
            for part in body.split(b"<New")[1:]
        }
        if action == "GetExternalIPAddress":
            return ok(response(action, f"<NewExternalIPAddress>{self.external}</NewExternalIPAddress>"))
        if action == "AddPortMapping":
            port, lease = int(args["ExternalPort"]), int(args["LeaseDuration"])
            if port in self.taken:
                return fault(718, "ConflictInMappingEntry")
            if self.permanent_only and lease:
                return fault(725, "OnlyPermanentLeasesSupported")
            self.mappings[(args["Protocol"], port)] = (
                args["InternalClient"],
                int(args["InternalPort"]),
                lease,
            )
            return ok(response(action, ""))
        if action == "DeletePortMapping":
            if self.mappings.pop((args["Protocol"], int(args["ExternalPort"])), None) is None:
                return fault(714, "NoSuchEntryInArray")
            return ok(response(action, ""))
        return fault(401, "Invalid Action")


def response(action: str, inner: str) -> bytes:
    return (
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        f'<u:{action}Response xmlns:u="{WAN_IP}">{inner}</u:{action}Response></s:Body></s:Envelope>'
    ).encode()


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def fault(code: int, text: str) -> bytes:
    body = fault_body(code, text)
    return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@asynccontextmanager
async def gateway_on_loopback(gateway: Gateway) -> AsyncIterator[str]:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head = data.split(b"\r\n\r\n")[0]
            length = next(
                (
                    int(h.split(b":")[1])
                    for h in head.split(b"\r\n")
                    if h.lower().startswith(b"content-length")
                ),
                0,
            )
            while len(data) < len(head) + 4 + length:
                data += await stream.receive()
            await stream.send(gateway.answer(data))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        yield f"http://127.0.0.1:{port}/rootDesc.xml"
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_the_client_maps_around_a_taken_port_and_unmaps() -> None:
    gateway = Gateway(taken={7000})
    async with gateway_on_loopback(gateway) as location:
        client = await IgdClient.at(location)
        assert client.gateway == "127.0.0.1"
        assert (await client.external_address()).address == "203.0.113.9"
        mapping = await client.map("tcp", 7000, lifetime=3600)
        assert (mapping.protocol, mapping.internal_port, mapping.external_port, mapping.lifetime) == (
            "tcp",
            7000,
            7001,
            3600,
        )
        assert gateway.mappings == {
            ("TCP", 7001): ("127.0.0.1", 7000, 3600)
        }  # this host, as the router sees it
        await client.unmap("tcp", 7000)
        assert gateway.mappings == {}
        with pytest.raises(UpnpError, match="NoSuchEntryInArray") as refused:
            await client.unmap("tcp", 7000)
        assert refused.value.code == 714


@pytest.mark.anyio
async def test_a_router_with_permanent_leases_only_gets_one() -> None:
    gateway = Gateway(permanent_only=True)
    async with gateway_on_loopback(gateway) as location:
        client = await IgdClient.at(location)
        mapping = await client.map("udp", 6881)
        assert gateway.mappings == {("UDP", 6881): ("127.0.0.1", 6881, 0)}
        assert mapping.lifetime == 7200  # renewed as if it lapsed: a permanent lease is asked again


@pytest.mark.anyio
async def test_the_mapper_keeps_mappings_through_upnp_and_removes_them() -> None:
    gateway = Gateway()
    async with gateway_on_loopback(gateway) as location:
        client = await IgdClient.at(location)
        mapper = PortMapper(client, [("tcp", 7000), ("udp", 7000)], lifetime=3600)
        async with anyio.create_task_group() as tg:
            await tg.start(mapper.run)
            assert mapper.external is not None
            assert mapper.external.address == "203.0.113.9"
            assert set(gateway.mappings) == {("TCP", 7000), ("UDP", 7000)}
            tg.cancel_scope.cancel()
        assert gateway.mappings == {}  # removed when the mapper stopped


@pytest.mark.anyio
async def test_the_search_finds_the_router_that_answers_it(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # The SSDP search goes to a responder on loopback in place of the multicast group; its socket
    # is made without a worker thread (asyncio would keep one as long as the loop).
    async with gateway_on_loopback(Gateway()) as location, await bind_udp("127.0.0.1") as responder:
        request.getfixturevalue("no_worker_thread")  # (from here: the test's router took one)
        monkeypatch.setattr(
            igd, "SSDP_ADDRESS", ("127.0.0.1", responder.extra(anyio.abc.SocketAttribute.local_port))
        )
        searches: list[bytes] = []

        async def answer() -> None:
            async for data, (host, port) in responder:
                searches.append(data)
                await responder.sendto(
                    f"HTTP/1.1 200 OK\r\nST: {SEARCH_TARGET}\r\nLOCATION: {location}\r\n\r\n".encode(),
                    host,
                    port,
                )

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer)
            with anyio.fail_after(5):
                client = await IgdClient.discover(local_host="127.0.0.1", wait=3)
            tg.cancel_scope.cancel()
        assert client.gateway == "127.0.0.1"
        assert searches
        assert searches[0].startswith(b"M-SEARCH * HTTP/1.1\r\n")


@pytest.mark.anyio
async def test_no_gateway_and_a_bad_one_are_clear_errors() -> None:
    with pytest.raises(UpnpError, match="could not reach the router"):
        await IgdClient.at("http://127.0.0.1:9/rootDesc.xml")
    with pytest.raises(UpnpError, match="not an http URL"):
        await IgdClient.at("ftp://127.0.0.1/rootDesc.xml")
