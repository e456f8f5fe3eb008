"""Discovery providers by name: the built-ins and third-party ones from entry points.

A name is ``kind`` or ``kind:argument`` (``"mdns"``, ``"static:10.0.0.2:7000"``). A factory is a
callable taking the argument (None when there is none) and returning a provider. Third-party
packages register factories in the ``peerkit.discovery`` entry-point group, as the built-ins do::

    [project.entry-points."peerkit.discovery"]
    mydht = "mypackage.discovery:from_name"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import importlib.metadata

import logging
from collections.abc import Callable
from typing import Final

from peerkit.discovery.base import DiscoveryProvider
from peerkit.model import EndPoint

__all__ = ("ENTRY_POINT_GROUP", "ProviderFactory", "create_provider", "provider_names", "register_provider")

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "peerkit.discovery"
ProviderFactory = Callable[[str | None], DiscoveryProvider]

_registered: dict[str, ProviderFactory] = {}


def register_provider(kind: str, factory: ProviderFactory) -> None:
    """Make ``kind`` (and ``kind:argument``) name a provider made by ``factory``.

    :raises ValueError: when ``kind`` is empty or contains ``":"``.
    """
    if not isinstance(kind, str) or not kind or ":" in kind:
        raise ValueError(f"a provider kind is a non-empty name without ':', not {kind!r}")
    if not callable(factory):
        raise TypeError("factory must be callable")
    _registered[kind] = factory


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    import importlib.metadata  # (here: it takes 16 ms to import, and most runs name no plugin)

    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def provider_names() -> list[str]:
    """The kinds of provider that can be named: registered ones and those of installed packages."""
    return sorted({*_registered, *_entry_points(), *_BUILTIN})


def create_provider(name: str) -> DiscoveryProvider:
    """The provider ``name`` selects.

    :raises ValueError: when no provider has that name (the message lists the known ones), or the
        provider refuses the argument.
    """
    if not isinstance(name, str):
        raise TypeError(f"a provider name must be text, not {type(name).__name__}")
    kind, sep, argument = name.partition(":")
    factory = _registered.get(kind)
    if factory is None:
        entry_point = _entry_points().get(kind)
        if entry_point is not None:
            factory = entry_point.load()
        elif kind in _BUILTIN:  # running from a tree that is not installed
            factory = _BUILTIN[kind]()
        else:
            raise ValueError(
                f"there is no discovery provider named {kind!r}; known: {', '.join(provider_names())}"
            )
    provider = factory(argument if sep else None)
    if not isinstance(provider, DiscoveryProvider):
        raise TypeError(f"the {kind!r} provider factory returned {type(provider).__name__}, not a provider")
    return provider


# The built-in factories, named in pyproject.toml's entry points too.
def mdns(argument: str | None) -> DiscoveryProvider:
    """``mdns`` (where the node listens) or ``mdns:IFACE[,IFACE...]`` (those interfaces, each by an
    address of it or its name)."""
    from peerkit.discovery.mdns import MdnsDiscovery

    if not argument:
        return MdnsDiscovery()
    return MdnsDiscovery(interfaces=[a.strip("[]") for a in argument.split(",")])


def static(argument: str | None) -> DiscoveryProvider:
    """``static:HOST:PORT[#PEER-ID][,HOST:PORT...]``."""
    from peerkit.discovery.static import StaticDiscovery

    if not argument:
        raise ValueError("the static provider needs addresses: static:HOST:PORT[#PEER-ID][,...]")
    return StaticDiscovery(argument.split(","))


def memory(argument: str | None) -> DiscoveryProvider:
    """``memory``: the process-wide in-memory medium."""
    from peerkit.discovery.memory import MemoryDiscovery

    if argument:
        raise ValueError("the memory provider takes no argument")
    return MemoryDiscovery.default()


def dht(argument: str | None) -> DiscoveryProvider:
    """``dht`` (the public Mainline routers) or ``dht:HOST:PORT[,HOST:PORT...]`` (join through
    those instead)."""
    from peerkit.dht.provider import DhtDiscovery

    if not argument:
        return DhtDiscovery()
    bootstrap = []
    for item in argument.split(","):
        try:
            endpoint = EndPoint.parse(item)
        except ValueError as exc:
            raise ValueError(f"bad DHT bootstrap address: {exc}") from None
        bootstrap.append((endpoint.host, endpoint.port))
    return DhtDiscovery(bootstrap=bootstrap)


_BUILTIN: Final[dict[str, Callable[[], ProviderFactory]]] = {
    "mdns": lambda: mdns,
    "static": lambda: static,
    "memory": lambda: memory,
    "dht": lambda: dht,
}
