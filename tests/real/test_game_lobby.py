"""examples/game_lobby: three machines of one LAN (network namespaces). alice and bob have the
game, carol runs peerkit without it. The lobby lists only the players who have the game, shows
alice's open game, bob joins it with the game's name in the invitation, they play tic-tac-toe
over a stream, and the lobby shows alice "in a game" meanwhile."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pexpect
import pytest
from terminals import PEERKIT, person

from peerkit.testing import NamespaceLan

LOBBY = Path(__file__).resolve().parents[2] / "examples" / "game_lobby" / "lobby.py"


def lobby(namespace: str, nickname: str) -> pexpect.spawn:
    child = pexpect.spawn(
        "ip", ["netns", "exec", namespace, sys.executable, str(LOBBY), nickname], encoding="utf-8", timeout=20
    )
    child.logfile_read = io.StringIO()  # everything it printed
    return child


@pytest.mark.timeout(120)
def test_players_find_each_other_by_game_and_play_a_game(lan: NamespaceLan, tmp_path: Path) -> None:
    bridge = lan.bridge()
    (ns_alice, _), (ns_bob, _), (ns_carol, _) = lan.host(bridge), lan.host(bridge), lan.host(bridge)
    carol_env = person(tmp_path / "carol", "carol")
    carol = pexpect.spawn(
        "ip",
        ["netns", "exec", ns_carol, *PEERKIT, "serve", "--discovery", "mdns", "--json"],
        env=carol_env,
        encoding="utf-8",
        timeout=20,
    )
    carol.expect('"event": "ready"|"id"')
    alice, bob = lobby(ns_alice, "alice"), lobby(ns_bob, "bob")
    try:
        alice.expect("bob is in the lobby")
        bob.expect("alice is in the lobby")
        alice.sendline("host friday")
        alice.expect("hosting friday")
        bob.expect("alice opened a game: friday")
        bob.sendline("players")
        bob.expect(r"player alice \(in the lobby\)")
        bob.sendline("join alice")
        alice.expect("bob joins your game")
        alice.expect("game on against bob: you are X, your move")
        bob.expect("game on against alice: you are O")
        bob.expect("alice's game is closed")
        bob.expect("alice is now in a game")
        for player, cell, other in [(alice, 1, bob), (bob, 4, alice), (alice, 2, bob), (bob, 5, alice)]:
            player.sendline(f"move {cell}")
            other.expect(f"played {cell}")
            other.expect("your move")
        alice.sendline("move 3")
        alice.expect("you win")
        bob.expect("alice wins")
        bob.expect("alice is now in the lobby")
        alice.expect("bob is now in the lobby")  # (each lobby asks for presence twice a second)
        for player in (alice, bob):
            player.sendline("players")
        alice.expect(r"player bob \(in the lobby\)")
        for player in (alice, bob):  # no game: never in the lobby
            assert "carol" not in player.logfile_read.getvalue()
        for player in (alice, bob):
            player.sendline("quit")
            player.expect(pexpect.EOF)
    finally:
        for child in (alice, bob, carol):
            child.terminate(force=True)
