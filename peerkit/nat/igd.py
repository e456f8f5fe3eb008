"""A UPnP Internet Gateway Device client (:mod:`peerkit.nat.upnp` over anyio), on either backend.

It has the shape of :class:`~peerkit.nat.client.NatPmpClient` (``external_address``, ``map``,
``unmap``), so that :class:`~peerkit.nat.mapper.PortMapper` keeps mappings through either. UPnP
has no epoch: the one it reports counts seconds since the client found the router, so a router
that restarts is noticed only at the next renewal (which maps the ports again anyway).
"""

from __future__ import annotations

from typing import Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from peerkit.nat.natpmp import ExternalAddress, Mapping, Protocol
from peerkit.nat.upnp import (
    MAX_DOCUMENT,
    SSDP_ADDRESS,
    Service,
    UpnpError,
    http_request,
    parse_description,
    parse_http_response,
    parse_search_response,
    parse_soap_response,
    search_request,
    soap_body,
    split_url,
)
from peerkit.net.udp import bind_udp

__all__ = ("IgdClient",)

#: Seconds one HTTP exchange with the router may take.
HTTP_TIMEOUT: Final = 5.0
#: The UPnP error codes that mean "this external port is taken" (then the next one is tried) and
#: "only permanent leases" (then the lease is asked for without a duration).
CONFLICT: Final = frozenset({718, 724})
PERMANENT_ONLY: Final = 725
#: External ports tried when the one asked for is taken.
PORT_TRIES: Final = 8


class IgdClient:
    """Talks to the port-mapping ``service`` of a router (see the module docstring). Make one with
    :meth:`discover` (SSDP) or :meth:`at` (a description URL)."""

    def __init__(self, service: Service, *, description: str = "peerkit") -> None:
        self.service = service
        self.description = description
        #: This host's address as the router sees it (learned from the first exchange).
        self.local_address: str | None = None
        self._found = anyio.current_time()
        self._external_ports: dict[tuple[Protocol, int], int] = {}

    @classmethod
    async def at(cls, location: str) -> IgdClient:
        """The client of the router whose description is at ``location``.

        :raises UpnpError: when the description cannot be fetched or names no WAN service.
        """
        status, body, _ = await _http("GET", location, b"", {})
        if status != 200:
            raise UpnpError(f"the router's description at {location} answered HTTP {status}")
        return cls(parse_description(body, location))

    @classmethod
    async def discover(cls, *, local_host: str = "0.0.0.0", wait: float = 2.0) -> IgdClient:
        """Search the LAN for an Internet gateway (SSDP, from ``local_host``) for up to ``wait``
        seconds; the client of the first that describes a port-mapping service.

        :raises UpnpError: when none answers in time.
        """
        tried: set[str] = set()
        reasons: list[str] = []
        with anyio.move_on_after(wait):
            async with await bind_udp(local_host) as sock:
                request = search_request(wait=max(1, int(wait)))
                for _ in range(2):  # UDP: once more in case the first is lost
                    await sock.sendto(request, *SSDP_ADDRESS)
                async for data, _address in sock:
                    location = parse_search_response(data)
                    if location is None or location in tried:
                        continue
                    tried.add(location)
                    try:
                        return await cls.at(location)
                    except UpnpError as exc:
                        reasons.append(str(exc))
        raise UpnpError(
            "no UPnP Internet gateway answered"
            + (f" that maps ports ({'; '.join(reasons)})" if reasons else "")
        )

    @property
    def gateway(self) -> str:
        """The router's address."""
        return split_url(self.service.control_url).host

    async def _action(self, action: str, arguments: list[tuple[str, str]]) -> dict[str, str]:
        body = soap_body(self.service.type, action, arguments)
        headers = {
            "Content-Type": 'text/xml; charset="utf-8"',
            "SOAPAction": f'"{self.service.type}#{action}"',
        }
        status, answer, local = await _http("POST", self.service.control_url, body, headers)
        self.local_address = local
        return parse_soap_response(status, answer, action)

    async def external_address(self) -> ExternalAddress:
        """The router's public IPv4 address.

        :raises UpnpError: when the router refuses or does not answer.
        """
        reply = await self._action("GetExternalIPAddress", [])
        address = reply.get("NewExternalIPAddress", "")
        try:
            split_url(f"http://{address}/")
        except UpnpError:
            raise UpnpError(f"the router gave a bad external address {address[:50]!r}") from None
        return ExternalAddress(address, int(anyio.current_time() - self._found))

    async def map(
        self, protocol: Protocol, internal_port: int, *, external_port: int = 0, lifetime: int = 7200
    ) -> Mapping:
        """Map a port of the router to ``internal_port`` of this host (``external_port`` first;
        when it is taken, the next ones).

        :raises UpnpError: when the router refuses.
        """
        if self.local_address is None:
            await self.external_address()  # learns this host's address on the router's side
        assert self.local_address is not None
        port = external_port or internal_port
        lease = lifetime
        for _ in range(PORT_TRIES):
            try:
                await self._action("AddPortMapping", self._mapping(protocol, port, internal_port, lease))
            except UpnpError as exc:
                if exc.code == PERMANENT_ONLY and lease:
                    lease = 0
                    continue
                if exc.code in CONFLICT:
                    port = port + 1 if port < 65535 else 1024
                    continue
                raise
            self._external_ports[(protocol, internal_port)] = port
            return Mapping(
                protocol, internal_port, port, lease or lifetime, int(anyio.current_time() - self._found)
            )
        raise UpnpError(f"the router has no free port to map near {external_port or internal_port}")

    def _mapping(self, protocol: Protocol, external: int, internal: int, lease: int) -> list[tuple[str, str]]:
        assert self.local_address is not None
        return [
            ("NewRemoteHost", ""),
            ("NewExternalPort", str(external)),
            ("NewProtocol", protocol.upper()),
            ("NewInternalPort", str(internal)),
            ("NewInternalClient", self.local_address),
            ("NewEnabled", "1"),
            ("NewPortMappingDescription", self.description),
            ("NewLeaseDuration", str(lease)),
        ]

    async def unmap(self, protocol: Protocol, internal_port: int) -> None:
        """Remove the mapping this client made of ``internal_port``.

        :raises UpnpError: when the router refuses.
        """
        port = self._external_ports.pop((protocol, internal_port), internal_port)
        arguments = [("NewRemoteHost", ""), ("NewExternalPort", str(port)), ("NewProtocol", protocol.upper())]
        await self._action("DeletePortMapping", arguments)


async def _http(method: str, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
    # One exchange: the status, the body, and this side's address of the connection.
    parts = split_url(url)
    try:
        with anyio.fail_after(HTTP_TIMEOUT):
            async with await anyio.connect_tcp(parts.host, parts.port) as stream:
                local = str(stream.extra(SocketAttribute.local_address)[0])
                await stream.send(http_request(method, parts, body, headers))
                data = bytearray()
                while True:
                    try:
                        data += await stream.receive()
                    except anyio.EndOfStream:
                        break
                    if len(data) > MAX_DOCUMENT + 4096:
                        raise UpnpError(f"the router's answer from {url} is over {MAX_DOCUMENT} bytes")
    except TimeoutError:
        raise UpnpError(
            f"the router at {parts.host}:{parts.port} did not answer in {HTTP_TIMEOUT:g} s"
        ) from None
    except (OSError, anyio.BrokenResourceError) as exc:
        raise UpnpError(f"could not reach the router at {parts.host}:{parts.port}: {exc}") from None
    status, _, answer = parse_http_response(bytes(data))
    return status, answer, local
