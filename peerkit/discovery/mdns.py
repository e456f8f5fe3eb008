"""LAN discovery over multicast DNS (docs/protocol.md section 6), on zeroconf's asyncio API.

The node's signed record travels in the TXT record of a ``_peerkit._tcp.local.`` service instance
named ``<nickname>-<first 8 id characters>``: ``v=1``, ``id=<base32 id>``, and the envelope in
base64url over ``r0``, ``r1``, ... The SRV record gives the port, A/AAAA records the addresses.

A node probes for its instance name before it announces it, as RFC 6762 section 8.1 says: after a
random 0-250 ms, three queries 250 ms apart for the name (type ANY, unicast response requested),
each carrying the proposed SRV, TXT and address records in its authority section, then 250 ms more
to hear a conflict. (zeroconf's own probing asks for the service type with 500 ms between probes
and carries only the PTR record; peerkit probes itself and then registers without it.)

The probes carry the signed record in their TXT. Records in a probe are not cached as DNS answers
(the RFC forbids it), but peerkit does not need DNS to vouch for a record that carries its own
signature: a verified record heard in a probe is reported at once, and the instance is then
followed like any other (it is lost if it does not announce within a few seconds).

Liveness follows RFC 6762 section 5.2: while a peer is known, its SRV/TXT records are queried again
at 75%, 85% and 95% of their TTL; a peer whose records expire, or that says goodbye, is lost. (A
goodbye or expiry of the PTR record alone is not enough: zeroconf holds PTR records for at least
1125 s.)

An instance name proves nothing: anyone can announce under any name. So every id heard under a
name is followed on its own (from the TXT of every response and probe, not only the one record
zeroconf's cache keeps per name): a stranger announcing under a peer's name is listed beside the
peer under its own id and takes nothing from it; a goodbye takes only the id its own TXT carries.
A node that finds its name taken when it publishes takes the next one (``alice-abcd1234 (2)``, as
RFC 6762 section 9 says).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import random
import re
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf._dns import DNSQuestion, DNSText
from zeroconf._protocol.incoming import DNSIncoming
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from peerkit.discovery.base import Announcement, DiscoverySession, DiscoverySink, read_record
from peerkit.errors import InvalidRecord
from peerkit.identity import PeerId
from peerkit.model import Scope, check_seconds
from peerkit.net.transport import kept_to, network_interfaces
from peerkit.proto.records import MAX_ENVELOPE

__all__ = ("SERVICE_TYPE", "MdnsDiscovery", "envelope_from_txt", "txt_for")

_NO_GOODBYE: Final = (0.0, b"")

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_peerkit._tcp.local."
_TYPE_SRV: Final = 33
_TYPE_TXT: Final = 16
_TYPE_ANY: Final = 255
_CLASS_IN: Final = 1
#: In a question: a unicast response is requested ("QU", RFC 6762 section 5.4).
_CLASS_QU: Final = 0x8000
#: Probing (RFC 6762 section 8.1): the random delay before the first probe, the interval, the count.
_PROBE_DELAY: Final = 0.25
_PROBE_INTERVAL: Final = 0.25
_PROBES: Final = 3
_FLAGS_QUERY: Final = 0
#: Characters of the envelope's base64url text per TXT string (``rN=`` + this fits in 255 bytes).
_CHUNK: Final = 240
_IP_VERSIONS: Final = {"all": IPVersion.All, "v4": IPVersion.V4Only, "v6": IPVersion.V6Only}
#: Lookups of newly heard instances that may run at once, and that may wait.
_LOOKUPS: Final = 16
_PENDING: Final = 4096
#: Seconds an instance heard only in a probe may go without announcing before it is lost.
_PROBE_GRACE: Final = 3.0
#: Instance names a node tries ("alice-abcd1234", then "... (2)", ...) before it gives up.
_RENAMES: Final = 10
#: Seconds the ids under a name that said goodbye have to answer a query before they are lost.
_CONFIRM: Final = 2.0


def _txt_properties(text: bytes) -> dict[bytes, bytes | None]:
    # RFC 6763 section 6: length-prefixed "key=value" strings; the first of a key wins.
    properties: dict[bytes, bytes | None] = {}
    at = 0
    while at < len(text):
        length = text[at]
        item = text[at + 1 : at + 1 + length]
        at += 1 + length
        key, sep, value = item.partition(b"=")
        if key and key.lower() not in properties:
            properties[key.lower()] = value if sep else None
    return properties


class _ProbeTap(asyncio.DatagramProtocol):
    # Sits in front of a zeroconf listener: sees each datagram first, then hands it on unchanged.
    def __init__(self, inner: Any, on_packet: Any) -> None:
        self.inner = inner
        self.on_packet = on_packet

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # A response (QR set) with answers, or a query with authority records (a probe, RFC 6762
        # section 8.2), that names the peerkit service (its first mention is never compressed).
        if len(data) > 12 and b"_peerkit" in data:
            response = data[2] & 0x80
            if (response and (data[6] or data[7])) or (not response and (data[8] or data[9])):
                try:
                    self.on_packet(data, addr[0] if isinstance(addr, tuple) and addr else None)
                except Exception as exc:  # nothing a stranger sends may stop zeroconf's own handling
                    log.debug("ignoring an mDNS packet: %r", exc)
        self.inner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.inner.error_received(exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def txt_for(announcement: Announcement) -> dict[str, str]:
    """The TXT properties that carry ``announcement``'s signed record."""
    text = base64.urlsafe_b64encode(announcement.envelope).decode("ascii").rstrip("=")
    properties = {"v": "1", "id": str(announcement.id)}
    for index in range(0, max(len(text), 1), _CHUNK):
        properties[f"r{index // _CHUNK}"] = text[index : index + _CHUNK]
    return properties


