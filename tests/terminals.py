"""What the tests of the command share: the command as users run it, a person's data dir, and
pseudo-terminals driven with pexpect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pexpect

#: ``peerkit`` as a user runs it (this interpreter, this checkout).
PEERKIT = [sys.executable, "-c", "from peerkit.cli import main; main()"]
#: A discovery provider that finds nobody: a test never uses mDNS on the host's network.
NOBODY = "static:127.0.0.1:9"


def person(directory: Path, nickname: str) -> dict[str, str]:
    """The environment of someone whose identity (with ``nickname``) is made in ``directory``."""
    env = {**os.environ, "PEERKIT_DATA_DIR": str(directory), "PEERKIT_PORT_MAPPING": "off"}
    made = subprocess.run(
        [*PEERKIT, "id", "--create", "--nickname", nickname], env=env, capture_output=True, check=False
    )
    assert made.returncode == 0, made.stderr
    return env


def terminal(*args: str, env: dict[str, str], namespace: str | None = None) -> pexpect.spawn:
    """``peerkit ARGS`` in a pseudo-terminal of 200 columns (in a network ``namespace``: a
    machine of a :class:`~peerkit.testing.NamespaceLan`)."""
    command = [*PEERKIT, *args]
    if namespace is not None:
        command = ["ip", "netns", "exec", namespace, *command]
    return pexpect.spawn(command[0], command[1:], env=env, encoding="utf-8", timeout=30, dimensions=(40, 200))


def printed(child: pexpect.spawn) -> str:
    """What ``child`` has written that no ``expect`` has read yet, without waiting (for the message
    of a failure elsewhere: what the other side of a conversation was doing)."""
    shown = []
    while True:
        try:
            shown.append(child.read_nonblocking(65536, timeout=0))
        except (pexpect.TIMEOUT, pexpect.EOF):
            return "".join(shown)


def exit_status(child: pexpect.spawn) -> int:
    """The exit code of ``child``, once it ended."""
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return int(child.exitstatus)
