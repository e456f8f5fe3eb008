"""A LAN of Linux network namespaces, for tests of real discovery (needs root and ``ip``)."""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Literal, Self

__all__ = ("HomeRouter", "NamespaceLan")

_lans = itertools.count(1)


# -- a LAN of network namespaces ------------------------------------------------------------------
class NamespaceLan:
    """A LAN made of Linux network namespaces, for tests of real discovery (needs root and ``ip``).

    Bridges live in a namespace of their own, so nothing touches the host's network. Each
    :meth:`host` is a namespace with one interface per bridge it joins, addressed
    ``10.<base>.<bridge>.<host>/24`` and ``fd00:<base>:<bridge>::<host>/64`` (``base`` defaults to
    231: private addresses the LAN owns), all usable at once (its namespaces do no duplicate
    address detection, which leaves a new IPv6 address unusable for a second or two).
    :meth:`internet` adds a bridge that stands for the Internet, and :meth:`router` a home router
    between it and a LAN of its own (NAT, a stateful firewall, and optionally miniupnpd).
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
        self._first_octet: dict[int, int] = {}
        self._daemons: list[subprocess.Popen[bytes]] = []
        self._files: tempfile.TemporaryDirectory[str] | None = None

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
        # Its interfaces' IPv6 addresses (the link-local ones too) usable at once, not tentative
        # for the second duplicate address detection takes: a program started then (zeroconf
        # binding to each address) would find them missing.
        self._run(name, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        return name

    def __enter__(self) -> Self:
        self._namespace(self._hub)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every namespace (and with them every interface) this LAN made."""
        import contextlib as _contextlib

        for daemon in self._daemons:
            daemon.terminate()
            try:
                daemon.wait(5)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        self._daemons.clear()
        if self._files is not None:
            self._files.cleanup()
            self._files = None
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

    def internet(self) -> int:
        """Add a bridge that stands for the Internet; returns its number. Its hosts get addresses
        ``11.<base>.<bridge>.<host>``: from public address space, so that a router daemon takes
        them as public addresses, but they exist only in this LAN's namespaces, which have no
        way out to the host's network."""
        bridge = self.bridge()
        self._first_octet[bridge] = 11
        return bridge

    def host(self, *bridges: int, gateway: str | None = None) -> tuple[str, list[str]]:
        """Add a host plugged into ``bridges``; returns its namespace name and its IPv4 addresses
        (one per bridge; :meth:`ipv6` gives the IPv6 ones). With ``gateway``, its default route
        goes there (a host behind a :meth:`router`)."""
        self._hosts += 1
        name = self._namespace(f"{self._prefix}h{self._hosts}")
        addresses = []
        for index, bridge in enumerate(bridges):
            inside, outside = f"eth{index}", f"h{self._hosts}b{bridge}"
            self._cables.setdefault(name, []).append(outside)
            self._ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name,
                     namespace=self._hub)  # fmt: skip
            self._ip("link", "set", outside, "master", f"br{bridge}", "up", namespace=self._hub)
            address = f"{self._first_octet.get(bridge, 10)}.{self._base}.{bridge}.{self._hosts}"
            self._ip("addr", "add", f"{address}/24", "dev", inside, namespace=name)
            self._ip("addr", "add", f"fd00:{self._base}:{bridge}::{self._hosts}/64", "dev", inside, "nodad",
                     namespace=name)  # fmt: skip
            self._ip("link", "set", inside, "multicast", "on", "up", namespace=name)
            addresses.append(address)
        # Multicast leaves through the first interface unless a socket chooses another.
        self._ip("route", "add", "224.0.0.0/4", "dev", "eth0", namespace=name)
        if gateway is not None:
            self._ip("route", "add", "default", "via", gateway, namespace=name)
        return name, addresses

    def router(
        self, uplink: int, *, nat: Literal["preserving", "random"] = "preserving", upnp: bool = False
    ) -> HomeRouter:
        """A home router: a host on ``uplink`` (its public side, ``eth0``) and on a new bridge
        (its LAN, ``eth1``). It forwards from its LAN, rewrites what leaves through ``eth0`` to
        its own address (``"preserving"``: Linux's masquerade, which keeps each port when it can;
        ``"random"``: a random port per connection, like a symmetric NAT), and drops what arrives
        unasked (forwarded or for itself, as home routers do). With ``upnp`` it runs miniupnpd on
        its LAN side (UPnP IGD, NAT-PMP and PCP), which maps ports by adding rules to its
        firewall. Put hosts behind it with
        ``lan.host(router.lan, gateway=router.lan_address)``.

        :raises RuntimeError: when a command fails (nft or miniupnpd missing, for instance).
        """
        lan = self.bridge()
        name, (public, lan_address) = self.host(uplink, lan)
        self._run(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        masquerade = "masquerade fully-random" if nat == "random" else "masquerade"
        rules = f"""
table inet filter {{
  chain forward {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "eth1" oifname "eth0" accept
    jump forwardUPnP
  }}
  chain forwardUPnP {{
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname "eth0" ct state new drop
  }}
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    jump UPnP
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    jump UPnP-Postrouting
    oifname "eth0" {masquerade}
  }}
  chain UPnP {{
  }}
  chain UPnP-Postrouting {{
  }}
}}
"""
        self._run(name, "nft", "-f", "-", stdin=rules)
        router = HomeRouter(namespace=name, public_address=public, lan=lan, lan_address=lan_address, nat=nat)
        if upnp:
            self._miniupnpd(router)
        return router

    def firewall(self, namespace: str) -> None:
        """Put a stateful firewall on the host ``namespace`` itself (no NAT): what it opens goes
        out and its answers come back; connections it did not open are dropped silently, as a
        host with a public address behind a firewall only.

        :raises RuntimeError: when nft fails (missing, for instance).
        """
        rules = """
table inet host_firewall {
  chain input {
    type filter hook input priority 0; policy drop;
    iifname "lo" accept
    ct state established,related accept
  }
}
"""
        self._run(namespace, "nft", "-f", "-", stdin=rules)

    def _run(self, namespace: str, *command: str, stdin: str | None = None) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, *command],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed in {namespace}: {done.stderr.strip()}")

    def _miniupnpd(self, router: HomeRouter) -> None:
        from pathlib import Path

        if self._files is None:
            self._files = tempfile.TemporaryDirectory(prefix="peerkit-lan-")
        base = Path(self._files.name) / router.namespace
        conf, log = base.with_suffix(".conf"), base.with_suffix(".log")
        subnet = router.lan_address.rsplit(".", 1)[0] + ".0/24"
        conf.write_text(
            "ext_ifname=eth0\nlistening_ip=eth1\nenable_natpmp=yes\nenable_upnp=yes\n"
            "secure_mode=yes\nsystem_uptime=yes\n"
            f"uuid=822054b9-5cc4-46d1-993a-{os.getpid() % 10**12:012d}\n"
            "upnp_table_name=filter\nupnp_nat_table_name=filter\nupnp_forward_chain=forwardUPnP\n"
            "upnp_nat_chain=UPnP\nupnp_nat_postrouting_chain=UPnP-Postrouting\n"
            f"lease_file={base.with_suffix('.leases')}\n"
            f"allow 1024-65535 {subnet} 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
            "ascii",
        )
        command = ["miniupnpd", "-d", "-f", str(conf), "-P", str(base.with_suffix(".pid"))]
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                ["ip", "netns", "exec", router.namespace, *command], stdout=out, stderr=out
            )
        self._daemons.append(daemon)
        deadline = time.monotonic() + 10
        while b"Listening for NAT-PMP" not in log.read_bytes():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"miniupnpd did not start: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
        router.upnp_log = str(log)


@dataclass(slots=True, kw_only=True)
class HomeRouter:
    """A home router of a :class:`NamespaceLan` (see :meth:`NamespaceLan.router`)."""

    #: Its namespace.
    namespace: str
    #: Its address on the Internet side (what peers elsewhere see its hosts as).
    public_address: str
    #: The bridge of its LAN, and its address there (its hosts' gateway).
    lan: int
    lan_address: str
    #: ``"preserving"`` or ``"random"``.
    nat: str
    #: miniupnpd's log, when it runs one.
    upnp_log: str | None = None
