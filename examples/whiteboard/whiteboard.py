"""A shared whiteboard in the browser. Each participant runs this program: it serves a page on
127.0.0.1 (an aiohttp app) and bridges it to peerkit. Strokes drawn in one browser appear in all
the others.

    python whiteboard.py alice --host --listen 127.0.0.1:7001 --web 127.0.0.1:8001
    python whiteboard.py bob --join 127.0.0.1:7001 --web 127.0.0.1:8002

Then open http://127.0.0.1:8001 and http://127.0.0.1:8002. The host keeps the board. Someone who
joins asks the host (an invitation), then opens a stream to it: the host sends the board so far,
then every stroke anyone draws.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

import peerkit

BOARD = peerkit.Application(id=uuid.UUID("4b9e2c1d-7a3f-4e8b-b5c6-d1e2f3a4b5c6"), description="whiteboard")
PAGE = Path(__file__).with_name("index.html")
#: The most points in one stroke, and strokes on one board: a participant cannot make others
#: hold more.
MAX_POINTS = 2_000
MAX_STROKES = 10_000


def checked(message: Any) -> dict[str, Any]:
    """A stroke as a participant or a page sends it: ``{"points": [[x, y], ...], "color": "#rrggbb"}``.

    :raises ValueError: for anything else.
    """
    points, color = message.get("points"), message.get("color", "#000000")
    if not isinstance(points, list) or not 1 <= len(points) <= MAX_POINTS:
        raise ValueError(f"a stroke has 1 to {MAX_POINTS} points")
    for point in points:
        if (
            not isinstance(point, list)
            or len(point) != 2
            or not all(isinstance(v, int | float) for v in point)
        ):
            raise ValueError("a point is [x, y]")
    if not isinstance(color, str) or len(color) != 7 or not color.startswith("#"):
        raise ValueError("a color is #rrggbb")
    return {"points": points, "color": color}


async def lines(stream: peerkit.AppStream) -> Any:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        if len(buffer) > 1_000_000:
            raise ValueError("a line of over 1 MB")
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield json.loads(line)


class Whiteboard:
    """One participant: its pages (websockets), and its peers (the host's members, or the host)."""

    def __init__(self, node: peerkit.Node) -> None:
        self.node = node
        self.strokes: list[dict[str, Any]] = []  # what this participant's pages have drawn
        self.pages: set[web.WebSocketResponse] = set()
        self.peers: set[peerkit.AppStream] = set()  # host: its members; member: the host
        self.hosting = False

    async def drawn(self, stroke: dict[str, Any], source: object) -> None:
        """A stroke from a page or a peer: to every page, and on to the peers (the host passes a
        member's stroke to the other members; a member sends only its own pages' strokes)."""
        if len(self.strokes) >= MAX_STROKES:
            return
        self.strokes.append(stroke)
        for page in list(self.pages):
            await page.send_json(stroke)
        if self.hosting or isinstance(source, web.WebSocketResponse):
            data = json.dumps(stroke).encode() + b"\n"
            for stream in list(self.peers - {source}):
                try:
                    await stream.send(data)
                except (peerkit.PeerkitError, OSError, asyncio.CancelledError):
                    self.peers.discard(stream)

    # -- the page ---------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        page = web.WebSocketResponse()
        await page.prepare(request)
        await page.send_json({"hello": self.node.nickname, "strokes": self.strokes})
        self.pages.add(page)
        try:
            async for message in page:
                if message.type == WSMsgType.TEXT:
                    try:
                        await self.drawn(checked(json.loads(message.data)), page)
                    except ValueError:
                        continue
        finally:
            self.pages.discard(page)
        return page

    # -- peers ------------------------------------------------------------------------------
    async def member(self, stream: peerkit.AppStream) -> None:
        """The host's side of a member's stream: the board so far, then strokes both ways."""
        for stroke in self.strokes:
            await stream.send(json.dumps(stroke).encode() + b"\n")
        self.peers.add(stream)
        await self.follow(stream)

    async def follow(self, stream: peerkit.AppStream) -> None:
        try:
            async for message in lines(stream):
                await self.drawn(checked(message), stream)
        except (ValueError, peerkit.PeerkitError):
            pass  # a broken or misbehaving peer: its stream ends
        finally:
            self.peers.discard(stream)
            await stream.aclose()


def address(text: str) -> peerkit.EndPoint:
    """A ``HOST:PORT`` argument (argparse says what is wrong with one that is not)."""
    try:
        return peerkit.EndPoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def main() -> None:
    usage = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=usage)
    parser.add_argument("nickname")
    parser.add_argument("--host", action="store_true", help="keep the board; others join it")
    parser.add_argument("--join", metavar="HOST:PORT", type=address, help="join the board of the host there")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT for peerkit (port 0 picks one)")
    parser.add_argument("--web", default="127.0.0.1:8000", type=address, help="HOST:PORT of the page")
    args = parser.parse_args()
    identity = peerkit.Identity.generate()
    try:
        node = peerkit.Node(nickname=args.nickname, identity=identity, listen=args.listen)
    except ValueError as exc:  # a nickname too long, a --listen that is not HOST:PORT
        parser.error(str(exc))
    async with node:
        board = Whiteboard(node)
        await node.register_application(BOARD)
        app = web.Application()
        app.add_routes([web.get("/", board.index), web.get("/ws", board.websocket)])
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, args.web.host, args.web.port).start()
        try:
            if args.join:
                peer = await node.peer_at(args.join.host, args.join.port)
                answer = await peer.invite(BOARD, f"{args.nickname} asks to join", timeout=30)
                if answer is not peerkit.InvitationResponse.ACCEPTED:
                    raise SystemExit(f"the host answered {answer.name.lower()}")
                stream = await peer.open_stream(BOARD)
                board.peers.add(stream)
                page = f"http://{args.web}/"
                host = peerkit.printable(peer.nickname)  # (the host's words: shown as text)
                print(f"{args.nickname} joined {host}'s board; page at {page}", flush=True)
                await board.follow(stream)
                print("the host closed the board", flush=True)
            else:
                board.hosting = True
                node.add_invitation_handler(BOARD, accept)
                node.add_stream_handler(BOARD, board.member)
                print(f"{args.nickname}'s board at {node.endpoint}; page at http://{args.web}/", flush=True)
                await asyncio.Event().wait()
        finally:
            await runner.cleanup()


async def accept(invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
    return peerkit.InvitationResponse.ACCEPTED


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except* (OSError, peerkit.PeerkitError) as failed:  # a port taken, a host that is not there...
        error: BaseException = failed
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        sys.exit(f"whiteboard: {error}")
