"""A node runs the way users run it: anyio.run on asyncio and trio, and a bare asyncio.run, with and
without sniffio (a common package: anyio must not need it, and must not be called where it fails)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.network

#: Two nodes on 127.0.0.1 with a data dir (the store's thread), an invitation, a contact from a
#: fetched card, and an application stream.
SCRIPT = """
import sys
if sys.argv[2] == "no-sniffio":
    sys.modules["sniffio"] = None  # import sniffio fails, as where it is not installed
import asyncio, tempfile, uuid, anyio, peerkit

APP = peerkit.Application(id=uuid.UUID(int=7), description="chat")

async def main():
    async with (
        peerkit.Node(nickname="a", data_dir=tempfile.mkdtemp(), listen=("127.0.0.1", 0)) as a,
        peerkit.Node(nickname="b", data_dir=tempfile.mkdtemp(), listen=("127.0.0.1", 0)) as b,
    ):
        for node in (a, b):
            await node.register_application(APP)
            await node.sign_in(peerkit.Scope.ALL)

        @b.on_invitation(APP)
        async def invited(invitation):
            return peerkit.InvitationResponse.ACCEPTED

        @b.on_stream(APP)
        async def echo(stream):
            await stream.send(b"echo " + await stream.receive())

        peer = await a.peer_at(b.endpoint.host, b.endpoint.port)
        print((await peer.invite(APP, timeout=5)).name)
        print((await a.contacts.add_from(peer)).nickname)
        async with await peer.open_stream(APP) as stream:
            await stream.send(b"hi")
            print((await stream.receive()).decode())

runner = sys.argv[1]
if runner == "asyncio.run":
    asyncio.run(main())
else:
    anyio.run(main, backend=runner)
"""


@pytest.mark.parametrize(
    ("runner", "sniffio"),
    [
        ("asyncio.run", "sniffio"),
        ("asyncio.run", "no-sniffio"),
        ("asyncio", "sniffio"),
        ("asyncio", "no-sniffio"),
        ("trio", "sniffio"),  # trio itself needs sniffio
    ],
)
def test_a_node_runs_under_each_runner(runner: str, sniffio: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, runner, sniffio],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ACCEPTED", "b", "echo hi"]


def test_sniffio_is_installed_for_these_tests() -> None:
    # The defect these tests guard against shows only when sniffio is importable.
    import sniffio

    assert sniffio.current_async_library
