"""``peerkit chat`` as people use it: two terminals (pseudo-terminals driven with pexpect), one
waiting for an invitation and one inviting; lines, typing, presence and the end of a chat."""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from terminals import NOBODY, PEERKIT, exit_status, person, terminal

ACCEPT_CHAT = ["--accept", "chat", "--accept-from", "anyone", "--json"]


def waiting(env: dict[str, str], *options: str) -> tuple[pexpect.spawn, int]:
    """``peerkit chat`` waiting for an invitation on loopback, and its port."""
    child = terminal("chat", "--listen", "127.0.0.1:0", "--discovery", NOBODY, *options, env=env)
    child.expect(r"at 127\.0\.0\.1:(\d+); Ctrl-C stops")
    return child, int(child.match.group(1))


@pytest.mark.network
def test_a_chat_between_two_terminals_shows_lines_typing_presence_and_its_end(tmp_path: Path) -> None:
    alice = person(tmp_path / "alice", "alice")
    bob = person(tmp_path / "bob", "bob")
    a, port = waiting(alice)
    b = terminal("chat", f"127.0.0.1:{port}", "--message", "got a minute?", env=bob)
    try:
        a.expect(r"bob \(\w{4}-\w{4}-\w{4}-\w{4}\) invites you to chat: 'got a minute\?'\. Accept\? \[y/N\]")
        a.send("y\r")
        a.expect("chatting with bob")
        b.expect("chatting with alice")
        b.expect("online")
        b.send("hel")  # typing, not yet sent
        a.expect("bob is typing to you")
        b.send("lo alice\r")
        a.expect("bob: hello alice")
        a.send("/away at lunch\r")
        a.expect("you are now away: at lunch")
        b.expect("alice is now away: at lunch")
        a.send("x" * 2001 + "\r")
        a.expect("not sent: a chat line is at most 2000 characters")
        a.send("see you\r")
        b.expect("alice: see you")
        b.sendcontrol("d")  # Ctrl-D on an empty line: bob leaves
        b.expect("you left the chat")
        a.expect("bob left the chat")
        assert exit_status(b) == 0
        assert exit_status(a) == 0
    finally:
        a.terminate(force=True)
        b.terminate(force=True)


@pytest.mark.network
def test_a_declined_chat_exits_3_and_ctrl_c_withdraws_an_invitation_or_ends_a_chat(tmp_path: Path) -> None:
    alice = person(tmp_path / "alice", "alice")
    bob = person(tmp_path / "bob", "bob")
    a, port = waiting(alice)
    try:
        declined = terminal("chat", f"127.0.0.1:{port}", env=bob)
        a.expect(r"Accept\? \[y/N\]")
        a.send("n\r")
        declined.expect("alice declined")
        assert exit_status(declined) == 3
        withdrawn = terminal("chat", f"127.0.0.1:{port}", env=bob)
        a.expect(r"Accept\? \[y/N\]")
        withdrawn.sendcontrol("c")  # Ctrl-C before the answer: the invitation is withdrawn
        withdrawn.expect("stopped: the invitation to alice is withdrawn")
        assert exit_status(withdrawn) == 0
        a.expect("bob withdrew the invitation")  # (said at once: the question is no longer open)
        accepted = terminal("chat", f"127.0.0.1:{port}", env=bob)
        a.expect(r"Accept\? \[y/N\]")
        a.send("yes\r")
        accepted.expect("chatting with alice")
        a.expect("chatting with bob")
        accepted.sendcontrol("c")  # Ctrl-C: the chat ends cleanly on both sides
        a.expect("bob left the chat")
        assert exit_status(a) == 0
        assert exit_status(accepted) == 0
    finally:
        a.terminate(force=True)


def peer_id(env: dict[str, str]) -> str:
    """The full id of the person of ``env``."""
    shown = subprocess.run([*PEERKIT, "id", "--json"], env=env, capture_output=True, text=True, check=True)
    return str(json.loads(shown.stdout)["id"])


