"""Keeping ports mapped through the home router while a node runs (PCP, NAT-PMP or UPnP).

:class:`PortMapper` asks the router for its public address and maps each port; it renews each
mapping when half its lifetime has passed, maps them all again when the router's epoch says it
lost them (a restart), and removes them when it stops. A router that does not answer is asked
again every :data:`RETRY` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final
from typing import Protocol as Shape

import anyio
import anyio.abc

from peerkit.nat.natpmp import ExternalAddress, Mapping, PortMappingError, Protocol, epoch_is_continuous

__all__ = ("RETRY", "PortMapper", "RouterClient", "default_gateway", "default_gateway_from")

log = logging.getLogger(__name__)

#: Seconds between tries while no router answers.
RETRY: Final = 600.0
#: Seconds the removal of the mappings may take when the mapper stops.
UNMAP_TIMEOUT: Final = 2.0


def default_gateway_from(routes: str) -> str | None:
    """The IPv4 default gateway in the text of Linux's ``/proc/net/route`` (the default route of
    the lowest metric), or None."""
    best: tuple[int, str] | None = None
    for line in routes.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, metric = (int(fields[i], 16) for i in (1, 2, 3, 6))
        except ValueError:
            continue
        if destination != 0 or not flags & 0x2 or gateway == 0:  # RTF_GATEWAY
            continue
        address = ".".join(str(b) for b in gateway.to_bytes(4, "little"))
        if best is None or metric < best[0]:
            best = (metric, address)
    return None if best is None else best[1]


def _routes() -> str:
    return Path("/proc/net/route").read_text("ascii")


async def default_gateway() -> str | None:
    """This host's IPv4 default gateway (Linux), or None when it cannot be told."""
    try:
        await anyio.lowlevel.checkpoint()  # (a small file, read at once: no worker thread)
        return default_gateway_from(_routes())
    except (OSError, UnicodeDecodeError):
        return None


class RouterClient(Shape):
    """What :class:`PortMapper` asks a router through: :class:`~peerkit.nat.client.NatPmpClient`,
    :class:`~peerkit.nat.client.PcpClient` or :class:`~peerkit.nat.igd.IgdClient`. Each raises a
    ``PortMappingError`` when it fails."""

    async def external_address(self) -> ExternalAddress:
        """The router's public address."""

    async def map(
        self, protocol: Protocol, internal_port: int, *, external_port: int = 0, lifetime: int = 7200
    ) -> Mapping:
        """Map a port of the router to ``internal_port`` of this host."""

    async def unmap(self, protocol: Protocol, internal_port: int) -> None:
        """Remove the mapping of ``internal_port``."""


class PortMapper:
    """Keeps ``ports`` (protocol and port of this host) mapped through the router ``client``
    talks to, for ``lifetime`` seconds at a time (see the module docstring)."""

    def __init__(
        self,
        client: RouterClient,
        ports: Sequence[tuple[Protocol, int]],
        *,
        lifetime: int = 7200,
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        #: Called when the public address or a mapped port changed (or the mappings were lost).
        self.changed = changed
        self.ports = list(ports)
        self.lifetime = lifetime
        #: The router's public address (None until it answered).
        self.external: ExternalAddress | None = None
        #: The mappings in force, by (protocol, port of this host).
        self.mappings: dict[tuple[Protocol, int], Mapping] = {}
        self._epoch: tuple[int, float] | None = None
        # The mapping being asked for: cancelled before the answer, the router may hold it anyway.
        self._asking: tuple[Protocol, int] | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Map the ports and keep them mapped until cancelled; then remove them.
        ``task_status.started()`` comes after the first try (mapped or not)."""
        started = False
        try:
            while True:
                before = self._said()
                try:
                    await self._map_all()
                except PortMappingError as exc:
                    log.info("no port mapping through the router: %s", exc)
                    self.mappings.clear()
                if self.changed is not None and self._said() != before:
                    self.changed()
                if not started:
                    task_status.started()
                    started = True
                await anyio.sleep(self._next_renewal())
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(UNMAP_TIMEOUT):
                await self._unmap_all()

    def _said(self) -> tuple[object, ...]:
        address = self.external.address if self.external is not None else None
        return (address, *sorted((k, m.external_port) for k, m in self.mappings.items()))

    def _next_renewal(self) -> float:
        if not self.mappings:
            return RETRY
        return max(0.25, min(m.lifetime for m in self.mappings.values()) / 2)

    async def _map_all(self) -> None:
        external = await self.client.external_address()
        now = anyio.current_time()
        if self._epoch is not None and not epoch_is_continuous(*self._epoch, external.epoch, now):
            log.info("the router lost its mappings (it restarted): mapping again")
            self.mappings.clear()
        self._epoch = (external.epoch, now)
        for protocol, port in self.ports:
            held = self.mappings.get((protocol, port))
            suggestion = held.external_port if held is not None else port
            self._asking = (protocol, port)
            mapping = await self.client.map(protocol, port, external_port=suggestion, lifetime=self.lifetime)
            self._asking = None
            self.mappings[(protocol, port)] = mapping
            if mapping.external_address:  # (PCP tells it with each mapping)
                external = ExternalAddress(mapping.external_address, external.epoch)
        if self.external is None or self.external.address != external.address:
            log.info("the router's public address is %s", external.address)
        self.external = external

    async def _unmap_all(self) -> None:
        asked = [self._asking] if self._asking is not None and self._asking not in self.mappings else []
        self._asking = None
        for protocol, port in [*self.mappings, *asked]:
            try:
                await self.client.unmap(protocol, port)
            except PortMappingError as exc:
                log.info("could not remove the mapping of %s port %d: %s", protocol, port, exc)
            self.mappings.pop((protocol, port), None)
