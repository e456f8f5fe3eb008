"""The tutorial (docs/tutorial.md), run as it is written: two machines (network namespaces) on one
LAN pair by a code found over mDNS, chat and send a file; then on two networks joined by a router
(no multicast between them), with a firewall on bob's machine that lets only his port in, they
reach each other through the address in bob's card."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pexpect
import pytest
from conftest import needed
from terminals import exit_status, person, printed, terminal

from peerkit.testing import NamespaceLan

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"
PORT = 7000


def run(namespace: str, *command: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, *command], check=True, capture_output=True)


def commands(text: str) -> list[str]:
    """The commands the tutorial's console blocks show, without the prompt."""
    shown = []
    for block in text.split("```console\n")[1:]:
        for line in block.split("```", 1)[0].splitlines():
            if "$ " in line:
                shown.append(line.split("$ ", 1)[1])
    return shown


def test_the_tutorial_shows_the_commands_this_test_runs() -> None:
    shown = commands(TUTORIAL.read_text())
    for command in [
        "peerkit pair",
        "peerkit pair 7-guitar-walrus",
        "peerkit chat",
        "peerkit chat bob",
        "peerkit near --once",
        "peerkit receive --into ~/Downloads",
        "peerkit send bob report.pdf",
        "peerkit contacts export-card --address 203.0.113.5:7000 --out bob.card",
        "peerkit contacts add-card bob.card",
        "peerkit contacts export-card --out alice.card",
        "peerkit contacts add-card alice.card",
        "peerkit chat --listen 7000",
        "peerkit receive --listen 7000",
    ]:
        assert command in shown, command
    assert "sudo nft add rule inet filter input tcp dport 7000 accept" in TUTORIAL.read_text()


def heard(bob: pexpect.spawn, pattern: str, alice: pexpect.spawn) -> None:
    # bob shows ``pattern`` (alice's invitation); if not in time, the failure shows what alice's
    # terminal said meanwhile (still looking for bob, or stuck later).
    try:
        bob.expect(pattern)
    except pexpect.TIMEOUT:
        pytest.fail(f"bob showed no {pattern!r} in {bob.timeout} s; alice's terminal: {printed(alice)!r}")


def chat(alice: pexpect.spawn, bob: pexpect.spawn) -> None:
    heard(bob, r"alice \(\S+\) invites you to chat\. Accept\? \[y/N\]", alice)
    bob.send("y\r")
    alice.expect("chatting with bob")
    bob.expect("chatting with alice")
    alice.send("hello from alice\r")
    bob.expect("alice: hello from alice")
    bob.send("hi alice\r")
    alice.expect("bob: hi alice")
    alice.send("/quit\r")
    bob.expect("alice left the chat")
    assert exit_status(alice) == 0
    assert exit_status(bob) == 0


def send(alice: pexpect.spawn, bob: pexpect.spawn, report: Path, downloads: Path) -> None:
    heard(bob, r"alice \(\S+\) offers 1 file .*report\.pdf\. Save into .*\? \[y/N\]", alice)
    bob.send("y\r")
    bob.expect("saved .*report.pdf")
    alice.expect("bob has 1 of 1 files")
    assert exit_status(bob) == 0
    assert exit_status(alice) == 0
    assert (downloads / "report.pdf").read_bytes() == report.read_bytes()


