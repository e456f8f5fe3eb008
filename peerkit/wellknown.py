"""Applications known by name: ``chat`` and ``files``, the ones peerkit's own commands speak.

An application is named on the wire by its UUID only. So that two programs written apart agree
on the UUID of a well-known application, it is derived from its name: UUID version 5 in the
namespace :data:`NAMESPACE` (itself the version 5 UUID of ``"peerkit"`` in the URL namespace).
:func:`application_id` reads a name or a UUID as people type them on the command line.
"""

from __future__ import annotations

import uuid
from types import MappingProxyType
from typing import Final

from peerkit.model import Application

__all__ = ("CHAT", "FILES", "NAMESPACE", "PAIR", "WELL_KNOWN", "application_id", "well_known_id")

#: The namespace of well-known application UUIDs.
NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "peerkit")


def well_known_id(name: str) -> uuid.UUID:
    """The UUID of the well-known application ``name`` (lowercase)."""
    return uuid.uuid5(NAMESPACE, name)


#: A line-based chat between people (``peerkit chat``).
CHAT: Final = Application(id=well_known_id("chat"), description="chat")
#: Files sent from one person to another (``peerkit send``).
FILES: Final = Application(id=well_known_id("files"), description="files")

#: Pairing by code (``peerkit pair``): not invited to, only streamed to while a code waits.
PAIR: Final = Application(id=well_known_id("pair"), description="pairing")

#: The well-known applications by name.
WELL_KNOWN: Final = MappingProxyType({"chat": CHAT, "files": FILES})


def application_id(text: str) -> uuid.UUID:
    """The application ``text`` names: a well-known name (any case) or a UUID.

    :raises ValueError: for anything else (the message lists the known names).
    """
    known = WELL_KNOWN.get(text.strip().lower())
    if known is not None:
        return known.id
    try:
        return uuid.UUID(text)
    except ValueError:
        names = ", ".join(WELL_KNOWN)
        raise ValueError(f"{text!r} is neither an application's UUID nor a known name ({names})") from None
