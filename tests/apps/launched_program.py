"""A program ``peerkit serve`` launches for an invitation (tests/test_cli_apps.py): it records what
:func:`peerkit.launch_info` gave it, answers (declines when the message says so), and opens a
stream to the inviter from its own node on the same identity."""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from pathlib import Path

import anyio

import peerkit


def main(record: Path) -> None:
    info = peerkit.launch_info()
    assert info is peerkit.launch_info()  # (the same every call)
    if info is None:
        record.write_text(json.dumps({"launched": False}))
        return
    record.write_text(
        json.dumps(
            {
                "launched": True,
                "sender": str(info.sender_id),
                "nickname": info.nickname,
                "endpoint": [info.endpoint.host, info.endpoint.port] if info.endpoint else None,
                "application": str(info.application_id),
                "message": info.message,
                "data": info.data.decode(),
                "data_dir": str(info.data_dir),
            }
        )
    )
    if "decline" in info.message:
        info.decline()
        return
    info.accept()
    with contextlib.suppress(anyio.EndOfStream):
        anyio.run(stream_to_the_inviter, info)


async def stream_to_the_inviter(info: peerkit.LaunchInfo) -> None:
    assert info.endpoint is not None
    async with peerkit.Node(data_dir=info.data_dir, listen=("127.0.0.1", 0)) as node:
        app = peerkit.Application(id=uuid.UUID(str(info.application_id)))
        await node.register_application(app)
        async with await node.peer(info.sender_id, info.endpoint).open_stream(app) as stream:
            await stream.send(f"hello from {node.id.fingerprint}".encode())
            await stream.send_eof()
            await stream.receive()  # (until the inviter closes)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