@pytest.mark.network
def test_waiting_from_one_peer_declines_the_others_without_asking(tmp_path: Path) -> None:
    alice = person(tmp_path / "alice", "alice")
    bob = person(tmp_path / "bob", "bob")
    carol = person(tmp_path / "carol", "carol")
    a, port = waiting(alice, "--yes", "--from", peer_id(bob))  # (anyone by full id: no contact)
    try:
        assert "waiting for an invitation to chat from " in a.before
        stranger = terminal("chat", f"127.0.0.1:{port}", env=carol)
        stranger.expect("alice declined")
        assert exit_status(stranger) == 3
        a.expect(r"declined carol \(\S+\): not a peer --from names")
        b = terminal("chat", f"127.0.0.1:{port}", env=bob)
        b.expect("chatting with alice")
        a.expect("chatting with bob")
        b.sendcontrol("d")
        a.expect("bob left the chat")
        assert exit_status(b) == 0
        assert exit_status(a) == 0
    finally:
        a.terminate(force=True)
    both = subprocess.run(
        [*PEERKIT, "chat", "127.0.0.1:9", "--from", "bob"],
        env=alice,
        capture_output=True,
        text=True,
        check=False,
    )
    assert both.returncode == 2
    assert "--from: is for waiting to be invited (without PEER)" in " ".join(
        both.stderr.replace("│", " ").split()
    )


@contextlib.contextmanager
def serving_chat(env: dict[str, str], *options: str) -> Iterator[subprocess.Popen[str]]:
    """``peerkit serve --accept chat --json`` on loopback (its stdin and stdout are pipes), stopped
    with SIGTERM at the end, when it must exit 0."""
    server = subprocess.Popen(
        [*PEERKIT, "serve", "--listen", "127.0.0.1:0", "--discovery", NOBODY, *options, *ACCEPT_CHAT],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0
        assert server.stdin is not None
        assert server.stdout is not None
        server.stdin.close()
        server.stdout.close()


@pytest.mark.network
@pytest.mark.timeout(90)
def test_serve_accept_chat_prints_the_chat_and_says_the_lines_of_its_stdin(tmp_path: Path) -> None:
    sam = person(tmp_path / "sam", "sam")
    bob = person(tmp_path / "bob", "bob")
    b = None
    with serving_chat(sam) as server:
        assert server.stdin is not None
        assert server.stdout is not None

        def event(name: str) -> dict[str, object]:
            assert server.stdout is not None
            for line in server.stdout:
                found: dict[str, object] = json.loads(line)
                if found["event"] == name:
                    return found
            raise AssertionError(f"serve ended before a {name!r} event")

        try:
            port = event("listening")["port"]
            b = terminal("chat", f"127.0.0.1:{port}", env=bob)
            b.expect("chatting with sam")
            assert event("chat_started")["nickname"] == "bob"
            b.send("hi sam\r")
            assert event("chat")["line"] == "hi sam"
            server.stdin.write("hello bob\n")
            server.stdin.flush()
            b.expect("sam: hello bob")
            b.sendcontrol("d")
            assert event("chat_ended")["how"] == "bye"
            assert exit_status(b) == 0
        finally:
            if b is not None:
                b.terminate(force=True)


#: What a hostile peer puts in its nickname and lines: escape sequences that would clear the
#: screen, set the window title, recolour what follows and move to the start of the line, rich
#: markup (a closing tag that matches nothing), and a right-to-left override.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x1b[31m[/b]\r\u202eok"


@pytest.mark.network
def test_a_peers_nickname_and_lines_reach_the_terminal_as_text(tmp_path: Path) -> None:
    mallory = person(tmp_path / "mallory", "mallory")
    bob = person(tmp_path / "bob", "bob")
    shown = io.StringIO()
    b = None
    with serving_chat(mallory, "--nickname", f"m{HOSTILE}") as server:
        assert server.stdin is not None
        assert server.stdout is not None
        try:
            port = json.loads(server.stdout.readline())["port"]
            b = terminal("chat", f"127.0.0.1:{port}", env=bob)
            b.logfile_read = shown
            escaped = re.escape(r"\x1b[2J\x1b]0;pwned\x07\x1b[31m[/b]\r\u202eok")
            b.expect(f"chatting with m{escaped}")
            server.stdin.write(f"hi{HOSTILE}\n")
            server.stdin.flush()
            b.expect(f"m{escaped}: hi{escaped}")
            b.sendcontrol("d")
            assert exit_status(b) == 0
        finally:
            if b is not None:
                b.terminate(force=True)
    output = shown.getvalue()
    for raw in ("\x1b[2J", "\x1b]0;", "\x07", "\x1b[31m", "\u202e"):
        assert raw not in output, f"{raw!r} reached the terminal"
