"""The examples run and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ON_BACKEND

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each example runs on both of anyio's backends."""
    return str(request.param)


def run_example(name: str, backend: str = "asyncio") -> subprocess.CompletedProcess[str]:
    """Run ``examples/NAME`` on ``backend`` and check that it exits with 0."""
    result = subprocess.run(
        [sys.executable, "-c", ON_BACKEND, backend, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_secure_echo(backend: str) -> None:
    result = run_example("secure_echo.py", backend)
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Noise_XX_25519_ChaChaPoly_BLAKE2b: echo-server")
    assert lines[1].startswith("Noise_IK_25519_ChaChaPoly_BLAKE2b: echo-server")
    assert all(line.endswith("said 'hello, peer'") for line in lines)


def test_invite_and_chat(backend: str) -> None:
    result = run_example("invite_and_chat.py", backend)
    assert result.stdout.splitlines() == ["alice invites bob: chat?", "ACCEPTED", "bob heard: hello"]


def test_contacts_and_presence(backend: str) -> None:
    result = run_example("contacts_and_presence.py", backend)
    lines = result.stdout.splitlines()
    # A slow handler may get Online and Busy merged into Busy: the latest presence wins.
    if lines[0] == "alice is ONLINE":
        lines = lines[1:]
    assert lines == [
        "alice is BUSY: in a call",
        "alice's picture ADDED: b'<png>'",
        "Presence(status=<PresenceStatus.BUSY: 5>, text='in a call')",
    ]


def test_a_discovery_provider_of_ones_own(backend: str) -> None:
    result = run_example("folder_discovery.py", backend)
    assert result.stdout.splitlines() == [
        "the folder provider passes the conformance check",
        "alice found bob through the folder",
    ]
