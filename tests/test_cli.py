"""The peerkit command, run as users run it: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import peerkit


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from peerkit.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"peerkit {peerkit.__version__}"


def test_id_creates_then_shows_the_same_identity(tmp_path: Path) -> None:
    first = run("id", "--json", "--data-dir", str(tmp_path))
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
    result = run("id", "--json", env={"PEERKIT_DATA_DIR": str(tmp_path / "env")})
    assert json.loads(result.stdout)["key_file"] == str(tmp_path / "env" / "identity.key")


def test_a_readable_key_file_is_one_clear_sentence_on_stderr(tmp_path: Path) -> None:
    run("id", "--data-dir", str(tmp_path))
    (tmp_path / "identity.key").chmod(0o644)
    result = run("id", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "accessible by other users" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_demo_runs_both_handshakes_and_exits_zero() -> None:
    result = run("demo", "--messages", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Noise_XX_25519_ChaChaPoly_BLAKE2b" in out
    assert "Noise_IK_25519_ChaChaPoly_BLAKE2b" in out
    assert out.count("handshake hash") == 2
    assert out.count("bob got 'hello #2 from alice'") == 2
    assert "demo complete" in out


def test_demo_can_keep_its_identities(tmp_path: Path) -> None:
    first = run("demo", "--messages", "1", "--data-dir", str(tmp_path))
    second = run("demo", "--messages", "1", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    alice = run("id", "--json", "--data-dir", str(tmp_path / "demo-alice"))
    assert json.loads(alice.stdout)["id"] in first.stdout
    assert json.loads(alice.stdout)["id"] in second.stdout
