"""``peerkit serve``: a node in the foreground, printing what happens to it (text or JSON lines)."""

from __future__ import annotations

import json
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from peerkit.apps import Registry
from peerkit.cli_chat import ChatDesk
from peerkit.cli_files import FilesDesk
from peerkit.clikit import AcceptFrom, dialled_at, dialled_text
from peerkit.discovery.base import DiscoveryProvider
from peerkit.launching import Launcher
from peerkit.model import EndPoint, printable
from peerkit.reporting import REACH_EVERY, reach_status, relay_text, write_reach
from peerkit.terminal import SafeConsole, Terminal

if TYPE_CHECKING:
    from peerkit.invitations import Invitation
    from peerkit.model import InvitationResponse

__all__ = ("STRANGER_LINES", "STRANGER_WINDOW", "StrangerLines", "run_serve")

#: Lines ``peerkit serve`` prints about strangers' invitations in a window, at most; the others
#: are counted and summed up in one line when the window ends.
STRANGER_LINES: Final = 20
#: That window, in seconds.
STRANGER_WINDOW: Final = 10.0

#: An invitation handler, as ``peerkit serve`` adds them.
Handler = Callable[["Invitation"], Awaitable["InvitationResponse"]]

console = SafeConsole(soft_wrap=True)


class StrangerLines:
    """What ``peerkit serve`` says about strangers' invitations: ``lines`` a ``window`` at most,
    and then one line for the rest (by event), so that a stranger inviting in a loop (a peer may
    make 1,000 requests a second) cannot fill the terminal or the log. Contacts' are said as they
    come. Run :meth:`run` for the windows to turn."""

    def __init__(
        self, say: Callable[..., None], lines: int = STRANGER_LINES, window: float = STRANGER_WINDOW
    ) -> None:
        self._say = say
        self._lines = lines
        self._window = window
        self._left = lines
        self._unsaid: dict[str, int] = {}

    def say(self, text: str, **fields: object) -> None:
        """Say it, unless this window's lines are all said (then it is counted)."""
        if self._left > 0:
            self._left -= 1
            self._say(text, **fields)
            return
        event = str(fields.get("event", ""))
        self._unsaid[event] = self._unsaid.get(event, 0) + 1

    def turn(self) -> None:
        """End the window: the lines not said are summed up, and the next window's may be said."""
        if self._unsaid:
            count = sum(self._unsaid.values())
            which = ", ".join(f"{event}: {n}" for event, n in sorted(self._unsaid.items()))
            self._say(
                f"{count} more lines about strangers' invitations in the last {self._window:g} s not "
                f"shown ({which}): at most {self._lines} are, each {self._window:g} s",
                event="not_shown",
                count=count,
                events=dict(self._unsaid),
            )
            self._unsaid = {}
        self._left = self._lines

    async def run(self) -> None:
        """Turn the windows, until cancelled."""
        while True:
            await anyio.sleep(self._window)
            self.turn()


