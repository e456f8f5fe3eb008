"""A discovery provider of your own: nodes that share a folder (a network share, a synced
directory) find each other through signed records written there. It passes peerkit's
conformance check, then two nodes find each other through it."""

import tempfile
from pathlib import Path

import anyio
import anyio.abc

import peerkit
from peerkit.discovery import Announcement, DiscoverySession, DiscoverySink
from peerkit.testing import check_discovery_provider


class FolderSession:
    """What the node publishes through: one file per node, named by its id."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.mine: Path | None = None

    async def publish(self, announcement: Announcement) -> None:
        self.mine = self.folder / f"{announcement.id}.record"
        part = anyio.Path(self.mine.with_suffix(".part"))
        await part.write_bytes(announcement.envelope)
        await part.rename(self.mine)  # at once: a reader never sees half a record

    async def withdraw(self) -> None:
        if self.mine is not None:
            await anyio.Path(self.mine).unlink(missing_ok=True)
            self.mine = None

    async def resolve(self, peer_id: peerkit.PeerId) -> list[bytes]:
        path = anyio.Path(self.folder / f"{peer_id}.record")
        return [await path.read_bytes()] if await path.exists() else []


class FolderDiscovery:
    """Looks at the folder every ``interval`` seconds and reports what came, changed or went."""

    scopes = peerkit.Scope.NEAR_ME

    def __init__(self, folder: Path, interval: float = 0.05) -> None:
        self.folder = folder
        self.interval = interval
        self.name = f"folder:{folder}"

    async def run(self, sink: DiscoverySink, *, task_status: anyio.abc.TaskStatus[DiscoverySession]) -> None:
        session = FolderSession(self.folder)
        task_status.started(session)
        heard: dict[str, bytes] = {}  # file name -> the record last reported
        try:
            while True:
                now = {}
                async for path in anyio.Path(self.folder).glob("*.record"):
                    try:
                        now[path.name] = await path.read_bytes()
                    except FileNotFoundError:
                        continue  # withdrawn while we looked
                for name, envelope in now.items():
                    if heard.get(name) != envelope:
                        # The node's directory checks the signature and the freshness: a
                        # provider reports what it hears and trusts none of it.
                        sink.found(envelope, source=self.name, claimed_id=peerkit.PeerId.parse(name[:-7]))
                for name in heard.keys() - now.keys():
                    sink.lost(peerkit.PeerId.parse(name[:-7]), source=self.name)
                heard = now
                await anyio.sleep(self.interval)
        finally:
            with anyio.CancelScope(shield=True):  # leaving: the others see this node go
                await session.withdraw()


async def main() -> None:
    with tempfile.TemporaryDirectory() as shared:
        folder = Path(shared)
        await check_discovery_provider(lambda others: FolderDiscovery(folder), timeout=5, settle=0.3)
        print("the folder provider passes the conformance check")

        def node(nickname: str) -> peerkit.Node:
            identity, provider = peerkit.Identity.generate(), FolderDiscovery(folder)
            listen = ("127.0.0.1", 0)
            return peerkit.Node(nickname=nickname, identity=identity, listen=listen, discovery=[provider])

        async with node("alice") as alice, node("bob") as bob:
            await alice.sign_in(peerkit.Scope.NEAR_ME)
            await bob.sign_in(peerkit.Scope.NEAR_ME)
            found = await alice.find_nearby(nickname="bob", timeout=5)
            print(f"alice found {found.nickname} through the folder")


anyio.run(main)
