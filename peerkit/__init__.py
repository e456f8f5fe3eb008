"""peerkit: peer-to-peer collaboration for asyncio.

Find people, invite them to a shared application, and talk over encrypted, mutually
authenticated channels, with no server.
"""

from peerkit.errors import (
    HandshakeError,
    IdentityError,
    InvalidRecord,
    LimitExceeded,
    NotAllowed,
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

__version__ = "0.1.0"

__all__ = (
    "Application",
    "ChangeType",
    "ChannelListener",
    "EndPoint",
    "HandshakeError",
    "Identity",
    "IdentityError",
    "InvalidRecord",
    "InvitationResponse",
    "LimitExceeded",
    "NotAllowed",
    "NotSignedIn",
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
    "SubscribePermission",
    "__version__",
    "connect",
    "listen",
)
