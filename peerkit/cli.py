"""The ``peerkit`` command."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.table import Table

import peerkit
from peerkit.discovery.base import DiscoveryProvider
from peerkit.errors import PeerkitError
from peerkit.identity import KEY_FILE_NAME, Identity, default_data_dir
from peerkit.model import check_text
from peerkit.peers import NearbyPeer

__all__ = ("app", "default_data_dir", "main")

app = typer.Typer(
    name="peerkit",
    help="Peer-to-peer collaboration: identities, people near me, secure invitations and streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where the identity lives [default: $PEERKIT_DATA_DIR or the user data dir]"
    ),
]


Discovery = Annotated[
    list[str] | None,
    typer.Option(
        "--discovery",
        help="A discovery provider: mdns, mdns:ADDR[,ADDR], static:HOST:PORT[#ID], memory, or one from "
        "an installed plugin (repeatable) [default: mdns]",
    ),
]


def _providers(names: list[str] | None) -> list[DiscoveryProvider]:
    from peerkit.discovery import create_provider

    providers = []
    for name in names or ["mdns"]:
        try:
            providers.append(create_provider(name))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--discovery") from None
    return providers


def _version(value: bool) -> None:
    if value:
        console.print(f"peerkit {peerkit.__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Peer-to-peer collaboration for asyncio."""


@app.command("id")
def id_command(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show this user's identity, creating it on first use."""
    directory = data_dir or default_data_dir()
    identity, created = Identity.load_or_create(directory)
    info = {
        "id": str(identity.id),
        "fingerprint": identity.fingerprint,
        "key_file": str(directory / KEY_FILE_NAME),
        "created": created,
    }
    if as_json:
        print(json.dumps(info))
        return
    if created:
        console.print("[green]Created a new identity.[/green]")
    table = Table(show_header=False, box=None)
    table.add_row("id", str(identity.id))
    table.add_row("fingerprint", identity.fingerprint)
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
            help="Keep the demo identities in DIR/demo-alice and DIR/demo-bob [default: a temporary dir]",
        ),
    ] = None,
) -> None:
    """Two nodes on loopback find each other (mDNS), then an accepted, a declined and an expired
    invitation, then a chat stream."""
    from peerkit.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="peerkit-demo-") as tmp:
        base = data_dir or Path(tmp)
        alice, _ = Identity.load_or_create(base / "demo-alice")
        bob, _ = Identity.load_or_create(base / "demo-bob")
        console.print(f"alice  {alice.id}  [bold]{alice.fingerprint}[/bold]")
        console.print(f"bob    {bob.id}  [bold]{bob.fingerprint}[/bold]")
        with console.status("running two nodes on 127.0.0.1", spinner="dots"):
            report = anyio.run(run_demo, alice, bob, messages)
    console.print(f"discovery: {report.discovery}")
    console.print(f"alice listens at {report.alice}")
    console.print(f"bob listens at   {report.bob}")
    table = Table("step", "outcome", "time")
    for step in report.steps:
        table.add_row(step.title, step.outcome, f"{step.elapsed * 1000:.1f} ms")
    console.print(table)
    console.rule(f"chat stream ({report.stream_protocol})")
    console.print(f"stream handshake hash  {report.stream_hash.hex()}")
    for sender, text in report.chat:
        arrow = "->" if sender == "alice" else "<-"
        console.print(f"  {arrow} {sender}: {text}")
    console.print("[green]demo complete[/green]")


