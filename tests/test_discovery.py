"""Discovery providers: the conformance suite on every built-in, the registry, the directory."""

from __future__ import annotations

import pytest

from peerkit.discovery import MemoryDiscovery, StaticDiscovery
from peerkit.testing import check_discovery_provider

pytestmark = pytest.mark.asyncio


async def test_memory_provider_conforms() -> None:
    hub = MemoryDiscovery()
    await check_discovery_provider(lambda others: hub, timeout=2, settle=0.1)


async def test_static_provider_conforms() -> None:
    await check_discovery_provider(
        lambda others: StaticDiscovery([str(e) for e in others], interval=0.05), timeout=2, settle=0.3
    )
