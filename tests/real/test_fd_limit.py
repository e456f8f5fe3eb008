"""A node under ``ulimit -n 256`` (a real process, real sockets on loopback): one peer opens
streams until refused and strangers open connections until refused, and still a legitimate peer's
invitations all succeed; the node neither spins nor floods its stderr."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from peerkit import Identity, InvitationResponse, Node, ProtocolError
from peerkit.model import Application

pytestmark = [pytest.mark.anyio, pytest.mark.network]

AGENT = Path(__file__).with_name("fd_agent.py")
CHAT = Application(id=__import__("uuid").UUID("6f1c2a4e-0000-4000-8000-0000000000aa"), description="chat")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
async def test_at_256_descriptors_the_node_refuses_cleanly_and_serves_the_legitimate(tmp_path: Path) -> None:
    errors = tmp_path / "stderr"
    with errors.open("wb") as stderr:
        agent = subprocess.Popen(  # noqa: ASYNC220 (started once; read in a thread)
            [sys.executable, str(AGENT), "--nofile", "256"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert agent.stdout is not None
        line = await anyio.to_thread.run_sync(agent.stdout.readline)
        port = json.loads(line)["port"]
        async with contextlib.AsyncExitStack() as stack:
            alice = await stack.enter_async_context(
                Node(nickname="alice", identity=Identity.generate(), listen=("127.0.0.1", 0))
            )
            carol = await stack.enter_async_context(
                Node(nickname="carol", identity=Identity.generate(), listen=("127.0.0.1", 0))
            )
            for node in (alice, carol):
                await node.register_application(CHAT)
            # One peer opens streams until refused.
            peer = await alice.peer_at("127.0.0.1", port)
            opened = 0
            with pytest.raises(ProtocolError, match="limit: too many streams from one peer"):  # noqa: PT012
                for _ in range(300):
                    await stack.enter_async_context(await peer.open_stream(CHAT))
                    opened += 1
            assert 2 <= opened < 200
            # Strangers open connections (one byte each, then nothing) until refused.
            refused = 0
            for n in range(400):
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port, local_host=f"127.0.0.{2 + n % 50}")
                except OSError:
                    refused += 1
                    continue
                await stack.enter_async_context(stream)
                with contextlib.suppress(anyio.BrokenResourceError):
                    await stream.send(b"\0")
            before = cpu_seconds(agent.pid)
            # A legitimate peer's invitations all succeed meanwhile.
            to_bob = await carol.peer_at("127.0.0.1", port)
            answers = [await to_bob.invite(CHAT, timeout=5) for _ in range(20)]
            assert answers == [InvitationResponse.ACCEPTED] * 20
            await anyio.sleep(1)
            spent = cpu_seconds(agent.pid) - before
        assert agent.poll() is None  # still running
    finally:
        agent.stdin.close()  # type: ignore[union-attr]
        await anyio.to_thread.run_sync(agent.wait, 10)
        agent.stdout.close()  # type: ignore[union-attr]
    assert spent < 1.0  # no spin: an idle second and twenty invitations, not a busy loop
    text = errors.read_text()
    assert "Traceback" not in text
    assert len(text) < 4000, text[:2000]  # refusals are counted per interval, not logged each
