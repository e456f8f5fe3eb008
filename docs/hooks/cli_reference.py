"""An MkDocs hook: ``docs/cli.md``, the command's reference, made from the typer app itself before
each build, so that it is never out of date: every command's ``--help``, as a user sees it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent.parent / "cli.md"


def _commands() -> list[list[str]]:
    # Every command and subcommand of ``peerkit``, in order (groups before their commands).
    import typer.main

    from peerkit.cli import app

    found: list[list[str]] = [[]]

    def walk(command: Any, path: list[str]) -> None:
        for name in sorted(getattr(command, "commands", {})):
            found.append([*path, name])
            walk(command.commands[name], [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def _help(path: list[str]) -> str:
    from typer.testing import CliRunner

    from peerkit.cli import app

    shown = CliRunner().invoke(
        app, [*path, "--help"], env={"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}
    )
    if shown.exit_code != 0:
        raise RuntimeError(f"peerkit {' '.join(path)} --help failed: {shown.output}")
    return shown.output.rstrip()


def write_page() -> str:
    """The page's text (also written to ``docs/cli.md``)."""
    parts = [
        "# The `peerkit` command",
        "",
        "Every command's `--help`, made from the command itself when the site is built.",
    ]
    for path in _commands():
        parts += ["", f"## `{' '.join(['peerkit', *path])}`", "", "```text", _help(path), "```"]
    text = "\n".join(parts) + "\n"
    PAGE.write_text(text, encoding="utf-8")
    return text


def on_pre_build(config: Any, **kwargs: Any) -> None:
    """MkDocs calls this before every build."""
    write_page()
