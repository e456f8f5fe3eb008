"""What the ``peerkit`` commands share: the consoles, the data dir and the identity in it, contacts
named as people name them, addresses and nicknames read from the command line."""

from __future__ import annotations

import enum
import os
import signal
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Final, Generic, TypeVar

import anyio
import typer
from rich.table import Column
from rich.text import Text

import peerkit
from peerkit.discovery.base import DiscoveryProvider
from peerkit.errors import IdentityError, PeerUnreachable
from peerkit.identity import KEY_FILE_NAME, default_data_dir
from peerkit.invitations import Withdrawn
from peerkit.launching import answer_unless_withdrawn
from peerkit.model import check_text, host_and_port, printable
from peerkit.net.transport import local_addresses
from peerkit.reporting import address_text
from peerkit.terminal import SafeConsole, Terminal

__all__ = (
    "EXIT_CODES",
    "EXIT_DECLINED",
    "EXIT_EXPIRED",
    "EXIT_STOPPED",
    "MAX_EXPECTED",
    "MIN_PREFIX",
    "STREAM_WAIT",
    "AcceptFrom",
    "DataDir",
    "Discovery",
    "Expected",
    "ListenAt",
    "Senders",
    "accept_invitation",
    "cancel_on_signal",
    "check_nickname",
    "console",
    "dht_hint",
    "err_console",
    "existing_data_dir",
    "inviting_node",
    "nearby_named",
    "offline_node",
    "parse_address",
    "parse_listen",
    "peer_named",
    "print_error",
    "providers_named",
    "reached",
    "resolve_contact",
    "senders_named",
    "target_of",
    "withdrawn_text",
)

T = TypeVar("T")

#: Where the commands print for people, and their errors: text from peers is shown as text (see
#: :class:`~peerkit.terminal.SafeConsole`).
console = SafeConsole(soft_wrap=True)
err_console = SafeConsole(stderr=True, soft_wrap=True)


def print_error(message: str) -> None:
    """Print ``error: MESSAGE`` on stderr ("error:" in red on a terminal), the message as text."""
    text = Text.assemble(("error:", "red"), " ", printable(message, newlines=True))
    err_console.print(text, highlight=False)


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where the identity lives [default: $PEERKIT_DATA_DIR or the user data dir]"
    ),
]


ListenAt = Annotated[
    str,
    typer.Option(
        "--listen",
        help="HOST:PORT, or a PORT alone, to listen on (port 0 picks one; no HOST: every address, IPv4 "
        "and IPv6).",
    ),
]


def default_command(group: typer.Typer, command: Callable[[], object]) -> None:
    """Make ``peerkit GROUP`` alone run ``command`` with its defaults (``peerkit contacts`` lists
    them), and take ``--data-dir`` before the group's command too (``peerkit contacts --data-dir
    DIR add-card ...``): it is then that command's default, as ``$PEERKIT_DATA_DIR`` is."""

    def start(
        ctx: typer.Context,
        data_dir: Annotated[
            Path | None,
            typer.Option("--data-dir", help="Where the identity lives, for the command that follows."),
        ] = None,
    ) -> None:
        if data_dir is not None:
            os.environ["PEERKIT_DATA_DIR"] = str(data_dir)  # (what default_data_dir() reads)
        if ctx.invoked_subcommand is None:
            command()

    group.callback(invoke_without_command=True)(start)


EXIT_CODES: Final = (
    "Exit codes: 0 success; 1 failure; 2 usage error; 3 invitation declined; 4 invitation expired "
    "(no answer in time); 130 stopped (Ctrl-C or SIGTERM) before a transfer ended."
)
#: The exit codes of ``peerkit invite`` (and ``chat``, ``send``) for an answer other than accepted.
EXIT_DECLINED: Final = 3
EXIT_EXPIRED: Final = 4
#: The exit code of ``peerkit send`` and ``receive`` stopped before the transfer ended (the
#: shell's code for Ctrl-C).
EXIT_STOPPED: Final = 130

#: Characters of a contact's id (or its fingerprint) that name it on the command line, at least.
MIN_PREFIX: Final = 8


