"""The node's own settings, in one store: the settings table of its SQLite database.

Earlier versions kept the endpoint name in a ``node.json`` file beside the database. The first
start of a node on such a data dir moves what that file holds into the settings table (an
unreadable file is set aside with a warning) and renames the file to ``node.json.migrated``; the
database is the only store from then on.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Final, Protocol

from peerkit.errors import PeerkitError
from peerkit.model import MAX_TEXT
from peerkit.net.stamps import STAMPS
from peerkit.proto.admission import REPLAY_WINDOW

__all__ = (
    "ENDPOINT_NAME",
    "LAST_SEQ",
    "LAST_STAMP",
    "LEGACY_FILE",
    "NICKNAME",
    "STAMP_SAVE_GAP",
    "Settings",
    "SettingsStore",
)

log = logging.getLogger(__name__)

#: The settings key of the endpoint name.
ENDPOINT_NAME: Final = "endpoint_name"
#: The settings key of the nickname.
NICKNAME: Final = "nickname"
#: The settings key of the last sequence number the node signed a record or card with.
LAST_SEQ: Final = "last_seq"
#: The settings key of the last stamp of a hello this node's process sent (nanoseconds).
LAST_STAMP: Final = "last_hello_stamp"
#: Nanoseconds the last hello stamp may run ahead of the one saved before it is saved again while
#: the node runs (:meth:`Settings.keep_stamp`): half the responders' replay window, so that a node
#: that crashed starts its stamps within that window, not below it.
STAMP_SAVE_GAP: Final = REPLAY_WINDOW // 2
#: The settings file of earlier versions, folded into the database at the first start.
LEGACY_FILE: Final = "node.json"


class SettingsStore(Protocol):
    """Where settings are kept (the contact manager's settings table)."""

    def setting(self, key: str) -> str | None:
        """A saved setting, or None."""
        ...

    async def save_setting(self, key: str, value: str) -> None:
        """Save a setting."""
        ...


class Settings:
    """The settings of one node; see the module docstring."""

    def __init__(self, store: SettingsStore, data_dir: Path | None) -> None:
        self._store = store
        self._data_dir = data_dir
        self._unsaved: dict[str, str] = {}
        self._saved_stamp = 0

    async def load(self) -> None:
        """Migrate ``node.json`` if there is one, then save what was set before the node started."""
        if self._data_dir is not None:
            legacy = self._data_dir / LEGACY_FILE
            if legacy.exists():
                for key, value in _read_legacy(legacy).items():
                    if self._store.setting(key) is None:
                        await self._store.save_setting(key, value)
                os.replace(legacy, legacy.with_name(LEGACY_FILE + ".migrated"))
        self._saved_stamp = self.get_number(LAST_STAMP)
        STAMPS.at_least(self._saved_stamp)  # (this run's hellos go above the last run's)
        await self.flush()

    async def keep_stamp(self) -> None:
        """Save the last stamp this process gave a hello once it is :data:`STAMP_SAVE_GAP` past
        the one saved (a node that crashes does not save it as it stops, and one whose clock was
        then set back would start below stamps its peers took: its dials refused as replays)."""
        last = STAMPS.last
        if last - self._saved_stamp >= STAMP_SAVE_GAP:
            self._saved_stamp = last  # (a store that cannot be written is asked again 30 s later)
            self.set(LAST_STAMP, str(last))
            try:
                await self.flush()
            except (OSError, sqlite3.Error, PeerkitError) as exc:  # (the node goes on without it)
                log.warning("could not save the last hello stamp: %s", exc)

    async def stop(self) -> None:
        """Save every setting, and the last stamp this process gave a hello (see
        :mod:`peerkit.net.stamps`), as the node stops."""
        if STAMPS.last:
            self.set(LAST_STAMP, str(STAMPS.last))
        await self.flush()

    def get(self, key: str, default: str = "") -> str:
        """A setting (one set but not saved yet included)."""
        if key in self._unsaved:
            return self._unsaved[key]
        value = self._store.setting(key)
        return default if value is None else value

    def get_number(self, key: str) -> int:
        """A setting that holds a non-negative integer (of at most 19 digits); 0 when there is
        none or it holds something else."""
        value = self.get(key)
        return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else 0

    def set(self, key: str, value: str) -> None:
        """Set a setting; it is saved by the next :meth:`flush`."""
        self._unsaved[key] = value

    async def flush(self) -> None:
        """Save every setting set since the last flush."""
        while self._unsaved:
            key, value = next(iter(self._unsaved.items()))
            await self._store.save_setting(key, value)
            if self._unsaved.get(key) == value:
                del self._unsaved[key]


def _read_legacy(path: Path) -> dict[str, str]:
    # What an earlier version's node.json held that is still a setting.
    try:
        settings = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable settings file %s: %s", path, exc)
        return {}
    name = settings.get(ENDPOINT_NAME) if isinstance(settings, dict) else None
    return {ENDPOINT_NAME: name[:MAX_TEXT]} if isinstance(name, str) else {}
