"""The ``peerkit`` command."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.table import Column, Table

import peerkit
from peerkit.cli_apps import app_ids, apps_app
from peerkit.cli_chat import chat_command
from peerkit.cli_contacts import contacts_app
from peerkit.cli_files import checked_into, receive_command, send_command
from peerkit.cli_pair import pair_command
from peerkit.clikit import (
    EXIT_CODES,
    EXIT_DECLINED,
    EXIT_EXPIRED,
    AcceptFrom,
    DataDir,
    Discovery,
    ListenAt,
    age_text,
    cancel_on_signal,
    check_nickname,
    console,
    count_text,
    data_dir_of,
    default_command,
    dht_hint,
    existing_data_dir,
    fingerprint_column,
    inviting_node,
    offline_node,
    parse_address,
    parse_listen,
    peer_named,
    print_error,
    providers_for,
    providers_named,
    reached,
    reaching,
    resolve_contact,
)
from peerkit.discovery.base import DiscoveryProvider
from peerkit.errors import PeerkitError, PeerUnreachable
from peerkit.identity import KEY_FILE_NAME, Identity, PeerId, default_data_dir
from peerkit.model import EndPoint, check_text, printable, seconds_text
from peerkit.peers import NearbyPeer
from peerkit.reporting import describe_event
from peerkit.wellknown import FILES

__all__ = ("app", "default_data_dir", "main")

app = typer.Typer(
    name="peerkit",
    help="Peer-to-peer collaboration: identities, people near me, secure invitations and streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # (help text flows to the terminal's width, not the source's)
)


def _version(value: bool) -> None:
    if value:
        console.print(f"peerkit {peerkit.__version__}")
        raise typer.Exit


#: What ``--debug`` and ``--verbose`` asked for (read by :func:`main` when a command fails).
_options = {"debug": False}


@app.callback(epilog=EXIT_CODES)
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what peerkit does (INFO).")] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Log everything (DEBUG) and show the traceback of a failure.")
    ] = False,
) -> None:
    """Peer-to-peer collaboration for asyncio."""
    _options["debug"] = debug
    if debug or verbose:
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.INFO,
            stream=sys.stderr,
            format="%(levelname)s %(name)s: %(message)s",
        )


@app.command("id")
def id_command(
    data_dir: DataDir = None,
    create: Annotated[bool, typer.Option("--create", help="Create the identity if there is none.")] = False,
    nickname: Annotated[
        str | None,
        typer.Option(help="Save the nickname others see (every command and your card use it)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show this user's identity (with --create, create it first if there is none)."""
    directory = data_dir_of(data_dir) if create else existing_data_dir(data_dir)
    if nickname is not None:
        check_nickname(nickname)
    identity, created = Identity.load_or_create(directory)

    async def saved_nickname() -> str:
        # The nickname saved in the data dir (``nickname``, when given, is saved first).
        async with peerkit.Node(data_dir=directory, nickname=nickname or "", listen=("127.0.0.1", 0)) as node:
            return node.nickname

    info = {
        "id": str(identity.id),
        "fingerprint": identity.fingerprint,
        "nickname": anyio.run(saved_nickname),
        "key_file": str(directory / KEY_FILE_NAME),
        "created": created,
    }
    if as_json:
        print(json.dumps(info))
        return
    if created:
        console.print("Created a new identity.", style="green")
    table = Table(show_header=False, box=None)
    table.add_row("id", str(identity.id))
    table.add_row("fingerprint", identity.fingerprint)
    table.add_row("nickname", str(info["nickname"]) or "(none: peerkit id --nickname NAME)")
    table.add_row("key file", str(directory / KEY_FILE_NAME))
    console.print(table)


