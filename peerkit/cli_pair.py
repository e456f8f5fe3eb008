"""``peerkit pair``: become each other's contacts by reading a short code to the other person."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Final

import anyio
import typer
from rich.text import Text

import peerkit
from peerkit.clikit import (
    DataDir,
    ListenAt,
    cancel_on_signal,
    console,
    dialled_at,
    dialled_text,
    existing_data_dir,
    parse_address,
    parse_listen,
    providers_named,
)
from peerkit.discovery.base import DiscoveryProvider
from peerkit.model import printable
from peerkit.node.pairing import PAIR_TIMEOUT
from peerkit.proto.pairing import parse_code

__all__ = ("pair_command",)

#: Seconds a pairing waits for its DHT node to start.
DHT_START: Final = 10.0


def pair_command(
    code: Annotated[
        str | None,
        typer.Argument(help="The code the other person's 'peerkit pair' shows; without it, get one."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="HOST:PORT of the waiting side, where it cannot be found by mDNS (another network)."
        ),
    ] = None,
    listen_at: ListenAt = ":0",
    timeout: Annotated[
        float, typer.Option(min=1, max=3600, help="Seconds the code stays valid (at most 3600).")
    ] = PAIR_TIMEOUT,
    lan: Annotated[bool, typer.Option("--lan/--no-lan", help="Use a rendezvous on the LAN (mDNS).")] = True,
    discovery: Annotated[
        list[str] | None,
        typer.Option(
            "--discovery",
            help="dht (or dht:HOST:PORT, your own DHT node): also meet through the DHT, from "
            "anywhere; the code then has a longer number [default: the LAN only]",
        ),
    ] = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Pair with someone by a short code: run 'peerkit pair' and read the code it prints (like
    7-guitar-walrus) to the other person, who runs 'peerkit pair 7-guitar-walrus'. Each becomes
    the other's contact, checked with the code (SPAKE2); both see the other's fingerprint.

    A wrong code fails on both sides and uses the code up; a code expires after --timeout.
    """
    directory = existing_data_dir(data_dir)
    host, port = parse_listen(listen_at)
    providers = providers_named(discovery) if discovery else []
    if code is not None:
        try:
            parse_code(code)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="CODE") from None
        where = parse_address(at, "127.0.0.1") if at else None
        anyio.run(_pair, directory, (host, port), providers, code, where, timeout, lan, as_json)
    else:
        if at is not None:
            raise typer.BadParameter("--at is for joining with a CODE", param_hint="--at")
        anyio.run(_pair, directory, (host, port), providers, None, None, timeout, lan, as_json)


def _say(as_json: bool, text: str | Text, **fields: object) -> None:
    if as_json:
        print(json.dumps(fields), flush=True)
    else:
        console.print(text, highlight=False)


def _paired(as_json: bool, contact: peerkit.Contact, me: peerkit.PeerId) -> None:
    name = printable(contact.nickname or contact.display_name) or "?"
    _say(
        as_json,
        f"paired with {name} ({contact.fingerprint}): now your contact, as you are theirs. Check that "
        f"{name} sees your fingerprint, {me.fingerprint}.",
        event="paired",
        id=str(contact.id),
        fingerprint=contact.fingerprint,
        nickname=contact.nickname,
    )


async def _signed_in(node: peerkit.Node) -> None:
    # Signed in where the providers reach (the DHT: once its node runs, so that a code goes there).
    scope = peerkit.Scope.NONE
    for provider in node.config.providers:
        scope |= provider.scopes
    if scope:
        await node.sign_in(scope)
    if any(p.name == "dht" for p in node.config.providers):
        for _ in range(int(DHT_START / 0.05)):  # (the provider tells of no start: it is polled)
            if node.pairing_dht() is not None:
                break
            await anyio.sleep(0.05)


async def _pair(
    directory: Path,
    listen: tuple[str, int],
    providers: list[DiscoveryProvider],
    code: str | None,
    at: tuple[str, int] | None,
    timeout: float,
    lan: bool,
    as_json: bool,
) -> None:
    # Wait with a new code (``code`` None), or join with ``code``; Ctrl-C or SIGTERM stops either.
    async with (
        peerkit.Node(data_dir=directory, listen=listen, discovery=providers) as node,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(cancel_on_signal, tg.cancel_scope)
        await _signed_in(node)
        if code is not None:
            with console.status(f"pairing as {node.id.fingerprint}", spinner="dots"):
                contact = await node.join_pairing(code, at=at, lan=lan)
        else:
            async with node.pair(timeout=timeout, lan=lan) as pairing:
                _say(
                    as_json,
                    Text.assemble(
                        "your code: ",
                        (str(pairing.code), "bold"),
                        f"\non the other machine: peerkit pair {pairing.code}\n(you are "
                        f"{node.id.fingerprint} at {dialled_text(node)}; the code works once, for "
                        f"{timeout:g} s; Ctrl-C stops)",
                    ),
                    event="code",
                    code=str(pairing.code),
                    fingerprint=node.id.fingerprint,
                    host=node.endpoint.host,
                    port=node.endpoint.port,
                    addresses=[str(e) for e in dialled_at(node)],
                )
                contact = await pairing.wait()
        _paired(as_json, contact, node.id)
        tg.cancel_scope.cancel()
