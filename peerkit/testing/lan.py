"""A LAN of Linux network namespaces, for tests of real discovery (needs root and ``ip``)."""

from __future__ import annotations

import itertools
from typing import Self

__all__ = ("NamespaceLan",)

_lans = itertools.count(1)


# -- a LAN of network namespaces ------------------------------------------------------------------
class NamespaceLan:
    """A LAN made of Linux network namespaces, for tests of real discovery (needs root and ``ip``).

    Bridges live in a namespace of their own, so nothing touches the host's network. Each
    :meth:`host` is a namespace with one interface per bridge it joins, addressed
    ``10.<base>.<bridge>.<host>/24`` and ``fd00:<base>:<bridge>::<host>/64`` (``base`` defaults to
    231: private addresses the LAN owns).
    Use it as a context manager: everything is removed at the end, also after a failure.
    """

    def __init__(self, *, base: int = 231) -> None:
        import os

        self._prefix = f"pk{os.getpid() % 100000}x{next(_lans)}"
        self._base = base
        self._namespaces: list[str] = []
        self._bridges = 0
        self._hosts = 0
        self._cables: dict[str, list[str]] = {}
        self._hub = f"{self._prefix}hub"

    @staticmethod
    def available() -> str | None:
        """None when namespaces can be made here, else the reason they cannot."""
        import os
        import shutil

        if shutil.which("ip") is None:
            return "the ip command (iproute2) is missing"
        if os.geteuid() != 0:
            return "making network namespaces needs root"
        return None

    def ipv6(self, host: int, bridge: int) -> str:
        """The IPv6 address of the ``host``-th host (from 1) on ``bridge``."""
        return f"fd00:{self._base}:{bridge}::{host}"

    def ip(self, namespace: str, *args: str) -> None:
        """Run ``ip ARGS`` inside ``namespace`` (add an address, take a link down, ...).

        :raises RuntimeError: when it fails, with ip's message.
        """
        self._ip(*args, namespace=namespace)

    def _ip(self, *args: str, namespace: str | None = None) -> None:
        import subprocess

        command = ["ip", *(["-n", namespace] if namespace else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")

    def _namespace(self, name: str) -> str:
        self._ip("netns", "add", name)
        self._namespaces.append(name)
        self._ip("link", "set", "lo", "up", namespace=name)
        return name

    def __enter__(self) -> Self:
        self._namespace(self._hub)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every namespace (and with them every interface) this LAN made."""
        import contextlib as _contextlib

        for name in reversed(self._namespaces):
            with _contextlib.suppress(RuntimeError):
                self._ip("netns", "del", name)
        self._namespaces.clear()

    def plug(self, namespace: str, plugged: bool, *, index: int = 0) -> None:
        """Pull out (``plugged=False``) or plug back in the cable of a host's ``index``-th interface:
        the switch's end goes down, so the host's packets are lost without any error it can see."""
        self._ip(
            "link", "set", self._cables[namespace][index], "up" if plugged else "down", namespace=self._hub
        )

    def bridge(self) -> int:
        """Add a bridge (a switch); returns its number."""
        self._bridges += 1
        self._ip("link", "add", f"br{self._bridges}", "type", "bridge", namespace=self._hub)
        self._ip("link", "set", f"br{self._bridges}", "up", namespace=self._hub)
        return self._bridges

    def host(self, *bridges: int) -> tuple[str, list[str]]:
        """Add a host plugged into ``bridges``; returns its namespace name and its IPv4 addresses
        (one per bridge; :meth:`ipv6` gives the IPv6 ones)."""
        self._hosts += 1
        name = self._namespace(f"{self._prefix}h{self._hosts}")
        addresses = []
        for index, bridge in enumerate(bridges):
            inside, outside = f"eth{index}", f"h{self._hosts}b{bridge}"
            self._cables.setdefault(name, []).append(outside)
            self._ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name,
                     namespace=self._hub)  # fmt: skip
            self._ip("link", "set", outside, "master", f"br{bridge}", "up", namespace=self._hub)
            address = f"10.{self._base}.{bridge}.{self._hosts}"
            self._ip("addr", "add", f"{address}/24", "dev", inside, namespace=name)
            self._ip("addr", "add", f"fd00:{self._base}:{bridge}::{self._hosts}/64", "dev", inside, "nodad",
                     namespace=name)  # fmt: skip
            self._ip("link", "set", inside, "multicast", "on", "up", namespace=name)
            addresses.append(address)
        # Multicast leaves through the first interface unless a socket chooses another.
        self._ip("route", "add", "224.0.0.0/4", "dev", "eth0", namespace=name)
        return name, addresses
