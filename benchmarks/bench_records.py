"""``records``: signed-record verifications per second, and mDNS packets handled per second under a
flood of 1000 distinct forged records, with the peak memory.

- verifications: the directory's whole check of a record (decode, canonical form, Ed25519, seq)
  beside the bare Ed25519 verification of the same bytes with pynacl (the floor).
- flood: 1000 mDNS announcements (PTR, SRV, TXT with a forged record, A), each of a different
  instance, sent over the loopback interface to a running mDNS provider; timed until every one has
  been looked at and refused. The reference is plain zeroconf handling the same packets (a browser
  that resolves each new instance, as an application would), in the same run, taking turns.
  Peak RSS of the process (ru_maxrss) is reported before and after.
"""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import nacl.signing
from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from benchmarks.harness import Progress, Result, interleaved, median, ratio
from peerkit.discovery import Announcement, Directory, MdnsDiscovery, make_record
from peerkit.discovery.mdns import SERVICE_TYPE, txt_for
from peerkit.identity import Identity
from peerkit.proto import messages
from peerkit.proto.records import RECORD_DOMAIN

NAME = "records"
ROUNDS = 5
FLOOD = 1000
STEPS = 2 * ROUNDS + 2 * 3
_FLAGS_RESPONSE = 0x8400


def _signed(count: int) -> list[tuple[Identity, bytes]]:
    return [
        (i, make_record(i, 1, nickname="n", endpoint_name="", endpoints=[("10.0.0.1", 7000)]))
        for i in (Identity.generate() for _ in range(count))
    ]


def _verifications(progress: Progress, rounds: int, seconds: float) -> tuple[list[float], list[float]]:
    pool = _signed(1000)
    directory = Directory(Identity.generate().id, capacity=2000)
    opened = []
    for identity, envelope in pool:
        outer = messages.decode(envelope)
        opened.append(
            (nacl.signing.VerifyKey(bytes(identity.id)), RECORD_DOMAIN + outer["body"], outer["sig"])
        )
    state = {"i": 0, "j": 0}

    def ours() -> None:
        state["i"] = (state["i"] + 1) % len(pool)
        directory.found(pool[state["i"]][1], source="bench")

    def floor() -> None:
        state["j"] = (state["j"] + 1) % len(opened)
        key, message, signature = opened[state["j"]]
        key.verify(message, signature)

    samples = interleaved({"ours": ours, "floor": floor}, rounds, seconds, progress)
    assert directory.stats.invalid == 0
    return samples["ours"], samples["floor"]


def _flood_packets(tag: str) -> list[bytes]:
    packets = []
    for index in range(FLOOD):
        identity = Identity.generate()
        envelope = bytearray(
            make_record(identity, 1, nickname="x", endpoint_name="", endpoints=[("127.0.0.1", 7000)])
        )
        envelope[-1] ^= 1  # a broken signature
        announcement = Announcement(
            id=identity.id, nickname="x", port=7000, hosts=("127.0.0.1",), envelope=bytes(envelope)
        )
        info = ServiceInfo(
            SERVICE_TYPE,
            f"{tag}{index}-{str(identity.id)[:8]}.{SERVICE_TYPE}",
            port=7000,
            properties=txt_for(announcement),
            server=f"{tag}{index}.local.",
            parsed_addresses=["127.0.0.1"],
        )
        out = DNSOutgoing(_FLAGS_RESPONSE)
        for record in (info.dns_pointer(), info.dns_service(), info.dns_text(), *info.dns_addresses()):
            out.add_answer_at_time(record, 0)
        packets += out.packets()
    return packets


async def _send(packets: list[bytes], handled: Callable[[], int], window: int = 64) -> None:
    """Send ``packets`` keeping at most ``window`` of them unhandled (so that the kernel does not
    drop them and the receiver's processing is what is measured); returns when all are handled,
    or when nothing more was handled for a second (lost packets)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sent = 0
        last, last_change = -1, time.perf_counter()
        while True:
            done = handled()
            now = time.perf_counter()
            if done != last:
                last, last_change = done, now
            if done >= len(packets) or now - last_change > 1.0:
                return
            while sent < len(packets) and sent - done < window:
                sender.sendto(packets[sent], ("224.0.0.251", 5353))
                sent += 1
            await anyio.sleep(0.001)


async def _ours(packets: list[bytes]) -> float:
    directory = Directory(Identity.generate().id)
    provider = MdnsDiscovery(interfaces=["127.0.0.1"], ip_version="v4", query_timeout=1)
    async with anyio.create_task_group() as tg:
        session: Any = await tg.start(provider.run, directory)
        await anyio.sleep(0.3)
        start = time.perf_counter()
        await _send(packets, lambda: directory.stats.invalid + session.malformed)
        elapsed = time.perf_counter() - start
        handled: int = directory.stats.invalid + session.malformed
        assert directory.stats.accepted == 0
        assert len(directory) == 0
        tg.cancel_scope.cancel()
    return handled / elapsed


async def _plain(packets: list[bytes]) -> float:
    azc = AsyncZeroconf(interfaces=["127.0.0.1"])
    resolved = 0
    async with anyio.create_task_group() as tg:

        async def resolve(zc: Zeroconf, name: str) -> None:
            nonlocal resolved
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if await info.async_request(zc, 1000):
                resolved += 1

        def changed(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            if state_change is ServiceStateChange.Added:
                tg.start_soon(resolve, zeroconf, name)

        browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[changed])
        await anyio.sleep(0.3)
        start = time.perf_counter()
        await _send(packets, lambda: resolved)
        elapsed = time.perf_counter() - start
        await browser.async_cancel()
        await azc.async_close()
    return resolved / elapsed


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _floods(progress: Progress, rounds: int) -> tuple[list[float], list[float], float, float]:
    ours, plain = [], []
    before = _rss_mib()
    for index in range(rounds):
        ours.append(await _ours(_flood_packets(f"o{index}x")))
        progress()
        plain.append(await _plain(_flood_packets(f"p{index}x")))
        progress()
    return ours, plain, before, _rss_mib()


def run(progress: Progress, quick: bool = False) -> list[Result]:
    rounds = 2 if quick else ROUNDS
    ours, floor = _verifications(progress, rounds, 0.2 if quick else 1.0)
    flood_ours, flood_plain, rss_before, rss_after = anyio.run(_floods, progress, 1 if quick else 3)
    return [
        Result(
            NAME,
            "signed records verified/s by the directory",
            "/s",
            median(ours),
            "bare Ed25519 verify (pynacl)",
            median(floor),
            ratio(ours, floor),
            None,
        ),
        Result(
            NAME,
            f"mDNS packets handled/s, flood of {FLOOD} forged records",
            "/s",
            median(flood_ours),
            "plain zeroconf browsing and resolving them",
            median(flood_plain),
            ratio(flood_ours, flood_plain),
            None,
        ),
        Result(
            NAME,
            "peak RSS of the process after the floods (MiB; ratio = before/after)",
            "MiB",
            rss_after,
            "peak RSS before the floods",
            rss_before,
            rss_before / rss_after,
            None,
        ),
    ]
