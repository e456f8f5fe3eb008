"""Registered applications (``peerkit apps``) and their launch by ``peerkit serve``: the registry
with its limits and the system registry under it, and a small program launched by an invitation,
which reads it with ``peerkit.launch_info()``, answers it, and streams to the inviter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

import peerkit
from peerkit.apps import MAX_REGISTERED, Registered, Registry
from peerkit.wellknown import well_known_id

PEERKIT = [sys.executable, "-c", "from peerkit.cli import main; main()"]
PROGRAM = str(Path(__file__).parent / "apps" / "launched_program.py")


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PEERKIT, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def bob(tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PEERKIT_DATA_DIR": str(tmp_path / "bob"),
        "PEERKIT_PORT_MAPPING": "off",
        "PEERKIT_SYSTEM_APPS": str(tmp_path / "system-apps.json"),
    }
    assert run("id", "--create", "--nickname", "bob", env=env).returncode == 0
    return env


def test_register_list_and_unregister_with_the_system_registry_under_yours(
    tmp_path: Path, bob: dict[str, str]
) -> None:
    system = {"version": 1, "applications": [
        {"name": "whiteboard", "id": str(uuid.UUID(int=1)), "path": "/usr/bin/system-board"},
        {"name": "lobby", "id": str(uuid.UUID(int=2)), "path": "/usr/bin/lobby", "arguments": "--fast"},
    ]}  # fmt: skip
    (tmp_path / "system-apps.json").write_text(json.dumps(system))
    program = tmp_path / "opt" / "board"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    added = run("apps", "register", "whiteboard", str(program), "--arguments", "--room 'a b'", env=bob)
    assert added.returncode == 0, added.stderr
    assert added.stdout.endswith(f": {program} --room 'a b'\n")  # one argument: shown as one
    rows = json.loads(run("apps", "list", "--json", env=bob).stdout)
    assert [(r["name"], r["source"]) for r in rows] == [("whiteboard", "user"), ("lobby", "system")]
    assert rows[0]["id"] == str(well_known_id("whiteboard"))  # (named: the same UUID for everyone)
    table = run("apps", env={**bob, "COLUMNS": "80"}).stdout  # (alone: the list)
    assert rows[0]["id"] in table  # (whole, on one line: people copy it)
    assert f"{program} --room 'a b'" in run("apps", env={**bob, "COLUMNS": "250"}).stdout
    registry = Registry(tmp_path / "bob")
    assert registry.find("whiteboard").command() == [str(program), "--room", "a b"]  # type: ignore[union-attr]
    system_only = run("apps", "unregister", "lobby", env=bob)
    assert system_only.returncode == 2
    assert "registered for all users" in " ".join(system_only.stderr.replace("│", " ").split())
    kept = run("apps", "unregister", "whiteboard", env=bob)  # asked, and no answer: kept
    assert (kept.returncode, kept.stderr) == (1, "not unregistered\n")
    assert run("apps", "unregister", "whiteboard", "--yes", env=bob).returncode == 0
    rows = json.loads(run("apps", "list", "--json", env=bob).stdout)
    assert [(r["name"], r["path"]) for r in rows] == [
        ("whiteboard", "/usr/bin/system-board"),
        ("lobby", "/usr/bin/lobby"),
    ]
    bad = run("apps", "register", "White Board", "/x", env=bob)
    assert bad.returncode == 2
    assert "is not an application name" in " ".join(bad.stderr.replace("│", " ").split())
    quotes = run("apps", "register", "q", str(program), "--arguments", "'unbalanced", env=bob)
    assert quotes.returncode == 2
    # The program is checked as it is registered, not when an invitation comes to launch it.
    (tmp_path / "notes.txt").write_text("not a program")
    for args, said in [
        (["q", "/nowhere/board"], "no program at /nowhere/board"),
        (
            ["q", str(tmp_path / "notes.txt")],
            "notes.txt is not executable: make it so (chmod +x), or register",
        ),
        (["q", "no-such-program-here"], "no program called 'no-such-program-here' on PATH: give its path"),
        (["chat", str(program)], "chat is peerkit's own application ('peerkit serve --accept chat')"),
        (["q", str(program), "--id", str(well_known_id("files"))], "files is peerkit's own application"),
    ]:
        refused = run("apps", "register", *args, env={**bob, "COLUMNS": "400"})
        assert refused.returncode == 2, args
        assert said in " ".join(refused.stderr.replace("│", " ").split()), refused.stderr
    relative = subprocess.run(
        [*PEERKIT, "apps", "register", "rel", "opt/board"],
        check=False,
        env=bob,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert relative.returncode == 0, relative.stderr
    assert registry.find("rel").path == str(program)  # type: ignore[union-attr]  # (serve runs elsewhere)
    assert run("apps", "register", "shell", "sh", env=bob).returncode == 0
    assert registry.find("shell").path == "sh"  # type: ignore[union-attr]  # (looked up on PATH)
    registry.unregister("rel")
    registry.unregister("shell")
    for n in range(MAX_REGISTERED):
        registry.register(Registered(f"app{n}", uuid.UUID(int=100 + n), "/bin/true"))
    with pytest.raises(ValueError, match="holds 64 applications"):
        registry.register(Registered("one-more", uuid.UUID(int=99), "/bin/true"))
    (tmp_path / "system-apps.json").write_text("{not json")
    broken = run("apps", "list", env=bob)
    assert broken.returncode == 1
    assert "system-apps.json is not a registry of applications" in broken.stderr


def test_launch_info_is_none_when_not_launched_by_an_invitation() -> None:
    assert peerkit.launch_info() is None


def serving_board(
    tmp_path: Path, bob: dict[str, str], *accept: str
) -> tuple[subprocess.Popen[str], int, Path]:
    """'board' registered (the test program, which writes what it was launched for to the record)
    and 'peerkit serve --accept board --json' with ``accept``'s options: the server, its port, and
    where the record goes."""
    record = tmp_path / "launched.json"
    registered = run(
        "apps", "register", "board", sys.executable, "--arguments", f"{PROGRAM} {record}", env=bob
    )
    assert registered.returncode == 0, registered.stderr
    serving = ["serve", "--listen", "127.0.0.1:0", "--discovery", "static:127.0.0.1:9", "--accept", "board"]
    server = subprocess.Popen(
        [*PEERKIT, *serving, *accept, "--json"],
        env=bob,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, json.loads(server.stdout.readline())["port"], record


@pytest.mark.network
@pytest.mark.timeout(120)
def test_serve_launches_a_registered_program_that_answers_and_streams_to_the_inviter(
    tmp_path: Path, bob: dict[str, str]
) -> None:
    board = peerkit.Application(id=well_known_id("board"))
    server, port, record = serving_board(tmp_path, bob, "--accept-from", "anyone")
    try:

        async def alice() -> tuple[list[peerkit.InvitationResponse], bytes, str]:
            async with peerkit.Node(
                nickname="alice", identity=peerkit.Identity.generate(), listen=("127.0.0.1", 0)
            ) as node:
                await node.register_application(board)
                got = anyio.Event()
                heard: list[bytes] = []

                async def on_stream(stream: peerkit.AppStream) -> None:
                    heard.append(b"".join([chunk async for chunk in stream]))
                    got.set()

                node.add_stream_handler(board, on_stream)
                peer = await node.peer_at("127.0.0.1", port)
                first = await peer.invite(board, "draw with me", b"board-7", timeout=30)
                with anyio.fail_after(30):
                    await got.wait()
                second = await peer.invite(board, "please decline", timeout=30)
                return [first, second], heard[0], str(peer.id)

        answers, heard, bob_id = anyio.run(alice)
        assert answers == [peerkit.InvitationResponse.ACCEPTED, peerkit.InvitationResponse.DECLINED]
        assert heard == f"hello from {peerkit.PeerId.parse(bob_id).fingerprint}".encode()  # (bob's own id)
        info = json.loads(record.read_text())
        assert info["message"] == "please decline"  # (the second launch's record)
        assert (info["nickname"], info["data"], info["data_dir"]) == ("alice", "", str(tmp_path / "bob"))
        assert info["application"] == str(board.id)
        assert info["endpoint"][0] == "127.0.0.1"
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines()]
    launched = [e["response"] for e in events if e["event"] == "launched"]
    assert launched == ["accepted", "declined"]
    # Where the program's output went: said as it starts, and with a failed exit.
    log = str(tmp_path / "bob" / "logs" / "board.log")
    assert {e["output"] for e in events if e["event"] in ("launched", "exited")} == {log}


@pytest.mark.network
@pytest.mark.timeout(120)
def test_serve_launches_nothing_for_a_stranger_unless_told_anyone(
    tmp_path: Path, bob: dict[str, str]
) -> None:
    board = peerkit.Application(id=well_known_id("board"))
    server, port, record = serving_board(tmp_path, bob)  # (contacts alone: the default)
    try:

        async def stranger() -> peerkit.InvitationResponse:
            async with peerkit.Node(identity=peerkit.Identity.generate(), listen=("127.0.0.1", 0)) as node:
                await node.register_application(board)
                peer = await node.peer_at("127.0.0.1", port)
                return await peer.invite(board, "draw with me", timeout=30)

        assert anyio.run(stranger) is peerkit.InvitationResponse.DECLINED
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert "stranger_declined" in events
    assert "launched" not in events
    assert not record.exists()


@pytest.mark.network
@pytest.mark.timeout(120)
def test_serve_in_a_terminal_asks_before_it_launches(tmp_path: Path, bob: dict[str, str]) -> None:
    import threading

    import pexpect

    record = tmp_path / "launched.json"
    args = f"{PROGRAM} {record}"
    assert run("apps", "register", "board", sys.executable, "--arguments", args, env=bob).returncode == 0
    board = peerkit.Application(id=well_known_id("board"))
    serve = pexpect.spawn(
        PEERKIT[0],
        [*PEERKIT[1:], "serve", "--listen", "127.0.0.1:0", "--discovery", "static:127.0.0.1:9"],
        env=bob,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    answers: list[peerkit.InvitationResponse] = []

    async def alice(port: int) -> None:
        async with peerkit.Node(
            nickname="alice", identity=peerkit.Identity.generate(), listen=("127.0.0.1", 0)
        ) as node:
            await node.register_application(board)
            node.add_stream_handler(board, lambda stream: stream.receive())
            peer = await node.peer_at("127.0.0.1", port)
            answers.append(await peer.invite(board, "shall we draw?", timeout=30))
            answers.append(await peer.invite(board, "and now?", timeout=30))

    try:
        ansi = r"(?:\x1b\[[0-9;]*m)*"  # (rich's colours on a terminal)
        serve.expect(rf"at {ansi}127\.0\.0\.1{ansi}:{ansi}(\d+)")
        inviting = threading.Thread(target=anyio.run, args=(alice, int(serve.match.group(1))))
        inviting.start()
        serve.expect(r"alice invites you to board: 'shall we draw\?'\. Launch it\? \[y/N\]")
        serve.send("y\r")
        serve.expect(r"for alice: accepted")
        serve.expect(r"Launch it\? \[y/N\]")
        serve.send("n\r")
        serve.expect(rf"invitation from alice {ansi}\({ansi}\S+{ansi}\){ansi} to board: {ansi}'and now\?'")
        inviting.join(30)
        assert answers == [peerkit.InvitationResponse.ACCEPTED, peerkit.InvitationResponse.DECLINED]
        assert json.loads(record.read_text())["message"] == "shall we draw?"  # (launched once)
    finally:
        serve.kill(signal.SIGTERM)
        serve.expect(pexpect.EOF)
        serve.close()
