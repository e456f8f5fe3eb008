"""The exceptions peerkit raises.

Every error peerkit raises on purpose derives from :class:`PeerkitError`. Where an error is also a
plain misuse of an argument, it inherits the matching builtin too, so ``except ValueError`` works::

    PeerkitError
    ├── ProtocolError            the remote side broke the wire protocol (malformed or forged bytes)
    │   └── HandshakeError       the Noise handshake failed or was misused (wrong order, bad key, ...)
    ├── PeerUnreachable          no connection could be made to a peer, or it went away
    ├── IdentityError            a key file is missing, corrupt or readable by others
    ├── DiscoveryError           a discovery provider could not start (no multicast, port in use, ...)
    ├── InvalidRecord            a signed record or card failed verification (also ``ValueError``)
    │   └── StaleRecord          a record's ``seq`` is not newer than one already accepted
    ├── LimitExceeded            a value is over one of the limits of the model (also ``ValueError``)
    ├── ContactExists            adding a contact that is already in the store (also ``ValueError``)
    ├── UnknownContact           no contact with that id is in the store (also ``LookupError``)
    ├── StoreError               the contact database cannot be opened or used
    ├── NotSignedIn              the operation needs a sign-in first
    ├── NotRunning               the node is not running (use it inside ``async with``; also ``RuntimeError``)
    ├── NotAllowed               the peer's policy or permissions refuse the operation
    └── PairingFailed            pairing by code failed: wrong code, expired, nobody found

State errors of streams (closed, broken, end of stream) are anyio's own
(:class:`anyio.ClosedResourceError`, :class:`anyio.BrokenResourceError`, :class:`anyio.EndOfStream`).
"""

from __future__ import annotations

__all__ = (
    "ContactExists",
    "DiscoveryError",
    "HandshakeError",
    "IdentityError",
    "InvalidRecord",
    "LimitExceeded",
    "NotAllowed",
    "NotRunning",
    "NotSignedIn",
    "PairingFailed",
    "PeerUnreachable",
    "PeerkitError",
    "ProtocolError",
    "StaleRecord",
    "StoreError",
    "UnknownContact",
)


class PeerkitError(Exception):
    """The root of every error peerkit raises on purpose."""


class ProtocolError(PeerkitError):
    """The remote side sent bytes that break the peerkit or Noise protocol."""


class HandshakeError(ProtocolError):
    """The Noise handshake failed, was used out of order, or proved the wrong identity."""


class PeerUnreachable(PeerkitError):
    """No connection could be made to a peer, or the connection was lost."""


class IdentityError(PeerkitError):
    """An identity key file is missing, corrupt, or readable by other users."""


class DiscoveryError(PeerkitError):
    """A discovery provider could not start (the cause is chained)."""


class InvalidRecord(PeerkitError, ValueError):
    """A signed record or contact card is malformed or its signature does not verify."""


class StaleRecord(InvalidRecord):
    """A signed record's ``seq`` is not greater than the last one accepted for the same id."""


class LimitExceeded(PeerkitError, ValueError):
    """A value is larger than a limit of the protocol."""


class ContactExists(PeerkitError, ValueError):
    """A contact with that id is already in the store."""


class UnknownContact(PeerkitError, LookupError):
    """No contact with that id is in the store."""

    def __str__(self) -> str:  # LookupError's KeyError-like quoting is not wanted
        return str(self.args[0]) if self.args else ""


class StoreError(PeerkitError):
    """The contact database cannot be opened or used (corrupt, from a newer peerkit, disk full, ...)."""


class NotSignedIn(PeerkitError):
    """The operation requires the node to be signed in to a scope first."""


class NotRunning(PeerkitError, RuntimeError):
    """The node is not running: it was not entered with ``async with``, or it has exited."""


class NotAllowed(PeerkitError):
    """The remote peer's policy or permissions refuse the operation."""


class PairingFailed(PeerkitError):
    """Pairing with a code failed: the code was wrong (and is used up), expired, or nobody was
    found waiting with it. Nothing was added to the contacts."""
