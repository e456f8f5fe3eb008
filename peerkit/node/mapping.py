"""The node's port, mapped through the home router while it runs (``Node(port_mapping=...)``).

When the node listens on a wildcard or private IPv4 address and the host has a default gateway,
the part asks the gateway over PCP (RFC 6887) and NAT-PMP (RFC 6886) and looks for a UPnP
Internet gateway on the LAN at the same time; through whichever answers (PCP preferred, then
NAT-PMP) it maps the node's TCP port and the UDP port of the same number (its DHT node's), renews
the mappings, and removes them when the node stops. While the TCP mapping holds,
:attr:`PortMapping.endpoint` is the router's public address and the mapped port: the node
publishes it first in its record.

``PEERKIT_PORT_MAPPING=off`` in the environment turns the default off (for a network where the
router must not be asked; peerkit's own test suite sets it).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from typing import Final

import anyio
import anyio.abc

from peerkit.model import EndPoint
from peerkit.nat.client import NatPmpClient, PcpClient
from peerkit.nat.mapper import PortMapper, RouterClient, default_gateway
from peerkit.nat.natpmp import PortMappingError

__all__ = ("ENVIRONMENT", "PortMapping", "default_on")

log = logging.getLogger(__name__)

#: The environment variable that turns port mapping off by default (``off``, ``0``, ``no``).
ENVIRONMENT: Final = "PEERKIT_PORT_MAPPING"


def default_on() -> bool:
    """Whether port mapping is on when a node is not told (the environment may turn it off)."""
    return os.environ.get(ENVIRONMENT, "").strip().lower() not in ("off", "0", "no", "false")


def _mappable(host: str) -> bool:
    # A wildcard or a private IPv4 address: a host behind a home router.
    if host == "":
        return True  # (IPv4 and IPv6)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and (
        address.is_unspecified or (address.is_private and not address.is_loopback)
    )


class PortMapping:
    """See the module docstring. ``changed()`` is called when :attr:`endpoint` changes."""

    def __init__(self, *, enabled: bool, changed: Callable[[], None]) -> None:
        self.enabled = enabled
        self._changed = changed
        self._mapper: PortMapper | None = None
        #: How the port is mapped: ``"pcp"``, ``"nat-pmp"``, ``"upnp"``, or None.
        self.method: str | None = None
        #: Why there is no mapping (None while there is one, or before the first try).
        self.problem: str | None = None if enabled else "port mapping is off"

    @property
    def endpoint(self) -> EndPoint | None:
        """The router's public address and the port it maps to this node's TCP port, while held."""
        mapper = self._mapper
        if mapper is None or mapper.external is None:
            return None
        tcp = [m for (protocol, _), m in mapper.mappings.items() if protocol == "tcp"]
        return EndPoint(mapper.external.address, tcp[0].external_port) if tcp else None

    async def run(
        self,
        listen_host: str,
        port: int,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Find the router and keep ``port`` mapped until cancelled (``task_status.started()`` at
        once: the node does not wait for the router)."""
        task_status.started()
        if not self.enabled:
            return
        if not _mappable(listen_host):
            self.problem = f"the node listens on {listen_host}, not behind a router"
            return
        gateway = await default_gateway()
        if gateway is None:
            self.problem = "this host has no default gateway"
            return
        client = await self._find(gateway, "0.0.0.0" if listen_host in ("", "0.0.0.0") else listen_host)
        if client is None:
            return
        self._mapper = PortMapper(client, [("tcp", port), ("udp", port)], changed=self._mapped)
        await self._mapper.run()

    async def _find(self, gateway: str, local_host: str) -> RouterClient | None:
        # Every way at once; PCP's answer is taken when it has one, then NAT-PMP's (the gateway
        # answers both at once, or not), then UPnP's.
        found: dict[str, RouterClient] = {}
        reasons: list[str] = []

        async def ask(method: str, client: PcpClient | NatPmpClient) -> None:
            try:
                await client.external_address()
            except PortMappingError as exc:
                reasons.append(f"{method.upper()}: {exc}")
            else:
                found[method] = client

        async def port_control() -> None:
            async with anyio.create_task_group() as both:
                both.start_soon(ask, "pcp", PcpClient(gateway))
                both.start_soon(ask, "nat-pmp", NatPmpClient(gateway))
            if found:
                tg.cancel_scope.cancel()  # no need to wait for UPnP's search

        async def upnp() -> None:
            try:
                from peerkit.nat.igd import IgdClient  # (here: XML and HTTP take 40 ms to import)

                found["upnp"] = await IgdClient.discover(local_host=local_host)
            except PortMappingError as exc:
                reasons.append(f"UPnP: {exc}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(port_control)
            tg.start_soon(upnp)
        for method in ("pcp", "nat-pmp", "upnp"):
            if method in found:
                self.method = method
                log.info("mapping the node's port through %s at %s", method, gateway)
                return found[method]
        self.problem = "the router answers neither PCP, NAT-PMP nor UPnP (" + "; ".join(reasons) + ")"
        log.info("no port mapping: %s", self.problem)
        return None

    def _mapped(self) -> None:
        self.problem = None if self.endpoint is not None else "the router did not map the port"
        self._changed()