class AcceptFrom(enum.StrEnum):
    """Whose invitations ``peerkit serve --accept`` accepts (``--accept-from``)."""

    #: Contacts, and peers trusted with :meth:`peerkit.Node.trust`: a stranger's are declined.
    CONTACTS = "contacts"
    #: Anyone who completes a handshake.
    ANYONE = "anyone"


def data_dir_of(data_dir: Path | None) -> Path:
    """The data dir a command uses (``--data-dir``, else ``$PEERKIT_DATA_DIR`` or the user data
    dir), once it is no file."""
    directory = data_dir or default_data_dir()
    if directory.exists() and not directory.is_dir():
        raise IdentityError(f"{directory} is a file, not a data dir: give --data-dir a directory")
    return directory


def existing_data_dir(data_dir: Path | None) -> Path:
    """The data dir a command that only reads uses: it must hold an identity (such a command never
    creates one, so that a mistyped --data-dir is an error, not a new identity)."""
    directory = data_dir_of(data_dir)
    if not (directory / KEY_FILE_NAME).exists():
        raise IdentityError(
            f"no identity in {directory}: create one with 'peerkit id --create --data-dir {directory}' "
            "(or check --data-dir and $PEERKIT_DATA_DIR)"
        )
    return directory


def check_nickname(nickname: str) -> None:
    """:raises typer.BadParameter: when the nickname is too long."""
    try:
        check_text(nickname, "nickname")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--nickname") from None


def count_text(count: int, noun: str) -> str:
    """A count and its noun as people write them: ``1 file``, ``3 files``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def age_text(seconds: float) -> str:
    """How long ago, as people say it: ``12 s``, ``5 min``, ``3 h``, ``2 d``."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{max(int(seconds), 0)} s"


def fingerprint_column() -> Column:
    """A table's fingerprint column: never cut short, on a narrow terminal too (a fingerprint is
    what people compare, and ``abcd-efgh…`` matches many)."""
    return Column("fingerprint", no_wrap=True, min_width=len("abcd-efgh-ijkl-mnop"))


#: The endpoints :func:`dialled_text` names at most (a host with many interfaces: a few, and "...").
SHOWN_ADDRESSES: Final = 4


def dialled_at(node: peerkit.Node) -> list[peerkit.EndPoint]:
    """Where another machine dials ``node``: its address, or when it listens on every address (the
    default), this host's addresses with its port (loopback and link-local ones aside, which mean
    nothing there); its loopback endpoint when the host has no other."""
    hosts = local_addresses(node.config.listen[0], fallback=node.endpoint.host)
    return [peerkit.EndPoint(host, node.endpoint.port) for host in hosts]


def dialled_text(node: peerkit.Node) -> str:
    """:func:`dialled_at` for people: a few of the endpoints (SHOWN_ADDRESSES), then "..."."""
    endpoints = dialled_at(node)
    shown = ", ".join(str(e) for e in endpoints[:SHOWN_ADDRESSES])
    return shown + (", ..." if len(endpoints) > SHOWN_ADDRESSES else "")


def parse_address(text: str, default_host: str | None = None) -> tuple[str, int]:
    """An address to reach: ``HOST:PORT``, ``[IPv6]:PORT``, or with a ``default_host``, ``:PORT``,
    as a (host, port) pair (see :func:`peerkit.model.host_and_port`).

    :raises typer.BadParameter: when it is none of those, or its port is 0 (which no peer is at).
    """
    host, port = _host_and_port(text, default_host)
    if port == 0:
        raise typer.BadParameter(
            f"{text.strip()[:60]!r}: port 0 is for listening (the system picks a port); give the port "
            "the peer listens on"
        )
    return host, port