def parse_address(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` as a (host, port) pair.

    :raises typer.BadParameter: when it is none of those.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise typer.BadParameter(f"{text!r} is not HOST:PORT (for IPv6: [ADDRESS]:PORT)")
    host = host.strip("[]") or default_host
    return host, int(port)


def _app_ids(values: list[str]) -> list[uuid.UUID]:
    ids = []
    for value in values:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not an application UUID") from None
    return ids


@app.command()
def serve(
    listen_at: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to listen on (port 0 picks one).")
    ] = "0.0.0.0:0",
    accept: Annotated[
        list[str] | None,
        typer.Option("--accept", help="Register application APP_UUID and accept every invitation to it."),
    ] = None,
    nickname: Annotated[str, typer.Option(help="The nickname peers see.")] = "",
    discovery: Discovery = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines for scripts.")] = False,
) -> None:
    """Run a node in the foreground until Ctrl-C or SIGTERM: it signs in to the scopes its discovery
    providers serve and prints each invitation it receives."""
    host, port = parse_address(listen_at)
    apps = _app_ids(accept or [])
    check_nickname(nickname)
    providers = _providers(discovery)
    directory = data_dir or default_data_dir()
    anyio.run(_serve, host, port, apps, nickname, providers, directory, as_json)


def check_nickname(nickname: str) -> None:
    """:raises typer.BadParameter: when the nickname is too long."""
    try:
        check_text(nickname, "nickname")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--nickname") from None


async def _serve(
    host: str,
    port: int,
    apps: list[uuid.UUID],
    nickname: str,
    providers: list[DiscoveryProvider],
    directory: Path,
    as_json: bool,
) -> None:
    from peerkit.apps import Invitation, InvitationAnswered
    from peerkit.model import Application, InvitationResponse, Scope
    from peerkit.node import Node

    def say(text: str, **fields: object) -> None:
        if as_json:
            print(json.dumps(fields), flush=True)
        else:
            console.print(text)

    async with Node(nickname=nickname, data_dir=directory, listen=(host, port), discovery=providers) as node:
        scope = Scope.NONE
        for provider in providers:
            scope |= provider.scopes
        if scope:
            await node.sign_in(scope)
        for app_id in apps:
            await node.register_application(Application(id=app_id, description="accepted by peerkit serve"))

            async def accept_all(invitation: Invitation) -> InvitationResponse:
                return InvitationResponse.ACCEPTED

            node.add_invitation_handler(app_id, accept_all)

        async def report(event: InvitationAnswered) -> None:
            answer = event.response.name.lower() if event.response is not None else "withdrawn"
            say(
                f"invitation from {event.nickname or '?'} ({event.sender_id.fingerprint}) to "
                f"{event.application_id}: {event.message!r}, {event.data_size} bytes of data -> "
                f"{answer} ({event.reason})",
                event="invitation",
                sender=str(event.sender_id),
                nickname=event.nickname,
                application=str(event.application_id),
                message=event.message,
                data=event.data_size,
                response=answer,
                reason=event.reason,
            )

        node.add_invitation_observer(report)
        say(
            f"serving as {node.id} ({node.id.fingerprint}) at {node.endpoint}",
            event="listening",
            id=str(node.id),
            fingerprint=node.id.fingerprint,
            host=node.endpoint.host,
            port=node.endpoint.port,
            applications=[str(a) for a in apps],
            discovery=[p.name for p in providers],
            scope=node.scope.name,
        )
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                say(
                    f"stopping ({signal.Signals(signum).name})",
                    event="stopping",
                    signal=signal.Signals(signum).name,
                )
                break


@app.command()
def invite(
    address: Annotated[str, typer.Argument(help="HOST:PORT of the peer.")],
    application: Annotated[str, typer.Argument(help="The application's UUID.")],
    message: Annotated[str, typer.Option(help="The invitation message (at most 255 characters).")] = "",
    peer_id: Annotated[
        str | None,
        typer.Option("--id", help="The peer's id: the handshake then proves it is that peer (IK)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.001, max=300, help="Seconds to wait for an answer (at most 300).")
    ] = 300.0,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Invite the peer at HOST:PORT to an application and print its answer.

    Ctrl-C or SIGTERM withdraws the invitation and exits with 0.
    """
    host, port = parse_address(address, default_host="127.0.0.1")
    (app_id,) = _app_ids([application])
    check_text(message, "invitation message")  # before anything is dialled
    expected = None
    if peer_id is not None:
        try:
            expected = peerkit.PeerId.parse(peer_id)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--id") from None
    directory = data_dir or default_data_dir()
    response, who = anyio.run(_invite, host, port, app_id, message, expected, timeout, directory)
    answer = response.name.lower() if response is not None else "withdrawn"
    if as_json:
        print(json.dumps({"response": answer, "peer": str(who) if who is not None else None}))
    else:
        console.print(f"{who.fingerprint if who is not None else address}: {answer}")


async def _invite(
    host: str,
    port: int,
    app_id: uuid.UUID,
    message: str,
    expected: peerkit.PeerId | None,
    timeout: float,
    directory: Path,
) -> tuple[peerkit.InvitationResponse | None, peerkit.PeerId | None]:
    from peerkit.model import Application
    from peerkit.node import Node

    response: peerkit.InvitationResponse | None = None
    who: peerkit.PeerId | None = None
    async with Node(data_dir=directory, listen=("127.0.0.1", 0)) as node, anyio.create_task_group() as tg:

        async def withdraw_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()  # the invitation is withdrawn (invite_cancel)
                    return

        tg.start_soon(withdraw_on_signal)
        await node.register_application(Application(id=app_id))
        peer = await node.peer_at(host, port, expected)
        who = peer.id
        with console.status(f"waiting for {peer.id.fingerprint} to answer", spinner="dots"):
            response = await peer.invite(app_id, message, timeout=timeout)
        tg.cancel_scope.cancel()
    return response, who


@app.command()
def near(
    once: Annotated[bool, typer.Option("--once", help="Print the people near me once and exit.")] = False,
    wait: Annotated[
        float, typer.Option(min=0, max=300, help="With --once: seconds to listen before printing.")
    ] = 3.0,
    discovery: Discovery = None,
    nickname: Annotated[str, typer.Option(help="The nickname others see while this looks.")] = "peerkit near",
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
    check_nickname(nickname)
    providers = _providers(discovery)
    identity = None if as_me else Identity.generate()
    anyio.run(_near, once, wait, providers, nickname, identity, data_dir or default_data_dir(), as_json)


def _nearby_rows(peers: list[NearbyPeer]) -> list[dict[str, object]]:
    return [
        {
            "nickname": peer.nickname,
            "id": str(peer.id),
            "fingerprint": peer.fingerprint,
            "endpoint": str(peer.endpoints[0]) if peer.endpoints else "",
            "endpoints": [str(e) for e in peer.endpoints],
            "endpoint_name": peer.endpoint_name,
            "since": peer.since,
        }
        for peer in peers
    ]


def _nearby_table(peers: list[NearbyPeer]) -> Table:
    import time

    table = Table("nickname", "fingerprint", "endpoint", "since", title=f"people near me: {len(peers)}")
    now = time.time()
    for row in _nearby_rows(peers):
        since = now - float(row["since"])  # type: ignore[arg-type]
        table.add_row(
            str(row["nickname"]) or "?", str(row["fingerprint"]), str(row["endpoint"]), f"{since:.0f} s ago"
        )
    return table


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
                print(json.dumps(_nearby_rows(peers)), flush=True)
            else:
                console.print(_nearby_table(peers))
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
                            row = _nearby_rows([event.peer])[0]
                            print(json.dumps({"change": event.change.name, **row}), flush=True)
                    else:
                        with Live(_nearby_table(node.nearby()), console=console, auto_refresh=False) as live:
                            while True:
                                with anyio.move_on_after(1):  # the "since" column ages
                                    await watch.__anext__()
                                live.update(_nearby_table(node.nearby()), refresh=True)


def main() -> None:
    """Entry point of the ``peerkit`` console script."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except (PeerkitError, ExceptionGroup) as exc:
        error = _only_peerkit_error(exc)
        if debug or error is None:
            raise
        err_console.print(f"[red]error:[/red] {error}")
        sys.exit(1)


def _only_peerkit_error(exc: BaseException) -> PeerkitError | None:
    # The peerkit error to show, also when a task group wrapped it; None for anything else.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, PeerkitError) else None
