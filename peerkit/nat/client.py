"""NAT-PMP (RFC 6886) and PCP (RFC 6887) clients over UDP, on either anyio backend."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final, TypeVar

import anyio
from anyio.abc import SocketAttribute

from peerkit.nat import pcp
from peerkit.nat.natpmp import (
    PORT,
    ExternalAddress,
    Mapping,
    NatPmpError,
    PortMappingError,
    Protocol,
    external_address_request,
    mapping_request,
    parse_response,
)
from peerkit.net.udp import connect_udp

__all__ = ("NatPmpClient", "PcpClient")

#: Tries of one request, the first answer awaited this many seconds, each next one twice as long
#: (RFC 6886 section 3.1 starts at 250 ms; four tries give up after about 4 s).
TRIES: Final = 4
FIRST_WAIT: Final = 0.25

T = TypeVar("T")


async def _exchange(
    gateway: str,
    port: int,
    build: Callable[[str], bytes],
    parse: Callable[[bytes, bytes], T],
    *,
    tries: int,
    first_wait: float,
    what: str,
    error: type[PortMappingError],
) -> T:
    # Send the request ``build(address this host sends from)`` until ``parse`` reads an answer
    # to it, waiting twice as long after each try. An answer to another request (a late one)
    # is skipped; a refusal is raised.
    wait = first_wait
    where = f"{gateway}:{port}"
    try:
        async with await connect_udp(gateway, port) as sock:
            request = build(str(sock.extra(SocketAttribute.local_address)[0]))
            for _ in range(tries):
                await sock.send(request)
                with anyio.move_on_after(wait):
                    while True:
                        data = await sock.receive()
                        try:
                            return parse(data, request)
                        except PortMappingError as exc:
                            if exc.code is not None:
                                raise  # the router refused
                            # not an answer to this request (a late one to another): wait on
                wait *= 2
    except (OSError, anyio.BrokenResourceError) as exc:  # nothing listens there (ICMP)
        raise error(f"no {what} router at {where}: {exc}") from None
    raise error(f"no {what} router at {where} answered")


class NatPmpClient:
    """Asks the router at ``gateway`` (its NAT-PMP ``port``) for its public address and for port
    mappings.

    Every method raises :class:`~peerkit.nat.natpmp.NatPmpError` when the router refuses, or
    when nothing answers after :data:`TRIES` tries (no NAT-PMP router there).
    """

    def __init__(
        self, gateway: str, *, port: int = PORT, tries: int = TRIES, first_wait: float = FIRST_WAIT
    ) -> None:
        self.gateway = gateway
        self.port = port
        self.tries = tries
        self.first_wait = first_wait

    async def external_address(self) -> ExternalAddress:
        """The router's public IPv4 address."""
        answer = await self._ask(external_address_request())
        assert isinstance(answer, ExternalAddress)
        return answer

    async def map(
        self, protocol: Protocol, internal_port: int, *, external_port: int = 0, lifetime: int = 7200
    ) -> Mapping:
        """Map a port of the router to ``internal_port`` of this host (``external_port`` is a
        suggestion; the answer says which port the router chose, and for how long)."""
        answer = await self._ask(mapping_request(protocol, internal_port, external_port, lifetime))
        assert isinstance(answer, Mapping)
        return answer

    async def unmap(self, protocol: Protocol, internal_port: int) -> None:
        """Remove the mapping of ``internal_port``."""
        await self._ask(mapping_request(protocol, internal_port, 0, 0))

    async def _ask(self, request: bytes) -> ExternalAddress | Mapping:
        return await _exchange(
            self.gateway,
            self.port,
            lambda _: request,
            parse_response,
            tries=self.tries,
            first_wait=self.first_wait,
            what="NAT-PMP",
            error=NatPmpError,
        )


class PcpClient:
    """Asks the router at ``gateway`` (its PCP ``port``) for port mappings (PCP's MAP opcode);
    the same shape as :class:`NatPmpClient`, so :class:`~peerkit.nat.mapper.PortMapper` keeps
    mappings through either.

    :meth:`external_address` sends ANNOUNCE: it tells whether the router speaks PCP, and its
    epoch; the public address comes with each mapping (empty until the first). Every method
    raises :class:`~peerkit.nat.pcp.PcpError` when the router refuses (``code``
    ``UNSUPP_VERSION``: it speaks only NAT-PMP), or when nothing answers after :data:`TRIES` tries.
    """

    def __init__(
        self, gateway: str, *, port: int = pcp.PORT, tries: int = TRIES, first_wait: float = FIRST_WAIT
    ) -> None:
        self.gateway = gateway
        self.port = port
        self.tries = tries
        self.first_wait = first_wait
        #: The router's public address, as the last mapping said ("" before any).
        self.address = ""
        self._nonces: dict[tuple[Protocol, int], bytes] = {}

    async def external_address(self) -> ExternalAddress:
        """The router's epoch (ANNOUNCE), with the public address the last mapping gave."""
        answer = await self._ask(pcp.announce_request)
        assert isinstance(answer, pcp.Announced)
        return ExternalAddress(self.address, answer.epoch)

    async def map(
        self, protocol: Protocol, internal_port: int, *, external_port: int = 0, lifetime: int = 7200
    ) -> Mapping:
        """Map a port of the router to ``internal_port`` of this host (``external_port`` is a
        suggestion; the answer says which address and port the router chose, and for how long)."""
        nonce = self._nonces.setdefault((protocol, internal_port), os.urandom(pcp.NONCE_SIZE))

        def build(client_ip: str) -> bytes:
            return pcp.map_request(
                nonce, protocol, internal_port, external_port, lifetime, client_ip=client_ip
            )

        answer = await self._ask(build)
        assert isinstance(answer, Mapping)
        if answer.external_address:
            self.address = answer.external_address
        return answer

    async def unmap(self, protocol: Protocol, internal_port: int) -> None:
        """Remove the mapping of ``internal_port`` (made by this client)."""
        nonce = self._nonces.pop((protocol, internal_port), None)
        if nonce is None:
            return

        def build(client_ip: str) -> bytes:
            return pcp.map_request(nonce, protocol, internal_port, 0, 0, client_ip=client_ip)

        await self._ask(build)

    async def _ask(self, build: Callable[[str], bytes]) -> pcp.Announced | Mapping:
        return await _exchange(
            self.gateway,
            self.port,
            build,
            pcp.parse_response,
            tries=self.tries,
            first_wait=self.first_wait,
            what="PCP",
            error=pcp.PcpError,
        )