@pytest.mark.timeout(240)
def test_the_tutorial_on_two_machines(lan: NamespaceLan, tmp_path: Path) -> None:
    # 1. Install and make an identity (the install is this checkout). Each machine's commands
    # find people near them with mDNS, as they do for a user (the suite's default is nobody).
    needed("tutorial test", None if shutil.which("nft") else "nft (apt-get install nftables)")
    alice = person(tmp_path / "alice", "alice")
    bob = person(tmp_path / "bob", "bob")
    for env in (alice, bob):
        del env["PEERKIT_DISCOVERY"]
    report = tmp_path / "report.pdf"
    report.write_bytes(os.urandom(300_000))
    office = lan.bridge()
    alice_ns, _ = lan.host(office)
    bob_ns, (bob_address,) = lan.host(office)
    spawned: list[pexpect.spawn] = []

    def at(namespace: str, env: dict[str, str], *args: str) -> pexpect.spawn:
        child = terminal(*args, env=env, namespace=namespace)
        spawned.append(child)
        return child

    try:
        # 2. A pairing code, found over mDNS on the LAN.
        b = at(bob_ns, bob, "pair")
        b.expect(r"your code: (?:\x1b\[[0-9;]*m)?(\d+-[a-z]+-[a-z]+)")
        code = b.match.group(1)
        # Where alice's machine can dial bob's: his address on the LAN, not loopback.
        b.expect(r"\(you are (\w{4}-\w{4}-\w{4}-\w{4}) at ([\d.]+):\d+, \[fd00:")
        bob_fingerprint, shown = b.match.group(1), b.match.group(2)
        assert shown == bob_address
        a = at(alice_ns, alice, "pair", code)
        a.expect(rf"paired with bob \({bob_fingerprint}\)(.*?)(\w{{4}}-\w{{4}}-\w{{4}}-\w{{4}})\.")
        assert "Check that bob sees your fingerprint" in " ".join(a.match.group(1).split())
        alice_fingerprint = a.match.group(2)
        b.expect(rf"paired with alice \({alice_fingerprint}\)")
        assert exit_status(a) == 0
        assert exit_status(b) == 0

        # 3. Chat: bob waits, alice invites him by name.
        b = at(bob_ns, bob, "chat")
        b.expect("Ctrl-C stops")
        # Who is near: bob, a contact, by the name he has in alice's contacts.
        near = at(alice_ns, alice, "near", "--once")
        near.expect(rf"bob\s+│\s+bob\s+│\s+{bob_fingerprint}")
        assert exit_status(near) == 0
        chat(at(alice_ns, alice, "chat", "bob"), b)

        # 4. Send a file.
        downloads = tmp_path / "bob-downloads"
        b = at(bob_ns, bob, "receive", "--into", str(downloads))
        b.expect("Ctrl-C stops")
        send(at(alice_ns, alice, "send", "bob", str(report)), b, report, downloads)

        # 5. Two networks: a router between them, bob's firewall open on his port only.
        internet, home = lan.bridge(), lan.bridge()
        router, (router_office, router_home) = lan.host(internet, home)
        run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        alice_ns, _ = lan.host(internet, gateway=router_office)
        bob_ns, (bob_address,) = lan.host(home, gateway=router_home)
        lan.firewall(bob_ns)
        run(
            bob_ns,
            "nft",
            "add",
            "rule",
            "inet",
            "host_firewall",
            "input",
            "tcp",
            "dport",
            str(PORT),
            "accept",
        )
        card, their_card = tmp_path / "bob.card", tmp_path / "alice.card"
        for namespace, env, args in [
            (
                bob_ns,
                bob,
                ("contacts", "export-card", "--address", f"{bob_address}:{PORT}", "--out", str(card)),
            ),
            (alice_ns, alice, ("contacts", "add-card", str(card))),
            (alice_ns, alice, ("contacts", "export-card", "--out", str(their_card))),
            (bob_ns, bob, ("contacts", "add-card", str(their_card))),
        ]:
            child = at(namespace, env, *args)
            assert exit_status(child) == 0, child.before
        b = at(bob_ns, bob, "chat", "--listen", str(PORT))
        b.expect("Ctrl-C stops")
        chat(at(alice_ns, alice, "chat", "bob"), b)
        downloads = tmp_path / "bob-downloads-at-home"
        b = at(bob_ns, bob, "receive", "--listen", str(PORT), "--into", str(downloads))
        b.expect("Ctrl-C stops")
        send(at(alice_ns, alice, "send", "bob", str(report)), b, report, downloads)
    finally:
        for child in spawned:
            child.terminate(force=True)
