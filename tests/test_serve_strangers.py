"""What ``peerkit serve`` prints about strangers' invitations: a window's worth, then a count (a
stranger inviting in a loop cannot fill the terminal or the log); contacts' as they come."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

import peerkit
from peerkit.serving import STRANGER_LINES, STRANGER_WINDOW, StrangerLines

PEERKIT = [sys.executable, "-c", "from peerkit.cli import main; main()"]
GAME = peerkit.Application(id=uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1fff"))


def test_a_windows_lines_are_said_and_the_rest_summed_up_when_it_turns() -> None:
    said: list[tuple[str, dict[str, Any]]] = []
    quiet = StrangerLines(lambda text, **fields: said.append((text, fields)), lines=2, window=10)
    for n in range(5):
        quiet.say(f"line {n}", event="invitation")
    quiet.say("declined", event="stranger_declined")
    assert [text for text, _ in said] == ["line 0", "line 1"]
    quiet.turn()
    text, fields = said[-1]
    assert text == (
        "4 more lines about strangers' invitations in the last 10 s not shown "
        "(invitation: 3, stranger_declined: 1): at most 2 are, each 10 s"
    )
    assert fields == {"event": "not_shown", "count": 4, "events": {"invitation": 3, "stranger_declined": 1}}
    quiet.say("line 5", event="invitation")  # (a new window: said again)
    quiet.turn()  # (nothing unsaid: no summary)
    assert [text for text, _ in said[3:]] == ["line 5"]
    assert (STRANGER_LINES, STRANGER_WINDOW) == (20, 10.0)  # (the limits page says so)


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PEERKIT, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.network
@pytest.mark.timeout(120)
def test_a_stranger_inviting_in_a_loop_is_summed_up_and_a_contacts_invitation_still_shown(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PEERKIT_PORT_MAPPING": "off"}
    bob = {**env, "PEERKIT_DATA_DIR": str(tmp_path / "bob")}
    alice = {**env, "PEERKIT_DATA_DIR": str(tmp_path / "alice")}
    for who, person in (("bob", bob), ("alice", alice)):
        assert run("id", "--create", "--nickname", who, env=person).returncode == 0
    card = run("contacts", "export-card", env=alice).stdout.strip()
    assert run("contacts", "add-card", card, env=bob).returncode == 0
    server = subprocess.Popen(
        [*PEERKIT, "serve", "--json", "--listen", "127.0.0.1:0", "--discovery", "memory"],
        stdout=subprocess.PIPE,
        text=True,
        env=bob,
    )
    assert server.stdout is not None
    port = json.loads(server.stdout.readline())["port"]

    async def invite() -> None:
        async with peerkit.Node(
            nickname="mallory", identity=peerkit.Identity.generate(), listen=("127.0.0.1", 0)
        ) as mallory:
            await mallory.register_application(GAME)
            peer = await mallory.peer_at("127.0.0.1", port)
            for _ in range(100):
                assert await peer.invite(GAME, "spam", timeout=5) is peerkit.InvitationResponse.DECLINED
        async with peerkit.Node(data_dir=tmp_path / "alice", listen=("127.0.0.1", 0)) as node:
            await node.register_application(GAME)
            peer = await node.peer_at("127.0.0.1", port)
            assert await peer.invite(GAME, "a game?", timeout=5) is peerkit.InvitationResponse.DECLINED

    try:
        anyio.run(invite)
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines()]
    shown = [e for e in events if e["event"] == "invitation" and e["nickname"] == "mallory"]
    unsaid = sum(e["events"]["invitation"] for e in events if e["event"] == "not_shown")
    assert len(shown) + unsaid == 100  # (each said or counted: the last count said as serve stops)
    assert len(shown) <= 2 * STRANGER_LINES  # (one window, or two when the test straddles a turn)
    assert not any(e["trusted"] for e in shown)
    contact = [e for e in events if e["event"] == "invitation" and e["message"] == "a game?"]
    assert [(e["nickname"], e["trusted"]) for e in contact] == [("alice", True)]
    assert events[-1]["event"] == "stopping"
