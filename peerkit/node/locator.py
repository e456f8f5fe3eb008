"""The node's locator key on the move: when it is replaced, the record is sealed anew and the
contacts still allowed get the key; a contact's newer card, pushed to this node, is kept.

A blocked or deleted contact keeps the old key, which opens nothing from then on. The contacts
still allowed that have a control channel open get the node's fresh card (which carries the new
key) in a ``card_update`` notice at once; the others get it in the next card they fetch or are given.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from peerkit.contact import read_card
from peerkit.contacts import ContactManager
from peerkit.errors import InvalidRecord, PeerkitError
from peerkit.identity import PeerId
from peerkit.model import Scope, SubscribePermission
from peerkit.net.control import ControlChannel, Reply
from peerkit.node.connections import Connections
from peerkit.node.nearby import Nearby
from peerkit.proto.requests import CardRequest, ErrorCode, RecordRequest, error_reply

__all__ = ("Locator",)

log = logging.getLogger(__name__)


class Locator:
    """Spreads a new locator key, and keeps the cards contacts push (see the module docstring)."""

    def __init__(
        self, contacts: ContactManager, connections: Connections, nearby: Nearby, scope: Callable[[], Scope]
    ) -> None:
        self._contacts = contacts
        self._connections = connections
        self._nearby = nearby
        self._scope = scope
        self._tg: anyio.abc.TaskGroup | None = None
        self._cards: dict[PeerId, bytes | None] = {}  # contacts whose card is being taken -> the next

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Run the work of changes in ``tg`` from now on."""
        self._tg = tg

    def stop(self) -> None:
        """The node stopped."""
        self._tg = None

    async def on_record_request(self, control: ControlChannel, request: RecordRequest) -> Reply:
        """Answer a ``record`` request: the record this node publishes."""
        if not self._scope() or self._nearby.record is None:
            return error_reply(ErrorCode.UNAVAILABLE, "this node is not signed in")
        return {"t": "record_reply", "rec": self._nearby.record}

    async def on_card_request(self, control: ControlChannel, request: CardRequest) -> Reply:
        """Answer a ``card`` request: a freshly signed card of this node."""
        if not self._scope():
            return error_reply(ErrorCode.UNAVAILABLE, "this node is not signed in")
        return {"t": "card_reply", "card": self._contacts.sign_card()}

    def changed(self) -> None:
        """The node's locator key was replaced: spread it (in the background)."""
        if self._tg is not None:
            self._tg.start_soon(self.spread)

    async def spread(self) -> None:
        """Seal the record with the new key, and give the new card to the allowed contacts that
        have a channel open."""
        if self._scope() & Scope.INTERNET:
            await self._nearby.publish(Scope.INTERNET)
        card = self._contacts.sign_card()
        for peer_id in self._connections.peers():
            if self._contacts.permission(peer_id) is not SubscribePermission.ALLOWED:
                continue
            for control in self._connections.controls(peer_id)[:1]:
                with contextlib.suppress(PeerkitError):
                    await control.notify({"t": "card_update", "card": card})

    def on_card(self, control: ControlChannel, message: dict[str, Any]) -> None:
        """A ``card_update`` notice: a contact's fresh card of itself, taken in the background, one
        at a time per contact (the latest waits: a peer sending notice after notice holds one
        task and one card here, and a stranger's cost nothing)."""
        card = message.get("card")
        sender = control.peer_id
        if not isinstance(card, bytes) or self._tg is None or not self._contacts.has(sender):
            return
        if sender in self._cards:
            self._cards[sender] = card
            return
        self._cards[sender] = None
        self._tg.start_soon(self._take_cards, sender, card)

    async def _take_cards(self, sender: PeerId, card: bytes) -> None:
        # Take ``card``, then the latest that came meanwhile, until none waits.
        try:
            while True:
                await self._take(sender, card)
                latest = self._cards.get(sender)
                if latest is None:
                    return
                card, self._cards[sender] = latest, None
        finally:
            self._cards.pop(sender, None)

    async def _take(self, sender: PeerId, card: bytes) -> None:
        try:
            content = read_card(card)
        except InvalidRecord as exc:
            log.info("ignoring a card notice from %s: %s", sender.fingerprint, exc)
            return
        if content.id != sender or not self._contacts.has(sender):
            return  # only a contact's own card of itself
        with contextlib.suppress(PeerkitError):
            if await self._contacts.take_card(content):
                log.debug("kept a newer card of %s", sender.fingerprint)
