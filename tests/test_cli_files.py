"""``peerkit send``, ``peerkit receive`` and ``serve --accept files`` as people use them, each in
its own process: folders, a prompt for a name taken, a transfer killed and resumed, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pexpect
import pytest
from terminals import NOBODY, PEERKIT, exit_status, person, terminal


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PEERKIT, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def receiving(env: dict[str, str], *options: str) -> tuple[pexpect.spawn, int]:
    child = pexpect.spawn(
        PEERKIT[0],
        [*PEERKIT[1:], "receive", "--listen", "127.0.0.1:0", "--discovery", NOBODY, *options],
        env=env,
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    child.expect(r"at 127\.0\.0\.1:(\d+); Ctrl-C stops")
    return child, int(child.match.group(1))


def sending(env: dict[str, str], port: int, *args: str) -> subprocess.Popen[str]:
    """``peerkit send`` to the receiver at ``port`` on loopback, its output read as text."""
    return subprocess.Popen(
        [*PEERKIT, "send", f"127.0.0.1:{port}", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def a_name_taken(tmp_path: Path) -> Path:
    """A folder to receive into, holding a ``plan.txt`` ("old plan") other than the one in
    ``tmp_path`` to send ("new plan")."""
    (tmp_path / "plan.txt").write_text("new plan")
    into = tmp_path / "into"
    into.mkdir()
    (into / "plan.txt").write_text("old plan")
    return into


def random_file(path: Path, mib: int) -> Path:
    """A file of ``mib`` MiB of random bytes at ``path``, written a MiB at a time."""
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def people(tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    return person(tmp_path / "alice", "alice"), person(tmp_path / "bob", "bob")


@pytest.mark.network
def test_a_folder_and_a_file_are_sent_and_a_taken_name_is_asked_about(
    tmp_path: Path, people: tuple[dict[str, str], dict[str, str]]
) -> None:
    alice, bob = people
    src = tmp_path / "src"
    (src / "trip" / "day1").mkdir(parents=True)
    (src / "trip" / "day1" / "photo.jpg").write_bytes(os.urandom(2_000_000))
    (src / "trip" / "notes.txt").write_text("notes")
    (src / "plan.txt").write_text("new plan")
    os.mkfifo(src / "trip" / "pipe")  # (what a folder holds that is not sent is said)
    (src / "trip" / "day1" / "back").symlink_to(src / "trip")
    into = tmp_path / "into"
    into.mkdir()
    (into / "plan.txt").write_text("old plan")
    receiver, port = receiving(alice, "--into", str(into))
    try:
        sender = sending(bob, port, str(src / "trip"), str(src / "plan.txt"), "--message", "pics", "--json")
        receiver.expect(r"bob \(\S+\) offers 3 files \(2\.0 MB\): trip, plan\.txt: 'pics'\. Save into")
        receiver.send("y\r")
        receiver.expect(
            r"plan\.txt exists: \[r\]ename the new one, \[o\]verwrite, or \[s\]kip \(.*\)\? \[r\]"
        )
        receiver.send("o")  # (typed, not yet entered: no progress bar is drawn over it)
        receiver.expect(pexpect.TIMEOUT, timeout=0.5)
        assert receiver.before.strip() == "o", receiver.before
        receiver.send("\r")
        receiver.expect("received 2.0 MB")
        assert exit_status(receiver) == 0
        out, err = sender.communicate(timeout=30)
        assert sender.returncode == 0, err
        outcome = json.loads(out)  # (stdout holds the JSON alone: the bars go to stderr)
        assert (outcome["answer"], outcome["received"], outcome["failed"]) == ("accepted", 3, [])
        assert outcome["left_out"] == [
            [str(src / "trip" / "pipe"), "a named pipe"],
            [str(src / "trip" / "day1" / "back"), "a link to a folder, not followed"],
        ]
        assert f"not sent: {src / 'trip' / 'pipe'} (a named pipe)" in err
        # The bar's last state has the speed (the files went in one piece: rich alone says "?").
        assert re.search(r"2\.0/2\.0 MB +\d[\d.]* [kMG]?B/s", err), err
    finally:
        receiver.terminate(force=True)
    assert digest(into / "trip" / "day1" / "photo.jpg") == digest(src / "trip" / "day1" / "photo.jpg")
    assert (into / "trip" / "notes.txt").read_text() == "notes"
    assert (into / "plan.txt").read_text() == "new plan"  # overwritten: asked, and answered so
    assert not list(into.rglob("*.peerkit-part"))


@pytest.mark.network
def test_a_declined_offer_exits_3_and_bad_input_is_one_line(
    tmp_path: Path, people: tuple[dict[str, str], dict[str, str]]
) -> None:
    alice, bob = people
    (tmp_path / "f.txt").write_text("f")
    receiver, port = receiving(alice)
    try:
        sender = sending(bob, port, str(tmp_path / "f.txt"))
        receiver.expect(r"offers 1 file \(1 byte\): f\.txt\. Save into .*\? \[y/N\]")
        receiver.send("n\r")
        out, _ = sender.communicate(timeout=30)
        assert sender.returncode == 3
        assert out == "alice declined\n"  # (in a pipe, no bar leaves a blank line behind)
    finally:
        receiver.terminate(force=True)
    many = tmp_path / "many"
    for n in range(25):
        (many / f"empty{n:02}").mkdir(parents=True)
    (many / "f.txt").write_text("f")
    told = run("send", "127.0.0.1:9", str(many), env=bob)  # (told before it dials: nobody there)
    assert told.stdout.count("not sent: ") == 20
    assert "not sent: " + str(many / "empty19") + " (an empty folder)" in told.stdout
    assert "and 5 more not sent (--json lists them all)" in told.stdout
    missing = run("send", "127.0.0.1:9", str(tmp_path / "nope.txt"), env=bob)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr == f"error: {tmp_path / 'nope.txt'}: no such file or folder\n"
    nobody = run("send", "carol", str(tmp_path / "f.txt"), env=bob)
    assert nobody.returncode == 2
    assert "no contact is called 'carol'" in " ".join(nobody.stderr.replace("│", " ").split())
    into_a_file = run("receive", "--into", str(tmp_path / "f.txt" / "in"), env={**bob, "COLUMNS": "400"})
    assert into_a_file.returncode == 2
    said = " ".join(into_a_file.stderr.replace("│", " ").split())
    assert f"cannot save files into {tmp_path / 'f.txt' / 'in'}: {tmp_path / 'f.txt'} is a file" in said
    no_identity = run("receive", "--data-dir", str(tmp_path / "typo"), env=bob)
    assert no_identity.returncode == 1
    assert "no identity in" in no_identity.stderr


@pytest.mark.network
def test_receive_yes_from_a_contact_takes_its_offer_alone(
    tmp_path: Path, people: tuple[dict[str, str], dict[str, str]]
) -> None:
    alice, bob = people
    carol = person(tmp_path / "carol", "carol")
    card = run("contacts", "export-card", env=bob)
    assert run("contacts", "add-card", card.stdout.strip(), env=alice).returncode == 0
    (tmp_path / "f.txt").write_text("from bob")
    (tmp_path / "g.txt").write_text("from carol")
    into = tmp_path / "into"
    into.mkdir()
    receiver, port = receiving(alice, "--yes", "--from", "bob", "--into", str(into))
    try:
        stranger = run("send", f"127.0.0.1:{port}", str(tmp_path / "g.txt"), env=carol)
        assert stranger.returncode == 3, stranger.stderr
        assert "alice declined" in stranger.stdout
        receiver.expect(r"declined carol \(\S+\): not a peer --from names")
        sender = run("send", f"127.0.0.1:{port}", str(tmp_path / "f.txt"), env=bob)
        assert sender.returncode == 0, sender.stderr
        receiver.expect(r"bob \(\S+\) offers 1 file \(8 bytes\): f\.txt\. Save into .*\? \[y/N\] y \(--yes\)")
        receiver.expect("received 8 bytes")
        assert exit_status(receiver) == 0
    finally:
        receiver.terminate(force=True)
    assert [p.name for p in into.iterdir()] == ["f.txt"]
    nobody = run("receive", "--from", "dave", env={**alice, "COLUMNS": "400"})
    assert nobody.returncode == 2
    said = " ".join(nobody.stderr.replace("│", " ").split())
    assert "Invalid value for --from: no contact is called 'dave'" in said
    assert "anyone else by its full id (52 characters)" in said


def _partial_with_bytes(into: Path, timeout: float = 30) -> Path:
    # The partial file of the transfer under way into ``into``, once it holds bytes.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for partial in into.glob(".*.peerkit-part") if into.exists() else ():
            if partial.stat().st_size > 0:
                return partial
        time.sleep(0.001)
    raise AssertionError("the transfer never started")


@pytest.mark.network
@pytest.mark.timeout(120)
def test_a_transfer_killed_halfway_resumes_when_sent_again(
    tmp_path: Path, people: tuple[dict[str, str], dict[str, str]]
) -> None:
    alice, bob = people
    big = random_file(tmp_path / "big.bin", 64)
    into = tmp_path / "into"
    server = subprocess.Popen(
        [
            *PEERKIT,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--discovery",
            NOBODY,
            "--accept",
            "files",
            "--accept-from",
            "anyone",
            "--into",
            str(into),
            "--json",
        ],
        env=alice,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    try:
        port = json.loads(server.stdout.readline())["port"]
        # The sender is killed as soon as the partial file holds bytes: mid-file (64 MiB).
        sender = subprocess.Popen(
            [*PEERKIT, "send", f"127.0.0.1:{port}", str(big)],
            env=bob,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            partial = _partial_with_bytes(into)
        finally:
            sender.send_signal(signal.SIGKILL)
            sender.wait(10)
        stopped = json.loads(server.stdout.readline())
        while stopped["event"] != "files_stopped":
            stopped = json.loads(server.stdout.readline())
        kept = partial.stat().st_size
        assert 0 < kept < big.stat().st_size, "the transfer was not cut halfway"
        assert not (into / "big.bin").exists()
        again = run("send", f"127.0.0.1:{port}", str(big), "--json", env=bob)
        assert again.returncode == 0, again.stderr
        sent = json.loads(again.stdout.strip().splitlines()[-1])
        assert sent["sent_bytes"] == big.stat().st_size - kept
        # The bar's total is what went (the receiver kept the rest), not the file's size.
        rest = f"{(big.stat().st_size - kept) / 1e6:,.1f}"
        assert re.search(rf"{re.escape(rest)}/{re.escape(rest)} MB", again.stderr), again.stderr
        received = json.loads(server.stdout.readline())
        while received["event"] != "files_received":
            received = json.loads(server.stdout.readline())
        assert received["resumed_bytes"] == kept
        assert digest(into / "big.bin") == digest(big)
        assert not partial.exists()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
        server.stdout.close()


@pytest.mark.network
@pytest.mark.timeout(120)
@pytest.mark.parametrize("stopped", ["receiver", "sender"])
def test_a_transfer_stopped_by_ctrl_c_says_so_on_both_sides(
    tmp_path: Path, people: tuple[dict[str, str], dict[str, str]], stopped: str
) -> None:
    # Ctrl-C on either side mid-file: it says how far the transfer came and exits 130; the other
    # side says its peer stopped, how far it came and that sending again resumes, and exits 1
    # (it was "unexpected UnboundLocalError" on the sender, "unexpected BrokenResourceError: "
    # on the receiver).
    alice, bob = people
    big = random_file(tmp_path / "big.bin", 96)
    into = tmp_path / "into"
    receiver, port = receiving(alice, "--into", str(into), "--yes")
    try:
        sender = sending(bob, port, str(big), "--json")
        _partial_with_bytes(into)
        if stopped == "receiver":
            receiver.kill(signal.SIGINT)
        else:
            sender.send_signal(signal.SIGINT)
        out, err = sender.communicate(timeout=30)
        assert out, (sender.returncode, err)
        outcome = json.loads(out)  # (stdout holds the JSON alone)
        assert outcome["answer"] == "stopped"
        assert 0 < outcome["sent_bytes"] < big.stat().st_size, "the transfer was not cut halfway"
        if stopped == "receiver":
            receiver.expect(
                r"stopped: [\d.]+ MB of 100\.7 MB received \(what arrived is kept\); the rest comes "
            )
            receiver.expect("when bob sends the same files again")
            assert exit_status(receiver) == 130
            assert sender.returncode == 1
            assert outcome["reason"] == "the connection to the peer broke"
        else:
            receiver.expect(
                r"bob stopped sending \(.+\): [\d.]+ MB of 100\.7 MB received \(what arrived is kept\)"
            )
            assert exit_status(receiver) == 1
            assert sender.returncode == 130, err
            assert outcome["reason"] == ""
        assert not (into / "big.bin").exists()
    finally:
        receiver.terminate(force=True)


@pytest.mark.network
def test_a_sender_stopped_while_the_receiver_is_asked_about_a_name_ends_the_question(
    tmp_path: Path, people: tuple[dict[str, str], dict[str, str]]
) -> None:
    # The receiver asks whether to replace a file it has; the sender stops meanwhile: the
    # question ends at once and says so (it waited for an answer nobody needed).
    alice, bob = people
    into = a_name_taken(tmp_path)
    receiver, port = receiving(alice, "--into", str(into))
    try:
        sender = sending(bob, port, str(tmp_path / "plan.txt"))
        receiver.expect(r"offers 1 file .*\? \[y/N\]")
        receiver.send("y\r")
        receiver.expect(r"plan\.txt exists: \[r\]ename the new one, \[o\]verwrite, or \[s\]kip")
        sender.send_signal(signal.SIGINT)
        sender.communicate(timeout=30)
        assert sender.returncode == 130
        receiver.expect(
            r"bob stopped sending \(the sender stopped before any file was sent\): nothing arrived",
            timeout=10,
        )
        assert exit_status(receiver) == 1
    finally:
        receiver.terminate(force=True)
    assert (into / "plan.txt").read_text() == "old plan"


@pytest.mark.network
def test_an_answer_in_capitals_is_for_every_name_taken(
    tmp_path: Path, people: tuple[dict[str, str], dict[str, str]]
) -> None:
    alice, bob = people
    src, into = tmp_path / "src", tmp_path / "into"
    src.mkdir()
    into.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (src / name).write_text(f"new {name}")
        (into / name).write_text(f"old {name}")
    receiver, port = receiving(alice, "--into", str(into))
    try:
        sender = sending(bob, port, *(str(src / name) for name in ("a.txt", "b.txt", "c.txt")))
        receiver.expect(r"offers 3 files .*\? \[y/N\]")
        receiver.send("y\r")
        # (while the files there are hashed to compare, a line says so: they may be large)
        receiver.expect(r"comparing the offer with what into holds")
        receiver.expect(r"a\.txt exists: .*\(R, O, S: the same for every name taken\)\? \[r\]")
        receiver.send("S\r")  # (skip this one and every other taken)
        receiver.expect("received 0 bytes")
        shown = receiver.before
        assert exit_status(receiver) == 0
        assert "exists:" not in shown, shown  # (asked once)
        assert "from bob" not in shown, shown  # (no bar: no byte came)
        assert re.findall(r"skipped: \S+", shown) == [
            "skipped: a.txt",
            "skipped: b.txt",
            "skipped: c.txt",
        ]
        _, err = sender.communicate(timeout=30)
        assert sender.returncode == 0
        assert "to alice" not in err, err  # (no bar where no byte went)
    finally:
        receiver.terminate(force=True)
    assert [(into / name).read_text() for name in ("a.txt", "b.txt", "c.txt")] == [
        "old a.txt",
        "old b.txt",
        "old c.txt",
    ]
    assert sorted(p.name for p in into.iterdir()) == ["a.txt", "b.txt", "c.txt"]


@pytest.mark.parametrize(
    ("answers", "decisions"),
    [
        (["", "o", "s", None], ["rename", "overwrite", "skip", "rename"]),  # (one at a time)
        (["o", "O"], ["overwrite", "overwrite", "overwrite", "overwrite"]),  # (O: the rest too)
        (["skip all"], ["skip", "skip", "skip"]),
        (["R"], ["rename", "rename", "rename"]),
    ],
)
def test_each_answer_to_a_name_taken(answers: list[str | None], decisions: list[str]) -> None:
    import anyio

    from peerkit.cli_files import _asking
    from peerkit.proto.files import Entry

    asked: list[str] = []

    class Script:
        async def ask(self, question: str) -> str | None:
            asked.append(question)
            return answers[len(asked) - 1]

    async def main() -> list[str]:
        decide = _asking(Script())  # type: ignore[arg-type]
        return [await decide(Entry("f", 1, bytes(32)), Path("f")) for _ in decisions]

    assert anyio.run(main) == decisions
    assert len(asked) == len(answers)  # (none after an answer for all)


@pytest.mark.network
def test_the_sender_is_told_while_the_receiver_looks_at_the_offer_then_sees_the_bar(
    tmp_path: Path, people: tuple[dict[str, str], dict[str, str]]
) -> None:
    alice, bob = people
    into = a_name_taken(tmp_path)
    receiver, port = receiving(alice, "--into", str(into))
    sender = terminal("send", f"127.0.0.1:{port}", str(tmp_path / "plan.txt"), env=bob)
    try:
        receiver.expect(r"offers 1 file .*\? \[y/N\]")
        receiver.send("y\r")
        receiver.expect(r"plan\.txt exists: ")
        sender.expect("alice is looking at the offer")  # (while alice is asked: no bar at 0 yet)
        sender.expect(pexpect.TIMEOUT, timeout=0.5)
        assert "to alice" not in sender.before, sender.before
        receiver.send("o\r")
        sender.expect(r"to alice .*8/8 bytes")
        sender.expect("alice has 1 of 1 files")
        assert exit_status(sender) == 0
        assert exit_status(receiver) == 0
    finally:
        sender.terminate(force=True)
        receiver.terminate(force=True)
    assert (into / "plan.txt").read_text() == "new plan"
