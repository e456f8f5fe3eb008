"""``peerkit apps``: the applications ``peerkit serve`` launches for invitations."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from peerkit.apps import Registered, Registry, system_registry_path
from peerkit.clikit import DataDir, console, default_command, err_console, existing_data_dir
from peerkit.wellknown import CHAT, FILES, application_id, well_known_id

__all__ = ("app_ids", "apps_app", "program_path")

apps_app = typer.Typer(
    help="Applications 'peerkit serve' launches when an invitation to them is accepted (alone: list them).",
)


def app_ids(values: list[str], data_dir: Path | None) -> list[uuid.UUID]:
    """The applications ``values`` name: chat, files, a registered application's name, or a UUID.

    :raises typer.BadParameter: for anything else.
    """
    registry = Registry(data_dir) if data_dir is not None else None
    ids = []
    for value in values:
        found = registry.find(value) if registry is not None else None
        if found is not None:
            ids.append(found.id)
            continue
        try:
            ids.append(application_id(value))
        except ValueError as exc:
            raise typer.BadParameter(f"{exc}, nor a registered application ('peerkit apps list')") from None
    return ids


@apps_app.command("register")
def apps_register(
    name: Annotated[str, typer.Argument(help="A short name: lowercase letters, digits, '.', '_', '-'.")],
    path: Annotated[str, typer.Argument(help="The program to start for an invitation.")],
    arguments: Annotated[
        str, typer.Option(help="Its arguments, one string split as a shell would (no shell runs it).")
    ] = "",
    app_id: Annotated[
        str | None,
        typer.Option("--id", help="The application's UUID [default: derived from the name, as for chat]"),
    ] = None,
    description: Annotated[str, typer.Option(help="A description for people.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Register a program to launch when 'peerkit serve' accepts an invitation to its application.
    The program finds the invitation with peerkit.launch_info()."""
    try:
        identity = uuid.UUID(app_id) if app_id is not None else well_known_id(name.lower())
        registered = Registered(name, identity, path, arguments, description)  # (the name first)
        registered = dataclasses.replace(registered, path=program_path(path))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if identity in (CHAT.id, FILES.id):  # ('peerkit serve' answers those itself: never launched)
        own = "chat" if identity == CHAT.id else "files"
        raise typer.BadParameter(
            f"{own} is peerkit's own application ('peerkit serve --accept {own}'): give another name or --id"
        )
    Registry(existing_data_dir(data_dir)).register(registered)
    console.print(
        f"registered {registered.name} ({registered.id}): {registered.command_text()}", highlight=False
    )


def program_path(path: str) -> str:
    """The program ``apps register`` is given, as it is kept: a name found on ``PATH`` as it is
    (looked up there when launched), a path made absolute ('peerkit serve' may run elsewhere).

    :raises ValueError: when there is no such program, or it cannot be run.
    """
    if "/" not in path and os.sep not in path:
        if shutil.which(path) is None:
            raise ValueError(f"no program called {path!r} on PATH: give its path")
        return path
    program = Path(path).expanduser().absolute()
    if not program.is_file():
        raise ValueError(f"no program at {program}")
    if not os.access(program, os.X_OK):
        raise ValueError(
            f"{program} is not executable: make it so (chmod +x), or register what runs it "
            f"('peerkit apps register NAME python3 --arguments {shlex.quote(str(program))}')"
        )
    return str(program)


@apps_app.command("unregister")
def apps_unregister(
    name: Annotated[str, typer.Argument(help="Its name or UUID.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Unregister without asking.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Remove a registration of yours (after asking, unless --yes)."""
    registry = Registry(existing_data_dir(data_dir))
    found = registry.find(name)
    if found is not None and found.source == "user" and not yes:
        question = f"Unregister {found.name} ({' '.join(found.command())})?"
        try:
            asked = typer.confirm(question, default=False)
        except typer.Abort:
            asked = False
        if not asked:
            err_console.print("not unregistered")
            raise typer.Exit(1)
    try:
        gone = registry.unregister(name)
    except LookupError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None
    console.print(f"unregistered {gone.name} ({gone.id})", highlight=False)


@apps_app.command("list")
def apps_list(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The registered applications: yours, and those registered for all users (yours override)."""
    registered = Registry(existing_data_dir(data_dir)).list()
    if as_json:
        rows = [
            {
                "name": r.name,
                "id": str(r.id),
                "path": r.path,
                "arguments": r.arguments,
                "description": r.description,
                "source": r.source,
            }
            for r in registered
        ]
        print(json.dumps(rows))
        return
    if not registered:
        console.print(
            f"no application registered (system registry: {system_registry_path()})", highlight=False
        )
        return
    # (an id whole, on one line, to copy: a long command is folded onto more lines instead)
    table = Table("name", Column("id", no_wrap=True, min_width=36), Column("command", overflow="fold"), "for")
    for r in registered:
        table.add_row(r.name, str(r.id), r.command_text(), "you" if r.source == "user" else "all users")
    console.print(table)


default_command(apps_app, apps_list)