async def run_serve(
    host: str,
    port: int,
    apps: list[uuid.UUID],
    nickname: str,
    providers: list[DiscoveryProvider],
    directory: Path,
    as_json: bool,
    dht_bootstrap: list[tuple[str, int]] | None = None,
    relaying: dict[str, Any] | None = None,
) -> None:
    """What ``peerkit serve`` does (its arguments, checked): run a node until SIGINT or SIGTERM."""
    from peerkit.events import InvitationAnswered
    from peerkit.model import Application, InvitationResponse, Scope
    from peerkit.node import Node
    from peerkit.wellknown import CHAT, FILES

    def say(text: str, **fields: object) -> None:
        if as_json:
            print(json.dumps(fields), flush=True)
        elif text:
            console.print(text)

    quiet = StrangerLines(say)

    from peerkit.contacts import saved_presence

    relaying = dict(relaying or {})
    into = relaying.pop("into", Path())
    anyone = relaying.pop("accept_from", AcceptFrom.CONTACTS) is AcceptFrom.ANYONE
    node = Node(
        nickname=nickname,
        data_dir=directory,
        listen=(host, port),
        discovery=providers,
        dht_bootstrap=dht_bootstrap,
        **relaying,
    )
    async with node, anyio.create_task_group() as launches:
        # Near me where a provider finds people; Internet, so that allowed contacts may watch.
        scope = Scope.INTERNET
        for provider in providers:
            scope |= provider.scopes
        await node.sign_in(scope)
        presence = saved_presence(node.contacts.settings())
        if presence is not None:
            await node.set_presence(presence)
        desk = ChatDesk(node, say) if CHAT.id in apps else None
        files = FilesDesk(into, say) if FILES.id in apps else None
        registered = [r for r in Registry(directory).list() if r.id not in (CHAT.id, FILES.id)]
        # Asked at the terminal when serve runs in one (and reads no chat lines from it).
        ask = (
            Terminal(keys=False).ask if sys.stdin.isatty() and sys.stdout.isatty() and desk is None else None
        )
        # The applications people know by name (an invitation to another shows its UUID).
        names = {CHAT.id: "chat", FILES.id: "files", **{r.id: r.name for r in registered}}

        def accepting(handler: Handler) -> Handler:
            # ``handler`` of an application --accept named, for contacts (and peers trusted) alone
            # unless --accept-from anyone: a stranger's invitation is declined, and said so.
            if anyone:
                return handler

            async def invited(invitation: Invitation) -> InvitationResponse:
                if invitation.trusted:
                    return await handler(invitation)
                application = names.get(invitation.application.id, str(invitation.application.id))
                who = printable(invitation.nickname) or invitation.sender_id.fingerprint
                quiet.say(
                    f"invitation from {who} ({invitation.sender_id.fingerprint}) to {application} "
                    "declined: not a contact ('peerkit serve --accept-from anyone' accepts strangers' too)",
                    event="stranger_declined",
                    sender=str(invitation.sender_id),
                    application=str(invitation.application.id),
                )
                return InvitationResponse.DECLINED

            return invited

        launcher = Launcher(registered, set(apps), directory, say, launches, ask, quiet=quiet.say)
        for each in registered:
            await node.register_application(each.application)
            launched = accepting(launcher.invited) if each.id in apps else launcher.invited
            node.add_invitation_handler(each.id, launched)
        for app_id in apps:
            if app_id in {r.id for r in registered}:
                continue  # (launched)
            await node.register_application(Application(id=app_id, description="accepted by peerkit serve"))

            async def accept_all(invitation: Invitation) -> InvitationResponse:
                return InvitationResponse.ACCEPTED

            if desk is not None and app_id == CHAT.id:
                node.add_invitation_handler(app_id, accepting(desk.invited))
                node.add_stream_handler(app_id, desk.chat)
            elif files is not None and app_id == FILES.id:
                node.add_invitation_handler(app_id, accepting(files.invited))
                node.add_stream_handler(app_id, files.receive)
            else:
                node.add_invitation_handler(app_id, accepting(accept_all))

        async def report(event: InvitationAnswered) -> None:
            answer = event.response.name.lower() if event.response is not None else "withdrawn"
            application = names.get(event.application_id, str(event.application_id))
            (say if event.trusted else quiet.say)(
                f"invitation from {printable(event.nickname) or '?'} ({event.sender_id.fingerprint}) to "
                f"{application}: {event.message!r}, {event.data_size} bytes of data -> "
                f"{answer} ({event.reason})",
                event="invitation",
                sender=str(event.sender_id),
                nickname=event.nickname,
                application=str(event.application_id),
                message=event.message,
                data=event.data_size,
                response=answer,
                reason=event.reason,
                trusted=event.trusted,
            )

        node.add_invitation_observer(report)
        say(
            f"serving as {node.id} ({node.id.fingerprint}) at {dialled_text(node)}",
            event="listening",
            id=str(node.id),
            fingerprint=node.id.fingerprint,
            host=node.endpoint.host,
            port=node.endpoint.port,
            addresses=[str(e) for e in dialled_at(node)],
            applications=[str(a) for a in apps],
            accept_from=(AcceptFrom.ANYONE if anyone else AcceptFrom.CONTACTS).value,
            discovery=[p.name for p in providers],
            scope=node.scope.name,
        )
        if node.config.relay is not None:
            who = "anyone" if node.config.relay.open else "contacts"
            say(f"relaying for {who}", event="relaying", **{"for": who})

        async def follow_reach() -> None:
            # Reservations held or lost are printed; reach.json is kept for 'peerkit reach'.
            held: tuple[EndPoint, ...] = ()
            written: tuple[object, ...] = ()
            last = 0.0
            while True:
                reach = node.reach()
                for relay in set(reach.reservations) ^ set(held):
                    state = (
                        "reachable through" if relay in reach.reservations else "no longer reachable through"
                    )
                    where = relay_text(relay)
                    say(
                        f"{state} the relay at {where}",
                        event="relay",
                        relay=where,
                        held=relay in reach.reservations,
                    )
                held = reach.reservations
                said = (
                    reach.mapped,
                    reach.mapping_problem,
                    reach.reservations,
                    reach.reserved_here,
                    reach.circuits_now,
                )
                if said != written or anyio.current_time() - last >= REACH_EVERY:
                    write_reach(directory, reach_status(reach, listening=dialled_text(node)))
                    written, last = said, anyio.current_time()
                await anyio.sleep(0.25)

        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow_reach)
                tg.start_soon(quiet.run)
                if desk is not None:
                    tg.start_soon(desk.read_lines)
                async for signum in signals:
                    quiet.turn()  # (what was not said yet is summed up)
                    say(
                        f"stopping ({signal.Signals(signum).name})",
                        event="stopping",
                        signal=signal.Signals(signum).name,
                    )
                    tg.cancel_scope.cancel()
                    break
        launches.cancel_scope.cancel()  # (launched programs go on running; they are not followed)
