"""peerkit: peer-to-peer collaboration for asyncio.

Find people, invite them to a shared application, and talk over encrypted, mutually
authenticated channels, with no server.
"""

from peerkit.apps import LaunchInfo, launch_info
from peerkit.bus import EventWatch, NearbyWatch
from peerkit.contact import Contact
from peerkit.contacts import ContactManager
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
    PairingFailed,
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
    InvitationAnswered,
    NameChanged,
    NearbyChanged,
    ObjectChanged,
    PresenceChanged,
    SubscriptionListChanged,
)
from peerkit.handles import Handle, Subscription
from peerkit.identity import Identity, PeerId
from peerkit.invitations import AnswerReason, Invitation, InvitationPolicy, Withdrawn
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
    printable,
)
from peerkit.net.channel import ChannelListener, PeerInfo, SecureChannel, connect, listen
from peerkit.net.control import KeepalivePolicy
from peerkit.net.relay import RelayStats
from peerkit.node import Node
from peerkit.node.reaching import Reach
from peerkit.peers import NearbyPeer, Peer
from peerkit.proto.admission import AdmissionPolicy, RequestPolicy
from peerkit.proto.holdings import HoldingsPolicy
from peerkit.proto.relay import RelayPolicy
from peerkit.streams import AppStream

__version__ = "0.1.0"

__all__ = (
    "AdmissionPolicy",
    "AnswerReason",
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
    "HoldingsPolicy",
    "Identity",
    "IdentityError",
    "InvalidRecord",
    "Invitation",
    "InvitationAnswered",
    "InvitationPolicy",
    "InvitationResponse",
    "KeepalivePolicy",
    "LaunchInfo",
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
    "PairingFailed",
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
    "Reach",
    "RelayPolicy",
    "RelayStats",
    "RequestPolicy",
    "Scope",
    "SecureChannel",
    "StaleRecord",
    "StaticDiscovery",
    "StoreError",
    "SubscribePermission",
    "Subscription",
    "SubscriptionListChanged",
    "UnknownContact",
    "Withdrawn",
    "__version__",
    "connect",
    "launch_info",
    "listen",
    "printable",
    "provider_names",
    "register_provider",
)
