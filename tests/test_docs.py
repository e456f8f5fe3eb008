"""The documentation site builds with ``mkdocs build --strict``: a broken link, a page missing from
the navigation, a reference to a name that is not there, or a docstring mkdocstrings cannot read
fails here (and so in CI)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from conftest import needed

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    missing = [
        m
        for m in ("mkdocs", "material", "mkdocstrings_handlers.python")
        if importlib.util.find_spec(m) is None
    ]
    needed(
        "documentation build",
        f"{', '.join(missing)} not installed: pip install -e '.[docs]'" if missing else None,
    )
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    page = (tmp_path / "site" / "reference" / "peerkit" / "index.html").read_text("utf-8")
    assert "join_pairing" in page  # (the API reference is generated from the docstrings)
    assert "Unreleased" in (tmp_path / "site" / "changelog" / "index.html").read_text("utf-8")
    cli = (tmp_path / "site" / "cli" / "index.html").read_text("utf-8")
    for command in ("peerkit pair", "peerkit send", "peerkit apps register", "peerkit contacts add-nearby"):
        assert f"<code>{command}</code>" in cli, command  # (made from the app: every command)
