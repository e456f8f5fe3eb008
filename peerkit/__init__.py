"""peerkit: peer-to-peer collaboration for asyncio.

Find people, invite them to a shared application, and talk over encrypted, mutually
authenticated channels, with no server.
"""

from peerkit.apps import AppStream, Handle, Invitation, InvitationAnswered, InvitationPolicy, Subscription
from peerkit.bus import EventWatch
from peerkit.contacts import Contact, ContactManager
from peerkit.discovery import (
    DiscoveryProvider,
    MdnsDiscovery,
    MemoryDiscovery,
    StaticDiscovery,
    provider_names,
    register_provider,
)
from peerkit.errors import (
    ContactExists,
    DiscoveryError,
    HandshakeError,
    IdentityError,
    InvalidRecord,
    LimitExceeded,
    NotAllowed,
    NotRunning,
    NotSignedIn,
    PeerkitError,
    PeerUnreachable,
    ProtocolError,
    StaleRecord,
    StoreError,
    UnknownContact,
)
from peerkit.events import (
    ApplicationChanged,
    ContactChanged,
    NameChanged,
    ObjectChanged,
    PresenceChanged,
    SubscriptionListChanged,
)
from peerkit.identity import Identity, PeerId
from peerkit.model import (
    Application,
    ChangeType,
    EndPoint,
    InvitationResponse,
    PeerObject,
    Presence,
    PresenceStatus,
    Scope,
    SubscribePermission,
)
from peerkit.net.channel import ChannelListener, PeerInfo, SecureChannel, connect, listen
from peerkit.net.control import KeepalivePolicy
from peerkit.node import Node
from peerkit.peers import NearbyChanged, NearbyPeer, NearbyWatch, Peer

__version__ = "0.1.0"

__all__ = (
    "AppStream",
    "Application",
    "ApplicationChanged",
    "ChangeType",
    "ChannelListener",
    "Contact",
    "ContactChanged",
    "ContactExists",
    "ContactManager",
    "DiscoveryError",
    "DiscoveryProvider",
    "EndPoint",
    "EventWatch",
    "Handle",
    "HandshakeError",
    "Identity",
    "IdentityError",
    "InvalidRecord",
    "Invitation",
    "InvitationAnswered",
    "InvitationPolicy",
    "InvitationResponse",
    "KeepalivePolicy",
    "LimitExceeded",
    "MdnsDiscovery",
    "MemoryDiscovery",
    "NameChanged",
    "NearbyChanged",
    "NearbyPeer",
    "NearbyWatch",
    "Node",
    "NotAllowed",
    "NotRunning",
    "NotSignedIn",
    "ObjectChanged",
    "Peer",
    "PeerId",
    "PeerInfo",
    "PeerObject",
    "PeerUnreachable",
    "PeerkitError",
    "Presence",
    "PresenceChanged",
    "PresenceStatus",
    "ProtocolError",
    "Scope",
    "SecureChannel",
    "StaleRecord",
    "StaticDiscovery",
    "StoreError",
    "SubscribePermission",
    "Subscription",
    "SubscriptionListChanged",
    "UnknownContact",
    "__version__",
    "connect",
    "listen",
    "provider_names",
    "register_provider",
)
