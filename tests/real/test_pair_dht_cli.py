"""``peerkit pair --discovery dht:HOST:PORT`` in two processes: they meet through a DHT of their
own on loopback (no mDNS, no address given), and become each other's contacts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import anyio.abc
import pytest
from conftest import loopback_dht
from terminals import PEERKIT, person

pytestmark = [pytest.mark.anyio, pytest.mark.network]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (the commands run in processes of their own: one backend here is enough)


class TextLines:
    """The lines of a process's output, however the pipe cuts it."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            self._buffer += await self._stream.receive()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


async def test_two_commands_pair_through_the_dht(tmp_path: Path) -> None:
    alice = person(tmp_path / "alice", "alice")
    bob = person(tmp_path / "bob", "bob")
    async with loopback_dht(6) as dht:
        host, port = dht[0].address
        through = ["--no-lan", "--discovery", f"dht:{host}:{port}", "--listen", "127.0.0.1:0", "--json"]
        waiting = await anyio.open_process([*PEERKIT, "pair", *through], env=alice, stderr=subprocess.PIPE)
        try:
            assert waiting.stdout is not None
            lines = TextLines(waiting.stdout)
            with anyio.fail_after(30):
                code = json.loads(await lines.next())["code"]
            assert int(code.split("-")[0]) >= 100
            joining = await anyio.run_process([*PEERKIT, "pair", code, *through], env=bob, check=False)
            assert joining.returncode == 0, joining.stderr.decode()
            assert json.loads(joining.stdout)["nickname"] == "alice"
            with anyio.fail_after(30):
                paired = json.loads(await lines.next())
                assert await waiting.wait() == 0
            assert (paired["event"], paired["nickname"]) == ("paired", "bob")
        finally:
            if waiting.returncode is None:
                waiting.kill()
                await waiting.wait()
            await waiting.aclose()
