"""The node's SQLite database: contacts and a few settings.

One connection, in WAL mode with ``synchronous=FULL``, owned by one thread of the store's own: every
call is a function run on that thread, so there is one writer and the event loop never waits on the
disk. Each write is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``); a process killed at any
point leaves the database as it was after its last commit.

The schema has a version (``PRAGMA user_version``) and a list of migrations, each run in its own
transaction; a database from a newer peerkit is refused rather than damaged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio

from peerkit.errors import StoreError

__all__ = ("DATABASE_FILE", "SCHEMA_VERSION", "Store", "StoreError")

log = logging.getLogger(__name__)

T = TypeVar("T")

DATABASE_FILE: Final = "peerkit.sqlite3"

_V1: Final = """
CREATE TABLE contacts (
    id BLOB PRIMARY KEY CHECK (length(id) = 32),
    nickname TEXT NOT NULL,
    display_name TEXT NOT NULL,
    email TEXT NOT NULL,
    endpoints TEXT NOT NULL,             -- JSON: [[host, port, name], ...]
    subscribe_allowed INTEGER NOT NULL,  -- SubscribePermission: 0 blocked, 1 allowed
    is_subscribed INTEGER NOT NULL,      -- 0 or 1
    added REAL NOT NULL,                 -- Unix time
    last_seen REAL,                      -- Unix time, NULL when never seen
    card BLOB                            -- the contact's own signed card, when it came from one
) WITHOUT ROWID;
CREATE INDEX contacts_subscribed ON contacts (is_subscribed) WHERE is_subscribed = 1;
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

#: The migrations, in order: ``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``.
MIGRATIONS: Final[tuple[str, ...]] = (_V1,)
#: The schema version this peerkit writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)


class Store:
    """The database of one data dir; see the module docstring.

    ``await store.open()`` starts its thread and migrates the schema; ``await store.aclose()``
    stops the thread and closes the database. :meth:`read` and :meth:`write` run a function
    ``fn(connection, *args)`` on the store's thread; :meth:`write` wraps it in a transaction.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, busy_timeout: float = 5.0) -> None:
        #: The database file; None for a database in memory (a node without a data dir).
        self.path = Path(path) if path is not None else None
        #: Seconds a write waits for another process's transaction before it fails with StoreError.
        self.busy_timeout = busy_timeout
        self._jobs: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any, BaseException | None], Any]] | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Open (or create) the database and bring its schema up to date.

        :raises StoreError: when it cannot be opened, is not a peerkit database, or is newer.
        """
        if self._thread is not None:
            raise RuntimeError("the store is already open")
        self._thread = threading.Thread(target=self._serve, name="peerkit-store", daemon=True)
        self._thread.start()
        try:
            await self._run(self._connect)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the database and stop the thread (waits for the call under way to finish)."""
        thread, self._thread = self._thread, None  # (no new job from now on)
        if thread is None:
            return
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._call(self._disconnect)
            self._jobs.put(None)
            thread.join(timeout=5)  # its last job (closing the database) is done: it exits at once

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on the store's thread and return its result.

        If cancelled, the caller stops waiting; the read still runs to its end.
        """
        return await self._run(fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` in one transaction on the store's thread.

        The transaction is committed when ``fn`` returns and rolled back when it raises. It is not
        cancellable: once started, the caller waits for the commit, so that what the caller does
        next agrees with the database.
        """
        with anyio.CancelScope(shield=True):
            result: T = await self._run(_transaction, fn, *args)
        return result

    # -- the thread ------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise StoreError(f"the database {self.path} is closed")
        return await self._call(fn, *args)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        # (The thread runs jobs until it takes None: this one after every job queued before it.)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio: the thread hands the result back through a trio token
            return await self._run_portable(fn, *args)
        future: asyncio.Future[T] = loop.create_future()

        # The thread takes jobs one at a time, in order, and settles the future on the loop.
        def hand_back(result: Any, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, result, error)

        self._jobs.put((fn, args, hand_back))
        return await future

    async def _run_portable(self, fn: Callable[..., T], *args: Any) -> T:
        import trio

        token = trio.lowlevel.current_trio_token()
        done = anyio.Event()
        outcome: list[Any] = []

        def settle(result: Any, error: BaseException | None) -> None:
            outcome[:] = [result, error]
            done.set()

        def hand_back(result: Any, error: BaseException | None) -> None:
            token.run_sync_soon(settle, result, error)

        self._jobs.put((fn, args, hand_back))
        await done.wait()
        result, error = outcome
        if error is not None:
            raise error
        return result  # type: ignore[no-any-return]

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, hand_back = job
            try:
                result = fn(self._connection, *args)
            except BaseException as exc:  # handed to the caller
                error = exc
                if isinstance(exc, sqlite3.Error):  # locked by another process, disk full, ...
                    error = StoreError(f"the database {self.path or '(in memory)'} failed: {exc}")
                    error.__cause__ = exc
                hand_back(None, error)
            else:
                hand_back(result, None)

    def _connect(self, _: None) -> None:
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            where = self.path if self.path is not None else ":memory:"
            connection = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from exc
        try:
            if self.path is not None:
                with contextlib.suppress(OSError):
                    os.chmod(self.path, 0o600)
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal" and self.path is not None:
                raise StoreError(f"the database {self.path} cannot use write-ahead logging (mode {mode})")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            _migrate(connection, self.path)
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise StoreError(f"the database {self.path} is not usable: {exc}") from exc
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _disconnect(self, connection: sqlite3.Connection | None) -> None:
        self._connection = None
        if connection is not None:
            connection.close()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _transaction(connection: sqlite3.Connection | None, fn: Callable[..., T], *args: Any) -> T:
    if connection is None:
        raise StoreError("the database is closed")
    connection.execute("BEGIN IMMEDIATE")  # an error (locked, ...) becomes a StoreError in _serve
    try:
        result = fn(connection, *args)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


def _migrate(connection: sqlite3.Connection, path: Path | None) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database {path} has schema version {version}, newer than this peerkit's "
            f"{SCHEMA_VERSION}; upgrade peerkit to use it"
        )
    if version == 0 and connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise StoreError(f"{path} holds tables but no peerkit schema version; it is not a peerkit database")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target - 1].split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {target}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        log.info("migrated %s to schema version %d", path, target)
