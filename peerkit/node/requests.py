"""Requests over control channels: the dispatch table for those of peers, and this node's own.

Every request a peer sends is decoded once (:func:`peerkit.proto.requests.decode_request`) and
handed, by its type, to the handler in the table; each handler **returns** its reply, which the
control channel sends. This node's own requests (``get``, ``card``, ``record``) go out through
:meth:`Requests.request`, which tries each way to reach the peer and reads errors in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio

from peerkit.contacts import CardContent, read_card
from peerkit.discovery.base import read_record
from peerkit.errors import InvalidRecord, NotAllowed, PeerUnreachable, ProtocolError
from peerkit.identity import PeerId
from peerkit.model import (
    MAX_APPLICATIONS,
    MAX_OBJECTS,
    MAX_TEXT,
    EndPoint,
    check_seconds,
    printable,
    quoted,
    seconds_text,
)
from peerkit.net.control import Answer, ControlChannel, Reply
from peerkit.net.transport import ON_LINK
from peerkit.node.connections import LOOKUP_AFTER, ChannelPeer, Route, first_of
from peerkit.peers import Peer
from peerkit.presence import read_app, read_object, read_presence
from peerkit.proto.admission import Charge, RequestBudget, RequestPolicy, group_of, source_of
from peerkit.proto.requests import (
    BadRequest,
    ErrorCode,
    Refused,
    Request,
    check_reply,
    decode_request,
    error_reply,
)

__all__ = ("REFUSAL_DELAY", "RequestHandler", "Requests")

log = logging.getLogger(__name__)

#: Seconds a request over its budget waits for its refusal: a peer that asks as fast as it is
#: answered then waits for its own refusals, instead of making the node refuse at full speed (a
#: refusal costs the node about what a cheap answer does).
REFUSAL_DELAY: Final = 1.0

#: Takes one decoded request of a peer and returns the reply.
RequestHandler = Callable[[ControlChannel, Any], Awaitable[Reply]]


class Requests:
    """Requests both ways; see the module docstring.

    ``handlers`` maps each request class of :mod:`peerkit.proto.requests` to its handler.
    """

    def __init__(
        self,
        *,
        handlers: Mapping[type[Request], RequestHandler],
        routes: Callable[[Peer], list[Route]],
        fallback: Callable[[Peer], Awaitable[Peer | None]],
        control_to: Callable[..., Awaitable[ControlChannel]],
        check_running: Callable[[], None],
        record_timeout: float,
        disconnect: Callable[[PeerId, str], Awaitable[None]],
        budget: RequestPolicy | None = None,
        is_contact: Callable[[PeerId], bool] = lambda peer_id: False,
    ) -> None:
        self._handlers = dict(handlers)
        self._disconnect = disconnect
        self._is_contact = is_contact
        #: How many requests each peer may make.
        self.budget = RequestBudget(budget)
        #: How many requests the strangers of one source's group (an IPv4 address, an IPv6 /48, a
        #: relay; see :func:`~peerkit.proto.admission.group_of`) may make together: new ids cost
        #: nothing, nor do a free /48's /64s, so a stranger's budget is also its group's.
        self.sources = RequestBudget(budget)
        self._routes = routes
        self._fallback = fallback
        self._control_to = control_to
        self._check_running = check_running
        self._record_timeout = record_timeout

    # -- from peers --------------------------------------------------------------------------
    async def dispatch(self, control: ControlChannel, message: dict[str, Any]) -> Reply:
        """The reply to ``message``, a request of the peer on ``control`` (within its budget)."""
        now = anyio.current_time()
        charge = self.budget.charge(control.peer_id.key, now)
        if charge is Charge.ANSWER and not self._is_contact(control.peer_id):
            group = group_of(source_of(control.channel.peer.address, ON_LINK))
            charge = self.sources.charge(group.encode(), now)
            if charge is not Charge.ANSWER:
                return await self._over_budget(control, charge, " from one address")
        if charge is not Charge.ANSWER:
            return await self._over_budget(control, charge)
        try:
            request = decode_request(message)
        except BadRequest as exc:
            return exc.reply()
        return await self._handlers[type(request)](control, request)

    async def _over_budget(self, control: ControlChannel, charge: Charge, where: str = "") -> Reply:
        policy = self.budget.policy
        reply = error_reply(ErrorCode.LIMIT, f"over {policy.rate:g} requests a second{where}")
        if charge is Charge.REFUSE:
            await anyio.sleep(REFUSAL_DELAY)
            return reply
        peer_id = control.peer_id
        why = "over the request budget" + (" of one address" if where else "")

        async def disconnect(sent: bool) -> None:
            await self._disconnect(peer_id, why)

        return Answer(reply, disconnect)

    # -- ours --------------------------------------------------------------------------------
    async def request(self, peer: Peer, message: dict[str, Any], timeout: float, what: str) -> dict[str, Any]:
        """Send ``message`` to ``peer`` (trying each way to reach it) and return the reply.

        :raises NotAllowed: when the peer refused (``not-allowed``, ``unavailable``).
        :raises ProtocolError: when it answered with another error.
        :raises PeerUnreachable: when no way reached it within ``timeout`` seconds.
        """
        timeout = check_seconds(timeout, f"the timeout of {what}", None)
        self._check_running()
        who = peer.id.fingerprint
        errors: list[PeerUnreachable] = []

        async def elsewhere() -> ControlChannel:
            # Where it was known to be, it is not (or not yet): where is it now (the DHT)?
            found = await self._fallback(peer)
            if found is None:
                raise PeerUnreachable(f"{who} was not found anywhere else")
            return (await first_of(self._routes(found)))[1]

        async def attempt(routes: list[Route]) -> dict[str, Any] | None:
            # All ways at once, staggered (first_of), the lookup last; then, if the channel it
            # gave breaks before the reply, the others one by one.
            while routes:
                try:
                    last_after = LOOKUP_AFTER if routes[-1] is elsewhere else None
                    index, control = await first_of(routes, last_after=last_after)
                except PeerUnreachable as exc:
                    errors.append(exc)
                    return None
                routes = routes[:index] + routes[index + 1 :]
                try:
                    pending = await control.start_request(message)
                    reply = await pending.wait()
                except PeerUnreachable as exc:
                    errors.append(exc)
                    continue
                if reply["t"] == "error":
                    raise _refused(who, what, Refused(reply.get("code"), reply.get("msg")))
                return reply
            return None

        routes = self._routes(peer)
        if not isinstance(peer, ChannelPeer):
            routes.append(elsewhere)
        with anyio.move_on_after(timeout):
            reply = await attempt(routes)
            if reply is not None:
                return reply
        if errors:
            raise errors[-1]
        raise PeerUnreachable(f"{who} did not answer {what} within {seconds_text(timeout)}")

    async def fetch(self, peer: Peer, what: str, timeout: float) -> Any:
        """``peer``'s presence, applications or objects (``what``), once."""
        asked = f"a request for its {_ASKED[what]}"
        reply = await self.request(peer, {"t": "get", "what": what}, timeout, asked)
        try:
            check_reply(reply, "get_reply")
            if what == "presence":
                return read_presence(reply.get("presence"))
            items = reply.get(what)
            limit = MAX_APPLICATIONS if what == "apps" else MAX_OBJECTS
            if not isinstance(items, list) or len(items) > limit:
                raise ProtocolError(f'"{what}" must be a list of at most {limit}')
            return [read_app(i) for i in items] if what == "apps" else [read_object(i) for i in items]
        except ProtocolError as exc:
            raise ProtocolError(f"{peer.id.fingerprint} sent a bad answer to {asked}: {exc}") from None

    async def fetch_card(self, peer: Peer, timeout: float) -> CardContent:
        """``peer``'s contact card, checked: it verifies and is the card of ``peer``."""
        reply = await self.request(peer, {"t": "card"}, timeout, "a card request")
        who = peer.id.fingerprint
        card = check_reply(reply, "card_reply").get("card")
        if not isinstance(card, bytes):
            raise ProtocolError(f"{who} answered a card request without a card")
        try:
            content = read_card(card)
        except InvalidRecord as exc:
            raise ProtocolError(f"{who} sent a card that does not verify: {exc}") from exc
        if content.id != peer.id:
            raise ProtocolError(f"{who} sent the card of another peer ({content.id.fingerprint})")
        return content

    async def fetch_record(self, host: str, port: int, peer_id: PeerId | None) -> bytes:
        """The signed record the node at ``host:port`` publishes (for the static provider)."""
        return await self.record_of(await self._control_to(peer_id, EndPoint(host, port), exact=True))

    async def record_of(self, control: ControlChannel) -> bytes:
        """The signed record the peer at the other end of ``control`` publishes, verified.

        :raises ProtocolError: when it refuses, or sends a record that does not verify or is
            another peer's.
        :raises TimeoutError: when it does not answer in time.
        """
        pending = await control.start_request({"t": "record"})
        with anyio.fail_after(self._record_timeout):
            reply = await pending.wait()
        who = control.peer_id.fingerprint
        try:
            envelope = check_reply(reply, "record_reply").get("rec")
        except Refused as exc:
            raise ProtocolError(f"{who} refused a record request: {exc}") from None
        if not isinstance(envelope, bytes):
            raise ProtocolError(f"{who} answered a record request without a record")
        try:
            record = read_record(envelope)[0]
        except InvalidRecord as exc:
            raise ProtocolError(f"{who} sent a record that does not verify: {exc}") from exc
        if record.id != bytes(control.peer_id):
            raise ProtocolError(f"{who} sent the record of another peer")
        return envelope


#: What a ``get`` asks for, as its errors name it.
_ASKED: Final = {"presence": "presence", "apps": "applications", "objects": "objects"}


def _refused(who: str, what: str, refusal: Refused) -> Exception:
    # The one reading of an error a peer answered with (its text shown as text, cut short).
    text = printable(refusal.text, MAX_TEXT) if isinstance(refusal.text, str) else quoted(refusal.text)
    if refusal.code in (ErrorCode.NOT_ALLOWED, ErrorCode.UNAVAILABLE):
        return NotAllowed(f"{who} refused {what}: {text}")
    code = refusal.code.value if isinstance(refusal.code, ErrorCode) else quoted(refusal.code)
    return ProtocolError(f"{who} refused {what}: {code}: {text}")
