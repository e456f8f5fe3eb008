"""``peerkit pair`` on a LAN of network namespaces (needs root): the code's rendezvous is found by
mDNS, and both become contacts; a wrong code fails on both hosts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peerkit.testing import NamespaceLan

pytestmark = pytest.mark.network

PEERKIT = [sys.executable, "-c", "from peerkit.cli import main; main()"]


def in_namespace(namespace: str, data_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", namespace, *PEERKIT, "--", *args, "--data-dir", str(data_dir), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PEERKIT_PORT_MAPPING": "off", "HOME": str(data_dir)},
    )


@pytest.mark.timeout(120)
def test_pairing_finds_the_code_by_mdns_and_a_wrong_code_fails_both_sides(
    lan: NamespaceLan, tmp_path: Path
) -> None:
    bridge = lan.bridge()
    ns_alice, (alice_address,) = lan.host(bridge)
    ns_bob, _ = lan.host(bridge)
    for name in ("alice", "bob"):
        made = subprocess.run(
            [*PEERKIT, "id", "--create", "--nickname", name, "--data-dir", str(tmp_path / name)],
            capture_output=True,
            check=False,
        )
        assert made.returncode == 0, made.stderr
    waiting = in_namespace(ns_alice, tmp_path / "alice", "pair")
    assert waiting.stdout is not None
    shown = json.loads(waiting.stdout.readline())
    code = shown["code"]
    assert shown["addresses"][0] == f"{alice_address}:{shown['port']}"  # (where bob's machine dials)
    joining = in_namespace(ns_bob, tmp_path / "bob", "pair", code)
    out, err = joining.communicate(timeout=60)
    assert joining.returncode == 0, err
    assert json.loads(out)["nickname"] == "alice"
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert json.loads(out)["nickname"] == "bob"
    # A wrong code: the words of another code at the same rendezvous number.
    waiting = in_namespace(ns_alice, tmp_path / "alice", "pair")
    assert waiting.stdout is not None
    code = json.loads(waiting.stdout.readline())["code"]
    number, first, second = code.split("-")
    wrong = f"{number}-{second}-{first}" if first != second else f"{number}-{first}-acorn"
    joining = in_namespace(ns_bob, tmp_path / "bob", "pair", wrong)
    _, err = joining.communicate(timeout=60)
    assert joining.returncode == 1
    assert err.startswith("error: the code")
    assert "is wrong" in err
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 1
    assert "another code" in err
