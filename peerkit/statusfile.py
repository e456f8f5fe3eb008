"""Status files: what a running node writes to its data dir for commands in other processes
(``peerkit dht status``, ``peerkit reach``), written whole, and read with whether their writer
still runs. They are a few KiB, read and written at once rather than in anyio's worker threads,
which outlive the node that used them (a node leaves no thread behind)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ("process_alive", "read_status_file", "write_whole")


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, then a rename).

    :raises OSError: when it cannot be written.
    """
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, "utf-8")
    temporary.replace(path)


def read_status_file(path: Path, what: str, every: float) -> dict[str, Any] | None:
    """The JSON object a running node writes to ``path`` every ``every`` seconds, or None when
    there is none. Its ``running`` is true only when its writer did not say it stopped, wrote it
    lately (within three periods), and its process (``pid``) is alive.

    :raises ValueError: when the file is damaged (it is not ``what``).
    """
    try:
        status = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    if not isinstance(status, dict) or not isinstance(status.get("updated"), int | float):
        raise ValueError(f"{path} is not {what}")
    recent = time.time() - status["updated"] < 3 * every
    status["running"] = bool(status.get("running", True)) and recent and process_alive(status.get("pid"))
    return status


def process_alive(pid: object) -> bool:
    """Whether ``pid`` (a positive integer) is a running process (of any user)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
