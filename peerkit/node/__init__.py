"""The :class:`Node` and its parts, one job each, composed by a thin core.

``core`` holds the Node (lifetime, sign-in, the public API as short delegations); each other module
is one part the core builds and wires: ``config`` (the validated options), ``publishing`` (what this
node publishes and to whom) and the rest. No part imports the core.
"""

from peerkit.node.core import (
    MAX_CHANNELS_PER_PEER,
    PROVIDER_TIMEOUT,
    InvitationHandler,
    NearbyHandler,
    Node,
    StreamHandler,
)

__all__ = (
    "MAX_CHANNELS_PER_PEER",
    "PROVIDER_TIMEOUT",
    "InvitationHandler",
    "NearbyHandler",
    "Node",
    "StreamHandler",
)
