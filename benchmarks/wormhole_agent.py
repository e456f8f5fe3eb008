"""peerkit's side of ``python -m benchmarks wormhole``: what magic-wormhole's ``send`` and
``receive`` do, with peerkit's public API, one process per side as the two commands are.

    python -m benchmarks.wormhole_agent send FILE            # prints {"code", "port"}, then sends
    python -m benchmarks.wormhole_agent receive CODE PORT DIR

The sender hashes its file (the offer names its BLAKE3 hash) and waits with a pairing code. The
receiver, started with the code as a person would type it, joins the pairing (SPAKE2 checks the
code, both become contacts), accepts the offer and receives the file into DIR. The sender then
sends it as ``peerkit send`` does: an invitation with the offer, a stream, every byte checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

from benchmarks.files_agent import send_offer
from peerkit import AppStream, Identity, Invitation, InvitationResponse, Node
from peerkit.files import prepare, receive_files
from peerkit.proto.files import decode_summary
from peerkit.wellknown import FILES


async def send(path: Path) -> None:
    outgoing = await prepare([path])
    async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as node:
        await node.register_application(FILES)
        async with node.pair(lan=False) as pairing:
            print(json.dumps({"code": str(pairing.code), "port": node.endpoint.port}), flush=True)
            contact = await pairing.wait()
        peer = node.peer(contact.id, *contact.endpoints)
        await send_offer(peer, outgoing)


async def receive(code: str, port: int, into: Path) -> None:
    async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as node:
        await node.register_application(FILES)
        done = anyio.Event()
        offers = {}

        async def offered(invitation: Invitation) -> InvitationResponse:
            offers[invitation.sender_id] = decode_summary(invitation.data)
            return InvitationResponse.ACCEPTED

        async def files(stream: AppStream) -> None:
            report = await receive_files(stream, offers.pop(stream.peer.id), into)
            assert len(report.saved) == 1, report
            assert not report.failed, report
            done.set()

        node.add_invitation_handler(FILES, offered)
        node.add_stream_handler(FILES, files)
        await node.join_pairing(code, at=("127.0.0.1", port), lan=False)
        await done.wait()


if __name__ == "__main__":
    if sys.argv[1] == "send":
        anyio.run(send, Path(sys.argv[2]))
    else:
        anyio.run(receive, sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
