"""A peerkit node in a network namespace, driven by JSON lines (used by tests/real/test_lan.py).

Modes:
  node --nickname NAME --ttl SECONDS [--interface ADDR ...]
      Prints {"ready": ID, "port": PORT}, then one line per nearby change
      ({"change": "ADDED", "id": ..., "nickname": ..., "endpoints": [...]}); reads commands:
      {"cmd": "nick", "value": NAME} | {"cmd": "signout"} | {"cmd": "signin"} |
      {"cmd": "invite", "id": ID} -> {"invite": "ACCEPTED"} (or "refused: ..." when the peer refused
      the request) | {"cmd": "stats"} -> {"stats": {...}} |
      {"cmd": "befriend", "id": ID, "host": ADDR, "port": PORT} (add it as a contact) |
      {"cmd": "subscribe", "id": ID} | {"cmd": "presence", "status": NAME, "text": TEXT} |
      {"cmd": "quit"}. With --keepalive SECONDS it signs in to ALL and prints
      {"presence": STATUS, "text": ..., "id": ...} for each presence change of a watched contact.
      With --request-burst N a peer may make N requests (refilled too slowly to matter).
  squat --name LABEL --address ADDR --ttl SECONDS
      Announces its own valid record (nickname "alice") under the instance name LABEL with plain
      python-zeroconf; prints {"ready": ID}; says goodbye when a line arrives on stdin.
  forge --victim ID --address ADDR --ttl SECONDS
      Publishes over mDNS a record with a broken signature ("badsig"), one naming the victim's id
      but signed with another key ("otherkey"), then, 2 s later, a valid one ("mallory").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import uuid
from typing import Any

import anyio
from zeroconf import ServiceInfo
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncZeroconf

import peerkit
from peerkit.discovery import Announcement, Directory, MdnsDiscovery, make_record
from peerkit.discovery.mdns import SERVICE_TYPE, txt_for
from peerkit.proto import messages
from peerkit.proto.admission import RequestPolicy
from peerkit.proto.records import RECORD_DOMAIN

CHAT = peerkit.Application(id=uuid.UUID("a3c0b7e2-1d1f-4c55-9b0e-5c8e8c2f0d11"), description="chat")


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def node_main(args: argparse.Namespace) -> None:
    mdns = MdnsDiscovery(
        ttl=args.ttl, interfaces=args.interface or None, interface_check=1, ip_version=args.ip_version
    )
    seeded = args.seed is not None
    identity = peerkit.Identity.from_seed(bytes.fromhex(args.seed)) if seeded else peerkit.Identity.generate()
    keepalive = None
    if args.keepalive:
        keepalive = peerkit.KeepalivePolicy(interval=args.keepalive, timeout=args.keepalive, idle=600)
    budget = None
    if args.request_burst:  # (requests' budget: a burst, refilled too slowly to matter)
        budget = RequestPolicy(rate=0.001, burst=args.request_burst, strikes=1000)
    async with peerkit.Node(
        nickname=args.nickname,
        identity=identity,
        listen=(args.listen, 0),
        discovery=[mdns],
        address_check=1,
        keepalive=keepalive,
        request_budget=budget,
    ) as node:
        await node.register_application(CHAT)

        @node.on_invitation(CHAT)
        async def accept(invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
            emit(invited_by=str(invitation.sender_id))
            return peerkit.InvitationResponse.ACCEPTED

        await node.sign_in(peerkit.Scope.ALL if args.keepalive else peerkit.Scope.NEAR_ME)

        async def watch_presence() -> None:
            async with node.events(peerkit.PresenceChanged) as events:
                async for event in events:
                    emit(presence=event.presence.status.name, text=event.presence.text, id=str(event.peer_id))

        @node.on_nearby_changed  # from each sign-in to NEAR_ME, with everyone near me first
        async def report(event: peerkit.NearbyChanged) -> None:
            emit(
                change=event.change.name,
                id=str(event.peer.id),
                nickname=event.peer.nickname,
                endpoints=[str(e) for e in event.peer.endpoints],
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_presence)
            emit(ready=str(node.id), port=node.endpoint.port)
            stdin = anyio.wrap_file(sys.stdin)
            async for line in stdin:
                command = json.loads(line)
                cmd = command["cmd"]
                if cmd == "nick":
                    node.nickname = command["value"]
                elif cmd == "signout":
                    await node.sign_out(peerkit.Scope.NEAR_ME)
                elif cmd == "signin":
                    await node.sign_in(peerkit.Scope.NEAR_ME)
                elif cmd == "invite":
                    peer = await node.find_nearby(peer_id=peerkit.PeerId.parse(command["id"]), timeout=10)
                    try:
                        emit(invite=(await peer.invite(CHAT, "hello", timeout=10)).name)
                    except peerkit.ProtocolError as exc:
                        emit(invite=f"refused: {exc}")
                elif cmd == "befriend":
                    endpoint = peerkit.EndPoint(command["host"], command["port"])
                    await node.contacts.add(peerkit.PeerId.parse(command["id"]), endpoints=[endpoint])
                elif cmd == "subscribe":
                    contact = await node.contacts.get(peerkit.PeerId.parse(command["id"]))
                    await contact.subscribe()
                elif cmd == "presence":
                    status = peerkit.PresenceStatus[command["status"]]
                    await node.set_presence(peerkit.Presence(status, command.get("text", "")))
                elif cmd == "stats":
                    emit(stats=dataclasses.asdict(node.discovery_stats))
                elif cmd == "quit":
                    break
                emit(done=cmd)
            tg.cancel_scope.cancel()


async def forge_main(args: argparse.Namespace) -> None:
    mallory = peerkit.Identity.generate()
    victim = peerkit.PeerId.parse(args.victim)
    good = make_record(mallory, 1, nickname="badsig", endpoint_name="", endpoints=[("10.0.0.1", 7000)])
    broken = bytearray(good)
    broken[-1] ^= 1
    # The victim's id in the body, signed with mallory's key.
    body = messages.encode_deterministic(
        {"id": bytes(victim), "seq": 2**40, "nick": "otherkey", "name": "", "addrs": [["10.0.0.1", 7000]]}
    )
    stolen = messages.encode_deterministic({"body": body, "sig": mallory.sign(RECORD_DOMAIN + body)})
    forged = [
        Announcement(
            id=mallory.id, nickname="badsig", port=7000, hosts=(args.address,), envelope=bytes(broken)
        ),
        Announcement(id=victim, nickname="otherkey", port=7000, hosts=(args.address,), envelope=stolen),
    ]
    real = make_record(mallory, 2, nickname="mallory", endpoint_name="", endpoints=[("10.0.0.1", 7000)])
    async with anyio.create_task_group() as tg:
        for announcement in forged:
            session = await tg.start(MdnsDiscovery(ttl=args.ttl).run, Directory(mallory.id))
            await session.publish(announcement)
        await anyio.sleep(2)
        session = await tg.start(MdnsDiscovery(ttl=args.ttl).run, Directory(mallory.id))
        await session.publish(
            Announcement(id=mallory.id, nickname="mallory", port=7000, hosts=(args.address,), envelope=real)
        )
        emit(ready=str(mallory.id))
        await anyio.sleep(60)
        tg.cancel_scope.cancel()


async def squat_main(args: argparse.Namespace) -> None:
    # An attacker on plain python-zeroconf: its own valid record (nickname "alice") under another
    # peer's instance name, announced unsolicited (RFC 6762 section 8.3) with no probing at all.
    squatter = peerkit.Identity.generate()
    record = make_record(squatter, 1, nickname="alice", endpoint_name="", endpoints=[(args.address, 7000)])
    announcement = Announcement(
        id=squatter.id, nickname="alice", port=7000, hosts=(args.address,), envelope=record
    )
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{args.name}.{SERVICE_TYPE}",
        port=7000,
        properties=txt_for(announcement),
        server="squatter.local.",
        parsed_addresses=[args.address],
        host_ttl=int(args.ttl),
        other_ttl=int(args.ttl),
    )
    azc = AsyncZeroconf(interfaces=[args.address])

    def announce(ttl: int | None) -> None:
        out = DNSOutgoing(0x8400)  # a response, authoritative
        for item in (
            info.dns_pointer(override_ttl=ttl),
            info.dns_service(override_ttl=ttl),
            info.dns_text(override_ttl=ttl),
            *info.dns_addresses(override_ttl=ttl),
        ):
            out.add_answer_at_time(item, 0)
        azc.zeroconf.async_send(out)

    try:
        await azc.zeroconf.async_wait_for_start()
        async with anyio.create_task_group() as tg:

            async def keep_announcing() -> None:
                while True:
                    announce(None)
                    await anyio.sleep(args.ttl / 3)

            tg.start_soon(keep_announcing)
            emit(ready=str(squatter.id))
            await anyio.to_thread.run_sync(sys.stdin.readline)  # until told to go
            tg.cancel_scope.cancel()
        announce(0)  # goodbye
        await anyio.sleep(0.2)
    finally:
        await azc.async_close()


async def flood_main(args: argparse.Namespace) -> None:
    # A host announcing new ids without end (plain python-zeroconf: TXT records only, three to a
    # packet, each with a valid record of a new key), enough to fill a node's people near me.
    azc = AsyncZeroconf(interfaces=[args.address])
    try:
        await azc.zeroconf.async_wait_for_start()
        texts = []
        for n in range(args.count):
            person = peerkit.Identity.generate()
            record = make_record(
                person, 1, nickname=f"flood {n}", endpoint_name="", endpoints=[(args.address, 7000)]
            )
            announcement = Announcement(
                id=person.id, nickname=f"flood {n}", port=7000, hosts=(args.address,), envelope=record
            )
            name = f"flood{n}-{str(person.id)[:8]}"
            info = ServiceInfo(
                SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=7000, properties=txt_for(announcement)
            )
            texts.append(info.dns_text(override_ttl=int(args.ttl)))
        for at in range(0, len(texts), 3):
            out = DNSOutgoing(0x8400)  # a response, authoritative
            for text in texts[at : at + 3]:
                out.add_answer_at_time(text, 0)
            azc.zeroconf.async_send(out)
            await anyio.sleep(0.002)  # (the receiver's socket buffer is not flooded: its directory is)
        emit(ready=args.count)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # until told to go
    finally:
        await azc.async_close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["node", "forge", "squat", "flood"])
    parser.add_argument("--seed", help="node: the identity's seed, in hex")
    parser.add_argument("--name", help="squat: the instance name to take")
    parser.add_argument("--nickname", default="")
    parser.add_argument("--ttl", type=float, default=2)
    parser.add_argument("--interface", action="append")
    parser.add_argument("--victim")
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--ip-version", default="all")
    parser.add_argument("--address", help="forge: the address to publish")
    parser.add_argument("--request-burst", type=int, default=0, help="node: requests a peer may make")
    parser.add_argument("--keepalive", type=float, default=0, help="node: keepalive interval and timeout")
    parser.add_argument("--count", type=int, default=1100, help="flood: the ids to announce")
    args = parser.parse_args()
    modes = {"node": node_main, "forge": forge_main, "squat": squat_main, "flood": flood_main}
    anyio.run(modes[args.mode], args)


if __name__ == "__main__":
    main()
