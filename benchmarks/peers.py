"""The libraries peerkit is compared with, each in a virtual environment of its own.

A peer library may pin versions that peerkit cannot share (py-libp2p 0.8.1 wants an older
zeroconf), so each runs in its own venv under ``$PEERKIT_BENCH_PEERS`` (default:
``~/.cache/peerkit-bench-peers``), made with pip from the package index the first time a full
run needs it. A quick run never installs anything: a peer not set up yet is reported as skipped.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ("LIBP2P", "PEERS", "WORMHOLE", "Peer", "python_of")


@dataclass(frozen=True, slots=True)
class Peer:
    """A library to compare with: its name in tables, and what pip installs for it."""

    name: str
    #: The name of its venv's directory.
    slug: str
    requirements: tuple[str, ...]

    @property
    def directory(self) -> Path:
        root = Path(os.environ.get("PEERKIT_BENCH_PEERS", Path.home() / ".cache" / "peerkit-bench-peers"))
        digest = hashlib.sha256("\n".join(self.requirements).encode()).hexdigest()[:12]
        return root / f"{self.slug}-{digest}"


LIBP2P = Peer("py-libp2p 0.8.1", "libp2p", ("libp2p==0.8.1",))
#: The ``wormhole`` command, with the mailbox server and transit relay it needs, all run locally.
WORMHOLE = Peer(
    "magic-wormhole 0.24.0",
    "wormhole",
    ("magic-wormhole==0.24.0", "magic-wormhole-mailbox-server==0.8.0", "magic-wormhole-transit-relay==0.5.0"),
)
PEERS = (LIBP2P, WORMHOLE)


def python_of(peer: Peer, *, install: bool) -> tuple[Path | None, str]:
    """The interpreter of ``peer``'s venv, or None and why not. With ``install``, a venv not made
    yet is made (a few minutes, once)."""
    python = peer.directory / "bin" / "python"
    ready = peer.directory / "ready"
    if ready.exists():
        return python, ""
    if not install:
        return None, f"not set up (a full run of this benchmark installs it into {peer.directory})"
    print(f"setting up {peer.name} in {peer.directory} (once)...", file=sys.stderr)
    command = [sys.executable, "-m", "venv", str(peer.directory)]
    made = subprocess.run(command, capture_output=True, text=True, check=False)
    if made.returncode == 0:
        command = [str(python), "-m", "pip", "install", "-q", *peer.requirements]
        made = subprocess.run(command, capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return None, f"could not install {' '.join(peer.requirements)}: {made.stderr.strip()[-300:]}"
    ready.write_text("\n".join(peer.requirements))
    return python, ""