def envelope_from_txt(properties: dict[bytes, bytes | None]) -> tuple[bytes, bytes] | None:
    """The id (32 bytes, as claimed: not checked to be a valid key) and the envelope a TXT record
    carries, or None when it carries none (or a malformed one)."""
    if properties.get(b"v") != b"1":
        return None
    id_text = properties.get(b"id")
    parts = []
    index = 0
    while (part := properties.get(f"r{index}".encode())) is not None:
        parts.append(part)
        index += 1
    if id_text is None or not parts:
        return None
    text = b"".join(parts)
    if len(text) > MAX_ENVELOPE * 4 // 3 + 4:
        return None
    try:
        # Not PeerId.parse: checking the key costs more than the signature check that follows, which
        # a forged record fails anyway (and a flood of them should be cheap to refuse).
        key = base64.b32decode(id_text.upper() + b"=" * (-len(id_text) % 8))
        envelope = base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        return None
    if len(key) != 32:
        return None
    return key, envelope


def _instance_label(announcement: Announcement) -> str:
    nickname = re.sub(r"[.\x00-\x1f\x7f]", "-", announcement.nickname) or "peerkit"
    suffix = f"-{str(announcement.id)[:8]}"
    while len((nickname + suffix).encode()) > 63:
        nickname = nickname[:-1]
    return nickname + suffix


def _interface(text: object) -> str:
    # An interface as it was given: an address of it (written as ipaddress writes it), or its name.
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"an mDNS interface is an address of it or its name (as eth0), not {text!r}")
    try:
        return str(ipaddress.ip_address(text.strip("[] ")))
    except ValueError:
        return text.strip()


