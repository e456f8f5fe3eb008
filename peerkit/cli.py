"""The ``peerkit`` command."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import anyio
import platformdirs
import typer
from rich.console import Console
from rich.table import Table

import peerkit
from peerkit.errors import PeerkitError
from peerkit.identity import KEY_FILE_NAME, Identity

__all__ = ("app", "default_data_dir", "main")

app = typer.Typer(
    name="peerkit",
    help="Peer-to-peer collaboration: identities, secure channels, invitations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def default_data_dir() -> Path:
    """``$PEERKIT_DATA_DIR`` if set, else the per-user data dir of platformdirs."""
    env = os.environ.get("PEERKIT_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("peerkit"))


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where the identity lives [default: $PEERKIT_DATA_DIR or the user data dir]"
    ),
]


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
    messages: Annotated[int, typer.Option(min=1, max=100, help="Messages alice sends each time.")] = 3,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Keep the demo identities in DIR/demo-alice and DIR/demo-bob [default: a temporary dir]",
        ),
    ] = None,
) -> None:
    """Two identities on loopback: real XX and IK handshakes over TCP, messages both ways."""
    from peerkit.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="peerkit-demo-") as tmp:
        base = data_dir or Path(tmp)
        alice, _ = Identity.load_or_create(base / "demo-alice")
        bob, _ = Identity.load_or_create(base / "demo-bob")
        console.print(f"alice  {alice.id}  [bold]{alice.fingerprint}[/bold]")
        console.print(f"bob    {bob.id}  [bold]{bob.fingerprint}[/bold]")
        with console.status("handshaking on 127.0.0.1", spinner="dots"):
            rounds = anyio.run(run_demo, alice, bob, messages)
    for r in rounds:
        console.rule(r.protocol)
        console.print(f"alice saw  {r.alice_saw}")
        console.print(f"bob saw    {r.bob_saw}")
        console.print(f"handshake hash  {r.handshake_hash.hex()}")
        console.print(f"handshake  {r.handshake_time * 1000:.2f} ms   round trip  {r.rtt * 1000:.3f} ms")
        for sender, text in r.exchanged:
            arrow = "->" if sender == "alice" else "<-"
            console.print(f"  {arrow} {sender}: {text}")
    console.print("[green]demo complete[/green]")


def main() -> None:
    """Entry point of the ``peerkit`` console script."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except PeerkitError as exc:
        if debug:
            raise
        err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
