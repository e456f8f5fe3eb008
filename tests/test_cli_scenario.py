"""Two people at two terminals, as the README tells them: pair by a code read aloud, chat a few
lines by name, send a file by name. Each terminal is a pseudo-terminal driven with pexpect; alice
keeps one port (as she would open one in a firewall), and nothing uses mDNS on the host."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pexpect
import pytest
from terminals import NOBODY, exit_status, person, terminal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.network
@pytest.mark.timeout(180)
def test_pair_by_code_then_chat_and_send_a_file_by_name(tmp_path: Path) -> None:
    alice = person(tmp_path / "alice", "alice")
    bob = person(tmp_path / "bob", "bob")
    port = free_port()
    at = f"127.0.0.1:{port}"
    spawned: list[pexpect.spawn] = []
    try:
        # 1. alice gets a code and reads it to bob, who types it.
        a = terminal("pair", "--no-lan", "--listen", at, env=alice)
        spawned.append(a)
        a.expect(r"your code: (?:\x1b\[[0-9;]*m)?(\d+-[a-z]+-[a-z]+)")  # (bold on a terminal)
        code = a.match.group(1)
        b = terminal("pair", code, "--at", at, env=bob)
        spawned.append(b)
        b.expect(r"paired with alice \((\w{4}-\w{4}-\w{4}-\w{4})\)")
        a.expect(r"paired with bob \((\w{4}-\w{4}-\w{4}-\w{4})\)")
        assert exit_status(a) == 0
        assert exit_status(b) == 0
        # 2. bob chats with alice by name.
        a = terminal("chat", "--listen", at, "--discovery", NOBODY, env=alice)
        spawned.append(a)
        a.expect("Ctrl-C stops")
        b = terminal("chat", "alice", "--message", "hi!", env=bob)
        spawned.append(b)
        a.expect(r"bob \(\S+\) invites you to chat: 'hi!'\. Accept\? \[y/N\]")
        a.send("y\r")
        b.expect("chatting with alice")
        a.expect("chatting with bob")
        b.send("did you get the photos?\r")
        a.expect("bob: did you get the photos\\?")
        a.send("not yet, send them\r")
        b.expect("alice: not yet, send them")
        b.send("/quit\r")
        a.expect("bob left the chat")
        assert exit_status(b) == 0
        assert exit_status(a) == 0
        # 3. bob sends alice a file by name; she accepts it at the prompt.
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(os.urandom(500_000))
        inbox = tmp_path / "inbox"
        a = terminal("receive", "--listen", at, "--discovery", NOBODY, "--into", str(inbox), env=alice)
        spawned.append(a)
        a.expect("Ctrl-C stops")
        b = terminal("send", "alice", str(photo), env=bob)
        spawned.append(b)
        a.expect(r"bob \(\S+\) offers 1 file \(500\.0 kB\): photo\.jpg\. Save into .*\? \[y/N\]")
        a.send("y\r")
        a.expect("saved .*photo.jpg")
        b.expect("alice has 1 of 1 files")
        assert exit_status(a) == 0
        assert exit_status(b) == 0
        assert (inbox / "photo.jpg").read_bytes() == photo.read_bytes()
    finally:
        for child in spawned:
            child.terminate(force=True)
