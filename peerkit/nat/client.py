"""A NAT-PMP client (RFC 6886) over UDP, on either anyio backend."""

from __future__ import annotations

from typing import Final

import anyio

from peerkit.nat.natpmp import (
    PORT,
    ExternalAddress,
    Mapping,
    NatPmpError,
    Protocol,
    external_address_request,
    mapping_request,
    parse_response,
)

__all__ = ("NatPmpClient",)

#: Tries of one request, the first answer awaited this many seconds, each next one twice as long
#: (RFC 6886 section 3.1 starts at 250 ms; four tries give up after about 4 s).
TRIES: Final = 4
FIRST_WAIT: Final = 0.25


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
        wait = self.first_wait
        where = f"{self.gateway}:{self.port}"
        try:
            async with await anyio.create_connected_udp_socket(self.gateway, self.port) as sock:
                for _ in range(self.tries):
                    await sock.send(request)
                    with anyio.move_on_after(wait):
                        while True:
                            data = await sock.receive()
                            try:
                                return parse_response(data, request)
                            except NatPmpError as exc:
                                if exc.code is not None:
                                    raise  # the router refused
                                # not an answer to this request (a late one to another): wait on
                    wait *= 2
        except (OSError, anyio.BrokenResourceError) as exc:  # nothing listens there (ICMP)
            raise NatPmpError(f"no NAT-PMP router at {where}: {exc}") from None
        raise NatPmpError(f"no NAT-PMP router at {where} answered")