@app.command()
def demo(
    messages: Annotated[
        int, typer.Option(min=1, max=100, help="Chat lines alice sends over the stream.")
    ] = 3,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Keep the demo identities in DIR/demo-alice, DIR/demo-bob and DIR/demo-carol "
            "[default: a temporary dir]",
        ),
    ] = None,
) -> None:
    """Three nodes on loopback find each other (mDNS), then an accepted, a declined and an expired
    invitation, contacts made from signed cards, presence and an object watched live, and a chat
    stream."""
    from peerkit.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="peerkit-demo-") as tmp:
        base = data_dir or Path(tmp)
        alice, _ = Identity.load_or_create(base / "demo-alice")
        bob, _ = Identity.load_or_create(base / "demo-bob")
        carol, _ = Identity.load_or_create(base / "demo-carol")
        console.print(f"alice  {alice.id}  [bold]{alice.fingerprint}[/bold]", markup=True)
        console.print(f"bob    {bob.id}  [bold]{bob.fingerprint}[/bold]", markup=True)
        console.print(f"carol  {carol.id}  [bold]{carol.fingerprint}[/bold]", markup=True)
        with console.status("running three nodes on 127.0.0.1", spinner="dots"):
            report = anyio.run(functools.partial(run_demo, alice, bob, messages, carol_identity=carol))
    console.print(f"discovery: {report.discovery}")
    for line in (report.alice, report.bob, report.carol):
        console.print(line)
    table = Table("step", "outcome", "time")
    for step in report.steps:
        table.add_row(step.title, step.outcome, f"{step.elapsed * 1000:.1f} ms")
    console.print(table)
    console.rule("alice's contact card (what carol imported)")
    console.print(report.card)
    console.rule("what bob and carol saw, watching alice")
    for watcher, what in report.watched:
        console.print(f"  {watcher}: {what}")
    console.rule(f"chat stream ({report.stream_protocol})")
    console.print(f"stream handshake hash  {report.stream_hash.hex()}")
    for sender, text in report.chat:
        arrow = "->" if sender == "alice" else "<-"
        console.print(f"  {arrow} {sender}: {text}")
    console.print("demo complete", style="green")


@app.command()
def serve(
    listen_at: ListenAt = ":0",
    accept: Annotated[
        list[str] | None,
        typer.Option(
            "--accept",
            help="Register application APP (chat, files or a UUID) and accept every invitation to it: "
            "chats are printed and stdin's lines said; files are saved --into a folder.",
        ),
    ] = None,
    accept_from: Annotated[
        AcceptFrom,
        typer.Option(
            "--accept-from",
            help="Whose invitations --accept accepts: your contacts' (and peers' you trust), or "
            "anyone's, strangers' too (whose files then fill --into up to its free space).",
        ),
    ] = AcceptFrom.CONTACTS,
    into: Annotated[
        Path,
        typer.Option(
            "--into",
            help="With --accept files: the folder files go to [default: the current folder]",
            show_default=False,
        ),
    ] = Path(),
    nickname: Annotated[str, typer.Option(help="The nickname peers see.")] = "",
    discovery: Discovery = None,
    dht_bootstrap: Annotated[
        list[str] | None,
        typer.Option(
            "--dht-bootstrap",
            help="HOST:PORT of a DHT node to join through instead of the public routers (repeatable; "
            "adds the dht provider when --discovery has none).",
        ),
    ] = None,
    relay: Annotated[
        bool, typer.Option("--relay", help="Serve as a relay for contacts that cannot be dialled.")
    ] = False,
    relay_open: Annotated[
        bool, typer.Option("--relay-open", help="With --relay: keep reservations for anyone.")
    ] = False,
    via: Annotated[
        list[str] | None,
        typer.Option(
            "--via",
            help="HOST:PORT#ID of a relay to keep a reservation on: peers that cannot dial this "
            "node reach it through the relay (repeatable).",
        ),
    ] = None,
    port_mapping: Annotated[
        bool,
        typer.Option(
            "--port-mapping/--no-port-mapping",
            help="Map the port through the home router (PCP, NAT-PMP or UPnP) when behind one.",
        ),
    ] = True,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines for scripts.")] = False,
) -> None:
    """Run a node in the foreground until Ctrl-C or SIGTERM: it signs in (near me through its
    discovery providers, and for contacts), publishes the presence 'peerkit presence set' saved,
    and prints each invitation it receives. One 'peerkit serve' runs on a data dir at a time."""
    from peerkit.proto.relay import RelayPolicy
    from peerkit.reporting import serving
    from peerkit.serving import run_serve

    host, port = parse_listen(listen_at)
    directory = data_dir_of(data_dir)
    apps = app_ids(accept or [], directory)
    check_nickname(nickname)
    providers = providers_named(discovery)
    bootstrap = [parse_address(a) for a in dht_bootstrap] if dht_bootstrap else None
    relaying: dict[str, Any] = {
        "relay": RelayPolicy(open=True) if relay and relay_open else relay,
        "relays": [parse_relay(text) for text in via or []],
        "port_mapping": None if port_mapping else False,  # (on: unless the environment says off)
    }
    relaying["into"] = checked_into(into) if FILES.id in apps else into
    relaying["accept_from"] = accept_from
    with serving(directory):
        anyio.run(run_serve, host, port, apps, nickname, providers, directory, as_json, bootstrap, relaying)


