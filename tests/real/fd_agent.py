"""A peerkit node under a low file-descriptor limit (used by tests/real/test_fd_limit.py).

Sets ``RLIMIT_NOFILE`` to ``--nofile``, logs warnings to stderr, runs a node on 127.0.0.1 that
accepts every CHAT invitation and holds every CHAT stream open until its opener closes it, prints
{"port": PORT} and runs until its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import uuid

import anyio

import peerkit

CHAT = peerkit.Application(id=uuid.UUID("6f1c2a4e-0000-4000-8000-0000000000aa"), description="chat")


async def main(args: argparse.Namespace) -> None:
    async with peerkit.Node(
        nickname="bob", identity=peerkit.Identity.generate(), listen=("127.0.0.1", 0)
    ) as node:
        await node.register_application(CHAT)

        @node.on_invitation(CHAT)
        async def accept(invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
            return peerkit.InvitationResponse.ACCEPTED

        @node.on_stream(CHAT)
        async def hold(stream: peerkit.AppStream) -> None:
            async for _ in stream:
                pass

        print(json.dumps({"port": node.endpoint.port}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--nofile", type=int, required=True)
    arguments = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (arguments.nofile, hard))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    anyio.run(main, arguments)
