"""A game lobby: find the people near you who have the same game, see their open games, join one,
and play tic-tac-toe over an encrypted stream.

Run one per player, on machines of one LAN:  python lobby.py NICKNAME
Then type commands: host [NAME], join PLAYER, move 1-9, players, games, quit.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass, field

import anyio
import anyio.abc

import peerkit

#: The game: every player who has it installed registers it, so its id is in their signed record.
GAME = peerkit.Application(id=uuid.UUID("9c1d7f3e-5b2a-4c8e-a6f4-3e2d1c0b9a87"), description="tic-tac-toe")
#: The object a player who hosts a game publishes to the people near them.
OPEN_GAME = uuid.UUID("9c1d7f3e-5b2a-4c8e-a6f4-3e2d1c0b9a88")
IN_A_GAME = peerkit.Presence(peerkit.PresenceStatus.BUSY, "in a game")
IN_THE_LOBBY = peerkit.Presence(peerkit.PresenceStatus.ONLINE, "in the lobby")
LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]
#: Seconds between looks at the players' open games and presence.
REFRESH = 0.5


def say(text: str) -> None:
    # A line on the terminal: what peers wrote in it (names, lines) is shown as text, its escape
    # sequences and line breaks written as escapes rather than acted on.
    print(peerkit.printable(text), flush=True)


@dataclass
class Board:
    cells: list[str] = field(default_factory=lambda: [" "] * 9)

    def play(self, cell: int, mark: str) -> None:
        if not 1 <= cell <= 9 or self.cells[cell - 1] != " ":
            raise ValueError(f"cell {cell} is not free")
        self.cells[cell - 1] = mark

    def winner(self) -> str | None:
        for a, b, c in LINES:
            if self.cells[a] != " " and self.cells[a] == self.cells[b] == self.cells[c]:
                return self.cells[a]
        return "draw" if " " not in self.cells else None

    def show(self) -> None:
        for row in range(3):
            say(" " + " | ".join(self.cells[row * 3 : row * 3 + 3]))


class Lobby:
    def __init__(self, node: peerkit.Node, task_group: anyio.abc.TaskGroup) -> None:
        self.node = node
        self.task_group = task_group
        self.players: dict[peerkit.PeerId, peerkit.NearbyPeer] = {}
        self.games: dict[peerkit.PeerId, str] = {}  # host -> the open game's name
        self.presence: dict[peerkit.PeerId, peerkit.Presence] = {}
        self.hosting: str | None = None
        self.moves: anyio.abc.ObjectSendStream[int] | None = None  # the user's moves, in a game

    async def follow_players(self) -> None:
        # The live filter: people near me whose record shows the game.
        async with self.node.watch_nearby(application=GAME, initial=True) as players:
            async for event in players:
                if event.change is peerkit.ChangeType.DELETED:
                    self.players.pop(event.peer.id, None)
                    self.games.pop(event.peer.id, None)
                    say(f"{event.peer.nickname} left the lobby")
                else:
                    if event.peer.id not in self.players:
                        say(f"{event.peer.nickname} is in the lobby")
                    self.players[event.peer.id] = event.peer

    async def follow_games(self) -> None:
        # Open games and presence are asked of each player (they are not contacts to subscribe to).
        while True:
            for peer_id, peer in list(self.players.items()):
                try:
                    objects = {o.id: o for o in await peer.get_objects(timeout=2)}
                    presence = await peer.get_presence(timeout=2)
                except peerkit.PeerkitError:
                    continue
                game = objects.get(OPEN_GAME)
                name = json.loads(game.data)["name"] if game is not None else None
                if name is not None and self.games.get(peer_id) != name:
                    say(f"{peer.nickname} opened a game: {name}")
                elif name is None and peer_id in self.games:
                    say(f"{peer.nickname}'s game is closed")
                if name is None:
                    self.games.pop(peer_id, None)
                else:
                    self.games[peer_id] = name
                if self.presence.get(peer_id, presence) != presence:
                    say(f"{peer.nickname} is now {presence.text}")
                self.presence[peer_id] = presence
            await anyio.sleep(REFRESH)

    async def host(self, name: str) -> None:
        data = json.dumps({"name": name}).encode()
        await self.node.set_object(peerkit.PeerObject(id=OPEN_GAME, data=data, scope=peerkit.Scope.NEAR_ME))
        self.hosting = name
        say(f"hosting {name}: waiting for a player")

    async def invited(self, invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
        if self.hosting is None or self.moves is not None or invitation.data.decode() != self.hosting:
            return peerkit.InvitationResponse.DECLINED
        say(f"{invitation.nickname} joins your game")
        return peerkit.InvitationResponse.ACCEPTED

    async def hosted(self, stream: peerkit.AppStream) -> None:
        # The joiner's stream: the host plays X and moves first.
        await self.node.delete_object(OPEN_GAME)
        self.hosting = None
        await self.play(stream, "X", stream.peer.nickname)

    async def join(self, nickname: str) -> None:
        found = [(i, p) for i, p in self.players.items() if p.nickname == nickname and i in self.games]
        if not found:
            say(f"{nickname} has no open game")
            return
        peer_id, peer = found[0]
        answer = await peer.invite(GAME, "a game?", self.games[peer_id].encode(), timeout=30)
        if answer is not peerkit.InvitationResponse.ACCEPTED:
            say(f"{nickname} answered {answer.name.lower()}")
            return
        async with await peer.open_stream(GAME) as stream:
            await self.play(stream, "O", nickname)

    async def play(self, stream: peerkit.AppStream, mark: str, opponent: str) -> None:
        board, theirs = Board(), "O" if mark == "X" else "X"
        send, moves = anyio.create_memory_object_stream[int](9)
        self.moves = send
        await self.node.set_presence(IN_A_GAME)
        say(f"game on against {opponent}: you are {mark}" + (", your move" if mark == "X" else ""))
        turn = "X"
        buffer = b""
        try:
            while board.winner() is None:
                if turn == mark:
                    cell = await moves.receive()
                    try:
                        board.play(cell, mark)
                    except ValueError as exc:
                        say(str(exc))
                        continue
                    await stream.send(b"%d\n" % cell)
                else:
                    while b"\n" not in buffer:
                        buffer += await stream.receive()
                    line, buffer = buffer.split(b"\n", 1)
                    board.play(int(line), theirs)
                    say(f"{opponent} played {int(line)}")
                board.show()
                turn = theirs if turn == mark else mark
                if board.winner() is None and turn == mark:
                    say("your move")
        except (anyio.EndOfStream, anyio.BrokenResourceError, ValueError):
            say(f"{opponent} left the game")
        else:
            result = board.winner()
            say("a draw" if result == "draw" else "you win" if result == mark else f"{opponent} wins")
        finally:
            self.moves = None
            await self.node.set_presence(IN_THE_LOBBY)

    async def command(self, line: str) -> bool:
        word, _, rest = line.strip().partition(" ")
        if word == "host":
            await self.host(rest or f"{self.node.nickname}'s game")
        elif word == "join":
            self.task_group.start_soon(self.join, rest)
        elif word == "move" and self.moves is not None:
            await self.moves.send(int(rest))
        elif word == "players":
            for peer_id, peer in self.players.items():
                text = self.presence.get(peer_id, IN_THE_LOBBY).text
                say(f"player {peer.nickname} ({text})")
        elif word == "games":
            for peer_id, name in self.games.items():
                say(f"game {name} hosted by {self.players[peer_id].nickname}")
        elif word == "quit":
            return False
        elif word:
            say("commands: host [NAME], join PLAYER, move 1-9, players, quit")
        return True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("nickname")
    parser.add_argument("--listen", default=":0", help="HOST:PORT (port 0 picks one; no HOST: all)")
    args = parser.parse_args()
    identity = peerkit.Identity.generate()  # a player's own data dir would keep one
    try:
        node = peerkit.Node(nickname=args.nickname, identity=identity, listen=args.listen, discovery=["mdns"])
    except ValueError as exc:  # a nickname too long, a --listen that is not HOST:PORT
        parser.error(str(exc))
    async with node, anyio.create_task_group() as tg:
        lobby = Lobby(node, tg)
        await node.register_application(GAME)  # "installed": people near me see it in my record
        node.add_invitation_handler(GAME, lobby.invited)
        node.add_stream_handler(GAME, lobby.hosted)
        await node.sign_in(peerkit.Scope.NEAR_ME)
        await node.set_presence(IN_THE_LOBBY)
        tg.start_soon(lobby.follow_players)
        tg.start_soon(lobby.follow_games)
        say(f"{args.nickname} in the lobby; commands: host [NAME], join PLAYER, move 1-9, players, quit")
        async for line in anyio.wrap_file(sys.stdin):
            try:
                if not await lobby.command(line):
                    break
            except ValueError as exc:
                say(f"not understood: {exc}")
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    try:
        anyio.run(main)
    except* (OSError, peerkit.PeerkitError) as failed:  # the port is taken, no network...
        error: BaseException = failed
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        sys.exit(f"lobby: {error}")
