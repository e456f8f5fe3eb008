"""Run an asyncio-only discovery provider under trio, on an event loop thread of its own.

zeroconf's API is asyncio's, so :class:`~peerkit.MdnsDiscovery` needs an asyncio loop. A node
running on trio runs such a provider (one whose ``asyncio_only`` attribute is true) through
:func:`run_in_asyncio_thread`: the provider runs in a thread with its own asyncio loop; what it
reports to its sink is handed to the trio thread in order, and the node's calls on its session
(publish, withdraw, resolve) are run on the provider's loop. Cancelling the trio task stops the
provider and joins its thread, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import anyio
import anyio.abc

from peerkit.discovery.base import (
    Announcement,
    DiscoveryProvider,
    DiscoverySession,
    DiscoverySink,
    NearbyRecord,
)
from peerkit.errors import DiscoveryError
from peerkit.identity import PeerId
from peerkit.model import EndPoint
from peerkit.net.transport import on_asyncio

__all__ = ("needs_asyncio_thread", "run_in_asyncio_thread")

T = TypeVar("T")

#: Seconds a stopped provider's thread may take to finish before the node stops waiting for it.
STOP_TIMEOUT = 10.0


def needs_asyncio_thread(provider: DiscoveryProvider) -> bool:
    """Whether ``provider`` runs on asyncio only and the running loop is not asyncio's."""
    return bool(getattr(provider, "asyncio_only", False)) and not on_asyncio()


class _ThreadSink:
    # The sink the provider sees on its own thread: every call runs in the trio thread.
    def __init__(self, sink: DiscoverySink, token: Any) -> None:
        self._sink = sink
        self._token = token
        self._local_id = sink.local_id
        #: Where the node listens (a value: read once, on the provider's thread).
        self.listen_host: str | None = getattr(sink, "listen_host", None)

    @property
    def local_id(self) -> PeerId:
        return self._local_id

    def found(
        self,
        envelope: bytes,
        *,
        source: str,
        endpoints: Sequence[EndPoint] = (),
        claimed_id: PeerId | bytes | None = None,
        origin: str | None = None,
    ) -> NearbyRecord | None:
        import trio

        found = self._sink.found
        call = functools.partial(
            found, envelope, source=source, endpoints=endpoints, claimed_id=claimed_id, origin=origin
        )
        return trio.from_thread.run_sync(call, trio_token=self._token)

    def lost(self, peer_id: PeerId, *, source: str) -> None:
        import trio

        trio.from_thread.run_sync(
            functools.partial(self._sink.lost, peer_id, source=source), trio_token=self._token
        )

    async def fetch_record(self, host: str, port: int, peer_id: PeerId | None = None) -> bytes:
        import trio

        call = functools.partial(
            trio.from_thread.run, self._sink.fetch_record, host, port, peer_id, trio_token=self._token
        )
        return await asyncio.get_running_loop().run_in_executor(None, call)


class _ThreadSession:
    # The session the node sees on the trio side: every call runs on the provider's loop.
    def __init__(self, session: DiscoverySession, loop: asyncio.AbstractEventLoop, token: Any) -> None:
        self._session = session
        self._loop = loop
        self._token = token

    async def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        # In an empty context: the task must not inherit trio's context (sniffio would say "trio").
        future = contextvars.Context().run(asyncio.run_coroutine_threadsafe, coroutine, self._loop)
        done = anyio.Event()

        def wake(_: concurrent.futures.Future[T]) -> None:
            self._token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    async def publish(self, announcement: Announcement) -> None:
        await self._on_loop(self._session.publish(announcement))

    async def withdraw(self) -> None:
        await self._on_loop(self._session.withdraw())

    async def resolve(self, peer_id: PeerId) -> list[bytes]:
        return await self._on_loop(self._session.resolve(peer_id))


async def run_in_asyncio_thread(
    provider: DiscoveryProvider,
    sink: DiscoverySink,
    *,
    task_status: anyio.abc.TaskStatus[DiscoverySession],
) -> None:
    """Run ``provider.run(sink)`` on an asyncio loop in a thread of its own, from trio.

    Like ``provider.run``: reports the session through ``task_status`` and runs until cancelled.

    :raises DiscoveryError: when the provider fails before it started (its error is the cause).
    """
    import trio

    token = trio.lowlevel.current_trio_token()
    started = anyio.Event()
    finished = anyio.Event()
    box: dict[str, Any] = {}

    def on_started(session: DiscoverySession) -> None:
        box["session"] = session
        started.set()

    class _Status:
        def started(self, session: DiscoverySession) -> None:
            token.run_sync_soon(on_started, session)

    async def main() -> None:
        box["loop"] = asyncio.get_running_loop()
        box["task"] = asyncio.current_task()
        await provider.run(_ThreadSink(sink, token), task_status=_Status())  # type: ignore[arg-type]

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the trio side
            box["error"] = exc
        finally:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finished.set)

    thread = threading.Thread(target=thread_main, name=f"peerkit-{provider.name}", daemon=True)
    thread.start()
    try:
        async with anyio.create_task_group() as tg:

            async def until_finished() -> None:
                await finished.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(until_finished)
            await started.wait()
            task_status.started(_ThreadSession(box["session"], box["loop"], token))
        error = box.get("error")
        if error is not None and not isinstance(error, asyncio.CancelledError):
            raise DiscoveryError(f"discovery provider {provider.name} failed: {error}") from error
        if "session" not in box:
            raise DiscoveryError(f"discovery provider {provider.name} ended before it started")
    finally:
        with anyio.CancelScope(shield=True):
            loop, task = box.get("loop"), box.get("task")
            if loop is not None and task is not None and not finished.is_set():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to cancel
                    loop.call_soon_threadsafe(task.cancel)
            with anyio.move_on_after(STOP_TIMEOUT):
                await finished.wait()
            if finished.is_set():
                thread.join()
