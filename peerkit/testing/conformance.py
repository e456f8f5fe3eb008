"""The conformance check every discovery provider should pass (``check_discovery_provider``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from peerkit.discovery.base import (
    Announcement,
    Directory,
    DiscoveryProvider,
    DiscoverySession,
    NearbyRecord,
    read_record,
)
from peerkit.discovery.base import make_record as _make_record
from peerkit.errors import InvalidRecord, PeerUnreachable
from peerkit.identity import PeerId
from peerkit.model import ChangeType, EndPoint, seconds_text
from peerkit.testing.tasks import running_tasks

__all__ = ("POOL_THREADS", "check_discovery_provider")

#: Worker threads of anyio's pool started before the check counts threads (see
#: :func:`check_discovery_provider`).
POOL_THREADS: Final = 4


class _SuiteNode:
    # One simulated node of the suite: an identity, an endpoint, a directory and a provider.
    def __init__(self, suite: _Suite, index: int, provider: DiscoveryProvider) -> None:
        from peerkit.identity import Identity

        self.suite = suite
        self.identity = Identity.generate()
        self.endpoint = suite.endpoints[index]
        self.provider = provider
        self.events: list[tuple[ChangeType, NearbyRecord]] = []
        self.changed = anyio.Event()
        self.locator = os.urandom(32)
        self.directory = Directory(
            self.identity.id,
            self._on_change,
            fetch_record=suite.fetch,
            signer=self.identity,
            locator_key=self._locator_key,
        )
        self.other: _SuiteNode | None = None
        self.session: DiscoverySession | None = None
        self.scope = anyio.CancelScope()
        self.stopped = anyio.Event()
        self.seq = 0

    async def _locator_key(self, peer_id: PeerId | None) -> bytes | None:
        # Each suite node is the other's contact: it holds the other's locator key.
        await anyio.lowlevel.checkpoint()
        if peer_id is None:
            return self.locator
        other = self.other
        return other.locator if other is not None and other.identity.id == peer_id else None

    async def follow(self) -> None:
        # Resolve mode: what a provider that resolves (and does not hear) tells of the other node,
        # reported to this node's directory as a hearing provider would report it.
        other = self.other
        assert other is not None
        assert self.session is not None
        name = self.provider.name
        while True:
            located = False
            for envelope in await self.session.resolve(other.identity.id):
                try:
                    endpoints = read_record(envelope)[3]
                except InvalidRecord:
                    continue
                if endpoints:
                    self.directory.found(envelope, source=name)
                    located = True
            if not located and self.directory.get(other.identity.id) is not None:
                self.directory.lost(other.identity.id, source=name)  # withdrawn
            await anyio.sleep(0.2)

    def _on_change(self, change: ChangeType, record: NearbyRecord) -> None:
        self.events.append((change, record))
        self.changed.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with self.scope:

                def ready(session: DiscoverySession) -> None:
                    self.session = session
                    task_status.started()

                status: Any = type("Status", (), {"started": staticmethod(ready)})()
                await self.provider.run(self.directory, task_status=status)
        finally:
            self.suite.published.pop(self.endpoint, None)
            self.stopped.set()

    def announcement(self, nickname: str, *, envelope: bytes | None = None) -> Announcement:
        self.seq += 1
        if envelope is None:
            envelope = _make_record(
                self.identity,
                self.seq,
                nickname=nickname,
                endpoint_name="",
                endpoints=[(self.endpoint.host, self.endpoint.port)],
            )
        return Announcement(
            id=self.identity.id,
            nickname=nickname,
            port=self.endpoint.port,
            hosts=(self.endpoint.host,),
            envelope=envelope,
        )

    async def publish(self, announcement: Announcement) -> None:
        assert self.session is not None
        self.suite.published[self.endpoint] = announcement.envelope
        await self.session.publish(announcement)

    async def withdraw(self) -> None:
        assert self.session is not None
        self.suite.published.pop(self.endpoint, None)
        await self.session.withdraw()

    async def expect(
        self, change: ChangeType, what: str, check: Callable[[NearbyRecord], bool]
    ) -> NearbyRecord:
        with anyio.move_on_after(self.suite.timeout):
            while True:
                for index, (seen, record) in enumerate(self.events):
                    if seen is change and check(record):
                        del self.events[: index + 1]
                        return record
                self.changed = anyio.Event()
                await self.changed.wait()
        raise AssertionError(
            f"{self.provider.name}: {what}: no {change.name} event within {seconds_text(self.suite.timeout)} "
            f"(events seen: {[(c.name, r.nickname) for c, r in self.events]})"
        )


class _Suite:
    def __init__(self, timeout: float, settle: float) -> None:
        self.timeout = timeout
        self.settle = settle
        self.endpoints = [EndPoint("127.0.0.1", 47001), EndPoint("127.0.0.1", 47002)]
        self.published: dict[EndPoint, bytes] = {}

    async def fetch(self, host: str, port: int, peer_id: PeerId | None) -> bytes:
        # What a node would answer to a record request at host:port.
        await anyio.lowlevel.checkpoint()
        envelope = self.published.get(EndPoint(host, port))
        if envelope is None:
            raise PeerUnreachable(f"nothing answers at {EndPoint(host, port)}")
        return envelope


async def check_discovery_provider(
    factory: Callable[[list[EndPoint]], DiscoveryProvider],
    *,
    timeout: float = 10.0,
    settle: float = 1.0,
    resolve: bool = False,
) -> None:
    """Check that a discovery provider behaves as peerkit needs; raises ``AssertionError`` if not.

    Two simulated nodes each run a provider from ``factory`` (called with the endpoints of the
    *other* node, for providers that need addresses, such as ``static``) and check, in order:
    publish -> ADDED on the other side; a new record -> UPDATED; forged records (a bad signature,
    another id's record, garbage) are not believed; an older record (a replay) is not believed;
    withdraw -> DELETED; stopping the provider -> DELETED on the other side, and the stopped
    providers leave no task, thread, socket or file behind.

    With ``resolve``, for providers that find peers by resolving them rather than by hearing them
    (the DHT): each node is the other's contact (it holds the other's locator key), what
    ``session.resolve`` returns of the other node stands for what the provider hears (nothing, or
    only records without addresses: withdrawn), and a stopped provider's record is not expected to vanish from
    the other side (a DHT keeps it until it expires).

    :param timeout: seconds each step may take.
    :param settle: seconds to wait before concluding that something was (rightly) not believed.

    The idle worker threads of anyio's pool (``anyio.to_thread``, ``anyio.Path``) are not counted
    as left running: the check starts :data:`POOL_THREADS` of them first, and a provider that
    uses at most that many at once leaves the count as it found it.
    """
    import threading

    def open_files() -> int | None:  # sockets included; Linux only
        try:
            return len(os.listdir("/proc/self/fd"))
        except OSError:
            return None

    suite = _Suite(timeout, settle)
    async with anyio.create_task_group() as warm:  # the pool's workers, kept by anyio when idle
        ready = threading.Barrier(POOL_THREADS)

        async def occupy() -> None:  # each worker waits for the others: that many are made
            await anyio.to_thread.run_sync(ready.wait)

        for _ in range(POOL_THREADS):
            warm.start_soon(occupy)
    tasks_before = running_tasks()
    threads_before = threading.active_count()
    files_before = open_files()
    a = _SuiteNode(suite, 0, factory([suite.endpoints[1]]))
    b = _SuiteNode(suite, 1, factory([suite.endpoints[0]]))
    a_id = a.identity.id
    a.other, b.other = b, a

    def of_a(nickname: str) -> Callable[[NearbyRecord], bool]:
        return lambda record: record.id == a_id and record.nickname == nickname

    async with anyio.create_task_group() as tg:
        await tg.start(b.run)
        await tg.start(a.run)
        if resolve:
            tg.start_soon(b.follow)
        # publish -> found
        await a.publish(a.announcement("alice"))
        first = await b.expect(ChangeType.ADDED, "publish", of_a("alice"))
        assert b.directory.get(a_id) is not None, "the directory does not hold what was added"
        assert first.endpoints, "a peer was found without an endpoint"
        # update -> updated
        await a.publish(a.announcement("alice2"))
        await b.expect(ChangeType.UPDATED, "update", of_a("alice2"))
        await anyio.sleep(settle)  # let the provider finish what a rename starts (mDNS: a new instance)
        # bad records are ignored: a broken signature, a record of another id under a's id, garbage
        # (published under the same nickname, so that only the record changes)
        broken = bytearray(a.announcement("alice2").envelope)
        broken[-1] ^= 1
        await a.publish(a.announcement("alice2", envelope=bytes(broken)))
        mallory = _SuiteNode(suite, 0, a.provider)
        forged = mallory.announcement("alice2").envelope
        await a.publish(a.announcement("alice2", envelope=forged))
        await a.publish(a.announcement("alice2", envelope=b"\xa2garbage"))
        await anyio.sleep(settle)
        held = b.directory.get(a_id)
        assert held is not None, f"{a.provider.name}: a forged record made a peer disappear"
        assert held.nickname == "alice2", f"{a.provider.name}: a forged record was believed"
        # a replay (an older seq) is ignored, and good records still pass afterwards
        old = a.announcement("alice2")
        newer = a.announcement("alice2")
        await a.publish(newer)
        await b.expect(
            ChangeType.UPDATED, "update after forgeries", lambda r: r.id == a_id and r.seq == a.seq
        )
        await a.publish(old)
        await anyio.sleep(settle)
        held = b.directory.get(a_id)
        assert held is not None, f"{a.provider.name}: a replayed record made a peer disappear"
        assert held.seq == a.seq, f"{a.provider.name}: a replayed record was believed"
        # withdraw -> lost
        await a.withdraw()
        await b.expect(ChangeType.DELETED, "withdraw", lambda record: record.id == a_id)
        # publish again, then stop -> lost, and the provider is gone
        await a.publish(a.announcement("alice5"))
        await b.expect(ChangeType.ADDED, "publish after withdraw", of_a("alice5"))
        a.scope.cancel()
        with anyio.move_on_after(timeout):
            await a.stopped.wait()
        assert a.stopped.is_set(), (
            f"{a.provider.name}: run() did not return within {seconds_text(timeout)} of cancellation"
        )
        if not resolve:
            await b.expect(ChangeType.DELETED, "stop", lambda record: record.id == a_id)
        b.scope.cancel()
        tg.cancel_scope.cancel()  # (the follower, in resolve mode)
    await anyio.lowlevel.checkpoint()
    assert running_tasks() <= tasks_before, f"{a.provider.name}: tasks were left running"
    assert threading.active_count() <= threads_before, f"{a.provider.name}: threads were left running"
    files_after = open_files()
    if files_before is not None and files_after is not None:
        assert files_after <= files_before, f"{a.provider.name}: sockets or files were left open"
