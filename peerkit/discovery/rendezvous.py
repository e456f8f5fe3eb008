"""Where two people pairing with a code find each other: on the LAN an mDNS service
``peerkit-pair-N._peerkit-pair._tcp.local.``, named from the code's number only (docs/protocol.md,
"Pairing"), pointing at the waiting node's port; on the Internet a BEP 44 item with the salt
``peerkit-pair-N`` holding the waiting node's signed record.

zeroconf's API is asyncio's: each call here runs zeroconf on an event loop of its own, in a worker
thread, so that it works the same under asyncio and trio, and leaves nothing behind when it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread

from peerkit.errors import DiscoveryError

if TYPE_CHECKING:
    from peerkit.dht.bep44 import MutableItem
    from peerkit.dht.node import DhtNode

__all__ = (
    "PAIR_SERVICE",
    "lookup_dht_rendezvous",
    "lookup_rendezvous",
    "publish_dht_rendezvous",
    "publish_rendezvous",
)

#: The mDNS service type of pairing rendezvous.
PAIR_SERVICE: Final = "_peerkit-pair._tcp.local."
#: Seconds a rendezvous is put again and again until a DHT node stores it, at most; and between.
_PUT_FOR: Final = 15.0
_PUT_AGAIN: Final = 0.5
#: DHT nodes known, at least, for a lookup that found nothing to be believed (not still joining).
_JOINED: Final = 3
#: Seconds one request for the rendezvous waits for an answer before it is asked again.
_ASK_EVERY: Final = 1.0


def _instance(name: str) -> str:
    return f"{name}.{PAIR_SERVICE}"


@asynccontextmanager
async def publish_rendezvous(name: str, port: int, addresses: Sequence[str]) -> AsyncIterator[None]:
    """Announce rendezvous ``name`` at ``port`` on ``addresses`` while the block runs.

    :raises DiscoveryError: when mDNS cannot start, or another host announces the same name (a
        rendezvous in use: pick another number).
    """
    started = threading.Event()
    failure: list[BaseException] = []
    stopping: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        from zeroconf import NonUniqueNameException, ServiceInfo
        from zeroconf.asyncio import AsyncZeroconf

        azc = AsyncZeroconf()
        try:
            info = ServiceInfo(
                PAIR_SERVICE,
                _instance(name),
                port=port,
                addresses=[ipaddress.ip_address(a).packed for a in addresses],
                properties={b"v": b"1"},
            )
            try:
                registering = await azc.async_register_service(info, allow_name_change=False)
                await registering  # (probed and announced: answered from now on)
            except NonUniqueNameException:
                raise DiscoveryError(f"rendezvous {name} is in use on this network") from None
            stop = asyncio.Event()
            stopping.append((asyncio.get_running_loop(), stop))
            started.set()
            await stop.wait()
            await azc.async_unregister_service(info)
        finally:
            await azc.async_close()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # (handed to the caller's thread)
            failure.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name=f"peerkit-rendezvous-{name}", daemon=True)
    thread.start()
    try:
        await anyio.to_thread.run_sync(started.wait)
        if failure:
            raise _as_discovery_error(failure[0])
        yield
    finally:
        for loop, stop in stopping:
            loop.call_soon_threadsafe(stop.set)
        await anyio.to_thread.run_sync(thread.join)


async def lookup_rendezvous(name: str, timeout: float) -> list[tuple[str, int]]:
    """The (address, port) pairs rendezvous ``name`` is announced at, asking for up to ``timeout``
    seconds; empty when nobody announces it.

    :raises DiscoveryError: when mDNS cannot start.
    """

    async def ask() -> list[tuple[str, int]]:
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        azc = AsyncZeroconf()
        try:
            await azc.zeroconf.async_wait_for_start()
            deadline = asyncio.get_running_loop().time() + timeout
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                # (asked again and again: one request's few queries can all be missed)
                info = AsyncServiceInfo(PAIR_SERVICE, _instance(name))
                if await info.async_request(azc.zeroconf, int(min(left, _ASK_EVERY) * 1000)) and info.port:
                    return [(address, info.port) for address in info.parsed_scoped_addresses()]
            return []
        finally:
            await azc.async_close()

    def run() -> list[tuple[str, int]]:
        return asyncio.run(ask())

    try:
        return await anyio.to_thread.run_sync(run)
    except Exception as exc:
        raise _as_discovery_error(exc) from None


def _as_discovery_error(exc: BaseException) -> BaseException:
    if isinstance(exc, DiscoveryError) or not isinstance(exc, Exception):
        return exc
    return DiscoveryError(f"mDNS could not start: {exc}")


#: The key pair every DHT rendezvous item is signed with. It is public on purpose: anyone may
#: write a rendezvous, as anyone on a LAN may announce one; what is found there is a node's own
#: signed record, and the code is checked by SPAKE2 on the stream.
_DHT_SEED: Final = hashlib.sha256(b"peerkit pairing rendezvous v1").digest()


def _rendezvous_item(name: str, envelope: bytes, seq: int) -> MutableItem:
    # The BEP 44 item of rendezvous ``name``, signed with the public rendezvous key.
    from nacl.signing import SigningKey

    from peerkit.dht.bencode import encode
    from peerkit.dht.bep44 import MutableItem, signed_bytes

    key = SigningKey(_DHT_SEED)
    salt, encoded = name.encode(), encode({b"r": envelope})
    signature = key.sign(signed_bytes(salt, seq, encoded)).signature
    return MutableItem(bytes(key.verify_key), salt, seq, encoded, bytes(signature))


def _rendezvous_key() -> bytes:
    from nacl.signing import SigningKey

    return bytes(SigningKey(_DHT_SEED).verify_key)


async def publish_dht_rendezvous(dht: DhtNode, name: str, envelope: bytes) -> None:
    """Put a node's signed record (``envelope``, fitted to a DHT item) under rendezvous ``name``
    on the DHT; an empty ``envelope`` withdraws it.

    :raises DiscoveryError: when no DHT node stored it.
    """
    item = _rendezvous_item(name, envelope, int(time.time() * 1000))  # (a newer one of a name wins)
    with anyio.move_on_after(_PUT_FOR):
        for _ in range(int(_PUT_FOR / _PUT_AGAIN)):  # (a DHT node that just started is still joining)
            if (await dht.put(item)).stored:
                return
            await anyio.sleep(_PUT_AGAIN)
    if envelope:
        raise DiscoveryError(f"no DHT node stored rendezvous {name} within {_PUT_FOR:g} s")


async def lookup_dht_rendezvous(dht: DhtNode, name: str, timeout: float) -> list[bytes]:
    """The signed records put under rendezvous ``name`` on the DHT (unverified: read them with
    :func:`~peerkit.discovery.base.read_record`), asking for up to ``timeout`` seconds."""
    key = _rendezvous_key()
    found: list[bytes] = []
    with anyio.move_on_after(timeout):
        for _ in range(int(timeout / _PUT_AGAIN) + 1):  # (asked again while this node is joining)
            for item in await dht.newest(key, name.encode(), timeout=timeout):
                value = item.decoded()
                envelope = value.get(b"r") if isinstance(value, dict) else None
                if isinstance(envelope, bytes) and envelope:
                    found.append(envelope)
            if found or len(dht.table) >= _JOINED:
                break
            await anyio.sleep(_PUT_AGAIN)
    return found
