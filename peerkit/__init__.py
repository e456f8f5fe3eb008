"""peerkit: peer-to-peer collaboration for asyncio.

Find people, invite them to a shared application, and talk over encrypted, mutually
authenticated channels, with no server.
"""

from peerkit.apps import AppStream, Handle, Invitation, InvitationAnswered, InvitationPolicy, Subscription
from peerkit.discovery import (
    DiscoveryProvider,
    MdnsDiscovery,
    MemoryDiscovery,
    StaticDiscovery,
    provider_names,
    register_provider,
)
from peerkit.errors import (
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
    "ChangeType",
    "ChannelListener",
    "DiscoveryError",
    "DiscoveryProvider",
    "EndPoint",
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
    "NearbyChanged",
    "NearbyPeer",
    "NearbyWatch",
    "Node",
    "NotAllowed",
    "NotRunning",
    "NotSignedIn",
    "Peer",
    "PeerId",
    "PeerInfo",
    "PeerObject",
    "PeerUnreachable",
    "PeerkitError",
    "Presence",
    "PresenceStatus",
    "ProtocolError",
    "Scope",
    "SecureChannel",
    "StaleRecord",
    "StaticDiscovery",
    "SubscribePermission",
    "Subscription",
    "__version__",
    "connect",
    "listen",
    "provider_names",
    "register_provider",
)
