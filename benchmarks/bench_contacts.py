"""``contacts``: the contact store with 10,000 contacts, and the memory of an idle subscription.

- add: ``node.contacts.add`` per second, 10,000 of them into an empty database in a temporary data
  dir, beside the bare database: the same rows inserted by ``sqlite3`` on the calling thread, one
  committed transaction each, with the same pragmas (WAL, ``synchronous=FULL``).
- get: ``node.contacts.get(id)`` latency (random ids, p50) beside a bare ``SELECT`` by key.
- list: ``node.contacts.list()`` of all 10,000 beside a bare ``SELECT`` of every row.
- memory per idle subscribed contact: with tracemalloc, the memory 200 subscriptions add (both
  ends: the watcher's state and channel, the publisher's subscriber, outbox and channel) divided by
  200, beside an idle plain anyio TCP connection with a reader task at each end. Each watcher is a
  node of its own, made before the measurement starts; tracing starts before anything is made, so
  that what a node's loops renew while measuring is not counted as growth. One subscription (and
  one plain connection) is made before the measurement: what a process makes once, at its first
  (the base32 table of the standard library's ``base64``, 44 KB, say) is not a subscription's.
  Counted, it made the figure depend more on what the process had run before: 21.1 KB alone and
  20.4 KB after the other benchmarks, for the same code; 20.8-20.9 KB alone without it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import random
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import anyio
import anyio.abc

from benchmarks.bench_fanout import watchers
from benchmarks.harness import Progress, Result
from peerkit.identity import Identity, PeerId
from peerkit.model import EndPoint, Scope
from peerkit.node import Node
from peerkit.proto.admission import AdmissionPolicy

NAME = "contacts"
CONTACTS = 10_000
GETS = 2_000
LISTS = 5
SUBSCRIPTIONS = 200
STEPS = 10 + 4 + 2


def _ids(n: int) -> list[PeerId]:
    return [Identity.from_seed(i.to_bytes(32, "big")).id for i in range(1, n + 1)]


def _bare_database(path: Path, *, threads: bool = False) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=not threads)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute(
        "CREATE TABLE contacts (id BLOB PRIMARY KEY, nickname TEXT, display_name TEXT, email TEXT,"
        " endpoints TEXT, subscribe_allowed INTEGER, is_subscribed INTEGER, added REAL, last_seen REAL,"
        " card BLOB) WITHOUT ROWID"
    )
    return connection


async def _store(n: int, progress: Progress) -> dict[str, float]:
    ids = _ids(n)
    endpoints = [EndPoint("10.0.0.9", 7000)]
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="peerkit-bench-") as tmp:
        async with Node(data_dir=Path(tmp) / "node", listen=("127.0.0.1", 0)) as node:
            start = time.perf_counter()
            for i, peer_id in enumerate(ids):
                await node.contacts.add(peer_id, nickname=f"n{i}", endpoints=endpoints)
                if i % (n // 10) == 0:
                    progress()
            figures["add"] = n / (time.perf_counter() - start)
            wanted = random.Random(1).choices(ids, k=GETS)
            times = []
            for peer_id in wanted:
                start = time.perf_counter()
                await node.contacts.get(peer_id)
                times.append(time.perf_counter() - start)
            figures["get"] = statistics.median(times) * 1e6
            progress()
            times = []
            for _ in range(LISTS):
                start = time.perf_counter()
                listed = await node.contacts.list()
                times.append(time.perf_counter() - start)
            if len(listed) != n:
                raise AssertionError(f"listed {len(listed)} contacts of {n}")
            figures["list"] = statistics.median(times) * 1000
            progress()

        bare = _bare_database(Path(tmp) / "bare.sqlite3", threads=True)
        endpoint_json = json.dumps([["10.0.0.9", 7000, ""]])
        start = time.perf_counter()
        for i, peer_id in enumerate(ids):
            bare.execute("BEGIN IMMEDIATE")
            bare.execute(
                "INSERT INTO contacts VALUES (?,?,?,?,?,?,?,?,?,?)",
                (bytes(peer_id), f"n{i}", "", "", endpoint_json, 1, 0, time.time(), None, None),
            )
            bare.execute("COMMIT")
        figures["bare add"] = n / (time.perf_counter() - start)
        progress()
        times = []
        for peer_id in wanted:
            start = time.perf_counter()
            bare.execute("SELECT * FROM contacts WHERE id=?", (bytes(peer_id),)).fetchone()
            times.append(time.perf_counter() - start)
        figures["bare get"] = statistics.median(times) * 1e6
        times = []
        for peer_id in wanted:
            start = time.perf_counter()
            await anyio.to_thread.run_sync(
                lambda key: bare.execute("SELECT * FROM contacts WHERE id=?", (key,)).fetchone(),
                bytes(peer_id),
            )
            times.append(time.perf_counter() - start)
        figures["thread get"] = statistics.median(times) * 1e6
        times = []
        for _ in range(LISTS):
            start = time.perf_counter()
            bare.execute("SELECT * FROM contacts ORDER BY added, id").fetchall()
            times.append(time.perf_counter() - start)
        figures["bare list"] = statistics.median(times) * 1000
        times = []
        for _ in range(LISTS):
            start = time.perf_counter()
            await anyio.to_thread.run_sync(
                lambda: bare.execute("SELECT * FROM contacts ORDER BY added, id").fetchall()
            )
            times.append(time.perf_counter() - start)
        figures["thread list"] = statistics.median(times) * 1000
        bare.close()
        progress()
    return figures


async def _subscription_memory(n: int, progress: Progress) -> tuple[float, float]:
    # Traced from before anything is made: an object made before tracing starts and replaced
    # while measuring (a node's loop renews its event on each turn) would count as growth.
    tracemalloc.start()
    async with contextlib.AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(  # (its subscribers all dial from 127.0.0.1)
            Node(
                identity=Identity.generate(),
                listen=("127.0.0.1", 0),
                admission=AdmissionPolicy(rate=10.0**7, burst=10**7),
            )
        )
        await publisher.sign_in(Scope.INTERNET)
        first, *contacts = [contact for _, contact in await watchers(stack, publisher, n + 1)]
        await first.subscribe()  # (outside the measure: what a process makes once, at its first)
        await anyio.sleep(1.5)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for contact in contacts:
            await contact.subscribe()
        await anyio.sleep(1.5)  # idle: past the 1 s in which a request's channel is watched
        gc.collect()
        ours = (tracemalloc.get_traced_memory()[0] - before) / n
        progress()
    tracemalloc.stop()

    tracemalloc.start()
    async with contextlib.AsyncExitStack() as stack:
        listener = await stack.enter_async_context(await anyio.create_tcp_listener(local_host="127.0.0.1"))
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg = await stack.enter_async_context(anyio.create_task_group())
        accepted: list[anyio.abc.SocketStream] = []
        all_in = anyio.Event()

        async def read(stream: anyio.abc.SocketStream) -> None:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                while True:
                    await stream.receive()

        async def serve(stream: anyio.abc.SocketStream) -> None:
            accepted.append(stream)
            if len(accepted) == n + 1:  # (the first, and the n measured)
                all_in.set()
            await read(stream)

        tg.start_soon(listener.serve, serve)
        clients = [await anyio.connect_tcp("127.0.0.1", port)]  # (the first, outside the measure)
        tg.start_soon(read, clients[0])
        await anyio.sleep(0.1)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            client = await anyio.connect_tcp("127.0.0.1", port)
            clients.append(client)
            tg.start_soon(read, client)
        with anyio.fail_after(30):
            await all_in.wait()
        await anyio.sleep(0.5)
        gc.collect()
        plain = (tracemalloc.get_traced_memory()[0] - before) / n
        for stream in [*clients, *accepted]:
            await stream.aclose()
        tg.cancel_scope.cancel()
        progress()
    tracemalloc.stop()
    return ours, plain


def run(progress: Progress, quick: bool = False) -> list[Result]:
    """The ``contacts`` figures."""
    n = 1000 if quick else CONTACTS
    f = anyio.run(_store, n, progress)
    ours, plain = anyio.run(_subscription_memory, 20 if quick else SUBSCRIPTIONS, progress)
    return [
        Result(NAME, f"contacts.add/s, {n:,} into an empty store", "/s", f["add"],
               "bare sqlite3 INSERT + COMMIT per row (WAL, synchronous=FULL)", f["bare add"],
               f["add"] / f["bare add"], None),
        Result(NAME, f"contacts.get p50 among {n:,} (ratio = bare / peerkit)", "us", f["get"],
               "bare sqlite3 SELECT by key", f["bare get"], f["bare get"] / f["get"], None),
        Result(NAME, f"contacts.get p50 among {n:,} (ratio = thread / peerkit)", "us", f["get"],
               "bare SELECT by key in anyio.to_thread", f["thread get"], f["thread get"] / f["get"], None),
        Result(NAME, f"contacts.list of {n:,} (ratio = bare / peerkit)", "ms", f["list"],
               "bare sqlite3 SELECT of every row", f["bare list"], f["bare list"] / f["list"], None),
        Result(NAME, f"contacts.list of {n:,} (ratio = thread / peerkit)", "ms", f["list"],
               "bare SELECT of every row in anyio.to_thread", f["thread list"], f["thread list"] / f["list"],
               None),
        Result(NAME, "memory per idle subscribed contact, both ends (ratio = plain / peerkit)", "B", ours,
               "an idle plain anyio TCP connection, a reader task at each end", plain, plain / ours, None),
    ]  # fmt: skip
