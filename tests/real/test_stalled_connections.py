"""Stalled connections from strangers cannot shut a legitimate peer out (real sockets on loopback).

The stalled connections come from other loopback addresses (127.0.0.2 and up), as strangers on
other hosts would; the legitimate peer dials from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest

from peerkit import Identity, connect, listen
from peerkit.proto.admission import AdmissionPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.network]


@contextlib.asynccontextmanager
async def stalled(host: str, port: int, sources: list[str], each: int) -> AsyncIterator[int]:
    """``each`` connections from every source address, each sending one byte and then nothing."""
    async with contextlib.AsyncExitStack() as stack:
        opened = 0
        for source in sources:
            for _ in range(each):
                stream = await anyio.connect_tcp(host, port, local_host=source)
                await stack.enter_async_context(stream)
                with contextlib.suppress(anyio.BrokenResourceError):
                    await stream.send(b"\0")
                opened += 1
        await anyio.sleep(0.1)  # the listener has seen them all
        yield opened


async def legitimate(host: str, port: int, alice: Identity, bob: Identity) -> float:
    start = anyio.current_time()
    with anyio.fail_after(5):
        async with await connect(host, port, alice, peer_id=bob.id, timeout=5) as channel:
            assert channel.peer.id == bob.id
    return anyio.current_time() - start


@pytest.mark.parametrize(
    ("sources", "each"),
    [(["127.0.0.2"], 200), ([f"127.0.0.{i}" for i in range(2, 52)], 4)],
    ids=["200 from one address", "200 from 50 addresses"],
)
async def test_stalled_connections_do_not_shut_out_a_legitimate_peer(
    alice: Identity, bob: Identity, sources: list[str], each: int, caplog: pytest.LogCaptureFixture
) -> None:
    policy = AdmissionPolicy(max_pending=64, max_per_source=16)
    caplog.set_level(logging.WARNING, logger="peerkit.net.channel")
    async with await listen(bob, admission=policy) as listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, lambda channel: anyio.lowlevel.checkpoint())
        host, port = listener.address
        async with stalled(host, port, sources, each) as opened:
            assert opened == 200
            assert listener.admission.pending <= 64
            took = [await legitimate(host, port, alice, bob) for _ in range(5)]
            assert max(took) < 2.0
        tg.cancel_scope.cancel()
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refusals) <= 3  # counted per interval, not a line per connection
