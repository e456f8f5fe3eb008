"""The receiving side of the ``files`` benchmark, in a process of its own: a node that accepts every
offer of files into a temporary folder (and deletes them once received), and a sink application
that reads a stream to its end and acknowledges it. It prints its id and port as one JSON line
and runs until its stdin closes."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import anyio
import anyio.to_thread

from peerkit import AppStream, Identity, Invitation, InvitationResponse, Node
from peerkit.files import Outgoing, receive_files, send_files
from peerkit.model import Application
from peerkit.peers import Peer
from peerkit.proto.files import Summary, decode_summary, encode_summary
from peerkit.wellknown import FILES

#: Where the files go: memory (tmpfs) where there is one, so that the figure is peerkit's and not
#: the disk's (a VM's disk writes anywhere from 200 MB/s to 1.2 GB/s from one minute to the next).
MEMORY = "/dev/shm" if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
SINK = Application(id=uuid.UUID("5f1d3b7e-2a44-4c61-9d7b-0e8f6a2b1c02"), description="bench sink")
#: The reference for many small files: a plain copier over an application stream (each file's
#: name, size and bytes; the receiver writes each to a file of its own). No hash, no offer.
COPY = Application(id=uuid.UUID("5f1d3b7e-2a44-4c61-9d7b-0e8f6a2b1c03"), description="bench copy")


async def copy_files(peer: Peer, files: list[tuple[str, Path]]) -> None:
    """Send ``files`` (name, path) as a plain copier would: each read in a worker thread and sent
    as its name's length (2 bytes), the name, the size (8 bytes) and the bytes; an empty name
    ends, and the receiver answers once every file is written."""
    async with await peer.open_stream(COPY) as stream:
        for name, path in files:
            data = await anyio.to_thread.run_sync(path.read_bytes)
            encoded = name.encode()
            await stream.send(len(encoded).to_bytes(2, "big") + encoded + len(data).to_bytes(8, "big") + data)
        await stream.send(bytes(2))
        await stream.receive()


async def _copied(stream: AppStream, into: Path) -> None:
    # The plain copier's receiving side: every file written (in a worker thread) into a folder of
    # its own, then deleted.
    into = await _fresh(into)
    buffer = bytearray()

    async def take(n: int) -> bytes:
        while len(buffer) < n:
            buffer.extend(await stream.receive())
        out = bytes(buffer[:n])
        del buffer[:n]
        return out

    while n := int.from_bytes(await take(2), "big"):
        target = into / (await take(n)).decode()
        data = await take(int.from_bytes(await take(8), "big"))
        await anyio.to_thread.run_sync(target.write_bytes, data)
    await stream.send(b"k")
    await anyio.to_thread.run_sync(shutil.rmtree, into)


async def _fresh(into: Path) -> Path:
    # A new folder in ``into``: each transfer writes into one of its own, so that deleting what one
    # received never meets the next (whose receiver would find some files there already).
    folder = into / uuid.uuid4().hex
    await anyio.to_thread.run_sync(folder.mkdir)
    return folder


async def send_offer(peer: Peer, outgoing: list[Outgoing]) -> None:
    """Send ``outgoing`` to ``peer`` as ``peerkit send`` does: an invitation to the files
    application with the offer, then a stream; every file must arrive."""
    answer = await peer.invite(FILES, data=encode_summary([o.entry for o in outgoing]))
    assert answer is InvitationResponse.ACCEPTED, answer
    async with await peer.open_stream(FILES) as stream:
        report = await send_files(stream, outgoing)
    assert report.received == len(outgoing), report
    assert report.sent_bytes == sum(o.entry.size for o in outgoing), report  # (none there already)
    assert not report.failed, report


async def main() -> None:
    offers: dict[object, Summary] = {}
    with tempfile.TemporaryDirectory(prefix="peerkit-bench-files-", dir=MEMORY) as tmp:
        into = Path(tmp)
        async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as node:
            await node.register_application(FILES)
            await node.register_application(SINK)
            await node.register_application(COPY)

            async def offered(invitation: Invitation) -> InvitationResponse:
                offers[invitation.sender_id] = decode_summary(invitation.data)
                return InvitationResponse.ACCEPTED

            async def files(stream: AppStream) -> None:
                folder = await _fresh(into)
                report = await receive_files(stream, offers.pop(stream.peer.id), folder)
                await anyio.to_thread.run_sync(shutil.rmtree, folder)
                assert not report.failed, report.failed

            async def sink(stream: AppStream) -> None:
                total = int.from_bytes(await stream.receive(8), "big")
                received = 0
                while received < total:
                    received += len(await stream.receive(1 << 20))
                await stream.send(b"k")
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    await stream.receive()

            node.add_invitation_handler(FILES, offered)
            node.add_stream_handler(FILES, files)
            node.add_stream_handler(SINK, sink)
            node.add_stream_handler(COPY, functools.partial(_copied, into=into))
            print(json.dumps({"id": str(node.id), "port": node.endpoint.port}), flush=True)
            await anyio.wrap_file(sys.stdin).read()  # until the benchmark closes it


if __name__ == "__main__":
    anyio.run(main)
