"""Whether peers elsewhere can dial this node directly, told from what it sees and, when that
does not tell, by asking a contact to dial it back (``dialback``, docs/protocol.md section 8).

Evidence, strongest first:

- a port mapped through the router: reachable;
- a connection accepted from a public address within :data:`PROVEN_FOR`: reachable;
- peers on the Internet (a relay's ``seen``, pongs over direct channels from public addresses)
  see it at addresses none of which is its own: behind a NAT, not reachable;
- a contact's answer to ``dialback`` within :data:`PROVEN_FOR` (asked when this node has a public
  address of its own and nothing above tells: a firewall that drops what it did not open is
  seen no other way);
- else: reachable when it has a public address of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import anyio

from peerkit.errors import PeerkitError
from peerkit.identity import PeerId
from peerkit.net.control import ControlChannel, Reply
from peerkit.net.transport import Transport, is_public, local_addresses
from peerkit.node.connections import Connections
from peerkit.proto.requests import DialbackRequest, ErrorCode, Refused, check_reply, error_reply

__all__ = ("DIALBACK_TIMEOUT", "MAX_DIALBACKS", "PROVEN_FOR", "Reachability")

log = logging.getLogger(__name__)

#: Seconds a piece of evidence (a connection accepted from a public address, a dial-back's
#: answer) holds.
PROVEN_FOR: Final = 3600.0
#: Seconds a dial-back's connection may take (the answer waits for it).
DIALBACK_TIMEOUT: Final = 3.0
#: Dial-backs this node makes for its contacts at once (more are answered "limit").
MAX_DIALBACKS: Final = 4


class Reachability:
    """See the module docstring. :meth:`assess` decides (asking a contact when it must); the
    node answers its contacts' ``dialback`` requests with :meth:`on_dialback`."""

    def __init__(
        self,
        *,
        connections: Connections,
        network: Transport,
        is_contact: Callable[[PeerId], bool],
        mapped: Callable[[], bool],
        seen_host: Callable[[], str | None],
        listening: Callable[[], tuple[str, str, int]],
    ) -> None:
        self._connections = connections
        self._network = network
        self._is_contact = is_contact
        self._mapped = mapped
        self._seen_host = seen_host
        #: (the host it listens on, the host its dials leave from, its port)
        self._listening = listening
        self._accepted_publicly: Callable[[], float | None] = lambda: None
        #: The last dial-back's answer (reachable?) and when it came.
        self._dialed_back: tuple[bool, float] | None = None
        self._dialing = 0

    def start(self, accepted_publicly: Callable[[], float | None]) -> None:
        """``accepted_publicly()`` says when the listener last accepted a connection from a
        public address."""
        self._accepted_publicly = accepted_publicly
        self._dialed_back = None

    def own(self) -> set[str]:
        """This node's own addresses."""
        listen_host, local_host, _ = self._listening()
        return set(local_addresses(listen_host, fallback=local_host))

    def evident(self) -> bool | None:
        """What the evidence at hand says (None: it does not tell; a dial-back would)."""
        now = anyio.current_time()
        if self._mapped():
            return True
        accepted = self._accepted_publicly()
        if accepted is not None and now - accepted < PROVEN_FOR:
            return True
        own = self.own()
        seen = self._connections.seen_publicly()
        seen_host = self._seen_host()
        if seen_host is not None:
            seen.add(seen_host)
        if seen and not seen & own:
            return False  # behind a NAT
        if not any(is_public(host) for host in own):
            return False  # private addresses only, no mapping
        if self._dialed_back is not None and now - self._dialed_back[1] < PROVEN_FOR:
            return self._dialed_back[0]
        return None

    async def assess(self) -> bool:
        """Whether peers elsewhere can dial this node, asking a contact to dial it back when the
        evidence does not tell and one is at hand (else it is believed reachable)."""
        verdict = self.evident()
        if verdict is not None:
            return verdict
        control = self._helper()
        if control is None:
            return True  # a public address of its own, and no one to ask yet
        ok = await self._ask(control)
        if ok is None:
            return True
        self._dialed_back = (ok, anyio.current_time())
        log.info("a contact %s dial this node back", "could" if ok else "could not")
        return ok

    def _helper(self) -> ControlChannel | None:
        # A contact over a direct channel from a public address (it dials from the Internet).
        return next((c for c in self._connections.public() if self._is_contact(c.peer_id)), None)

    async def _ask(self, control: ControlChannel) -> bool | None:
        _, _, port = self._listening()
        try:
            request = await control.start_request({"t": "dialback", "port": port})
            with anyio.fail_after(DIALBACK_TIMEOUT + 5):
                reply = check_reply(await request.wait(), "dialback_reply")
        except (PeerkitError, Refused, TimeoutError) as exc:
            log.debug("no dial-back from %s: %s", control.peer_id.fingerprint, exc)
            return None
        ok = reply.get("ok")
        return ok if isinstance(ok, bool) else None

    async def on_dialback(self, control: ControlChannel, request: DialbackRequest) -> Reply:
        """Answer a contact's ``dialback``: connect to the address this node sees it at, on the
        port it names, and say whether that worked (the connection is closed at once)."""
        if not self._is_contact(control.peer_id):
            return error_reply(ErrorCode.NOT_ALLOWED, "this node dials back its contacts only")
        address = control.channel.peer.address
        if control.channel.relay is not None or address is None:
            return error_reply(ErrorCode.UNAVAILABLE, "not over a relay: the address seen is the relay's")
        if self._dialing >= MAX_DIALBACKS:
            return error_reply(ErrorCode.LIMIT, f"{MAX_DIALBACKS} dial-backs are under way")
        self._dialing += 1
        ok = False
        try:
            with anyio.move_on_after(DIALBACK_TIMEOUT):
                local_host = self._listening()[1]
                stream = await self._network.connect(address[0], request.port, local_host=local_host)
                await anyio.aclose_forcefully(stream)
                ok = True
        except PeerkitError:
            pass
        finally:
            self._dialing -= 1
        reply: dict[str, Any] = {"t": "dialback_reply", "ok": ok}
        return reply