class MdnsDiscovery:
    """People near me over multicast DNS (NEAR_ME).

    :param interfaces: the interfaces to use, each by an address of it (IPv4 or IPv6) or by its
        name (``eth0``: its addresses when the node starts). Default: where the node listens:
        every interface for a node on every address, and the interface of its address alone for
        a node given one (a node kept to loopback is not announced on the LAN: it meets this
        machine's nodes on IPv4's loopback, which carries multicast, as IPv6's does not).
    :param ip_version: ``"all"`` (IPv4 and IPv6, the default), ``"v4"`` or ``"v6"``.
    :param ttl: seconds the published records live (RFC 6762 suggests 120); a peer that vanishes
        without a goodbye is lost within this time. Tests make it short.
    :param query_timeout: seconds to wait for the records of a newly heard instance.
    :param interface_check: seconds between checks for new or removed interfaces (when it uses
        every interface).
    """

    scopes = Scope.NEAR_ME

    def __init__(
        self,
        *,
        interfaces: Sequence[str] | None = None,
        ip_version: str = "all",
        ttl: float = 120,
        query_timeout: float = 3.0,
        interface_check: float = 10.0,
    ) -> None:
        if isinstance(interfaces, str):  # (one interface: not a sequence of one-letter ones)
            interfaces = [interfaces]
        if interfaces is not None:
            interfaces = [_interface(i) for i in interfaces]
            if not interfaces:
                raise ValueError("interfaces must name at least one interface (or be None for all)")
        self.interfaces = interfaces
        if ip_version not in _IP_VERSIONS:
            raise ValueError(f"ip_version must be one of {', '.join(_IP_VERSIONS)}, not {ip_version!r}")
        self.ip_version = ip_version
        ttl = check_seconds(ttl, "ttl")
        if not 1 <= ttl <= 4500:
            raise ValueError(f"ttl must be 1..4500 seconds, not {ttl:g}")
        self.ttl = int(ttl)
        if not query_timeout > 0 or not interface_check > 0:
            raise ValueError("query_timeout and interface_check must be positive")
        self.query_timeout = query_timeout
        self.interface_check = interface_check

    #: zeroconf's API is asyncio's: on trio, the node runs this provider on an asyncio loop in a
    #: thread of its own (:mod:`peerkit.discovery.island`).
    asyncio_only = True

    @property
    def name(self) -> str:
        """``mdns``."""
        return "mdns"

    async def run(self, sink: DiscoverySink, *, task_status: anyio.abc.TaskStatus[DiscoverySession]) -> None:
        """Serve one node until cancelled (see :class:`~peerkit.discovery.DiscoveryProvider`)."""
        listen_host = getattr(sink, "listen_host", None)
        interfaces, ip_version = self._where(listen_host if isinstance(listen_host, str) else None)
        azc = AsyncZeroconf(
            interfaces=interfaces if interfaces is not None else InterfaceChoice.All,
            ip_version=_IP_VERSIONS[ip_version],
        )
        session = _Session(self, azc, sink)
        await azc.zeroconf.async_wait_for_start()
        session.tap()
        try:
            async with anyio.create_task_group() as tg:
                session.tg = tg
                browser = AsyncServiceBrowser(
                    azc.zeroconf, [SERVICE_TYPE], handlers=[session.on_state_change]
                )
                try:
                    tg.start_soon(session.keep_fresh)
                    tg.start_soon(session.look_up)
                    tg.start_soon(session.publish_loop)
                    if interfaces is None:
                        tg.start_soon(session.follow_interfaces)
                    task_status.started(session)
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        await browser.async_cancel()
        finally:
            with anyio.CancelScope(shield=True):
                session.forget_all()
                with anyio.move_on_after(2):
                    await session.goodbye()
                await azc.async_close()

    def _where(self, listen_host: str | None) -> tuple[list[str] | None, str]:
        # The interfaces (None: all of them) and IP version to use: those given, or where the
        # node listens -- the interface of its one address, in that address's family.
        if self.interfaces is not None:
            return self._addresses(self.interfaces), self.ip_version
        one = kept_to(listen_host)
        if one is None:  # (every address, or a host name: every interface)
            return None, self.ip_version
        if one.is_loopback and self.ip_version != "v6":
            # (IPv4's loopback carries multicast, IPv6's does not: this machine's nodes meet there)
            return ["127.0.0.1"], "v4"
        family = f"v{one.version}"
        if self.ip_version not in ("all", family):
            raise ValueError(
                f"the node listens on {one} only, and the mDNS provider is for IP{self.ip_version} "
                "(ip_version): give it interfaces=[...] or listen on that family"
            )
        return [str(one)], family

    def _addresses(self, given: list[str]) -> list[str]:
        # The interfaces given, each name as that interface's addresses now (of the IP version).
        found: list[str] = []
        named: dict[str, list[str]] | None = None
        for entry in given:
            if _is_address(entry):
                found.append(entry)
                continue
            named = named if named is not None else network_interfaces()
            if entry not in named:
                raise ValueError(
                    f"this machine has no network interface {entry!r} (it has {', '.join(named)})"
                )
            version = {"all": None, "v4": False, "v6": True}[self.ip_version]
            addresses = [a for a in named[entry] if version is None or (":" in a) == version]
            if not addresses:
                kind = {"all": "", "v4": "IPv4 ", "v6": "IPv6 "}[self.ip_version]
                raise ValueError(f"network interface {entry!r} has no {kind}address")
            found += addresses
        return list(dict.fromkeys(found))

    def __repr__(self) -> str:
        return f"<MdnsDiscovery interfaces={self.interfaces or 'all'} ttl={self.ttl}>"


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class _Session:
    def __init__(self, provider: MdnsDiscovery, azc: AsyncZeroconf, sink: DiscoverySink) -> None:
        self.provider = provider
        self.azc = azc
        self.zc: Zeroconf = azc.zeroconf
        self.sink = sink
        self.tg: anyio.abc.TaskGroup | None = None
        # instance name -> each id heard under it -> when it expires (ms): a stranger speaking
        # under a peer's name adds its own id beside the peer's, and takes nothing from it
        self.names: dict[str, dict[PeerId, float]] = {}
        self.asked: dict[str, float] = {}  # instance name -> when its records were last queried
        # envelope said goodbye to -> until when it is not believed again, under any name (a
        # renamed node's probe of its new name may come after the goodbye of the old one)
        self.goodbyes: dict[bytes, tuple[float, bytes]] = {}  # (until, the id that signed it)
        self.pending: dict[str, None] = {}
        # instance name -> the address its last TXT record came from (the tap sees every packet
        # before zeroconf does, so a record zeroconf resolves is told where it came from too)
        self.origins: dict[str, str] = {}
        self.wake_lookups = anyio.Event()
        # Publication: what is wanted, and what is registered.
        self.wanted: Announcement | None = None
        self.registered: ServiceInfo | None = None
        self.changed = anyio.Event()
        self.settled = anyio.Event()
        self.settled.set()
        #: TXT records that carried no usable record, or a record of another id than they claim.
        self.malformed = 0

    # -- publishing ---------------------------------------------------------------------------
    async def publish(self, announcement: Announcement) -> None:
        if not isinstance(announcement, Announcement):
            raise TypeError(f"expected an Announcement, not {type(announcement).__name__}")
        self.wanted = announcement
        self.settled = anyio.Event()
        self.changed.set()
        await anyio.lowlevel.checkpoint()

    async def withdraw(self) -> None:
        self.wanted = None
        self.settled = anyio.Event()
        self.changed.set()
        await self.settled.wait()

    async def resolve(self, peer_id: PeerId) -> list[bytes]:
        await anyio.lowlevel.checkpoint()
        return []

    async def publish_loop(self) -> None:
        # Registration probes (about a second); doing it here keeps sign_in() quick and lets the
        # latest wish win when several come while one is under way.
        while True:
            await self.changed.wait()
            self.changed = anyio.Event()
            try:
                await self._apply(self.wanted)
            except Exception as exc:  # a name conflict, a socket error: logged, the node goes on
                log.warning("mDNS publication failed: %s", exc)
            if not self.changed.is_set():
                self.settled.set()

    async def _apply(self, announcement: Announcement | None) -> None:
        old = self.registered
        if announcement is None:
            if old is not None:
                self.registered = None
                await self.azc.async_unregister_service(old)
                await anyio.lowlevel.checkpoint()
            return
        info = self._info(announcement)
        if old is not None and old.name == info.name:
            self.registered = info
            await self.azc.async_update_service(info)
            return
        if old is not None:
            # A new instance name (the nickname changed): update the old instance's TXT first, so
            # peers see the change at once, then register the new name and retire the old one.
            moved = self._info(announcement, name=old.name)
            self.registered = moved
            await self.azc.async_update_service(moved)
        label = _instance_label(announcement)
        for attempt in range(1, _RENAMES + 1):
            try:
                await self._probe(info)
                await self.azc.async_register_service(info, cooperating_responders=True)
                break
            except NonUniqueNameException:
                # RFC 6762 section 9: another host holds the name; take the next one.
                taken = info.name
                info = self._info(announcement, name=f"{label} ({attempt + 1}).{SERVICE_TYPE}")
                log.warning("the mDNS name %s is taken on this network; trying %s", taken, info.name)
        else:
            log.warning("no free mDNS name after %d tries; keeping %s", _RENAMES, old and old.name)
            return
        self.registered = info
        if old is not None:
            await self.azc.async_unregister_service(moved)

    def _info(self, announcement: Announcement, *, name: str | None = None) -> ServiceInfo:
        label = _instance_label(announcement)
        addresses = []
        for host in announcement.hosts:
            with contextlib.suppress(ValueError):
                addresses.append(str(ipaddress.ip_address(host)))
        return ServiceInfo(
            SERVICE_TYPE,
            name or f"{label}.{SERVICE_TYPE}",
            port=announcement.port,
            properties=txt_for(announcement),
            server=f"pk-{str(announcement.id)[:16]}.local.",
            parsed_addresses=addresses,
            host_ttl=self.provider.ttl,
            other_ttl=self.provider.ttl,
        )

    async def _probe(self, info: ServiceInfo) -> None:
        # RFC 6762 section 8.1; raises NonUniqueNameException when another host holds the name.
        await anyio.sleep(random.uniform(0, _PROBE_DELAY))
        records: list[Any] = [info.dns_service(), info.dns_text(), *info.dns_addresses()]
        for _ in range(_PROBES):
            self._check_unique(info)
            out = DNSOutgoing(_FLAGS_QUERY)
            out.add_question(DNSQuestion(info.name, _TYPE_ANY, _CLASS_IN | _CLASS_QU))
            out.authorities.extend(records)  # add_authorative_answer() takes only PTR records
            self.zc.async_send(out)
            await anyio.sleep(_PROBE_INTERVAL)
        self._check_unique(info)

    def _check_unique(self, info: ServiceInfo) -> None:
        # Another host answers for the name: an SRV record for it that is not ours.
        now = current_time_millis()
        for record in self.zc.cache.async_all_by_details(info.name, _TYPE_SRV, _CLASS_IN):
            theirs = (getattr(record, "server", None), getattr(record, "port", None))
            if not record.is_expired(now) and theirs != (info.server, info.port):
                raise NonUniqueNameException(info.name)

    async def goodbye(self) -> None:
        registered, self.registered = self.registered, None
        if registered is not None:
            await self.azc.async_unregister_service(registered)

    # -- browsing -----------------------------------------------------------------------------
    def on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self._confirm(name)
        elif len(self.pending) < _PENDING:
            self.pending[name] = None
            self.wake_lookups.set()

    async def look_up(self) -> None:
        limiter = anyio.Semaphore(_LOOKUPS)
        assert self.tg is not None
        while True:
            await self.wake_lookups.wait()
            self.wake_lookups = anyio.Event()
            while self.pending:
                name = next(iter(self.pending))
                del self.pending[name]
                await limiter.acquire()
                self.tg.start_soon(self._look_up, name, limiter)

    async def _look_up(self, name: str, limiter: anyio.Semaphore) -> None:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if await info.async_request(self.zc, int(self.provider.query_timeout * 1000)):
                self._heard(name, info)
        except Exception as exc:  # whatever a stranger sent, the provider goes on
            log.debug("mDNS lookup of %r failed: %r", name, exc)
        finally:
            limiter.release()

    def _heard(self, name: str, info: ServiceInfo) -> None:
        carried = envelope_from_txt(info.properties)
        if carried is None or info.port is None:
            self.malformed += 1
            return
        self._believe(name, carried, self.provider.ttl, self.origins.get(name))

    def _believe(
        self, name: str, carried: tuple[bytes, bytes], ttl: float, origin: str | None = None
    ) -> None:
        # The A/AAAA records are not signed and say nothing the record does not: only the record's
        # addresses are used (so that a removed address goes with the record that drops it). The
        # packet's ``origin`` (when the tap heard it) shares a full directory's places fairly.
        claimed, envelope = carried
        record = self.sink.found(envelope, source="mdns", claimed_id=claimed, origin=origin)
        if record is not None:
            self._saw(name, record.id, ttl)

    def _saw(self, name: str, peer_id: PeerId, ttl: float) -> None:
        # ``peer_id`` spoke under ``name``; it is followed for ``ttl`` seconds more.
        ids = self.names.setdefault(name, {})
        ids[peer_id] = max(ids.get(peer_id, 0.0), current_time_millis() + ttl * 1000)

    def tap(self) -> None:
        """Put a :class:`_ProbeTap` in front of every zeroconf socket (again after a rescan)."""
        for reader in self.zc.engine.readers:
            transport = reader.transport
            protocol = transport.get_protocol()
            if not isinstance(protocol, _ProbeTap):
                transport.set_protocol(_ProbeTap(protocol, self.on_packet))

    def on_packet(self, data: bytes, origin: str | None = None) -> None:
        # Every TXT record of a peerkit instance, in probes and in responses alike: zeroconf's
        # cache keeps one TXT per name (the latest host's), but each id under a name is followed.
        message = DNSIncoming(data)
        probe = message.is_query()
        for record in message.answers():  # a probe's authority section comes with them
            name = record.name
            if not isinstance(record, DNSText) or not name.lower().endswith(SERVICE_TYPE.lower()):
                continue
            carried = envelope_from_txt(_txt_properties(record.text))
            if carried is None:
                self.malformed += 1
                continue
            if origin is not None:
                self.origins.pop(name, None)
                self.origins[name] = origin
                if len(self.origins) > _PENDING:
                    del self.origins[next(iter(self.origins))]  # the least lately heard
            if record.ttl == 0 and not probe:
                self._goodbye(name, carried)
            elif self.goodbyes.get(carried[1], _NO_GOODBYE)[0] >= current_time_millis():
                pass  # (an answer or probe sent just before the goodbye may arrive after it)
            elif probe:
                if name not in self.names:  # heard before it announces: followed for a grace
                    self._believe(name, carried, _PROBE_GRACE, origin)
            else:
                self._believe(name, carried, record.ttl, origin)

    def _goodbye(self, name: str, carried: tuple[bytes, bytes]) -> None:
        # A goodbye names the id in its TXT: only that id leaves the name (a stranger's goodbye
        # under a peer's name takes nothing from the peer). The record must still verify (once:
        # the same goodbye heard again while it is remembered costs no signature check).
        now = current_time_millis()
        until, signer = self.goodbyes.get(carried[1], _NO_GOODBYE)
        if until <= now:
            try:  # verified, not reported: a goodbye must not bring back what it says goodbye to
                signer = read_record(carried[1])[0].id
            except InvalidRecord:
                return
            if signer != carried[0]:
                return
            if len(self.goodbyes) >= _PENDING:
                self.goodbyes = {key: kept for key, kept in self.goodbyes.items() if kept[0] > now}
            if len(self.goodbyes) < _PENDING:
                self.goodbyes[carried[1]] = (now + _CONFIRM * 1000, signer)
        elif signer != carried[0]:
            return
        ids = self.names.get(name)
        peer_id = next((known for known in ids or () if known.key == signer), None)
        if peer_id is not None:
            self._drop(name, peer_id)

    def _confirm(self, name: str) -> None:
        # zeroconf saw the name go (a goodbye, or its records expired): each id under it must
        # answer a query within a short while, or it is lost.
        ids = self.names.get(name)
        if not ids:
            return
        deadline = current_time_millis() + _CONFIRM * 1000
        for peer_id, until in ids.items():
            ids[peer_id] = min(until, deadline)
        self._query(name)

    def _drop(self, name: str, peer_id: PeerId) -> None:
        ids = self.names.get(name)
        if ids is None or ids.pop(peer_id, None) is None:
            return
        if not ids:
            del self.names[name]
            self.asked.pop(name, None)
        # Lost only when no other instance name carries the same id (a rename under way).
        if not any(peer_id in other for other in self.names.values()):
            self.sink.lost(peer_id, source="mdns")

    def forget_all(self) -> None:
        for name, ids in list(self.names.items()):
            for peer_id in list(ids):
                self._drop(name, peer_id)

    async def keep_fresh(self) -> None:
        # RFC 6762 5.2: query again at 75%, 85% and 95% of the records' TTL; lose what expires.
        interval = min(1.0, self.provider.ttl / 8)
        while True:
            await anyio.sleep(interval)
            now = current_time_millis()
            ttl = self.provider.ttl * 1000
            for name, ids in list(self.names.items()):
                # The freshest SRV and TXT record (a replaced record lingers for a second, expiring).
                freshest = []
                for kind in (_TYPE_SRV, _TYPE_TXT):
                    alive = [
                        r
                        for r in self.zc.cache.async_all_by_details(name, kind, _CLASS_IN)
                        if not r.is_expired(now)
                    ]
                    if alive:
                        freshest.append(max(alive, key=lambda r: r.get_expiration_time(100)))
                # An id not heard within its TTL is lost, unless the name's records are still
                # cached (the host's own TXT may be unreadable for a while); but not heard for
                # three TTLs, it is lost whatever else speaks under its name.
                named = len(freshest) == 2
                for peer_id, until in list(ids.items()):
                    if until <= now and (not named or until + 2 * ttl <= now):
                        self._drop(name, peer_id)
                if name not in self.names:
                    continue
                due = [r.get_expiration_time(share) for r in freshest for share in (75, 85, 95)]
                due += [until - (1 - share) * ttl for until in ids.values() for share in (0.75, 0.85, 0.95)]
                asked = self.asked.get(name, 0.0)
                if any(asked < point <= now for point in due):
                    self.asked[name] = now
                    self._query(name)

    def _query(self, name: str) -> None:
        out = DNSOutgoing(_FLAGS_QUERY)
        out.add_question(DNSQuestion(name, _TYPE_SRV, _CLASS_IN))
        out.add_question(DNSQuestion(name, _TYPE_TXT, _CLASS_IN))
        self.zc.async_send(out)

    async def follow_interfaces(self) -> None:
        import ifaddr

        def snapshot() -> set[Any]:
            return {(a.nice_name, str(ip.ip)) for a in ifaddr.get_adapters() for ip in a.ips}

        seen = snapshot()
        while True:
            await anyio.sleep(self.provider.interface_check)
            now = snapshot()
            if now != seen:
                seen = now
                log.debug("network interfaces changed; rescanning")
                await self.azc.async_update_interfaces()
                self.tap()
