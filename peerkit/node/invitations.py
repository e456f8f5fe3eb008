"""Invitations, both ways: who may invite this node, receiving them, and sending them.

One :class:`Invitations` part per node keeps the invitation policy and the peers trusted for
this run, the handler (or iterator) of each application, and the observers; it answers ``invite``
requests (its handler returns the reply) and ``invite_cancel`` notices, and sends this node's
invitations to every endpoint of a peer at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import anyio

from peerkit.contact import Contact
from peerkit.errors import PeerkitError, PeerUnreachable, ProtocolError
from peerkit.events import InvitationAnswered
from peerkit.handles import Handle, Subscription
from peerkit.identity import PeerId, check_peer_id
from peerkit.invitations import AnswerReason, Invitation, InvitationPolicy, InvitationState, Withdrawn
from peerkit.model import (
    MAX_INVITATION_WAIT,
    Application,
    EndPoint,
    InvitationResponse,
    check_data,
    check_seconds,
    check_text,
)
from peerkit.net.control import Answer, ControlChannel, Reply
from peerkit.net.transport import ON_LINK
from peerkit.node.connections import LOOKUP_AFTER, ChannelPeer, Route, all_failed, first_of
from peerkit.node.receivers import Receivers
from peerkit.peers import Peer, wire_ttl
from peerkit.proto.admission import group_of, source_of
from peerkit.proto.requests import ErrorCode, InviteRequest, Refused, check_reply, error_reply, is_uint
from peerkit.proto.shares import FairShare

__all__ = ("ContactLookup", "InvitationHandler", "Invitations", "Observer")

log = logging.getLogger(__name__)

InvitationHandler = Callable[[Invitation], Awaitable[InvitationResponse | None]]
Observer = Callable[[InvitationAnswered], Awaitable[None]]

_RESPONSES: Final = {
    "accepted": InvitationResponse.ACCEPTED,
    "declined": InvitationResponse.DECLINED,
    "expired": InvitationResponse.EXPIRED,
}
_WIRE: Final = {v: k for k, v in _RESPONSES.items()}
#: Seconds observers are given to hear of an invitation whose inviter went away.
OBSERVER_GRACE: Final = 1.0
#: Invitations from one peer waiting for their answer at once, at most; more are answered with
#: ``error`` "limit".
MAX_PENDING_PER_PEER: Final = 32
#: Invitations waiting for their answer at once, from everyone, at most.
MAX_PENDING: Final = 512
#: Of those, strangers (peers that are neither contacts nor trusted for this run) may hold at most
#: this many, so that contacts are still heard when strangers pile invitations up. The places are
#: shared fairly between the strangers' source groups (:mod:`peerkit.proto.shares`): when they are
#: all taken, a group that holds fewer than the busiest takes the place of that group's oldest
#: invitation (withdrawn as ``"displaced"``, its inviter answered ``error`` "limit").
MAX_PENDING_STRANGERS: Final = 384
#: Of the strangers', those of one source's group (an IPv4 address, an IPv6 /48, or one relay's
#: circuits) may hold at most this many: new ids cost nothing, nor do the /64s of a /48.
MAX_PENDING_PER_SOURCE: Final = 96


class ContactLookup(Protocol):
    """What the part needs of the contact manager."""

    def has(self, peer_id: PeerId) -> bool:
        """Whether ``peer_id`` is a contact."""
        ...

    async def find_stored(self, peer_id: PeerId) -> Contact | None:
        """The stored contact ``peer_id``, if any."""
        ...


class Invitations:
    """Invitations both ways; see the module docstring."""

    def __init__(
        self,
        *,
        policy: InvitationPolicy,
        queue_size: int,
        contacts: ContactLookup,
        registered: Callable[[Application | uuid.UUID], Application],
        application: Callable[[uuid.UUID], Application | None],
        sender: Callable[[ControlChannel], tuple[EndPoint | None, Peer]],
        routes: Callable[[Peer, bool], list[Route]],
        check_running: Callable[[], None],
        fallback: Callable[[Peer], Awaitable[Peer | None]] | None = None,
        connected: Callable[[PeerId], bool] = lambda peer_id: False,
    ) -> None:
        self._policy = policy
        self._contacts = contacts
        self._registered = registered
        self._application = application
        self._sender = sender
        self._routes = routes
        self._fallback = fallback or _no_fallback
        self._connected = connected
        self._check_running = check_running
        self._trusted: set[PeerId] = set()
        self._observers: list[Observer] = []
        #: Who takes the invitations of each application.
        self.receivers: Receivers[Invitation, InvitationResponse | None] = Receivers(
            "an invitation", queue_size
        )
        self._incoming: dict[tuple[int, int], _Waiting] = {}
        self._pending_from: Counter[PeerId] = Counter()  # invitations waiting, per sender
        # strangers' invitations waiting, by their source's group
        self._strangers: FairShare[_Waiting] = FairShare(MAX_PENDING_STRANGERS, MAX_PENDING_PER_SOURCE)
        self._pending = 0

    def clear(self) -> None:
        """The node stopped: iterators end, nothing is pending."""
        self.receivers.stop()
        self._incoming.clear()

    # -- policy and trust --------------------------------------------------------------------
    @property
    def policy(self) -> InvitationPolicy:
        """Who may invite this node and open streams to it."""
        return self._policy

    @policy.setter
    def policy(self, policy: InvitationPolicy) -> None:
        if not isinstance(policy, InvitationPolicy):
            raise TypeError(f"invitation_policy must be an InvitationPolicy, not {type(policy).__name__}")
        self._policy = policy

    @property
    def trusted(self) -> frozenset[PeerId]:
        """The ids trusted for this run."""
        return frozenset(self._trusted)

    def trust(self, peer_id: PeerId) -> None:
        """Trust ``peer_id`` for this run."""
        self._trusted.add(check_peer_id(peer_id))

    def untrust(self, peer_id: PeerId) -> None:
        """Stop trusting ``peer_id`` for this run."""
        self._trusted.discard(check_peer_id(peer_id))

    def is_trusted(self, peer_id: PeerId) -> bool:
        """Whether ``peer_id`` is trusted: for this run, or as a contact."""
        return peer_id in self._trusted or self._contacts.has(peer_id)

    def allows(self, peer_id: PeerId) -> bool:
        """Whether the policy lets ``peer_id`` invite this node and open streams to it."""
        if self._policy is InvitationPolicy.NOBODY:
            return False
        return self._policy is InvitationPolicy.ANYONE or self.is_trusted(peer_id)

    # -- receivers and observers -------------------------------------------------------------
    def add_handler(self, application: Application | uuid.UUID, handler: InvitationHandler) -> Handle:
        """Answer invitations to ``application`` with ``handler`` (see
        :meth:`Node.add_invitation_handler`)."""
        if not callable(handler):
            raise TypeError(
                f"an invitation handler must be a coroutine function, not {type(handler).__name__}"
            )
        return self.receivers.add(application, _answer_of(handler))

    def iterator(self, application: Application | uuid.UUID) -> Subscription[Invitation]:
        """Invitations to ``application`` as an async iterator (see :meth:`Node.invitations`)."""

        async def wait_for_answer(invitation: Invitation) -> InvitationResponse | None:
            return await invitation.state.wait()

        return self.receivers.iterator(application, wait_for_answer, InvitationResponse.DECLINED)

    def add_observer(self, observer: Observer) -> Handle:
        """Call ``observer(event)`` after every invitation received has been answered or withdrawn."""
        self._observers.append(observer)

        def remove() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return Handle(remove)

    async def _observe(
        self,
        control: ControlChannel,
        request: InviteRequest,
        response: InvitationResponse | None,
        why: AnswerReason,
    ) -> None:
        if not self._observers:
            return
        event = InvitationAnswered(
            sender_id=control.peer_id,
            nickname=control.channel.peer.nickname,
            application_id=request.app,
            message=request.message,
            data_size=len(request.data),
            response=response,
            reason=why,
            trusted=self.is_trusted(control.peer_id),
        )
        for observer in list(self._observers):
            try:
                await observer(event)
            except Exception:
                log.exception("invitation observer %r failed", observer)

    # -- receiving ---------------------------------------------------------------------------
    def on_cancel(self, control: ControlChannel, message: dict[str, Any]) -> None:
        """An ``invite_cancel`` notice: withdraw the invitation and cancel its handler."""
        rid = message.get("rid")
        if not is_uint(rid):  # (a list or a map is no rid: ignored as an unknown one is)
            return
        waiting = self._incoming.get((id(control), rid))
        if waiting is not None:
            waiting.withdraw(Withdrawn.CANCELLED)

    async def on_invite(self, control: ControlChannel, request: InviteRequest) -> Reply:
        """The reply to an ``invite`` (None when the inviter withdrew it or went away)."""
        app = self._application(request.app)
        receiver = self.receivers.get(request.app)
        peer_id = control.peer_id
        if app is None or receiver is None or not self.allows(peer_id):
            why = (
                AnswerReason.NOT_REGISTERED
                if app is None
                else AnswerReason.NO_HANDLER
                if receiver is None
                else AnswerReason.POLICY
            )
            log.info("declining an invitation from %s to %s (%s)", peer_id.fingerprint, request.app, why)
            return self._reply(control, request, InvitationResponse.DECLINED, why)
        # (peers trusted for this run count as contacts do: the user vouched for them)
        trusted = self.is_trusted(peer_id)
        source = None if trusted else group_of(source_of(control.channel.peer.address, ON_LINK))
        waiting = _Waiting()
        refusal = self._wait_room(peer_id, source, waiting)
        if refusal is not None:
            log.info("refusing an invitation from %s: %s", peer_id.fingerprint, refusal)
            return error_reply(ErrorCode.LIMIT, refusal)
        self._pending_from[peer_id] += 1
        self._pending += 1
        try:
            return await self._receive(control, request, app, receiver, source, waiting)
        finally:
            self._pending_from[peer_id] -= 1
            if not self._pending_from[peer_id]:
                del self._pending_from[peer_id]
            self._pending -= 1
            if source is not None:
                self._strangers.give_back(source, waiting)

    def _wait_room(self, peer_id: PeerId, source: str | None, waiting: _Waiting) -> str | None:
        # A place for one more invitation from ``peer_id`` (a stranger's at ``source``, or a
        # contact's when None), or why it may not wait. A stranger's may take the place of the
        # busiest group's oldest (that one is displaced).
        if self._pending_from[peer_id] >= MAX_PENDING_PER_PEER:
            return f"{MAX_PENDING_PER_PEER} invitations of yours are waiting for their answer"
        full = self._pending >= MAX_PENDING
        if source is None:
            return f"{MAX_PENDING} invitations are waiting for their answer" if full else None
        taken = self._strangers.take(source, waiting, full=full)
        if taken is None:
            if self._strangers.held_by(source) >= MAX_PENDING_PER_SOURCE:
                return f"{MAX_PENDING_PER_SOURCE} invitations from your address are waiting for their answer"
            if full:
                return f"{MAX_PENDING} invitations are waiting for their answer"
            return f"{MAX_PENDING_STRANGERS} invitations from peers that are not contacts are waiting"
        if taken.evicted is not None:
            log.info("a waiting invitation gives its place to one from %s", peer_id.fingerprint)
            taken.evicted.withdraw(Withdrawn.DISPLACED)
        return None

    async def _receive(
        self,
        control: ControlChannel,
        request: InviteRequest,
        app: Application,
        receiver: Callable[[Invitation, str | None], Awaitable[InvitationResponse | None]],
        source: str | None,
        waiting: _Waiting,
    ) -> Reply:
        # ``source``: the group of a stranger's source (None: a contact's or trusted peer's).
        peer_id = control.peer_id
        endpoint, peer = self._sender(control)
        contact = await self._contacts.find_stored(peer_id) if source is None else None
        state, scope = waiting.state, waiting.scope
        invitation = Invitation(
            sender_id=peer_id,
            nickname=control.channel.peer.nickname,
            endpoint=endpoint,
            peer=peer,
            application=app,
            message=request.message,
            data=request.data,
            trusted=self.is_trusted(peer_id),
            contact=contact,
            expires_at=anyio.current_time() + request.ttl,
            state=state,
            relay=control.channel.relay,
        )
        key = (id(control), request.rid)
        scope.deadline = invitation.expires_at
        self._incoming[key] = waiting
        response: InvitationResponse | None = None
        try:
            with scope:
                response = await receiver(invitation, None if invitation.trusted else source)
        except anyio.get_cancelled_exc_class():
            if control.closed:  # the inviter went away: its channel's handlers are cancelled
                state.withdraw(Withdrawn.DISCONNECTED)
                with anyio.CancelScope(shield=True), anyio.move_on_after(OBSERVER_GRACE):
                    await self._observe(control, request, None, AnswerReason.DISCONNECTED)
            raise
        finally:
            self._incoming.pop(key, None)
        if state.withdrawn is Withdrawn.CANCELLED:
            await self._observe(control, request, None, AnswerReason.CANCELLED)
            return None
        if state.withdrawn is Withdrawn.DISPLACED:
            await self._observe(control, request, None, AnswerReason.DISPLACED)
            return error_reply(
                ErrorCode.LIMIT,
                f"{MAX_PENDING_STRANGERS} invitations from peers that are not contacts were waiting, "
                "the most from your address: yours gave its place to another address's",
            )
        if control.closed:
            state.withdraw(Withdrawn.DISCONNECTED)
            await self._observe(control, request, None, AnswerReason.DISCONNECTED)
            return None
        why = AnswerReason.HANDLER
        if response is None:
            state.withdraw(Withdrawn.EXPIRED)
            response, why = InvitationResponse.EXPIRED, AnswerReason.EXPIRED
        else:
            state.record(response)
        return self._reply(control, request, response, why)

    def _reply(
        self, control: ControlChannel, request: InviteRequest, response: InvitationResponse, why: AnswerReason
    ) -> Reply:
        reply = {"t": "invite_reply", "r": _WIRE[response]}
        if not self._observers:
            return reply

        # Observers hear of the answer once it went out.
        async def sent(_: bool) -> None:
            await self._observe(control, request, response, why)

        return Answer(reply, sent)

    # -- sending -----------------------------------------------------------------------------
    async def invite(
        self, peer: Peer, application: Application | uuid.UUID, message: str, data: bytes, timeout: float
    ) -> InvitationResponse:
        """Invite ``peer`` at every endpoint at once (see :meth:`Peer.invite`)."""
        self._check_running()  # (first: a stopped node has no application registered)
        app = self._registered(application)
        check_text(message, "invitation message")
        data = check_data(data, "invitation data")
        timeout = check_seconds(timeout, "invitation timeout", MAX_INVITATION_WAIT)
        request = {"t": "invite", "app": app.id.bytes, "msg": message, "data": data, "ttl": wire_ttl(timeout)}
        deadline = anyio.current_time() + timeout
        return await self._invite_by(peer, request, deadline)

    async def _invite_by(self, peer: Peer, request: dict[str, Any], deadline: float) -> InvitationResponse:
        # On its one route, or on every route at once (the first acceptance wins); and where it
        # is now (the Internet scope), looked up when every route failed, or when none has a
        # channel after LOOKUP_AFTER seconds. Once one route has a channel (the invitation is
        # with the peer) no lookup starts unless that channel breaks: no second invitation.
        if isinstance(peer, ChannelPeer):
            return await self._invite_on(self._routes(peer, False)[0], request, deadline)
        routes = self._routes(peer, False)  # one: any channel open to the peer will do
        if len(routes) == 1 and self._connected(peer.id):
            return await self._invite_warm(peer, routes[0], request, deadline)
        if len(routes) > 1:
            routes = self._routes(peer, True)  # several: each its own (several devices)
        results: list[InvitationResponse] = []
        errors: list[PeerkitError] = []
        state = _Ways()

        async def one(route: Route, scope: anyio.CancelScope) -> None:
            got = False

            def connected() -> None:
                nonlocal got
                got = True
                state.note(live=1)

            try:
                result = await self._invite_on(route, request, deadline, connected)
            except (PeerUnreachable, ProtocolError) as exc:
                errors.append(exc)
                state.note(live=-1 if got else 0, done=1)
                return
            results.append(result)
            state.note(live=-1 if got else 0, done=1, answered=True)
            if result is InvitationResponse.ACCEPTED:
                scope.cancel()  # the first acceptance wins; the others are withdrawn

        async def elsewhere() -> ControlChannel:
            if not await state.lookup_wanted(len(routes), LOOKUP_AFTER):
                raise _Reached
            where = "anywhere else" if routes else "anywhere (no endpoint of it is known)"
            not_found = PeerUnreachable(f"{peer.id.fingerprint} was not found {where}")
            return await self._route_elsewhere(peer, deadline, not_found)

        async def lookup(scope: anyio.CancelScope) -> None:
            try:
                result = await self._invite_on(elsewhere, request, deadline)
            except _Reached:
                return
            except (PeerUnreachable, ProtocolError) as exc:
                errors.append(exc)
                return
            results.append(result)
            if result is InvitationResponse.ACCEPTED:
                scope.cancel()

        async with anyio.create_task_group() as tg:
            for route in routes:
                tg.start_soon(one, route, tg.cancel_scope)
            tg.start_soon(lookup, tg.cancel_scope)
        for answer in (InvitationResponse.ACCEPTED, InvitationResponse.DECLINED, InvitationResponse.EXPIRED):
            if answer in results:
                return answer
        if not errors:
            raise PeerUnreachable(f"no endpoint of {peer.id.fingerprint} is known")
        unreachable = [error for error in errors if type(error) is PeerUnreachable]
        answers = [error for error in errors if type(error) is not PeerUnreachable]
        if answers:  # (what the peer said is the news, not that another of its addresses was dead)
            raise answers[0]
        raise all_failed(unreachable)  # (where it was, and where it was looked for)

    async def _invite_warm(
        self, peer: Peer, route: Route, request: dict[str, Any], deadline: float
    ) -> InvitationResponse:
        # A channel to the peer is open: the invitation goes on it, with no task waiting to look
        # the peer up (that task cost a third of a warm invitation's time). Only when that
        # channel breaks is the peer looked up where it is now, as on every other way.
        try:
            return await self._invite_on(route, request, deadline)
        except PeerUnreachable as exc:
            failed = exc
        return await self._invite_on(lambda: self._route_elsewhere(peer, deadline, failed), request, deadline)

    async def _route_elsewhere(self, peer: Peer, deadline: float, not_found: PeerkitError) -> ControlChannel:
        # A channel to ``peer`` where the fallback finds it now (people near me, the Internet
        # scope); ``not_found`` when it finds it nowhere else.
        found = None
        with anyio.CancelScope(deadline=deadline):
            found = await self._fallback(peer)
        if found is None:
            raise not_found
        return (await first_of(self._routes(found, False)))[1]

    async def _invite_on(
        self,
        route: Route,
        request: dict[str, Any],
        deadline: float,
        connected: Callable[[], None] | None = None,
    ) -> InvitationResponse:
        reply: dict[str, Any] | None = None
        control: ControlChannel | None = None
        with anyio.CancelScope(deadline=deadline):
            control = await route()
            if connected is not None:
                connected()
            pending = await control.start_request(request)
            try:
                reply = await pending.wait()
            except anyio.get_cancelled_exc_class():
                # Withdraw it: our deadline passed, or the caller cancelled.
                control.forget(pending)
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(2),
                    contextlib.suppress(PeerUnreachable),
                ):
                    await control.notify({"t": "invite_cancel", "rid": pending.rid})
                raise
        if control is None:  # the time ran out before the invitation reached the peer
            raise PeerUnreachable("no endpoint could be reached within the invitation's timeout")
        if reply is None:
            return InvitationResponse.EXPIRED
        who = control.peer_id.fingerprint
        try:
            answer = _RESPONSES.get(check_reply(reply, "invite_reply").get("r"))  # type: ignore[arg-type]
        except Refused as exc:
            raise ProtocolError(f"{who} refused the invitation: {exc}") from None
        except ProtocolError as exc:
            raise ProtocolError(f"{who} {exc}") from None
        if answer is None:
            raise ProtocolError(f"{who} answered the invitation with {reply.get('r')!r}")
        return answer


def _answer_of(handler: InvitationHandler) -> InvitationHandler:
    # A handler's answer: what it returns, or what it answered with accept()/decline(); a handler
    # that fails declines.
    async def receive(invitation: Invitation) -> InvitationResponse | None:
        try:
            result = await handler(invitation)
        except Exception:
            log.exception("invitation handler for %s failed; declining", invitation.application.id)
            return InvitationResponse.DECLINED
        if isinstance(result, InvitationResponse):
            return result
        if invitation.response is not None:
            return invitation.response
        log.warning("invitation handler for %s returned %r; declining", invitation.application.id, result)
        return InvitationResponse.DECLINED

    return receive


class _Waiting:
    # An invitation received and not yet answered: its answer, and the scope its handler runs in.
    __slots__ = ("scope", "state")

    def __init__(self) -> None:
        self.state = InvitationState()
        self.scope = anyio.CancelScope()

    def withdraw(self, reason: Withdrawn) -> None:
        # Unless it is answered: its handler is cancelled (one not started yet starts cancelled).
        if self.state.response is None and self.state.withdrawn is None:
            self.state.withdraw(reason)
            self.scope.cancel()


class _Reached(Exception):
    """The peer was reached where it was known to be: no lookup."""


class _Ways:
    """How the routes of one invitation fare, for the lookup beside them."""

    def __init__(self) -> None:
        self.live = 0  # routes with a channel, the invitation sent or on its way
        self.done = 0  # routes that ended (answered or failed)
        self.answered = False
        self._changed = anyio.Event()

    def note(self, *, live: int = 0, done: int = 0, answered: bool = False) -> None:
        self.live += live
        self.done += done
        self.answered = self.answered or answered
        self._changed.set()
        self._changed = anyio.Event()

    async def lookup_wanted(self, routes: int, after: float) -> bool:
        """Wait until a lookup is wanted (True: every route failed, or none has a channel after
        ``after`` seconds) or never will be (False: one was answered)."""
        start = anyio.current_time()
        while True:
            if self.answered:
                return False
            if self.done >= routes:
                return True
            waited = anyio.current_time() - start
            if waited >= after and self.live == 0:
                return True
            changed = self._changed
            with anyio.move_on_after(after - waited if waited < after else math.inf):
                await changed.wait()


async def _no_fallback(peer: Peer) -> Peer | None:
    await anyio.lowlevel.checkpoint()
    return None