def parse_relay(text: str) -> EndPoint:
    """``HOST:PORT#ID``: a relay's address and peer id, as an endpoint through it.

    :raises typer.BadParameter: when it is not one.
    """
    address, sep, peer = text.partition("#")
    try:
        if not sep:
            raise ValueError("it has no '#ID'")
        return EndPoint(*parse_address(address), relay=PeerId.parse(peer))
    except (ValueError, typer.BadParameter) as exc:
        raise typer.BadParameter(f"{text!r} is not HOST:PORT#RELAY_ID: {exc}", param_hint="--via") from None


@app.command()
def invite(
    address: Annotated[
        str, typer.Argument(help="The peer: a contact (its name, fingerprint or id), or HOST:PORT.")
    ],
    application: Annotated[str, typer.Argument(help="The application: its UUID, or chat or files.")],
    message: Annotated[str, typer.Option(help="The invitation message (at most 255 characters).")] = "",
    peer_id: Annotated[
        str | None,
        typer.Option("--id", help="The peer's id: the handshake then proves it is that peer (IK)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.001, max=300, help="Seconds to wait for an answer (at most 300).")
    ] = 300.0,
    discovery: Annotated[
        list[str] | None,
        typer.Option(
            "--discovery",
            help="Where to look for a peer near you by that name when no contact has it (as for "
            "'peerkit near': mdns, static:HOST:PORT#ID, ...) [default: contacts only]",
        ),
    ] = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Invite a contact (by name, fingerprint or id), a peer near you by its nickname (with
    --discovery), or the peer at HOST:PORT to an application, and print its answer.

    Exits with 0 when it accepted, 3 when it declined, 4 when it did not answer in time. Ctrl-C or
    SIGTERM withdraws the invitation and exits with 0.
    """
    (app_id,) = app_ids([application], data_dir_of(data_dir))
    if ":" not in address:  # a contact, by name
        if peer_id is not None:
            raise typer.BadParameter("--id is for HOST:PORT: a contact's id is known", param_hint="--id")
        check_text(message, "invitation message")
        providers = providers_for(address, discovery)
        directory = existing_data_dir(data_dir)
        found = anyio.run(
            _invite, address, app_id, message, None, timeout, directory, providers, bool(discovery)
        )
        _print_answer(*found, address, as_json)
        return
    host, port = parse_address(address, default_host="127.0.0.1")
    check_text(message, "invitation message")  # before anything is dialled
    expected = None
    if peer_id is not None:
        try:
            expected = peerkit.PeerId.parse(peer_id)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--id") from None
    directory = data_dir_of(data_dir)
    found = anyio.run(_invite, (host, port), app_id, message, expected, timeout, directory, [], False)
    _print_answer(*found, address, as_json)


def _print_answer(
    response: peerkit.InvitationResponse | None,
    who: peerkit.PeerId | None,
    nickname: str,
    address: str,
    as_json: bool,
) -> None:
    # The answer, and its exit code.
    answer = response.name.lower() if response is not None else "withdrawn"
    if as_json:
        print(json.dumps({"response": answer, "peer": str(who) if who is not None else None}))
    else:
        shown = address if who is None else f"{nickname} ({who.fingerprint})" if nickname else who.fingerprint
        console.print(f"{shown}: {answer}", highlight=False)
    if response is peerkit.InvitationResponse.DECLINED:
        raise typer.Exit(EXIT_DECLINED)
    if response is peerkit.InvitationResponse.EXPIRED:
        raise typer.Exit(EXIT_EXPIRED)


async def _invite(
    target: str | tuple[str, int],
    app_id: uuid.UUID,
    message: str,
    expected: peerkit.PeerId | None,
    timeout: float,
    directory: Path,
    providers: list[DiscoveryProvider],
    by_nickname: bool,
) -> tuple[peerkit.InvitationResponse | None, peerkit.PeerId | None, str]:
    # Invite a contact (``target``: its name, fingerprint or id), else (with ``providers``) a peer
    # near me of that name, or the peer at (host, port); Ctrl-C or SIGTERM withdraws it.
    from peerkit.model import Application

    response: peerkit.InvitationResponse | None = None
    peer: peerkit.Peer | None = None  # (None when stopped before it was reached)
    async with inviting_node(directory, providers) as node:
        named = await peer_named(node, target, providers, min(timeout, 10.0), by_nickname=by_nickname)
        await node.register_application(Application(id=app_id))
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_signal, tg.cancel_scope)
            peer = await reached(node, target, named, expected)
            who = printable(peer.nickname) or peer.id.fingerprint
            with console.status(f"waiting for {who} to answer", spinner="dots"), reaching(peer):
                response = await peer.invite(app_id, message, timeout=timeout)
            tg.cancel_scope.cancel()
    if peer is None:
        return response, None, ""
    return response, peer.id, printable(peer.nickname)


app.command("chat")(chat_command)
app.command("send")(send_command)
app.command("receive")(receive_command)
app.command("pair")(pair_command)


@app.command()
def near(
    once: Annotated[bool, typer.Option("--once", help="Print the people near me once and exit.")] = False,
    wait: Annotated[
        float, typer.Option(min=0, max=300, help="With --once: seconds to listen before printing.")
    ] = 3.0,
    discovery: Discovery = None,
    nickname: Annotated[
        str | None,
        typer.Option(
            help="The nickname others see while this looks [default: 'peerkit near'; --as-me: yours]."
        ),
    ] = None,
    as_me: Annotated[
        bool,
        typer.Option(
            "--as-me",
            help="Look with the identity in the data dir (by default a throwaway one, so that a node "
            "running with your identity shows up too).",
        ),
    ] = False,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show the people near me: a live table until Ctrl-C, or once with --once."""
    if nickname is not None:
        check_nickname(nickname)
    providers = providers_named(discovery)
    if as_me:  # the identity (and nickname) in the data dir, which must be there
        identity, directory, nickname = None, existing_data_dir(data_dir), nickname or ""
    else:
        identity, directory = Identity.generate(), data_dir_of(data_dir)
        nickname = "peerkit near" if nickname is None else nickname
    anyio.run(_near, once, wait, providers, nickname, identity, directory, as_json)


def _nearby_rows(peers: list[NearbyPeer], known: dict[PeerId, str]) -> list[dict[str, object]]:
    return [
        {
            "nickname": peer.nickname,
            "contact": known.get(peer.id),
            "id": str(peer.id),
            "fingerprint": peer.fingerprint,
            "endpoint": str(peer.endpoints[0]) if peer.endpoints else "",
            "endpoints": [str(e) for e in peer.endpoints],
            "endpoint_name": peer.endpoint_name,
            "since": peer.since,
        }
        for peer in peers
    ]


def _nearby_table(peers: list[NearbyPeer], known: dict[PeerId, str]) -> Table:
    # The "contact" column tells a contact (by the name it has in your contacts) from a stranger
    # who took its nickname: any peer may call itself anything.
    table = Table(
        "nickname",
        "contact",
        fingerprint_column(),
        Column("endpoint", overflow="fold"),
        "since",
        title=f"people near me: {len(peers)}",
    )
    now = time.time()
    for row in _nearby_rows(peers, known):
        since = now - float(row["since"])  # type: ignore[arg-type]
        name = printable(str(row["nickname"])) or "?"
        contact = printable(str(row["contact"])) if row["contact"] is not None else "-"
        table.add_row(name, contact, str(row["fingerprint"]), str(row["endpoint"]), f"{age_text(since)} ago")
    return table


async def _known(node: peerkit.Node, directory: Path, as_me: bool) -> dict[PeerId, str]:
    # The peers near me may be: the contacts of the data dir's identity (by their names there),
    # and that identity itself ("you": a node running with it), when there is one.
    if not as_me:
        if not (directory / KEY_FILE_NAME).is_file():
            return {}
        async with offline_node(directory) as mine:
            return await _known(mine, directory, True)
    known = {c.id: c.display_name or c.nickname or c.fingerprint for c in await node.contacts.list()}
    known[node.id] = "you"
    return known


async def _near(
    once: bool,
    wait: float,
    providers: list[DiscoveryProvider],
    nickname: str,
    identity: Identity | None,
    directory: Path,
    as_json: bool,
) -> None:
    from rich.live import Live

    from peerkit.model import Scope
    from peerkit.node import Node

    node = Node(
        nickname=nickname,
        identity=identity,
        data_dir=None if identity is not None else directory,
        discovery=providers,
    )
    async with node:
        known = await _known(node, directory, identity is None)
        scope = Scope.NONE
        for provider in providers:
            scope |= provider.scopes
        await node.sign_in(scope or Scope.NEAR_ME)
        if once:
            if console.is_terminal and not as_json:
                with console.status(f"listening for {wait:g} s", spinner="dots"):
                    await anyio.sleep(wait)
            else:
                await anyio.sleep(wait)
            peers = node.nearby()
            if as_json:
                print(json.dumps(_nearby_rows(peers, known)), flush=True)
            else:
                console.print(_nearby_table(peers, known))
            return
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def stop() -> None:
                    async for _ in signals:
                        tg.cancel_scope.cancel()

                tg.start_soon(stop)
                async with node.watch_nearby(initial=True) as watch:
                    if as_json:
                        async for event in watch:
                            row = _nearby_rows([event.peer], known)[0]
                            print(json.dumps({"change": event.change.name, **row}), flush=True)
                    else:
                        with Live(
                            _nearby_table(node.nearby(), known), console=console, auto_refresh=False
                        ) as live:
                            while True:
                                with anyio.move_on_after(1):  # the "since" column ages
                                    await watch.__anext__()
                                live.update(_nearby_table(node.nearby(), known), refresh=True)


# -- contacts, presence, watch ------------------------------------------------------------------
app.add_typer(contacts_app, name="contacts")
app.add_typer(apps_app, name="apps")
presence_app = typer.Typer(help="Your presence, as the contacts that watch you see it (alone: show it).")
app.add_typer(presence_app, name="presence")

STATUSES = {status.name.lower().replace("_", "-"): status for status in peerkit.PresenceStatus}
SETTABLE = ", ".join(name for name in STATUSES if name != "offline")


@app.command()
def resolve(
    contact: Annotated[str, typer.Argument(help="The contact: its id, or the start of it.")],
    discovery: Discovery = None,
    timeout: Annotated[float, typer.Option(min=0.1, max=300, help="Seconds to keep looking.")] = 30.0,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Find where a contact is now, through the discovery providers (by default the DHT: the
    contact must be signed in to the Internet scope, and its card must have given its locator
    key), and print its endpoints and how long it took."""
    providers = providers_named(discovery or ["dht"])
    directory = existing_data_dir(data_dir)
    who, endpoints, took = anyio.run(_resolve, contact, providers, directory, timeout)
    names = [p.name for p in providers]
    if as_json:
        found = {"peer": str(who), "endpoints": [str(e) for e in endpoints], "providers": names}
        print(json.dumps({**found, "seconds": round(took, 3)}))
        return
    where = ", ".join(str(e) for e in endpoints)
    console.print(f"{who.fingerprint}: {where} (through {', '.join(names)}, {seconds_text(took)})")


async def _resolve(
    text: str, providers: list[DiscoveryProvider], directory: Path, timeout: float
) -> tuple[peerkit.PeerId, tuple[peerkit.EndPoint, ...], float]:
    async with inviting_node(directory, providers) as node:
        contact = await resolve_contact(node, text)
        start = anyio.current_time()
        with console.status(f"looking for {contact.fingerprint}", spinner="dots"):
            while True:
                try:
                    peer = await node.resolve(contact.id)
                    return contact.id, peer.endpoints, anyio.current_time() - start
                except PeerUnreachable:
                    if anyio.current_time() - start >= timeout:
                        within = seconds_text(timeout)
                        raise PeerUnreachable(
                            f"no provider found {contact.fingerprint} within {within}"
                        ) from None
                    await anyio.sleep(0.5)  # a DHT just joined may need a moment


@app.command()
def reach(
    contact: Annotated[
        str | None, typer.Argument(help="A contact (its id or the start of it) to try every way to.")
    ] = None,
    discovery: Discovery = None,
    timeout: Annotated[float, typer.Option(min=0.1, max=60, help="Seconds each way may take.")] = 10.0,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """How peers can reach the node running on this data dir ('peerkit serve'): its port mapped
    through the home router, where DHT nodes see it, the relays it holds reservations on, and
    what it carries as a relay; exits 1 when no node is running there. Given a CONTACT: how
    this node reaches it, way by way (looked up through the DHT by default, each endpoint direct
    or through its relays, a hole punched), with how long each step took."""
    from peerkit.dht.provider import read_status
    from peerkit.reporting import reach_text, read_reach, trace_text

    directory = data_dir_of(data_dir)
    if contact is not None:
        providers = providers_named(discovery or ["dht"])
        who, steps, hint = anyio.run(_trace, contact, providers, existing_data_dir(data_dir), timeout)
        if as_json:
            rows = [
                {**dataclasses.asdict(s), "endpoint": str(s.endpoint) if s.endpoint else None} for s in steps
            ]
            print(json.dumps({"peer": str(who.id), "steps": rows}))
        else:
            name = printable(who.display_name or who.nickname)
            console.print(trace_text(f"{name} ({who.fingerprint})" if name else who.fingerprint, steps))
            if hint:
                console.print(hint.removeprefix("; "))
        if not any(s.ok and s.way != "resolve" for s in steps):
            raise typer.Exit(1)
        return
    try:
        status = read_reach(directory)
        dht = read_status(directory)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read the reach status in {directory}: {exc}") from None
    if status is None or not status["running"]:
        print_error(f"no 'peerkit serve' is running with {directory}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps({**status, "dht": dht}))
    else:
        console.print(reach_text(status, dht if dht is not None and dht["running"] else None))


async def _trace(
    text: str, providers: list[DiscoveryProvider], directory: Path, timeout: float
) -> tuple[peerkit.Contact, list[Any], str]:
    # The contact, the ways tried, and why the DHT may have found nothing (see dht_hint).
    async with inviting_node(directory, providers) as node:  # (providers: on every address)
        contact = await resolve_contact(node, text)
        with console.status(f"trying every way to {contact.fingerprint}", spinner="dots"):
            steps = await node.trace(contact.id, timeout=timeout)
        return contact, steps, "" if any(s.ok for s in steps) else dht_hint(providers)


dht_app = typer.Typer(help="The Mainline DHT node that serves the Internet scope (alone: its status).")
app.add_typer(dht_app, name="dht")


@dht_app.command("status")
def dht_status(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """What the DHT node of the node running on this data dir ('peerkit serve --discovery dht')
    is doing: its routing table, whether others can reach it or it runs read-only, its last
    publication, and the items it stores for others. Exits 1 when no node is running there."""
    from peerkit.dht.provider import read_status
    from peerkit.reporting import dht_status_text

    directory = data_dir_of(data_dir)
    try:
        status = read_status(directory)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read the DHT status in {directory}: {exc}") from None
    if status is None:
        print_error(
            f"no node with the dht provider has run with {directory}; start one with "
            "'peerkit serve --discovery dht'"
        )
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(status))
    else:
        console.print(dht_status_text(status))
    if not status["running"]:
        raise typer.Exit(1)


default_command(dht_app, dht_status)


def _presence_text(status: peerkit.PresenceStatus, text: str) -> str:
    return f"presence: {status.name.lower().replace('_', ' ')}" + (f" ({text})" if text else "")


@presence_app.command("show")
def presence_show(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show the presence 'peerkit presence set' saved: what 'peerkit serve' on this data dir
    publishes (online when none was set)."""
    from peerkit.contacts import saved_presence

    async def run() -> peerkit.Presence | None:
        async with offline_node(data_dir) as node:
            return saved_presence(node.contacts.settings())

    saved = anyio.run(run)
    presence = saved or peerkit.Presence(peerkit.PresenceStatus.ONLINE)
    if as_json:
        name = presence.status.name.lower().replace("_", "-")
        print(json.dumps({"status": name, "text": presence.text, "set": saved is not None}))
        return
    shown = _presence_text(presence.status, printable(presence.text))
    console.print(shown + ("" if saved else " (none set: 'peerkit presence set STATUS')"), highlight=False)


default_command(presence_app, presence_show)


@presence_app.command("set")
def presence_set(
    status: Annotated[str, typer.Argument(help=f"One of: {SETTABLE}.")],
    text: Annotated[str, typer.Argument(help="A short text beside the status.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Set your presence: a running 'peerkit serve' publishes it within a second, and the next one
    starts with it. To appear offline, stop (or sign out)."""
    from peerkit.contacts import PRESENCE_SETTING

    chosen = STATUSES.get(status.lower().replace("_", "-"))
    if chosen is None or chosen is peerkit.PresenceStatus.OFFLINE:
        raise typer.BadParameter(f"{status!r} is not a status to set; use one of: {SETTABLE}")
    try:
        presence = peerkit.Presence(chosen, text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def run() -> None:
        async with offline_node(data_dir) as node:
            await node.contacts.save_setting(
                PRESENCE_SETTING, json.dumps([int(presence.status), presence.text])
            )

    anyio.run(run)
    console.print(_presence_text(chosen, printable(text)), highlight=False)


@app.command()
def watch(
    listen_at: ListenAt = ":0",
    discovery: Discovery = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines for scripts.")] = False,
) -> None:
    """Sign in and print the changes of the contacts you watch (presence, applications, objects,
    endpoint names) as they happen, until Ctrl-C or SIGTERM."""
    host, port = parse_listen(listen_at)
    providers = providers_named(discovery)
    anyio.run(_watch, host, port, providers, existing_data_dir(data_dir), as_json)


async def _watch(
    host: str, port: int, providers: list[DiscoveryProvider], directory: Path, as_json: bool
) -> None:
    async with peerkit.Node(data_dir=directory, listen=(host, port), discovery=providers) as node:
        await node.sign_in(peerkit.Scope.ALL)
        watched = node.contacts.watched()
        if as_json:
            print(json.dumps({"event": "watching", "contacts": [str(i) for i in watched]}), flush=True)
        elif watched:
            console.print(f"watching {count_text(len(watched), 'contact')}; Ctrl-C stops")
        else:
            console.print("you watch no contact yet: 'peerkit contacts watch ID' (this keeps running)")
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_signal, tg.cancel_scope)
            async with node.events() as events:
                async for event in events:
                    assert not isinstance(event, peerkit.ContactChanged | peerkit.SubscriptionListChanged)
                    text, fields = describe_event(event)
                    if as_json:
                        print(json.dumps(fields), flush=True)
                    else:
                        console.print(text)


def main() -> None:
    """Entry point of the ``peerkit`` console script: every failure is one line on stderr
    (``error: ...``) and exit code 1; ``peerkit --debug ...`` shows its traceback instead."""
    for stream in (sys.stdout, sys.stderr):
        # What the output's encoding cannot hold (a peer's nickname in a Latin-1 locale, output
        # redirected to a file on Windows) is written as escapes, not the end of the command.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if _options["debug"]:
            raise
        print_error(_one_line(exc))
        sys.exit(1)


def _one_line(exc: BaseException) -> str:
    # What went wrong, for people: a peerkit error or a bad value says it itself (also when a
    # task group wrapped it); a file system error names the file; anything else is unexpected.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, PeerkitError | ValueError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    if isinstance(exc, anyio.BrokenResourceError):  # (a stream whose connection broke)
        return str(exc) or "the connection broke"
    return f"unexpected {type(exc).__name__}: {exc} (run 'peerkit --debug ...' for the traceback)"