def _host_and_port(text: str, default_host: str | None) -> tuple[str, int]:
    try:
        return host_and_port(text, default_host=default_host)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_listen(text: str) -> tuple[str, int]:
    """A ``--listen`` value: ``HOST:PORT``, ``[IPv6]:PORT``, or ``:PORT`` or a ``PORT`` alone (every
    address).

    :raises typer.BadParameter: when it is none of those.
    """
    bare = text.strip()
    if not (bare.isascii() and bare.isdigit()):
        return _host_and_port(text, default_host="")
    if len(bare) > 5 or int(bare) > 65535:
        raise typer.BadParameter(f"port {bare[:12]} is outside 0..65535")
    return "", int(bare)


@asynccontextmanager
async def offline_node(data_dir: Path | None, *, create: bool = False) -> AsyncIterator[peerkit.Node]:
    """A node on the data dir (``--data-dir``, or the default: see :func:`data_dir_of`) that only
    uses its store: it listens on loopback and signs in nowhere. Unless it may ``create`` one, the
    data dir must hold an identity already (see :func:`existing_data_dir`)."""
    directory = data_dir_of(data_dir) if create else existing_data_dir(data_dir)
    async with peerkit.Node(data_dir=directory, listen=("127.0.0.1", 0)) as node:
        yield node


async def resolve_contact(node: peerkit.Node, text: str) -> peerkit.Contact:
    """A contact by its nickname or display name (any case), its fingerprint, or the start of its
    id (:data:`MIN_PREFIX` characters at least).

    :raises typer.BadParameter: when none is, or several are (they are listed).
    """
    contacts = await node.contacts.list()
    wanted = text.strip()
    named = [
        c
        for c in contacts
        if wanted and wanted.casefold() in (c.nickname.casefold(), c.display_name.casefold())
    ]
    if len(named) > 1:
        raise typer.BadParameter(
            f"{len(named)} contacts are called {text!r} ({_candidates(named)}); give the fingerprint "
            "of the one you mean"
        )
    if named:
        return named[0]
    prefix = wanted.replace("-", "").lower()
    if len(prefix) < MIN_PREFIX:
        raise typer.BadParameter(
            f"no contact is called {text!r}; give its name, its fingerprint or at least {MIN_PREFIX} "
            "characters of its id; see 'peerkit contacts list'"
        )
    matches = [c for c in contacts if str(c.id).startswith(prefix)]
    if not matches:
        raise typer.BadParameter(f"no contact's id starts with {text!r}; see 'peerkit contacts list'")
    if len(matches) > 1:
        raise typer.BadParameter(f"{len(matches)} contacts' ids start with {text!r} ({_candidates(matches)})")
    return matches[0]


Senders = Annotated[
    list[str] | None,
    typer.Option(
        "--from",
        metavar="PEER",
        help="Accept from this peer alone: a contact (its name, fingerprint or id) or anyone's full "
        "id; repeatable. Anyone else is declined without asking.",
        show_default=False,
    ),
]


async def senders_named(node: peerkit.Node, names: list[str]) -> dict[peerkit.PeerId, str]:
    """The peers ``--from`` names, each with its name as the command shows it: a contact (see
    :func:`resolve_contact`), or anyone by its full id.

    :raises typer.BadParameter: naming the ``--from`` that names nobody.
    """
    senders: dict[peerkit.PeerId, str] = {}
    for text in names:
        try:
            contact = await resolve_contact(node, text)
        except typer.BadParameter as exc:
            try:
                peer_id = peerkit.PeerId.parse(text.strip())
            except ValueError:
                said = f"{exc.message}; anyone else by its full id ({len(str(node.id))} characters)"
                raise typer.BadParameter(said, param_hint="--from") from None
            senders[peer_id] = peer_id.fingerprint
        else:
            senders[contact.id] = printable(contact.nickname or contact.display_name) or contact.fingerprint
    return senders


def _candidates(contacts: list[peerkit.Contact]) -> str:
    return ", ".join(
        f"{printable(c.nickname or c.display_name) or '?'} {c.fingerprint}" for c in contacts[:8]
    )


