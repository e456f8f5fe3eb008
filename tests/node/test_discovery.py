"""Discovery providers: the conformance suite on every built-in, the registry, the directory."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import peerkit
from peerkit import Node, Scope
from peerkit.dht.provider import DEFAULT_BOOTSTRAP, DhtDiscovery
from peerkit.discovery import (
    Announcement,
    MdnsDiscovery,
    MemoryDiscovery,
    StaticDiscovery,
    create_provider,
    make_record,
    provider_names,
    read_record,
    register_provider,
)
from peerkit.discovery.mdns import envelope_from_txt, txt_for
from peerkit.discovery.registry import ENTRY_POINT_GROUP
from peerkit.identity import Identity
from peerkit.testing import check_discovery_provider

pytestmark = pytest.mark.asyncio


async def test_memory_provider_conforms() -> None:
    hub = MemoryDiscovery()
    await check_discovery_provider(lambda others: hub, timeout=2, settle=0.1)


async def test_static_provider_conforms() -> None:
    await check_discovery_provider(
        lambda others: StaticDiscovery([str(e) for e in others], interval=0.05), timeout=2, settle=0.3
    )


async def test_registry_names_the_built_ins() -> None:
    assert {"mdns", "static", "memory", "dht"} <= set(provider_names())
    assert isinstance(create_provider("mdns"), MdnsDiscovery)
    chosen = create_provider("mdns:127.0.0.1,::1")
    assert isinstance(chosen, MdnsDiscovery)
    assert chosen.interfaces == ["127.0.0.1", "::1"]
    static = create_provider("static:10.0.0.2:7000,[fd00::1]:7001")
    assert isinstance(static, StaticDiscovery)
    assert [str(e) for e in static.entries] == ["10.0.0.2:7000", "[fd00::1]:7001"]
    assert create_provider("memory") is MemoryDiscovery.default()
    with pytest.raises(
        ValueError, match=r"no discovery provider named 'kad'; known: dht, .*mdns, memory, static"
    ):
        create_provider("kad")
    dht = create_provider("dht:10.0.0.2:6881,[fd00::1]:6882")
    assert isinstance(dht, DhtDiscovery)
    assert dht.bootstrap == (("10.0.0.2", 6881), ("fd00::1", 6882))
    assert dht.scopes is peerkit.Scope.INTERNET
    assert create_provider("dht").bootstrap == DEFAULT_BOOTSTRAP  # for users; tests pass their own
    with pytest.raises(ValueError, match="bad DHT bootstrap address: 'nowhere' is not HOST:PORT"):
        create_provider("dht:nowhere")
    # One entry or address given alone is one (a str was read letter by letter: "'1' is not
    # host:port"), and a ttl of the wrong type is named.
    assert [str(e) for e in StaticDiscovery("10.0.0.2:6881").entries] == ["10.0.0.2:6881"]
    assert MdnsDiscovery(interfaces="10.0.0.2").interfaces == ["10.0.0.2"]
    with pytest.raises(TypeError, match="ttl must be a number of seconds, not str"):
        MdnsDiscovery(ttl="120")  # type: ignore[arg-type]
    # Made in code: a port out of range is named at once (it would fail each send, or wrap round).
    with pytest.raises(ValueError, match=r"is \(host, port 1..65535\), not \('10.0.0.2', 70000\)"):
        DhtDiscovery(bootstrap=[("10.0.0.2", 70000)])
    with pytest.raises(ValueError, match="a DHT port is 0 to 65535"):
        DhtDiscovery(bootstrap=[], port=70000)
    with pytest.raises(TypeError, match="a DHT port is an int, not str"):
        DhtDiscovery(bootstrap=[], port="6881")  # type: ignore[arg-type]
    assert DhtDiscovery(bootstrap=[["10.0.0.2", 6881]]).bootstrap == (("10.0.0.2", 6881),)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="needs addresses"):
        create_provider("static")
    with pytest.raises(ValueError, match="not host:port"):
        create_provider("static:nowhere")
    with pytest.raises(ValueError, match="peer id"):
        create_provider("static:10.0.0.2:7000#nonsense")
    with pytest.raises(ValueError, match="takes no argument"):
        create_provider("memory:x")


async def test_built_ins_are_entry_points() -> None:
    # The installed distribution registers the built-ins the way a third party would.
    names = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {"mdns", "static", "memory"} <= names


async def test_third_party_provider_from_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "thirdparty_discovery.py"
    package.write_text(
        "from peerkit.discovery import MemoryDiscovery\n"
        "class Hub(MemoryDiscovery):\n"
        "    name = 'hub'\n"
        "def make(argument):\n"
        "    hub = Hub()\n"
        "    hub.argument = argument\n"
        "    return hub\n"
    )
    info = tmp_path / "thirdparty_discovery-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-discovery\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[peerkit.discovery]\nhub = thirdparty_discovery:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "hub" in provider_names()
    provider = create_provider("hub:everyone")
    assert provider.name == "hub"
    assert provider.argument == "everyone"  # type: ignore[attr-defined]
    node = Node(identity=Identity.generate(), discovery=["hub"])
    assert node._providers[0].name == "hub"


async def test_register_provider_and_bad_factories() -> None:
    register_provider("fixed", lambda argument: MemoryDiscovery())
    assert "fixed" in provider_names()
    assert isinstance(create_provider("fixed"), MemoryDiscovery)
    register_provider("broken", lambda argument: object())  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="not a provider"):
        create_provider("broken")
    with pytest.raises(ValueError, match="without ':'"):
        register_provider("a:b", lambda argument: MemoryDiscovery())


async def test_provider_options_are_checked() -> None:
    with pytest.raises(ValueError, match="ttl"):
        MdnsDiscovery(ttl=0)
    with pytest.raises(ValueError, match="ip_version"):
        MdnsDiscovery(ip_version="v5")
    with pytest.raises(
        ValueError, match=r"an mDNS interface is an address of it or its name \(as eth0\), not ''"
    ):
        create_provider("mdns:10.0.0.1,")
    with pytest.raises(ValueError, match="not 5"):
        MdnsDiscovery(interfaces=[5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one"):
        StaticDiscovery([])


async def test_txt_carries_a_record_in_pieces(alice: Identity) -> None:
    envelope = make_record(
        alice, 1, nickname="a" * 255, endpoint_name="b" * 255, endpoints=[("fd00::1", 7000)] * 16
    )
    announcement = Announcement(id=alice.id, nickname="a", port=7000, hosts=(), envelope=envelope)
    txt = txt_for(announcement)
    assert len(txt) > 4  # v, id, r0, r1, ...
    assert all(len(f"{k}={v}".encode()) <= 255 for k, v in txt.items())
    raw = {k.encode(): v.encode() for k, v in txt.items()}
    assert envelope_from_txt(raw) == (bytes(alice.id), envelope)
    assert envelope_from_txt({**raw, b"v": b"2"}) is None
    assert envelope_from_txt({k: v for k, v in raw.items() if k != b"r0"}) is None
    assert envelope_from_txt({**raw, b"id": b"nonsense"}) is None
    assert envelope_from_txt({**raw, b"r0": b"%%"}) is None  # not base64url


async def test_dht_bootstrap_points_the_dht_provider_at_your_own_nodes() -> None:
    own = [("10.0.0.2", 6881), ("fd00::2", 6882)]
    added = Node(identity=Identity.generate(), discovery=[], dht_bootstrap=own)
    (provider,) = added.config.providers
    assert isinstance(provider, DhtDiscovery)
    assert provider.bootstrap == tuple(own)
    named = Node(identity=Identity.generate(), discovery=["memory", "dht"], dht_bootstrap=own[:1])
    dhts = [p for p in named.config.providers if isinstance(p, DhtDiscovery)]
    assert [p.bootstrap for p in dhts] == [(own[0],)]  # the named one, not a second one
    chosen = Node(identity=Identity.generate(), discovery=["dht:127.0.0.1:9"], dht_bootstrap=own)
    assert [p.bootstrap for p in chosen.config.providers] == [(("127.0.0.1", 9),)]  # its own kept
    with pytest.raises(ValueError, match=r"a DHT bootstrap address is a \(host, port\) tuple, not 'x:1'"):
        Node(identity=Identity.generate(), dht_bootstrap=["x:1"])  # type: ignore[list-item]


async def test_an_mdns_goodbye_heard_again_costs_no_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from peerkit.discovery import mdns
    from peerkit.discovery.base import make_record, read_record

    checked: list[bytes] = []

    def counted(envelope: bytes) -> object:
        checked.append(envelope)
        return read_record(envelope)

    monkeypatch.setattr(mdns, "read_record", counted)
    lost: list[object] = []
    sink = SimpleNamespace(lost=lambda peer_id, source: lost.append(peer_id))
    session = mdns._Session(mdns.MdnsDiscovery(), SimpleNamespace(zeroconf=None), sink)  # type: ignore[arg-type]
    alice = Identity.generate()
    envelope = make_record(alice, 1, nickname="a", endpoint_name="", endpoints=[("10.0.0.9", 7000)])
    name = "alice._peerkit._tcp.local."
    session._saw(name, alice.id, 120)
    for _ in range(5):  # the goodbye packet, sent again and again
        session._goodbye(name, (alice.id.key, envelope))
    assert len(checked) == 1
    assert lost == [alice.id]


def record_as_txt(identity: Identity, nickname: str, *, seq: int) -> tuple[Announcement, bytes]:
    """An announcement of a signed record of ``identity`` at 10.0.0.9:7000, and the TXT rdata
    that carries it in mDNS."""
    envelope = make_record(identity, seq, nickname=nickname, endpoint_name="", endpoints=[("10.0.0.9", 7000)])
    announcement = Announcement(id=identity.id, nickname=nickname, port=7000, hosts=(), envelope=envelope)
    text = b"".join(
        bytes([len(item)]) + item for item in (f"{k}={v}".encode() for k, v in txt_for(announcement).items())
    )
    return announcement, text


async def test_a_renamed_nodes_probe_heard_after_its_goodbye_does_not_bring_it_back() -> None:
    # (bob renamed, then signed out while his new name was being probed: a probe packet that came
    # after the goodbye of his old name showed him again, "ADDED bobby" after "DELETED bobby")
    from types import SimpleNamespace

    from zeroconf import DNSOutgoing, DNSText, const

    from peerkit.discovery import mdns

    bob = Identity.generate()
    announcement, text = record_as_txt(bob, "bobby", seq=2)
    envelope = announcement.envelope
    heard: list[str] = []

    def found(envelope: bytes, *, source: str, claimed_id: object, origin: str | None) -> object:
        heard.append(source)
        return SimpleNamespace(id=bob.id)

    sink = SimpleNamespace(found=found, lost=lambda peer_id, source: None)
    session = mdns._Session(mdns.MdnsDiscovery(), SimpleNamespace(zeroconf=None), sink)  # type: ignore[arg-type]
    old, new = f"bob-{str(bob.id)[:8]}.{mdns.SERVICE_TYPE}", f"bobby-{str(bob.id)[:8]}.{mdns.SERVICE_TYPE}"
    session._saw(old, bob.id, 120)
    session._goodbye(old, (bob.id.key, envelope))
    probe = DNSOutgoing(const._FLAGS_QR_QUERY)
    probe.authorities.append(DNSText(new, const._TYPE_TXT, const._CLASS_IN, 120, text))  # (as it probes)
    for data in probe.packets():
        session.on_packet(data, "10.0.0.9")
    assert heard == []
    session.goodbyes.clear()  # (once the goodbye is old, the same probe is heard)
    for data in probe.packets():
        session.on_packet(data, "10.0.0.9")
    assert heard == ["mdns"]


async def test_the_mdns_tap_tells_the_directory_where_a_packet_came_from() -> None:
    from types import SimpleNamespace

    from zeroconf import DNSOutgoing, DNSText, ServiceInfo, const

    from peerkit.discovery import mdns

    alice = Identity.generate()
    announcement, text = record_as_txt(alice, "a", seq=1)
    name = f"a-{str(alice.id)[:8]}.{mdns.SERVICE_TYPE}"
    packet = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
    packet.add_answer_at_time(DNSText(name, const._TYPE_TXT, const._CLASS_IN, 120, text), 0)
    heard: list[tuple[str, str | None]] = []

    def found(envelope: bytes, *, source: str, claimed_id: object, origin: str | None) -> object:
        heard.append((source, origin))
        return SimpleNamespace(id=alice.id)

    session = mdns._Session(
        mdns.MdnsDiscovery(), SimpleNamespace(zeroconf=None), SimpleNamespace(found=found)
    )  # type: ignore[arg-type]
    passed: list[bytes] = []
    inner = SimpleNamespace(datagram_received=lambda data, addr: passed.append(data))
    tap = mdns._ProbeTap(inner, session.on_packet)
    for data in packet.packets():
        tap.datagram_received(data, ("10.0.0.7", 5353))
    assert heard == [("mdns", "10.0.0.7")]
    assert passed == packet.packets()  # zeroconf still gets every packet, unchanged
    # The same record, resolved by zeroconf from that packet, is told where it came from too.
    info = ServiceInfo(mdns.SERVICE_TYPE, name, port=7000, properties=txt_for(announcement))
    session._heard(name, info)
    assert heard[-1] == ("mdns", "10.0.0.7")


class Recorder:
    """A provider that notes the seq of each record published through it, each after the delay
    its turn is given (the first slow, as a provider that waits on the network)."""

    scopes = Scope.NEAR_ME

    def __init__(self, name: str, delays: list[float]) -> None:
        self.name = name
        self.delays = delays
        self.seqs: list[int] = []

    async def run(self, sink: object, *, task_status: anyio.abc.TaskStatus[Recorder]) -> None:
        task_status.started(self)
        await anyio.sleep_forever()

    async def publish(self, announcement: Announcement) -> None:
        await anyio.sleep(self.delays.pop(0) if self.delays else 0)
        self.seqs.append(read_record(announcement.envelope)[0].seq)

    async def withdraw(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.seqs.append(WITHDRAWN)


WITHDRAWN = -1


async def test_records_signed_one_after_another_reach_every_provider_in_that_order() -> None:
    # A record signed while an older one waited on a slow provider reached the providers first;
    # the older one then came last, and stayed (a contact looked the node up at its old address).
    slow, fast = Recorder("slow", [0, 0.2]), Recorder("fast", [])
    async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0), discovery=[slow, fast]) as node:
        await node.sign_in(Scope.NEAR_ME)
        async with anyio.create_task_group() as tg:
            tg.start_soon(node._nearby.publish, Scope.NEAR_ME)
            await anyio.sleep(0.05)  # (the first waits on the slow provider)
            tg.start_soon(node._nearby.publish, Scope.NEAR_ME)
        assert slow.seqs == fast.seqs == sorted(slow.seqs)
        assert len(slow.seqs) == 3
        # A publication under way when the node signs out reaches the providers before the
        # withdrawal, and one that waits its turn then is not made: the withdrawal is the last.
        slow.delays = [0.2]
        async with anyio.create_task_group() as tg:
            tg.start_soon(node._nearby.publish, Scope.NEAR_ME)
            await anyio.sleep(0.05)
            tg.start_soon(node._nearby.publish, Scope.NEAR_ME)
            await anyio.sleep(0.05)
            await node.sign_out(Scope.NEAR_ME)
        assert slow.seqs[3:] == fast.seqs[3:] == [slow.seqs[3], WITHDRAWN]


@pytest.mark.parametrize(
    ("provider", "listen_host", "where"),
    [
        ({}, "", (None, "all")),  # every address: every interface
        ({}, "0.0.0.0", (None, "all")),
        ({}, None, (None, "all")),  # (a sink that does not say)
        ({}, "127.0.0.1", (["127.0.0.1"], "v4")),  # kept to loopback: not announced on the LAN
        ({}, "fd00::2", (["fd00::2"], "v6")),
        ({}, "::1", (["127.0.0.1"], "v4")),  # (IPv6's loopback carries no multicast)
        ({"ip_version": "v4"}, "::1", (["127.0.0.1"], "v4")),
        ({"ip_version": "v6"}, "::1", (["::1"], "v6")),  # (asked for)
        ({"ip_version": "v4"}, "10.0.0.2", (["10.0.0.2"], "v4")),
        ({"interfaces": ["10.0.0.3"]}, "127.0.0.1", (["10.0.0.3"], "all")),  # given: kept
    ],
)
async def test_mdns_uses_the_interface_the_node_listens_on(
    provider: dict[str, Any], listen_host: str | None, where: tuple[list[str] | None, str]
) -> None:
    assert MdnsDiscovery(**provider)._where(listen_host) == where


async def test_mdns_names_a_family_the_node_does_not_listen_on() -> None:
    with pytest.raises(ValueError, match=r"listens on fd00::2 only, and the mDNS provider is for IPv4"):
        MdnsDiscovery(ip_version="v4")._where("fd00::2")


async def test_a_provider_on_an_asyncio_thread_learns_where_the_node_listens() -> None:
    from peerkit.discovery.island import _ThreadSink

    sink = SimpleNamespace(local_id=Identity.generate().id, listen_host="127.0.0.1")
    assert _ThreadSink(sink, token=None).listen_host == "127.0.0.1"  # type: ignore[arg-type]


async def test_mdns_takes_interfaces_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from peerkit.discovery import mdns

    here = {"lo": ["127.0.0.1", "::1"], "eth0": ["10.0.0.2", "fd00::2", "fe80::1"], "wg0": ["fd01::1"]}
    monkeypatch.setattr(mdns, "network_interfaces", lambda: here)
    assert create_provider("mdns:eth0")._where("") == (["10.0.0.2", "fd00::2", "fe80::1"], "all")  # type: ignore[attr-defined]
    v4 = MdnsDiscovery(interfaces=["10.0.0.3", "eth0", "[fd00::9]"], ip_version="v4")
    assert v4._where("") == (["10.0.0.3", "10.0.0.2", "fd00::9"], "v4")  # (an address given: as given)
    assert MdnsDiscovery(interfaces=["lo"], ip_version="v6")._where("") == (["::1"], "v6")
    with pytest.raises(
        ValueError, match=r"this machine has no network interface 'eth9' \(it has lo, eth0, wg0\)"
    ):
        MdnsDiscovery(interfaces=["eth9"])._where("")
    with pytest.raises(ValueError, match="network interface 'wg0' has no IPv4 address"):
        MdnsDiscovery(interfaces=["wg0"], ip_version="v4")._where("")
