"""Discovery: pluggable providers that carry signed records, and the directory that believes them.

Built-in providers: :class:`MdnsDiscovery` (``"mdns"``, people near me on the LAN),
:class:`StaticDiscovery` (``"static:HOST:PORT[#ID]"``) and :class:`MemoryDiscovery` (``"memory"``, in
one process, for tests). Others come from the ``peerkit.discovery`` entry-point group.
"""

from peerkit.discovery.base import (
    MAX_RECORD_APPLICATIONS,
    Announcement,
    Directory,
    DirectoryStats,
    DiscoveryProvider,
    DiscoverySession,
    DiscoverySink,
    NearbyRecord,
    make_record,
    offers_relay,
    read_record,
    record_applications,
)
from peerkit.discovery.mdns import MdnsDiscovery
from peerkit.discovery.memory import MemoryDiscovery
from peerkit.discovery.registry import create_provider, provider_names, register_provider
from peerkit.discovery.static import StaticDiscovery, StaticEntry

__all__ = (
    "MAX_RECORD_APPLICATIONS",
    "Announcement",
    "Directory",
    "DirectoryStats",
    "DiscoveryProvider",
    "DiscoverySession",
    "DiscoverySink",
    "MdnsDiscovery",
    "MemoryDiscovery",
    "NearbyRecord",
    "StaticDiscovery",
    "StaticEntry",
    "create_provider",
    "make_record",
    "offers_relay",
    "provider_names",
    "read_record",
    "record_applications",
    "register_provider",
)