async def cancel_on_signal(scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` at the first SIGINT (Ctrl-C) or SIGTERM: a command's clean end."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


Discovery = Annotated[
    list[str] | None,
    typer.Option(
        "--discovery",
        help="A discovery provider: mdns, mdns:IFACE[,IFACE] (by name or address), static:HOST:PORT[#ID], "
        "memory, dht (the Internet scope on the Mainline DHT), dht:HOST:PORT[,HOST:PORT] (joined "
        "through those), or one from an installed plugin; repeatable, or several joined by commas "
        "(mdns,dht) [default: $PEERKIT_DISCOVERY, else mdns]",
    ),
]


#: The environment variable that names the commands' default discovery providers.
DISCOVERY_ENVIRONMENT: Final = "PEERKIT_DISCOVERY"


def providers_named(names: list[str] | None) -> list[DiscoveryProvider]:
    """The discovery providers ``--discovery`` names (default: those ``$PEERKIT_DISCOVERY``
    names, else mdns).

    :raises typer.BadParameter: for a name no provider has.
    """
    from peerkit.discovery import create_provider

    providers = []
    for name in _split_providers(names or [os.environ.get(DISCOVERY_ENVIRONMENT) or "mdns"]):
        try:
            providers.append(create_provider(name))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--discovery") from None
    return providers


def _split_providers(names: list[str]) -> list[str]:
    # "mdns,dht" is two providers; "dht:HOST:PORT,HOST:PORT" one (a comma starts a new provider
    # only where a provider's name follows it).
    from peerkit.discovery import provider_names

    known = set(provider_names())
    out: list[str] = []
    for name in names:
        first, *rest = name.split(",")
        out.append(first)
        for part in rest:
            if part.partition(":")[0] in known:
                out.append(part)
            else:
                out[-1] += "," + part
    return out


async def nearby_named(node: peerkit.Node, name: str, wait: float) -> peerkit.NearbyPeer:
    """The one peer near ``node`` (signed in to NEAR_ME) called ``name``, or whose fingerprint or
    id starts so, waiting up to ``wait`` seconds for it to appear.

    :raises typer.BadParameter: when none appears, or several are called so (they are listed).
    """
    wanted = name.strip().casefold()
    prefix = wanted.replace("-", "")

    def matching() -> list[peerkit.NearbyPeer]:
        return [
            p
            for p in node.nearby()
            if p.nickname.casefold() == wanted or (len(prefix) >= MIN_PREFIX and str(p.id).startswith(prefix))
        ]

    with anyio.move_on_after(wait):
        async with node.watch_nearby(initial=True) as changes:
            async for _ in changes:
                if matching():
                    await anyio.sleep(0.2)  # (others of that name answering at about the same time)
                    break
    found = matching()
    if not found:
        raise typer.BadParameter(
            f"nobody called {name!r} was seen near you within {wait:g} s; see 'peerkit near'"
        )
    if len(found) > 1:
        listed = ", ".join(f"{printable(p.nickname) or '?'} {p.fingerprint}" for p in found[:8])
        raise typer.BadParameter(
            f"{len(found)} peers near you are called {name!r} ({listed}); give the fingerprint"
        )
    return found[0]


def target_of(text: str) -> str | tuple[str, int]:
    """A peer as the command line gives it: ``HOST:PORT`` (as a pair), or a name."""
    return parse_address(text, "127.0.0.1") if ":" in text else text


def dht_hint(providers: list[DiscoveryProvider]) -> str:
    """Why a search through the DHT may have found nothing, to add to its error: that a running
    ``dht`` provider's node reached no other node (this machine offline, or UDP blocked), naming
    its bootstrap; "" otherwise."""
    from peerkit.dht.provider import DhtDiscovery  # (the DHT's modules: only when it is asked)

    for dht in (p for p in providers if isinstance(p, DhtDiscovery)):
        if dht.nodes and not any(node.status().nodes for node in dht.nodes):
            through = ", ".join(address_text(address) for address in dht.bootstrap[:3])
            return (
                f"; the DHT node reached no other node (bootstrap: {through}): is this machine "
                "online, and does its network let UDP through?"
            )
    return ""


@asynccontextmanager
async def inviting_node(directory: Path, providers: list[DiscoveryProvider]) -> AsyncIterator[peerkit.Node]:
    """The node of a command that reaches someone: on loopback, unless it looks for peers through
    discovery providers, which use the addresses the node listens on (mDNS its interfaces, the
    DHT its UDP socket): then on every address. A peer not reached says why the DHT may not have
    found it (:func:`dht_hint`)."""
    listen = ("", 0) if providers else ("127.0.0.1", 0)
    async with peerkit.Node(data_dir=directory, listen=listen, discovery=providers) as node:
        try:
            yield node
        except Exception as exc:
            failure: BaseException = exc
            while isinstance(failure, BaseExceptionGroup) and len(failure.exceptions) == 1:
                failure = failure.exceptions[0]  # (raised in a task group of the command's)
            hint = dht_hint(providers) if isinstance(failure, PeerUnreachable) else ""
            if not hint:  # (asked while the DHT node still runs)
                raise
            raise PeerUnreachable(f"{failure}{hint}") from exc


def providers_for(target: str | tuple[str, int], discovery: list[str] | None) -> list[DiscoveryProvider]:
    """The providers of a command that invites ``target``: those ``--discovery`` names, the
    default ones when ``target`` is a name (a contact is looked for near me too, in case it
    listens elsewhere now), and none for HOST:PORT."""
    return providers_named(discovery) if discovery or isinstance(target, str) else []


async def peer_named(
    node: peerkit.Node,
    name: str | tuple[str, int],
    providers: list[DiscoveryProvider],
    wait: float,
    *,
    by_nickname: bool,
) -> peerkit.Peer | None:
    """The peer a command line names: a contact (see :func:`resolve_contact`; the node signs in
    near me when its providers find people there, so that a contact that moved on the LAN is found
    where it is now), else, with ``by_nickname`` (``--discovery`` given), a peer near it by that
    name (signing in to NEAR_ME and waiting up to ``wait`` seconds for it to appear); None for an
    address (see :func:`reached`).

    :raises typer.BadParameter: when none is, or several are.
    """
    if not isinstance(name, str):
        return None
    try:
        contact = await resolve_contact(node, name)
    except typer.BadParameter as exc:  # (raised outside any task group: a usage error)
        if not by_nickname:  # a peer near me by that name, when told where to look
            raise typer.BadParameter(f"{exc.message} (or give HOST:PORT, or --discovery)") from None
    else:
        if any(p.scopes & peerkit.Scope.NEAR_ME for p in providers):
            await node.sign_in(peerkit.Scope.NEAR_ME)
        return contact
    await node.sign_in(peerkit.Scope.NEAR_ME)
    return await nearby_named(node, name, wait)


async def reached(
    node: peerkit.Node,
    target: str | tuple[str, int],
    named: peerkit.Peer | None,
    expected: peerkit.PeerId | None = None,
) -> peerkit.Peer:
    """The peer ``target`` names: ``named`` (what :func:`peer_named` found), or the peer dialled
    at the address (``expected``: the id its handshake must prove)."""
    if named is not None:
        return named
    assert not isinstance(target, str)
    return await node.peer_at(*target, expected)


@contextmanager
def reaching(peer: peerkit.Peer) -> Iterator[None]:
    """Name ``peer`` first in a :class:`~peerkit.PeerUnreachable` raised in the block: "cannot
    reach bob: could not connect to ...", not the addresses alone (which say little to people)."""
    try:
        yield
    except PeerUnreachable as exc:
        who = printable(peer.nickname) or peer.id.fingerprint
        raise PeerUnreachable(f"cannot reach {who}: {exc}") from exc


#: Seconds an invitee waits for the inviter's stream after accepting.
STREAM_WAIT: Final = 30.0


async def accept_invitation(
    node: peerkit.Node,
    application: peerkit.Application,
    terminal: Terminal,
    waiting_for: str,
    question: Callable[[peerkit.Invitation], str | None],
    yes: bool,
    senders: Collection[peerkit.PeerId] | None = None,
) -> tuple[peerkit.Invitation, peerkit.AppStream]:
    """Sign ``node`` in (near me where its providers find people, and for contacts), wait for an
    invitation to ``application``, ask ``question(invitation)`` at the terminal (None: decline it
    without asking; ``yes``: accept without asking), and once one is accepted, wait for the
    inviter's stream (a stream from anyone else is closed: none without an invitation). With
    ``senders`` (``--from``), an invitation from anyone else is declined without asking, and said.

    :raises TimeoutError: when the inviter opens no stream within :data:`STREAM_WAIT` seconds.
    """
    scope = peerkit.Scope.INTERNET
    for provider in node.config.providers:
        scope |= provider.scopes
    await node.sign_in(scope)
    await node.register_application(application)
    async with node.invitations(application) as invitations, node.streams(application) as streams:
        terminal.show(
            f"waiting for {waiting_for} as {node.nickname or '?'} ({node.id.fingerprint}) at "
            f"{dialled_text(node)}; Ctrl-C stops"
        )
        async for invitation in invitations:
            who = printable(invitation.nickname) or invitation.sender_id.fingerprint
            if senders is not None and invitation.sender_id not in senders:
                terminal.show(f"declined {who} ({invitation.sender_id.fingerprint}): not a peer --from names")
                invitation.decline()
                continue
            if invitation.withdrawn:  # (while another was asked about)
                continue
            asked = question(invitation)
            if asked is None:
                invitation.decline()
                continue
            if yes:
                terminal.show(f"{asked} y (--yes)")
            answer = "y" if yes else await answer_unless_withdrawn(terminal.ask, asked, invitation)
            if invitation.withdrawn:
                terminal.show(withdrawn_text(who, invitation))
                continue
            if (answer or "").strip().lower() not in ("y", "yes"):
                invitation.decline()
                continue
            invitation.accept()
            with anyio.fail_after(STREAM_WAIT):
                async for stream in streams:
                    if stream.peer.id == invitation.sender_id:
                        return invitation, stream
                    await stream.aclose()
    raise AssertionError("the invitations of a running node do not end")


def withdrawn_text(who: str, invitation: peerkit.Invitation) -> str:
    """Why ``invitation`` (from ``who``) can no longer be answered, as people say it."""
    reason = invitation.withdrawn_reason
    if reason is Withdrawn.EXPIRED:
        return f"the invitation from {who} expired"
    if reason is Withdrawn.DISCONNECTED:
        return f"{who} went away: the invitation is withdrawn"
    if reason is Withdrawn.DISPLACED:
        return f"the invitation from {who} made room for another (too many strangers' at once)"
    return f"{who} withdrew the invitation"


#: Streams a desk of ``peerkit serve`` expects (accepted invitations whose stream has not come
#: yet), at most: beyond, the oldest of a stranger's is forgotten (its stream, if it comes, is
#: closed); a stranger's never push out a contact's.
MAX_EXPECTED: Final = 64


class Expected(Generic[T]):
    """What an accepted invitation leaves for its inviter's stream, by peer: the streams a desk of
    ``peerkit serve`` expects (at most :data:`MAX_EXPECTED`; strangers' forgotten first, the
    oldest first)."""

    def __init__(self) -> None:
        self._by_peer: dict[peerkit.PeerId, tuple[T, bool]] = {}

    def expect(self, peer_id: peerkit.PeerId, value: T, *, trusted: bool) -> bool:
        """Expect a stream from ``peer_id`` (a contact or trusted peer when ``trusted``), and keep
        ``value`` for it: False, keeping nothing, when every place is a trusted peer's and this
        one is not (decline its invitation)."""
        self._by_peer.pop(peer_id, None)
        if len(self._by_peer) >= MAX_EXPECTED:
            stranger = next((p for p, (_, known) in self._by_peer.items() if not known), None)
            if stranger is None and not trusted:
                return False
            del self._by_peer[stranger if stranger is not None else next(iter(self._by_peer))]
        self._by_peer[peer_id] = (value, trusted)
        return True

    def take(self, peer_id: peerkit.PeerId) -> T | None:
        """What was kept for a stream from ``peer_id`` (no longer expected), or None."""
        kept = self._by_peer.pop(peer_id, None)
        return kept[0] if kept is not None else None
