"""examples/chat: a room on loopback. alice hosts and invites bob, then carol; carol, late, gets
the history first; presence and leaving are shown to the others; the host's /quit closes the room."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

ROOM = Path(__file__).resolve().parents[2] / "examples" / "chat" / "room.py"


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def person(nickname: str, *args: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, [str(ROOM), nickname, *args], encoding="utf-8", timeout=15)


@pytest.mark.timeout(90)
def test_a_room_of_three_with_history_presence_and_leaving() -> None:
    places = {name: f"127.0.0.1:{port()}" for name in ("alice", "bob", "carol")}
    alice = person("alice", "--host", "--listen", places["alice"])
    bob = person("bob", "--listen", places["bob"])
    carol = person("carol", "--listen", places["carol"])
    try:
        alice.expect("alice's room is open")
        bob.expect("waits for an invitation")
        carol.expect("waits for an invitation")
        alice.sendline("/invite bob")  # not an address: said, and the room stays open
        alice.expect(r"\* 'bob' is not HOST:PORT")
        alice.sendline(f"/invite 127.0.0.1:{port()}")  # nothing listens there
        alice.expect(r"\* could not connect to 127\.0\.0\.1:\d+: connection refused\r\n")
        alice.sendline(f"/invite {places['bob']}")
        bob.expect(r"\* alice invites you: join alice's room")
        bob.expect(r"\* in the room: alice")
        alice.expect(r"\* bob joined")
        alice.sendline("hi bob")
        bob.expect(r"\[alice\] hi bob")
        bob.sendline("hello alice")
        alice.expect(r"\[bob\] hello alice")
        bob.sendline("\x1b[2Jboo")  # an escape sequence: shown as text, the screen not cleared
        alice.expect(r"\[bob\] \\x1b\[2Jboo")
        alice.sendline(f"/invite {places['carol']}")
        carol.expect(r"\[alice\] hi bob")  # the history, first
        carol.expect(r"\[bob\] hello alice")
        carol.expect(r"\* in the room: alice, bob")
        bob.expect(r"\* carol joined")
        bob.sendline("/away lunch")
        alice.expect(r"\* bob is away: lunch")
        carol.expect(r"\* bob is away: lunch")
        carol.sendline("bye all")
        bob.expect(r"\[carol\] bye all")
        carol.sendline("/quit")
        carol.expect(pexpect.EOF)
        alice.expect(r"\* carol left")
        bob.expect(r"\* carol left")
        alice.sendline("/who")
        alice.expect(r"\* in the room: alice, bob\r\n")
        alice.sendline("/quit")
        alice.expect(pexpect.EOF)
        bob.expect(r"\* the room is closed")
        bob.expect(pexpect.EOF)
    finally:
        for child in (alice, bob, carol):
            child.terminate(force=True)


def test_a_bad_listen_address_or_a_taken_port_is_said_in_a_line() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(ROOM), "bob", *args]
        quiet = subprocess.DEVNULL
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=30, stdin=quiet)

    wrong = run("--listen", "nowhere")
    assert wrong.returncode == 2
    assert "error: listen: 'nowhere' is not HOST:PORT" in wrong.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run("--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert busy.returncode == 1
    assert busy.stderr.startswith("room: cannot listen on 127.0.0.1:")
    assert "Traceback" not in wrong.stderr + busy.stderr
