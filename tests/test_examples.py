"""The examples run and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_secure_echo() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "secure_echo.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Noise_XX_25519_ChaChaPoly_BLAKE2b: echo-server")
    assert lines[1].startswith("Noise_IK_25519_ChaChaPoly_BLAKE2b: echo-server")
    assert all(line.endswith("said 'hello, peer'") for line in lines)
