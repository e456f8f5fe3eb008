"""The peerkit command, run as users run it: in a subprocess."""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import anyio
import pytest
import typer
from conftest import WAITING_PEER

import peerkit
from peerkit.cli import app, main
from peerkit.clikit import parse_address
from peerkit.net.channel import wanted_ciphers
from peerkit.reporting import SERVE_LOCK, reach_status, read_reach, serving, write_reach

PEERKIT = [sys.executable, "-c", "from peerkit.cli import main; main()"]


#: Commands that only read or write the data dir, which run in this process (a second instead of
#: a new interpreter each); the others run in a subprocess, as users run them.
OFFLINE = {"id", "contacts", "presence"}


def run(*args: str, env: dict[str, str] | None = None, answer: str = "") -> subprocess.CompletedProcess[str]:
    if args[0] in OFFLINE and "add-nearby" not in args:
        return run_here(*args, env=env, answer=answer)
    return subprocess.run(
        [sys.executable, "-c", "from peerkit.cli import main; main()", *args],
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def run_here(*args: str, env: dict[str, str] | None, answer: str) -> subprocess.CompletedProcess[str]:
    """``peerkit ARGS`` through its entry point in this process: its output and exit code."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with (
            mock.patch.object(sys, "argv", ["peerkit", *args]),
            mock.patch.object(sys, "stdin", io.StringIO(answer)),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["peerkit", *args], code, out.getvalue(), err.getvalue())


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"peerkit {peerkit.__version__}"


def test_id_creates_then_shows_the_same_identity(tmp_path: Path) -> None:
    missing = run("id", "--json", "--data-dir", str(tmp_path))  # without --create: never made
    assert missing.returncode == 1
    assert f"no identity in {tmp_path}: create one with 'peerkit id --create" in missing.stderr
    assert not (tmp_path / "identity.key").exists()
    first = run("id", "--create", "--json", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["created"] is True
    assert len(info["id"]) == 52
    assert info["fingerprint"] == "-".join(info["id"][i : i + 4] for i in range(0, 16, 4))
    assert info["key_file"] == str(tmp_path / "identity.key")
    again = json.loads(run("id", "--json", "--data-dir", str(tmp_path)).stdout)
    assert again["id"] == info["id"]
    assert again["created"] is False
    human = run("id", "--data-dir", str(tmp_path))
    assert info["id"] in human.stdout
    assert info["fingerprint"] in human.stdout


def test_the_data_dir_comes_from_the_environment(tmp_path: Path) -> None:
    result = run("id", "--create", "--json", env={"PEERKIT_DATA_DIR": str(tmp_path / "env")})
    assert json.loads(result.stdout)["key_file"] == str(tmp_path / "env" / "identity.key")


def test_a_readable_key_file_is_one_clear_sentence_on_stderr(tmp_path: Path) -> None:
    run("id", "--create", "--data-dir", str(tmp_path))
    (tmp_path / "identity.key").chmod(0o644)
    result = run("id", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "accessible by other users" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ["id"],
        ["contacts", "list"],
        ["contacts", "export-card"],
        ["watch", "--discovery", "memory"],
        ["near", "--as-me", "--once", "--discovery", "memory"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_commands_that_only_read_never_create_an_identity(tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "tpyo"
    result = run(*command, "--data-dir", str(typo))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: no identity in {typo}"), result.stderr
    assert "Traceback" not in result.stderr
    assert not typo.exists()


def test_bad_data_dirs_and_key_files_are_one_line_each(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a dir")
    for command in (
        ["id"],
        ["id", "--create"],
        ["contacts", "list"],
        ["contacts", "add-card", "peerkit:x"],  # (one that may make an identity)
        ["presence", "set", "busy"],
        ["apps", "register", "x", "/bin/true"],
        ["invite", "127.0.0.1:9", "chat"],
        ["reach"],
    ):
        result = run(*command, "--data-dir", str(a_file))
        assert (result.returncode, result.stderr.count("\n")) == (1, 1), result.stderr
        assert "is a file, not a data dir" in result.stderr
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    if os.geteuid() != 0:  # (root may write anywhere)
        result = run("id", "--create", "--data-dir", str(read_only / "dir"))
        assert (result.returncode, result.stderr.count("\n")) == (1, 1), result.stderr
        assert result.stderr.startswith("error: Permission denied")
    home = tmp_path / "home"
    run("id", "--create", "--data-dir", str(home))
    key = home / "identity.key"
    lines = key.read_bytes().split(b"\n")
    lines[1] = lines[1][:10] + (b"B" if lines[1][10:11] != b"B" else b"C") + lines[1][11:]
    key.write_bytes(b"\n".join(lines))
    changed = run("id", "--data-dir", str(home))
    assert changed.returncode == 1
    assert "is corrupt: its key does not match the id written beside it" in changed.stderr
    traced = run("--debug", "id", "--data-dir", str(home))  # --debug: the traceback instead
    assert "Traceback" in traced.stderr
    assert "IdentityError" in traced.stderr


def test_the_nickname_is_saved_and_used_by_every_command(tmp_path: Path) -> None:
    alice, bob = {"PEERKIT_DATA_DIR": str(tmp_path / "alice")}, {"PEERKIT_DATA_DIR": str(tmp_path / "bob")}
    created = json.loads(run("id", "--create", "--nickname", "alice", "--json", env=alice).stdout)
    assert created["nickname"] == "alice"
    assert json.loads(run("id", "--json", env=alice).stdout)["nickname"] == "alice"  # kept
    too_long = run("id", "--nickname", "x" * 256, env=alice)
    assert too_long.returncode == 2
    carol = {"PEERKIT_DATA_DIR": str(tmp_path / "carol")}  # (a byte that is not UTF-8: refused
    not_text = run("id", "--create", "--nickname", "bad\udcff", env=carol)  # before anything is made)
    assert not_text.returncode == 2
    assert "nickname holds '\\udcff', which is no character" in " ".join(
        not_text.stderr.replace("│", " ").split()
    )
    assert not (tmp_path / "carol").exists()
    card = run("contacts", "export-card", env=alice).stdout.strip()  # the card carries it
    added = json.loads(run("contacts", "add-card", card, "--json", env=bob).stdout)
    assert added["nickname"] == "alice"
    run("near", "--as-me", "--once", "--wait", "0", "--discovery", "memory", env=alice)
    assert json.loads(run("id", "--json", env=alice).stdout)["nickname"] == "alice"  # not "peerkit near"


@pytest.mark.network
def test_contacts_are_named_as_people_name_them_and_invited_by_name(tmp_path: Path) -> None:
    server, info = start_server(
        tmp_path / "server", "--listen", "127.0.0.1:0", "--accept", "chat", "--accept-from", "anyone"
    )
    try:
        client = {"PEERKIT_DATA_DIR": str(tmp_path / "client")}
        run("id", "--create", env=client)
        served = {"PEERKIT_DATA_DIR": str(tmp_path / "server" / "server")}
        card = run("contacts", "export-card", "--address", f"127.0.0.1:{info['port']}", env=served)
        assert card.returncode == 0, card.stderr
        assert run("contacts", "add-card", card.stdout.strip(), env=client).returncode == 0
        named = run("contacts", "block", "Sam", env=client)  # its display name, any case
        assert named.returncode == 2  # (no display name yet: nobody is called that)
        assert "no contact is called 'Sam'" in " ".join(named.stderr.replace("│", " ").split())
        changed = run(
            "contacts",
            "export-card",
            "--display-name",
            "Sam",
            "--address",
            f"127.0.0.1:{info['port']}",
            env=served,
        )
        assert changed.returncode == 0
        fresh = changed.stdout.strip()
        run("contacts", "remove", str(info["id"])[:8], "--yes", env=client)
        run("contacts", "add-card", fresh, env=client)
        assert run("contacts", "block", "sam", env=client).returncode == 0
        assert run("contacts", "allow", "SAM", env=client).returncode == 0
        accepted = run("invite", "sam", "chat", "--json", env=client)  # a contact, an application, by name
        assert accepted.returncode == 0, accepted.stderr
        assert json.loads(accepted.stdout) == {"response": "accepted", "peer": info["id"]}
        declined = run("invite", "sam", "files", env=client)  # not accepted by the server: declined
        assert declined.returncode == 3, declined.stderr
        unknown = run("invite", "sam", "whiteboard", env=client)
        assert unknown.returncode == 2
        assert "nor a known name (chat, files)" in " ".join(unknown.stderr.replace("│", " ").split())
    finally:
        stop(server, signal.SIGTERM)


@pytest.mark.network
def test_a_peer_near_you_is_added_by_its_nickname(tmp_path: Path) -> None:
    server, info = start_server(
        tmp_path / "server",
        "--listen",
        "127.0.0.1:0",
        "--nickname",
        "Sam",
        "--accept",
        "chat",
        "--accept-from",
        "anyone",
    )
    try:
        client = {"PEERKIT_DATA_DIR": str(tmp_path / "client")}
        where = f"static:127.0.0.1:{info['port']}#{info['id']}"  # (no mDNS from a test)
        run("id", "--create", env=client)
        stranger = run("invite", "sam", "chat", "--json", env=client)  # not a contact, and not looked for
        assert stranger.returncode == 2
        assert "--discovery" in " ".join(stranger.stderr.replace("│", " ").split())
        near = run("invite", "sam", "chat", "--discovery", where, "--json", env=client)  # seen near: invited
        assert near.returncode == 0, near.stderr
        assert json.loads(near.stdout) == {"response": "accepted", "peer": info["id"]}
        added = run("contacts", "add-nearby", "sam", "--discovery", where, "--json", env=client)
        assert added.returncode == 0, added.stderr
        row = json.loads(added.stdout)
        assert (row["id"], row["nickname"]) == (info["id"], "Sam")  # its signed card's
        nobody = run("contacts", "add-nearby", "kim", "--wait", "1", "--discovery", where, env=client)
        assert nobody.returncode == 2
        assert "nobody called 'kim' was seen near you" in " ".join(nobody.stderr.replace("│", " ").split())
    finally:
        stop(server, signal.SIGTERM)


def test_well_known_applications_have_uuids_every_implementation_derives_alike() -> None:
    from peerkit.wellknown import CHAT, FILES, application_id

    assert CHAT.id == uuid.uuid5(uuid.uuid5(uuid.NAMESPACE_URL, "peerkit"), "chat")
    assert application_id("Chat") == CHAT.id
    assert application_id("files") == FILES.id
    assert application_id(str(CHAT.id).upper()) == CHAT.id
    with pytest.raises(ValueError, match="neither an application's UUID nor a known name"):
        application_id("chats")


def test_the_help_lists_the_exit_codes_and_the_logging_options() -> None:
    shown = run("--help", env={"COLUMNS": "200"})  # (one line each: the help flows to the width)
    assert "3 invitation declined" in shown.stdout
    assert "4 invitation expired" in shown.stdout
    assert "--verbose" in shown.stdout
    assert "--debug" in shown.stdout


def test_demo_shows_the_invitation_and_communication_steps() -> None:
    result = run("demo", "--messages", "2", env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "discovery: mDNS" in out or "used in-memory discovery" in out
    assert "alice finds bob and carol near her" in out
    assert re.search(r"^alice \(\w{4}-\w{4}-\w{4}-\w{4}\) listens at 127\.0\.0\.1:\d+$", out, re.MULTILINE)
    assert "carol imports alice's card text" in out
    for seen in ("bob: alice is busy (writing the plan)", "carol: alice's document added: 'plan v1'"):
        assert seen in out
    for outcome in ("registered", "ACCEPTED", "DECLINED", "EXPIRED"):
        assert outcome in out
    assert "Whiteboard" in out
    # The stream's own session knows bob's key, and runs AESGCM where this CPU has AES instructions.
    cipher = "AESGCM" if wanted_ciphers() else "ChaChaPoly"
    assert f"Noise_IK_25519_{cipher}_BLAKE2b" in out
    assert out.count("bob got 'hello #2 from alice'") == 1
    assert "demo complete" in out


def test_demo_can_keep_its_identities(tmp_path: Path) -> None:
    first = run("demo", "--messages", "1", "--data-dir", str(tmp_path))
    second = run("demo", "--messages", "1", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    alice = run("id", "--json", "--data-dir", str(tmp_path / "demo-alice"))  # (made by the demo)
    assert json.loads(alice.stdout)["id"] in first.stdout
    assert json.loads(alice.stdout)["id"] in second.stdout


CHAT = "0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1001"


def start_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    server = subprocess.Popen(
        [sys.executable, "-c", "from peerkit.cli import main; main()", "serve", "--json", *args]
        # never announce on the host's own network from a test
        + ([] if "--discovery" in args else ["--discovery", "memory"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PEERKIT_DATA_DIR": str(tmp_path / "server")},
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line, server.stderr.read() if server.stderr else ""
    return server, json.loads(line)


def stop(server: subprocess.Popen[str], signum: int = signal.SIGTERM) -> str:
    server.send_signal(signum)
    out, _ = server.communicate(timeout=20)
    return out


@pytest.mark.network
def test_serve_accepts_for_its_contacts_alone_unless_told_anyone(tmp_path: Path) -> None:
    # 'serve --accept files' took any stranger's files on the network, up to the disk's free
    # space (and --accept APP launched a program for anyone): a stranger's invitation is declined
    # and said so; once the stranger is a contact, it is accepted.
    server, info = start_server(tmp_path / "server", "--listen", "127.0.0.1:0", "--accept", "chat")
    assert info["accept_from"] == "contacts"
    try:
        client = {"PEERKIT_DATA_DIR": str(tmp_path / "client")}
        run("id", "--create", "--nickname", "cleo", env=client)
        address = f"127.0.0.1:{info['port']}"
        stranger = run("invite", address, "chat", env=client)
        assert stranger.returncode == 3, stranger.stderr
        assert server.stdout is not None
        said = json.loads(server.stdout.readline())
        assert said["event"] == "stranger_declined", said
        card = run("contacts", "export-card", env=client).stdout.strip()
        served = {"PEERKIT_DATA_DIR": str(tmp_path / "server" / "server")}
        assert run("contacts", "add-card", card, env=served).returncode == 0  # (while it serves)
        deadline = time.monotonic() + 20  # (serve reads the store's changes every second)
        contact = run("invite", address, "chat", "--json", env=client)
        while contact.returncode == 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            contact = run("invite", address, "chat", "--json", env=client)
        assert contact.returncode == 0, contact.stderr
        assert json.loads(contact.stdout)["response"] == "accepted"
    finally:
        out = stop(server)
    assert '"response": "accepted", "reason": "handler"' in out
    again, info = start_server(
        tmp_path / "again", "--listen", "127.0.0.1:0", "--accept", "chat", "--accept-from", "anyone"
    )
    try:
        anyone = run("invite", f"127.0.0.1:{info['port']}", "chat", env=client)
        assert anyone.returncode == 0, anyone.stderr
    finally:
        stop(again)
    text = run("serve", "--accept", "chat", "--accept-from", "strangers", env=client)
    assert text.returncode == 2
    assert "'strangers' is not one of 'contacts', 'anyone'" in " ".join(text.stderr.replace("│", " ").split())


@pytest.mark.network
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_and_invite(tmp_path: Path, signum: int) -> None:
    server, info = start_server(
        tmp_path, "--listen", "127.0.0.1:0", "--accept", CHAT, "--accept-from", "anyone", "--nickname", "srv"
    )
    try:
        assert info["event"] == "listening"
        address = f"127.0.0.1:{info['port']}"
        assert info["addresses"] == [address]  # (it listens there only)
        client = {"PEERKIT_DATA_DIR": str(tmp_path / "client")}
        accepted = run("invite", address, CHAT, "--message", "hi", "--json", env=client)
        assert accepted.returncode == 0, accepted.stderr
        assert json.loads(accepted.stdout) == {"response": "accepted", "peer": info["id"]}
        other = "0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1fff"
        declined = run("invite", address, other, "--id", str(info["id"]), env=client)
        assert declined.returncode == 3, declined.stderr  # (scripts need not parse the output)
        assert declined.stdout.strip() == f"srv ({info['fingerprint']}): declined"
        stranger = str(peerkit.Identity.generate().id)
        wrong = run("invite", address, CHAT, "--id", stranger, env=client)
        assert wrong.returncode == 1
        assert wrong.stderr.count("\n") == 1
    finally:
        out = stop(server, signum)
    assert server.returncode == 0
    events = [json.loads(line) for line in out.splitlines()]
    invitations = [e for e in events if e["event"] == "invitation"]
    assert [(e["message"], e["response"], e["reason"]) for e in invitations] == [
        ("hi", "accepted", "handler"),
        ("", "declined", "not registered"),
    ]
    assert events[-1]["event"] == "stopping"


@pytest.mark.network
def test_a_second_serve_on_one_data_dir_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    # Two nodes of one identity on one data dir published as one device and overwrote each
    # other's reach.json ('peerkit reach' showed whichever wrote last).
    server, info = start_server(tmp_path, "--listen", "127.0.0.1:0")
    try:
        with_dir = {"PEERKIT_DATA_DIR": str(tmp_path / "server")}
        deadline = time.monotonic() + 10
        while read_reach(tmp_path / "server") is None and time.monotonic() < deadline:
            time.sleep(0.05)  # (it writes its reach once it runs)
        second = run("serve", "--listen", "127.0.0.1:0", "--discovery", "memory", env=with_dir)
        assert second.returncode == 1
        said = " ".join(second.stderr.split())
        assert f"a node already serves {tmp_path / 'server'} ('peerkit serve', process {server.pid}," in said
        assert f"listening at 127.0.0.1:{info['port']}" in said
    finally:
        stop(server)
    # Once it stopped, the data dir is served again (start_server fails when nothing starts).
    again, serving = start_server(tmp_path, "--listen", "127.0.0.1:0")
    stop(again)
    assert serving["id"] == info["id"]


@pytest.mark.network
def test_serve_holds_its_data_dir_from_its_start_and_a_stale_report_holds_nothing(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")  # (Windows has none: the report alone decides there)
    served = tmp_path / "server"
    with_dir = {"PEERKIT_DATA_DIR": str(served)}
    assert run("id", "--create", env=with_dir).returncode == 0
    # Another serve starting (it holds the lock, and wrote no report yet): refused, named.
    with open(served / SERVE_LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        second = run("serve", "--listen", "127.0.0.1:0", "--discovery", "memory", env=with_dir)
    assert second.returncode == 1
    said = " ".join(second.stderr.split())
    assert f"a node already serves {served} ('peerkit serve', process 4242, starting)" in said
    # A report of a serve that crashed, whose process number a live process took since: nothing
    # holds the lock, so it starts (this test's process is the live one).
    nothing = peerkit.Reach(reservations=(), relays=(), relaying=False)
    write_reach(served, {**reach_status(nothing, listening="127.0.0.1:1"), "pid": os.getpid()})
    server, info = start_server(tmp_path, "--listen", "127.0.0.1:0")
    stop(server)
    assert info["event"] == "listening"
    (tmp_path / "a file").write_text("x")
    not_a_dir = run("serve", "--discovery", "memory", env={"PEERKIT_DATA_DIR": str(tmp_path / "a file")})
    assert not_a_dir.returncode == 1
    assert f"{tmp_path / 'a file'} is a file, not a data dir: give --data-dir a directory" in not_a_dir.stderr
    nowhere = run("serve", "--discovery", "memory", env={"PEERKIT_DATA_DIR": str(tmp_path / "a file" / "x")})
    assert nowhere.returncode == 1
    assert f"cannot use {tmp_path / 'a file' / 'x'} as a data dir: Not a directory" in nowhere.stderr


def test_invite_errors_are_one_sentence(tmp_path: Path) -> None:
    env = {"PEERKIT_DATA_DIR": str(tmp_path)}
    refused = run("invite", "127.0.0.1:1", CHAT, env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: could not connect to 127.0.0.1:1")
    assert "Traceback" not in refused.stderr
    too_long = run("invite", "127.0.0.1:1", CHAT, "--message", "x" * 256, env=env)
    assert too_long.returncode == 1
    assert "invitation message is 256 characters; the limit is 255" in too_long.stderr
    bad = run("invite", "nowhere", CHAT, env=env)  # not HOST:PORT: a contact's name, and none has it
    assert bad.returncode == 2
    assert "no contact is called 'nowhere'" in bad.stderr
    assert "HOST:PORT" in " ".join(bad.stderr.replace("│", " ").split())
    bad_app = run("invite", "127.0.0.1:1", "chats", env=env)
    assert bad_app.returncode == 2
    assert "nor a known name" in " ".join(bad_app.stderr.replace("│", " ").split())
    # A contact whose node is not running: named first, then where it was looked for.
    dave = {"PEERKIT_DATA_DIR": str(tmp_path / "dave")}
    run("id", "--create", "--nickname", "dave", env=dave)
    card = run("contacts", "export-card", "--address", "127.0.0.1:1", env=dave).stdout.strip()
    assert run("contacts", "add-card", card, env=env).returncode == 0
    away = run("invite", "dave", CHAT, "--discovery", "static:127.0.0.1:9", env=env)
    assert away.returncode == 1
    assert away.stderr.startswith("error: cannot reach dave: could not connect to 127.0.0.1:1"), away.stderr


@pytest.mark.network
def test_ctrl_c_withdraws_an_invitation_and_exits_zero(tmp_path: Path) -> None:
    peer = subprocess.Popen(
        [sys.executable, "-c", WAITING_PEER, CHAT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert peer.stdout is not None
        port = int(peer.stdout.readline().split()[0])
        client = subprocess.Popen(
            [*PEERKIT, "invite", f"127.0.0.1:{port}", CHAT, "--timeout", "60", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PEERKIT_DATA_DIR": str(tmp_path)},
        )
        time.sleep(2)  # dialled and waiting for the answer by now
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=20)
        assert client.returncode == 0, err
        assert json.loads(out)["response"] == "withdrawn"
        assert peer.stdout.readline().strip() == "handler ended: cancelled"
    finally:
        peer.kill()
        peer.communicate()
    # Stopped while it dials (a listener that never answers the handshake): withdrawn too (it was
    # "unexpected UnboundLocalError").
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = subprocess.Popen(
            [*PEERKIT, "invite", f"127.0.0.1:{silent.getsockname()[1]}", CHAT, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PEERKIT_DATA_DIR": str(tmp_path)},
        )
        time.sleep(2)
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=20)
    assert client.returncode == 0, err
    assert json.loads(out) == {"response": "withdrawn", "peer": None}


@pytest.mark.network
def test_near_once_finds_a_static_peer_and_tells_a_contact_from_a_stranger(tmp_path: Path) -> None:
    server, info = start_server(tmp_path, "--listen", "127.0.0.1:0", "--nickname", "srv")
    served = {"PEERKIT_DATA_DIR": str(tmp_path / "server")}
    try:
        assert info["scope"] == "ALL"
        assert info["discovery"] == ["memory"]
        where = f"static:127.0.0.1:{info['port']}#{info['id']}"
        nobody = {"PEERKIT_DATA_DIR": str(tmp_path / "nobody")}  # (no identity there: no contacts)
        found = run("near", "--once", "--wait", "1", "--json", "--discovery", where, env=nobody)
        assert found.returncode == 0, found.stderr
        rows = json.loads(found.stdout)
        assert [(r["nickname"], r["contact"], r["id"], r["endpoint"]) for r in rows] == [
            ("srv", None, info["id"], f"127.0.0.1:{info['port']}")
        ]
        # Someone with srv among their contacts sees that it is one (by its name there): any
        # stranger may call itself srv. A node of their own identity is "you".
        client = {"PEERKIT_DATA_DIR": str(tmp_path / "client")}
        run("id", "--create", "--nickname", "cleo", env=client)
        card = run("contacts", "export-card", env=served)
        assert run("contacts", "add-card", card.stdout.strip(), env=client).returncode == 0
        known = run("near", "--once", "--wait", "1", "--json", "--discovery", where, env=client)
        assert [r["contact"] for r in json.loads(known.stdout)] == ["srv"]
        for_itself = run("near", "--once", "--wait", "1", "--json", "--discovery", where, env=served)
        assert [r["contact"] for r in json.loads(for_itself.stdout)] == ["you"]
        table = run("near", "--once", "--wait", "1", "--discovery", where, env={**nobody, "COLUMNS": "60"})
        assert table.returncode == 0, table.stderr
        assert "people near me: 1" in table.stdout
        assert "srv" in table.stdout
        assert info["fingerprint"] in table.stdout  # (whole, on a narrow terminal too)
    finally:
        stop(server)
    assert server.returncode == 0


@pytest.mark.network
def test_a_peer_nearby_with_markup_and_escape_sequences_in_its_nickname_is_shown_as_text(
    tmp_path: Path,
) -> None:
    # "[/b]" once made the table fail (a closing tag that matches nothing), for everyone near it.
    hostile = "[/b][red]Zo\u00eb\x1b[2J\x1b]0;pwned\x07\u202e"
    server, info = start_server(tmp_path, "--listen", "127.0.0.1:0", "--accept", CHAT, "--nickname", hostile)
    try:
        where = f"static:127.0.0.1:{info['port']}#{info['id']}"
        table = run("near", "--once", "--wait", "1", "--discovery", where, env={"COLUMNS": "200"})
        assert table.returncode == 0, table.stderr
        assert "people near me: 1" in table.stdout
        assert "[/b][red]Zo\u00eb" + r"\x1b[2J\x1b]0;pwned\x07\u202e" in table.stdout
        found = run("near", "--once", "--wait", "1", "--json", "--discovery", where)
        assert json.loads(found.stdout)[0]["nickname"] == hostile  # (scripts get it as it is)
        # Where the output cannot hold a letter (an ASCII or Latin-1 locale), it is escaped too.
        ascii_only = run(
            "near",
            "--once",
            "--wait",
            "1",
            "--discovery",
            where,
            env={"PYTHONIOENCODING": "ascii", "COLUMNS": "200"},
        )
        assert ascii_only.returncode == 0, ascii_only.stderr
        assert r"[/b][red]Zo\xeb\x1b[2J" in ascii_only.stdout
        for result in (table, found, ascii_only):
            assert not any(raw in result.stdout + result.stderr for raw in ("\x1b", "\x07", "\u202e"))
    finally:
        stop(server)


def test_bad_discovery_names_are_clear_errors() -> None:
    def said(result: subprocess.CompletedProcess[str]) -> str:
        return " ".join(result.stderr.replace("│", " ").split())

    result = run("near", "--once", "--discovery", "carrier-pigeon")
    assert result.returncode == 2
    assert "no discovery provider named 'carrier-pigeon'; known: dht, mdns, memory, static" in said(result)
    result = run("serve", "--discovery", "static:nowhere")
    assert result.returncode == 2
    assert "static entry 'nowhere' is not host:port[#peer-id]" in said(result)


def test_several_providers_join_with_commas_and_arguments_keep_theirs() -> None:
    from peerkit.clikit import providers_named as _providers
    from peerkit.dht.provider import DhtDiscovery
    from peerkit.discovery import StaticDiscovery

    memory, dht = _providers(["memory,dht:127.0.0.1:6881,127.0.0.2:6882"])
    assert memory.name == "memory"
    assert isinstance(dht, DhtDiscovery)
    assert dht.bootstrap == (("127.0.0.1", 6881), ("127.0.0.2", 6882))
    (static,) = _providers(["static:127.0.0.1:7000,127.0.0.1:7001"])
    assert isinstance(static, StaticDiscovery)
    kinds = [type(p) for p in _providers(["memory", "static:127.0.0.1:7000,dht"])]
    assert kinds[1:] == [StaticDiscovery, DhtDiscovery]
    result = run("near", "--once", "--discovery", "memory,carrier-pigeon")  # not a name: an argument
    assert result.returncode == 2
    assert "memory" in result.stderr


def test_demo_falls_back_to_memory_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    from peerkit.demo import run_demo
    from peerkit.discovery import MdnsDiscovery

    async def no_multicast(self: MdnsDiscovery, sink: object, *, task_status: object) -> None:
        raise OSError("multicast is not available")

    monkeypatch.setattr(MdnsDiscovery, "run", no_multicast)
    report = anyio.run(run_demo, peerkit.Identity.generate(), peerkit.Identity.generate(), 1)
    assert report.discovery.startswith("mDNS on 127.0.0.1 did not work here")
    assert "multicast is not available" in report.discovery
    assert "in memory" in report.steps[1].title
    assert [s.outcome for s in report.steps[2:5]] == ["ACCEPTED", "DECLINED", "EXPIRED"]


@pytest.mark.network
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_near_follows_live_until_a_signal(tmp_path: Path, as_json: bool) -> None:
    server, info = start_server(tmp_path, "--listen", "127.0.0.1:0", "--nickname", "srv")
    try:
        where = f"static:127.0.0.1:{info['port']}#{info['id']}"
        near = subprocess.Popen(
            [sys.executable, "-c", "from peerkit.cli import main; main()", "near", "--discovery", where]
            + (["--json"] if as_json else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert near.stdout is not None
        if as_json:
            event = json.loads(near.stdout.readline())
            assert (event["change"], event["nickname"], event["id"]) == ("ADDED", "srv", info["id"])
        else:
            time.sleep(3)  # the table is drawn when it starts and redrawn on changes
        near.send_signal(signal.SIGINT)
        out, err = near.communicate(timeout=20)
        assert near.returncode == 0, err
        if not as_json:
            assert "srv" in out
            assert "people near me: 1" in out
    finally:
        stop(server)


def test_contacts_commands_add_export_list_and_change_contacts(tmp_path: Path) -> None:
    alice = {"PEERKIT_DATA_DIR": str(tmp_path / "alice")}
    bob = {"PEERKIT_DATA_DIR": str(tmp_path / "bob")}
    for each in (alice, bob):
        assert run("id", "--create", env=each).returncode == 0
    empty = run("contacts", "list", env=alice)
    assert empty.returncode == 0, empty.stderr
    assert "no contacts yet" in empty.stdout
    card = run("contacts", "export-card", "--display-name", "Bob B", "--address", "10.1.1.1:7000", env=bob)
    assert card.returncode == 0, card.stderr
    text = card.stdout.strip()
    assert text.startswith("peerkit:")
    added = run("contacts", "add-card", text, "--json", env=alice)
    assert added.returncode == 0, added.stderr
    row = json.loads(added.stdout)
    assert (row["display_name"], row["endpoints"], row["subscribe_allowed"]) == (
        "Bob B",
        ["10.1.1.1:7000"],
        "allowed",
    )
    bob_id = row["id"]
    narrow = subprocess.run(  # (in a process of its own: a console takes COLUMNS when it is made)
        [*PEERKIT, "contacts", "list"],
        check=False,
        env={**os.environ, **alice, "COLUMNS": "60"},
        capture_output=True,
        text=True,
    ).stdout
    assert max(len(line) for line in narrow.splitlines()) == 60
    assert row["fingerprint"] in narrow  # (whole: it is what people compare)
    assert "Bob B" in narrow
    assert "email" not in narrow  # (nobody has one: its room goes to the others)
    carol = {"PEERKIT_DATA_DIR": str(tmp_path / "carol")}
    assert run("id", "--create", env=carol).returncode == 0
    also_bob = run("contacts", "export-card", "--display-name", "Bob B", env=carol).stdout.strip()
    assert run("contacts", "add-card", also_bob, env=alice).returncode == 0
    two = run("contacts", "watch", "bob b", env=alice)
    assert two.returncode == 2
    said = " ".join(two.stderr.replace("│", " ").split())
    assert "2 contacts are called 'bob b'" in said
    assert f"Bob B {row['fingerprint']}" in said
    assert "give the fingerprint of the one you mean" in said
    carol_id = json.loads(run("id", "--json", env=carol).stdout)["id"]
    assert run("contacts", "remove", carol_id[:8], "--yes", env=alice).returncode == 0
    alone = run("contacts", "--data-dir", str(tmp_path / "alice"), env=bob)  # (alone: the list)
    assert alone.returncode == 0, alone.stderr
    assert row["fingerprint"] in alone.stdout  # (alice's, given before the command: bob has none)
    assert "10.1.1.1:7000" in narrow.replace("│", "").replace(" ", "").replace("\n", "")  # (folded)
    again = run("contacts", "add-card", text, env=alice)  # the same card: nothing to change
    assert again.returncode == 0, again.stderr
    assert "is a contact already, with this card or a newer one: nothing changed" in again.stdout
    moved = run("contacts", "export-card", "--display-name", "Bob B", "--address", "10.2.2.2:7001", env=bob)
    renewed = run("contacts", "add-card", moved.stdout.strip(), "--json", env=alice)  # newer: taken
    assert renewed.returncode == 0, renewed.stderr
    assert (json.loads(renewed.stdout)["endpoints"], json.loads(renewed.stdout)["card"]) == (
        ["10.2.2.2:7001"],
        "updated",
    )
    older = run("contacts", "add-card", text, "--json", env=alice)  # the first card, older: ignored
    assert (json.loads(older.stdout)["endpoints"], json.loads(older.stdout)["card"]) == (
        ["10.2.2.2:7001"],
        "unchanged",
    )
    tampered = run(
        "contacts", "add-card", text[:-6] + ("AAAAAA" if not text.endswith("AAAAAA") else "BBBBBB"), env=bob
    )
    assert tampered.returncode == 1
    assert tampered.stderr.startswith("error: contact card rejected")
    assert tampered.stderr.count("\n") == 1
    for command, field, value, said, again in [
        ("block", "subscribe_allowed", "blocked", "Bob B is blocked", "Bob B was blocked already"),
        ("allow", "subscribe_allowed", "allowed", "Bob B may watch you", "Bob B may watch you already"),
        ("watch", "is_subscribed", True, "watching Bob B", "already watching Bob B"),
        ("unwatch", "is_subscribed", False, "no longer watching Bob B", "you were not watching Bob B"),
    ]:
        changed = run("contacts", command, bob_id[:8], env=alice)
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout == f"{said}\n"
        (listed,) = json.loads(run("contacts", "list", "--json", env=alice).stdout)
        assert listed[field] == value, command
        assert run("contacts", command, bob_id[:8], env=alice).stdout == f"{again}\n"
    own = run("contacts", "add-card", run("contacts", "export-card", env=alice).stdout.strip(), env=alice)
    assert own.returncode == 2
    assert "that is your own card" in " ".join(own.stderr.replace("│", " ").split())
    unknown = run("contacts", "remove", "zzzzzzzz", env=alice)
    assert unknown.returncode == 2
    assert "no contact's id starts with 'zzzzzzzz'" in unknown.stderr
    too_short = run("contacts", "remove", bob_id[:2], env=alice)
    assert too_short.returncode == 2
    assert "at least 8 characters of its id" in " ".join(too_short.stderr.replace("│", " ").split())
    kept = run("contacts", "remove", row["fingerprint"], env=alice)  # asked, and no answer: kept
    assert (kept.returncode, kept.stderr) == (1, "not removed\n")
    assert "from your contacts? [y/N]" in kept.stdout
    assert len(json.loads(run("contacts", "list", "--json", env=alice).stdout)) == 1
    removed = run("contacts", "remove", row["fingerprint"], env=alice, answer="y\n")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(run("contacts", "list", "--json", env=alice).stdout) == []
    path = tmp_path / "bob.card"
    assert run("contacts", "export-card", "--out", str(path), env=bob).returncode == 0
    assert run("contacts", "add-card", str(path), env=alice).returncode == 0
    assert run("contacts", "remove", bob_id[:8], "--yes", env=alice).returncode == 0  # without asking
    assert json.loads(run("contacts", "list", "--json", env=alice).stdout) == []
    bad_status = run("presence", "set", "offline", env=alice)
    assert bad_status.returncode == 2
    assert "not a status to set" in bad_status.stderr
    assert run("presence", env=alice).stdout.startswith("presence: online (none set")  # (shown)
    given_first = run("presence", "--data-dir", str(tmp_path / "bob"), "set", "away", "back at 3", env=alice)
    assert given_first.returncode == 0, given_first.stderr
    shown = json.loads(run("presence", "show", "--json", env=bob).stdout)
    assert shown == {"status": "away", "text": "back at 3", "set": True}
    assert json.loads(run("presence", "show", "--json", env=alice).stdout)["set"] is False  # (not hers)


def read_json_line(process: subprocess.Popen[str], timeout: float = 20) -> dict[str, object]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while not line and time.monotonic() < deadline:
        line = process.stdout.readline()
    assert line, "the process printed nothing in time"
    result: dict[str, object] = json.loads(line)
    return result


@pytest.mark.network
def test_watch_follows_a_served_contacts_presence_set_from_the_command_line(tmp_path: Path) -> None:
    alice = {"PEERKIT_DATA_DIR": str(tmp_path / "server")}
    bob = {"PEERKIT_DATA_DIR": str(tmp_path / "bob")}
    server, info = start_server(tmp_path, "--listen", "127.0.0.1:0", "--nickname", "alice")
    watcher = None
    try:
        alice_card = run("contacts", "export-card", "--address", f"127.0.0.1:{info['port']}", env=alice)
        assert alice_card.returncode == 0, alice_card.stderr
        assert run("contacts", "add-card", alice_card.stdout.strip(), env=bob).returncode == 0
        assert run("contacts", "watch", str(info["id"])[:10], env=bob).returncode == 0
        # alice adds bob while she serves: her running node takes the change from the database.
        bob_card = run("contacts", "export-card", env=bob).stdout.strip()
        assert run("contacts", "add-card", bob_card, env=alice).returncode == 0
        watcher = subprocess.Popen(
            [*PEERKIT, "watch", "--json", "--listen", "127.0.0.1:0", "--discovery", "memory"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **bob},
        )
        assert read_json_line(watcher) == {"event": "watching", "contacts": [info["id"]]}
        # Until alice's node reads bob from its database (it checks every second), bob may be
        # refused and see her Offline first; then Online.
        first = read_json_line(watcher)
        if first.get("status") == "OFFLINE":
            first = read_json_line(watcher)
        assert (first["event"], first["id"], first["status"]) == ("presence", info["id"], "ONLINE")
        assert run("presence", "set", "busy", "in a call", env=alice).returncode == 0
        busy = read_json_line(watcher)
        assert (busy["event"], busy["status"], busy["text"]) == ("presence", "BUSY", "in a call")
    finally:
        stop(server)
    assert watcher is not None
    try:
        gone = read_json_line(watcher)
        assert (gone["event"], gone["status"]) == ("presence", "OFFLINE")
    finally:
        stop(watcher)
    assert watcher.returncode == 0


def test_serve_names_a_bad_dht_bootstrap() -> None:
    result = run("serve", "--dht-bootstrap", "nowhere")
    assert result.returncode == 2
    assert "'nowhere' is not HOST:PORT" in " ".join(result.stderr.replace("│", " ").split())
    with pytest.raises(typer.BadParameter, match=r"'1\.2\.3\.4:99999': port 99999 is outside 0\.\.65535"):
        parse_address("1.2.3.4:99999")
    # A superscript two is a digit to str.isdigit() but not to int(): it was a traceback.
    with pytest.raises(typer.BadParameter, match=r"'1\.2\.3\.4:\u00b2' is not HOST:PORT"):
        parse_address("1.2.3.4:\u00b2")
    with pytest.raises(typer.BadParameter, match="an IPv6 address goes in brackets"):
        parse_address("fe80::1")  # (it was host 'fe80:', port 1)
    with pytest.raises(typer.BadParameter, match="':6881' names no host"):
        parse_address(":6881")  # (it was 0.0.0.0: a bootstrap on this machine)
    assert parse_address(":6881", "127.0.0.1") == ("127.0.0.1", 6881)
    # Port 0 is no peer's: an address to reach with it was "endpoint port 0 is outside 1..65535"
    # once a node had started (exit 1), or a card that named it.
    with pytest.raises(typer.BadParameter, match=r"'127\.0\.0\.1:0': port 0 is for listening"):
        parse_address("127.0.0.1:0")
    invited = run("invite", "127.0.0.1:0", "chat")
    assert invited.returncode == 2
    assert "port 0 is for listening" in " ".join(invited.stderr.replace("│", " ").split())


@pytest.mark.parametrize(
    ("via", "why"),
    [
        ("10.0.0.1:7000", "it has no '#ID'"),
        ("10.0.0.1:7000#nope", "is not HOST:PORT#RELAY_ID"),
        ("nowhere#" + "a" * 52, "is not HOST:PORT"),
    ],
)
def test_serve_names_a_bad_relay(via: str, why: str) -> None:
    result = run("serve", "--via", via)
    assert result.returncode == 2
    assert why in " ".join(result.stderr.replace("│", " ").split())


@pytest.mark.network
def test_serve_relays_through_a_relay_it_serves(tmp_path: Path) -> None:
    relay, info = start_server(tmp_path / "relay", "--listen", "127.0.0.1:0", "--relay", "--relay-open")
    assert relay.stdout is not None
    assert json.loads(relay.stdout.readline()) == {"event": "relaying", "for": "anyone"}
    try:
        through = f"127.0.0.1:{info['port']}#{info['id']}"
        behind, _ = start_server(tmp_path / "behind", "--listen", "127.0.0.1:0", "--via", through)
        assert behind.stdout is not None
        held = json.loads(behind.stdout.readline())  # once the relay granted the reservation
        assert held == {"event": "relay", "relay": through, "held": True}
        behind_dir = {"PEERKIT_DATA_DIR": str(tmp_path / "behind" / "server")}
        shown = run("reach", env=behind_dir)
        assert shown.returncode == 0, shown.stderr
        assert f"relay {through}: reservation held" in shown.stdout
        assert "port not mapped: port mapping is off" in shown.stdout  # (the suite turns it off)
        assert "can be dialled directly: no" in shown.stdout  # (a private address only)
        relay_dir = {"PEERKIT_DATA_DIR": str(tmp_path / "relay" / "server")}
        deadline = time.monotonic() + 10
        while (shown := run("reach", "--json", env=relay_dir)).returncode or json.loads(shown.stdout)[
            "reserved_here"
        ] != 1:
            assert time.monotonic() < deadline, f"the relay never reported the reservation: {shown.stderr}"
            time.sleep(0.2)
        assert "relaying: 1 reservations" in run("reach", env=relay_dir).stdout
        stop(behind)
        assert behind.returncode == 0
        gone = run("reach", env=behind_dir)
        assert gone.returncode == 1
        assert "no 'peerkit serve' is running" in gone.stderr
    finally:
        stop(relay)
    assert relay.returncode == 0


@pytest.mark.network
def test_reach_a_contact_tries_every_way_and_times_each(tmp_path: Path) -> None:
    server, info = start_server(tmp_path / "srv", "--listen", "127.0.0.1:0")
    try:
        served = {"PEERKIT_DATA_DIR": str(tmp_path / "srv" / "server")}
        client = {"PEERKIT_DATA_DIR": str(tmp_path / "client")}
        card = run(
            "contacts", "export-card", "--address", f"127.0.0.1:{info['port']}", env=served
        ).stdout.strip()
        assert run("contacts", "add-card", card, env=client).returncode == 0
        static = f"static:127.0.0.1:{info['port']}"
        shown = run("reach", str(info["id"])[:12], "--discovery", static, "--timeout", "3", env=client)
        assert shown.returncode == 0, shown.stderr
        assert f"ways to {info['fingerprint']}:" in shown.stdout
        assert "resolve: ok in" in shown.stdout
        assert f"direct 127.0.0.1:{info['port']}: ok in" in shown.stdout
        steps = json.loads(run("reach", str(info["id"]), "--discovery", static, "--json", env=client).stdout)
        assert steps["peer"] == info["id"]
        assert [(s["way"], s["ok"]) for s in steps["steps"]] == [("resolve", True), ("direct", True)]
    finally:
        stop(server)
    gone = run("reach", str(info["id"]), "--discovery", static, "--timeout", "1", env=client)
    assert gone.returncode == 1  # no way worked
    assert "direct 127.0.0.1" in gone.stdout
    assert "failed" in gone.stdout


def test_the_default_discovery_is_peerkit_discovery_else_mdns(monkeypatch: pytest.MonkeyPatch) -> None:
    from peerkit.clikit import providers_for, providers_named

    monkeypatch.setenv("PEERKIT_DISCOVERY", "static:127.0.0.1:9,memory")
    assert [p.name for p in providers_named(None)] == ["static:127.0.0.1:9", "memory"]
    assert [p.name for p in providers_named(["memory"])] == ["memory"]  # --discovery wins
    assert [p.name for p in providers_for("bob", None)] == ["static:127.0.0.1:9", "memory"]  # a name
    assert providers_for(("127.0.0.1", 7000), None) == []  # HOST:PORT: dialled, nobody looked for
    monkeypatch.delenv("PEERKIT_DISCOVERY")
    assert [p.name for p in providers_named(None)] == ["mdns"]


def test_serve_expects_streams_for_strangers_without_ever_forgetting_a_contacts() -> None:
    from peerkit.clikit import MAX_EXPECTED, Expected

    expected: Expected[str] = Expected()
    contact = peerkit.Identity.generate().id
    assert expected.expect(contact, "contact's", trusted=True)
    strangers = [peerkit.Identity.generate().id for _ in range(MAX_EXPECTED + 10)]
    for stranger in strangers:  # more than there are places: the oldest strangers' go
        assert expected.expect(stranger, "stranger's", trusted=False)
    assert expected.take(contact) == "contact's"
    assert expected.take(strangers[0]) is None
    assert expected.take(strangers[-1]) == "stranger's"
    # Every place a trusted peer's: a stranger's is not kept (its invitation is declined); a
    # contact's takes the oldest place.
    trusted = [peerkit.Identity.generate().id for _ in range(MAX_EXPECTED)]
    for peer_id in trusted:
        assert expected.expect(peer_id, "trusted", trusted=True)
    assert not expected.expect(strangers[1], "stranger's", trusted=False)
    assert expected.take(strangers[1]) is None
    assert expected.expect(contact, "contact's", trusted=True)
    assert expected.take(trusted[0]) is None
    assert expected.take(contact) == "contact's"


def _command_paths(command: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # (a group's)
        yield from _command_paths(sub, (*path, name))


def test_every_help_shows_each_default_once_and_no_value_for_a_flag() -> None:
    paths = list(_command_paths(typer.main.get_command(app)))
    assert ("receive",) in paths
    assert ("contacts", "add-card") in paths
    for path in paths:
        shown = run_here(*path, "--help", env={"COLUMNS": "400"}, answer="")
        assert shown.returncode == 0, (path, shown.stderr)
        # (typer 0.29 labelled every flag "<bool>", as if "--yes true" were asked for)
        assert "<bool>" not in shown.stdout, (path, shown.stdout)
        # An option's rows: its first (the option's name) and the rows under it (its help flowed).
        options: list[str] = []
        inside = False  # (in an option's rows: a panel's border ends them)
        for line in shown.stdout.splitlines():
            row = line.strip("│ ")
            if row.startswith("-"):
                options.append(row)
                inside = True
            elif inside and line.startswith("│ "):
                options[-1] += " " + row
            else:
                inside = False
        assert options, path
        for option in options:
            assert option.count("[default") <= 1, (path, " ".join(option.split()))


@pytest.mark.network
def test_a_node_on_every_address_shows_where_other_machines_dial_it(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    server, info = start_server(tmp_path, "--listen", str(port))  # (a port alone: every address)
    try:
        assert info["port"] == port
        hosts = [a.rsplit(":", 1)[0].strip("[]") for a in info["addresses"]]
        others = [h for h in hosts if not ipaddress.ip_address(h).is_loopback]
        # This host's addresses (loopback only when it has no other: other machines cannot use it).
        assert hosts in (others, ["127.0.0.1"]), hosts
        assert all(a.endswith(f":{port}") for a in info["addresses"])
        reach = run("reach", env={"PEERKIT_DATA_DIR": str(tmp_path / "server")})
        assert reach.stdout.startswith(f"listening at {info['addresses'][0]}"), reach.stdout
    finally:
        stop(server)


def test_listen_takes_a_port_alone() -> None:
    from peerkit.clikit import parse_listen

    assert parse_listen("7000") == ("", 7000)
    assert parse_listen(" 0 ") == ("", 0)
    assert parse_listen("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(typer.BadParameter, match=r"^port 99999 is outside 0\.\.65535$"):
        parse_listen("99999")
    with pytest.raises(typer.BadParameter, match="is not HOST:PORT"):
        parse_listen("\u00b2")


def test_counts_and_ages_are_written_as_people_write_them() -> None:
    from peerkit.clikit import age_text, count_text

    assert [count_text(n, "contact") for n in (0, 1, 2)] == ["0 contacts", "1 contact", "2 contacts"]
    ages = [-0.5, 0, 59.9, 60, 3599, 3600, 86399, 86400 * 3]
    assert [age_text(s) for s in ages] == ["0 s", "0 s", "59 s", "1 min", "59 min", "1 h", "23 h", "3 d"]


def test_serve_on_a_file_system_without_locks_falls_back_on_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fcntl = pytest.importorskip("fcntl")

    def no_locks(file: object, how: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with serving(tmp_path):  # (nothing serves here)
        pass
    nothing = peerkit.Reach(reservations=(), relays=(), relaying=False)
    write_reach(tmp_path, {**reach_status(nothing, listening="127.0.0.1:1"), "pid": os.getppid()})
    with pytest.raises(peerkit.PeerkitError, match="a node already serves"), serving(tmp_path):
        pass


@pytest.mark.parametrize(
    ("error", "said"), [("the connection to the peer broke", None), ("", "the connection broke")]
)
def test_a_broken_stream_that_reaches_main_is_one_line_not_unexpected(error: str, said: str | None) -> None:
    with mock.patch.object(peerkit.cli, "app", mock.Mock(side_effect=anyio.BrokenResourceError(error))):
        result = run_here("id", env=None, answer="")
    assert (result.returncode, result.stderr) == (1, f"error: {said or error}\n")
