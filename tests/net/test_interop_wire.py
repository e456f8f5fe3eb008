"""An independent peer written from docs/protocol.md alone (noiseprotocol + cbor2 + pynacl, none of
peerkit's code) talks to peerkit over real TCP, in both roles and both handshake patterns."""

from __future__ import annotations

import base64
import json
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import cbor2
import nacl.bindings
import nacl.signing
import pytest
from noise.connection import Keypair, NoiseConnection

from peerkit import Identity, PeerId, SecureChannel, connect, listen
from peerkit.net.channel import wanted_ciphers

pytestmark = [pytest.mark.asyncio, pytest.mark.network]

XX = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
IK = "Noise_IK_25519_ChaChaPoly_BLAKE2b"
# The same patterns with AESGCM, which peerkit's listeners take and its dialler names when asked.
XX_AES = "Noise_XX_25519_AESGCM_BLAKE2b"
IK_AES = "Noise_IK_25519_AESGCM_BLAKE2b"
PROTOCOLS = [XX, IK, XX_AES, IK_AES]


def is_ik(protocol: str) -> bool:
    return protocol.startswith("Noise_IK_")


class Foreign:
    """A minimal peer following docs/protocol.md sections 1 to 4."""

    def __init__(self, nick: str) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.id = bytes(self.key.verify_key)
        self.nick = nick
        secret = bytes(self.key) + self.id
        self.static = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(secret)

    def hello(self) -> bytes:
        return cbor2.dumps({"v": 1, "id": self.id, "nick": self.nick, "name": "foreign box"}, canonical=True)

    @staticmethod
    def check_hello(payload: bytes, remote_static: bytes) -> dict[str, object]:
        hello = cbor2.loads(payload)
        assert hello["v"] == 1
        assert nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(hello["id"]) == remote_static
        return hello


class Wire:
    """Frames over an anyio stream: 2-byte big-endian length, then the payload."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, payload: bytes) -> None:
        await self.stream.send(struct.pack(">H", len(payload)) + payload)

    async def receive(self) -> bytes:
        while True:
            if len(self.buffer) >= 2:
                (n,) = struct.unpack(">H", self.buffer[:2])
                if len(self.buffer) >= 2 + n:
                    frame, self.buffer = self.buffer[2 : 2 + n], self.buffer[2 + n :]
                    return frame
            self.buffer += await self.stream.receive()


async def initiate(
    foreign: Foreign, wire: Wire, protocol: str, responder_static: bytes
) -> tuple[NoiseConnection, dict[str, object]]:
    """Run the initiator's side of section 2 and 3 over ``wire``; return the Noise connection and
    the responder's hello, after checking that it proved ``responder_static``."""
    preamble = b"peerkit/1 " + protocol.encode()
    noise = NoiseConnection.from_name(protocol.encode())
    noise.set_as_initiator()
    noise.set_prologue(preamble)
    noise.set_keypair_from_private_bytes(Keypair.STATIC, foreign.static)
    if is_ik(protocol):
        noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, responder_static)
    noise.start_handshake()
    await wire.send(preamble)
    if not is_ik(protocol):
        await wire.send(noise.write_message(b""))
        payload = noise.read_message(await wire.receive())
        assert noise.noise_protocol.handshake_state.rs.public_bytes == responder_static
        hello = foreign.check_hello(payload, responder_static)
        await wire.send(noise.write_message(foreign.hello()))
    else:
        await wire.send(noise.write_message(foreign.hello()))
        hello = foreign.check_hello(noise.read_message(await wire.receive()), responder_static)
    assert noise.handshake_finished
    return noise, hello


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_foreign_initiator_talks_to_a_peerkit_listener(protocol: str) -> None:
    server = Identity.generate()
    foreign = Foreign("foreign-client")
    seen: list[tuple[str, dict[str, object]]] = []

    async def handler(channel: SecureChannel) -> None:
        for _ in range(3):
            message = await channel.receive()
            seen.append((channel.peer.nickname, message))
            await channel.send({"t": "pong", "n": message["n"]})

    async with await listen(server, nickname="peerkit-server") as listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, handler)
        async with await anyio.connect_tcp(*listener.address) as stream:
            wire = Wire(stream)
            noise, hello = await initiate(foreign, wire, protocol, server.x25519_public)
            assert hello["id"] == server.id.key
            assert hello["nick"] == "peerkit-server"
            # Messages past the nonce 0 (where AESGCM's big-endian nonce differs from a little-endian
            # one) and larger than peerkit's small-message path.
            for n in range(3):
                ping = {"t": "ping", "n": n, "pad": bytes(1000 * n)}
                await wire.send(noise.encrypt(cbor2.dumps(ping, canonical=True)))
                reply = cbor2.loads(noise.decrypt(await wire.receive()))
                assert reply == {"t": "pong", "n": n}
        tg.cancel_scope.cancel()
    assert [(nick, m["n"]) for nick, m in seen] == [("foreign-client", n) for n in range(3)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_peerkit_dials_a_foreign_responder(protocol: str) -> None:
    client = Identity.generate()
    foreign = Foreign("foreign-server")
    done = anyio.Event()
    got: list[object] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            wire = Wire(stream)
            preamble = await wire.receive()
            assert preamble == b"peerkit/1 " + protocol.encode()
            noise = NoiseConnection.from_name(protocol.encode())
            noise.set_as_responder()
            noise.set_prologue(preamble)
            noise.set_keypair_from_private_bytes(Keypair.STATIC, foreign.static)
            noise.start_handshake()
            payload = noise.read_message(await wire.receive())
            if not is_ik(protocol):
                assert payload == b""
                await wire.send(noise.write_message(foreign.hello()))
                payload = noise.read_message(await wire.receive())
                got.append(foreign.check_hello(payload, client.x25519_public))
            else:
                got.append(foreign.check_hello(payload, client.x25519_public))
                await wire.send(noise.write_message(foreign.hello()))
            assert noise.handshake_finished
            got.append(cbor2.loads(noise.decrypt(await wire.receive())))
            got.append(cbor2.loads(noise.decrypt(await wire.receive())))
            await wire.send(noise.encrypt(cbor2.dumps({"t": "bye"}, canonical=True)))
        done.set()

    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with tcp, anyio.create_task_group() as tg:
        tg.start_soon(tcp.serve, serve)
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)
        peer_id = PeerId(foreign.id) if is_ik(protocol) else None
        cipher = protocol.split("_")[3]
        async with await connect(
            "127.0.0.1", port, client, peer_id=peer_id, nickname="pk", cipher=cipher
        ) as channel:
            assert channel.protocol == protocol
            assert channel.cipher == cipher
            assert channel.peer.id == PeerId(foreign.id)
            assert channel.peer.nickname == "foreign-server"
            assert channel.peer.endpoint_name == "foreign box"
            await channel.send({"t": "hi", "x": b"\x00\x01"})
            await channel.send({"t": "big", "x": bytes(5000)})
            assert await channel.receive() == {"t": "bye"}
        await done.wait()
        tg.cancel_scope.cancel()
    hello = dict(got[0])
    ts = hello.pop("ts")  # the extension key that lets a responder refuse a replayed IK message 1
    # The extension key that asks to be dialled with AESGCM, where this CPU has AES instructions.
    assert hello.pop("ciphers", []) == list(wanted_ciphers())
    assert hello == {"v": 1, "id": client.id.key, "nick": "pk", "name": ""}
    assert isinstance(ts, int)
    assert abs(ts - time.time_ns()) < 60 * 10**9
    assert got[1] == {"t": "hi", "x": b"\x00\x01"}
    assert got[2] == {"t": "big", "x": bytes(5000)}


REGISTERED = uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1001")


class Served:
    """A `peerkit serve --json` process accepting invitations to REGISTERED."""

    def __init__(self, data_dir: Path) -> None:
        command = [sys.executable, "-c", "from peerkit.cli import main; main()", "serve", "--json"]
        command += ["--listen", "127.0.0.1:0", "--accept", str(REGISTERED), "--accept-from", "anyone"]
        command += ["--data-dir", str(data_dir)]
        command += ["--discovery", "memory"]  # signed in to NEAR_ME, announcing nothing on the network
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.info = json.loads(self.process.stdout.readline())

    def stop(self) -> list[dict[str, object]]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=20)
        return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path)
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", [XX, IK])
async def test_a_foreign_peer_invites_a_peerkit_serve_process(protocol: str, served: Served) -> None:
    """The issue's proof: handshake with `peerkit serve`, then `declined` for an application it has
    not registered and `accepted` for one it has, over the fixed invitation messages of section 4.1."""
    registered = REGISTERED
    unknown = uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1fff")
    info = served.info
    server_id = PeerId.parse(info["id"])
    foreign = Foreign("foreign-inviter")
    async with await anyio.connect_tcp("127.0.0.1", info["port"]) as stream:
        wire = Wire(stream)
        noise, hello = await initiate(foreign, wire, protocol, server_id.x25519)
        assert hello["id"] == server_id.key

        async def request(message: dict[str, object]) -> dict[str, object]:
            await wire.send(noise.encrypt(cbor2.dumps(message)))
            with anyio.fail_after(10):
                reply: dict[str, object] = cbor2.loads(noise.decrypt(await wire.receive()))
            return reply

        base = {"t": "invite", "msg": "from elsewhere", "data": b"\x01\x02", "ttl": 30}
        assert await request({**base, "rid": 1, "app": unknown.bytes}) == {
            "t": "invite_reply",
            "rid": 1,
            "r": "declined",
        }
        assert await request({**base, "rid": 2, "app": registered.bytes}) == {
            "t": "invite_reply",
            "rid": 2,
            "r": "accepted",
        }
        over = await request({**base, "rid": 3, "app": registered.bytes, "msg": "m" * 256})
        assert over["t"] == "error"
        assert over["code"] == "limit"
        assert over["rid"] == 3
        # The record request (docs/protocol.md 4.4): the signed record, checked with bare pynacl.
        record = await request({"t": "record", "rid": 4})
        assert (record["t"], record["rid"]) == ("record_reply", 4)
        envelope = cbor2.loads(record["rec"])
        body = envelope["body"]
        nacl.signing.VerifyKey(server_id.key).verify(b"peerkit-record-v1\x00" + body, envelope["sig"])
        content = cbor2.loads(body)
        assert content["id"] == server_id.key
        assert ["127.0.0.1", info["port"]] in content["addrs"]
    events = served.stop()
    assert served.process.returncode == 0
    assert [e["response"] for e in events if e["event"] == "invitation"] == ["declined", "accepted"]
    assert {e["nickname"] for e in events if e["event"] == "invitation"} == {"foreign-inviter"}


def foreign_card(foreign: Foreign, seq: int) -> str:
    """The foreign peer's contact card in text form, built from docs/protocol.md section 5 alone."""
    body = cbor2.dumps(
        {
            "id": foreign.id,
            "seq": seq,
            "nick": foreign.nick,
            "dname": "Foreign Peer",
            "email": "",
            "name": "",
            "addrs": [],
        },
        canonical=True,
    )
    signature = foreign.key.sign(b"peerkit-card-v1\x00" + body).signature
    envelope = cbor2.dumps({"body": body, "sig": signature}, canonical=True)
    return "peerkit:" + base64.urlsafe_b64encode(envelope).rstrip(b"=").decode()


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-c",
        "from peerkit.cli import main; main()",
        *args,
        "--data-dir",
        str(data_dir),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


async def test_a_foreign_peer_fetches_the_card_and_subscribes_to_a_peerkit_serve_process(
    served: Served, tmp_path: Path
) -> None:
    """Sections 4.5 to 4.7 of docs/protocol.md, from the outside: the card, one-shot gets, and a
    subscription that follows a presence set with `peerkit presence set`."""
    info = served.info
    server_id = PeerId.parse(info["id"])
    foreign = Foreign("foreign-watcher")
    async with await anyio.connect_tcp("127.0.0.1", info["port"]) as stream:
        wire = Wire(stream)
        noise, _ = await initiate(foreign, wire, IK, server_id.x25519)

        async def send(message: dict[str, object]) -> None:
            await wire.send(noise.encrypt(cbor2.dumps(message)))

        async def receive(kind: str) -> dict[str, object]:
            with anyio.fail_after(10):
                while True:
                    message: dict[str, object] = cbor2.loads(noise.decrypt(await wire.receive()))
                    if message["t"] == kind or message["t"] == "error":
                        return message

        # The card: signed with the card domain by the key the handshake proved.
        await send({"t": "card", "rid": 1})
        card = await receive("card_reply")
        envelope = cbor2.loads(card["card"])
        nacl.signing.VerifyKey(server_id.key).verify(
            b"peerkit-card-v1\x00" + envelope["body"], envelope["sig"]
        )
        assert cbor2.loads(envelope["body"])["id"] == server_id.key
        # Not a contact yet: it may see nothing, and may not subscribe.
        await send({"t": "get", "rid": 2, "what": "presence"})
        refused = await receive("get_reply")
        assert (refused["t"], refused["code"], refused["rid"]) == ("error", "not-allowed", 2)
        await send({"t": "subscribe", "rid": 3})
        refused = await receive("subscribe_reply")
        assert (refused["t"], refused["code"]) == ("error", "not-allowed")
        # The server's user imports the foreign card; its running node takes it within a second.
        added = cli("contacts", "add-card", foreign_card(foreign, 1), data_dir=tmp_path)
        assert added.returncode == 0, added.stderr
        with anyio.fail_after(10):
            while True:
                await send({"t": "subscribe", "rid": 4})
                reply = await receive("subscribe_reply")
                if reply["t"] == "subscribe_reply":
                    break
                await anyio.sleep(0.2)
        state = reply["state"]
        assert state["presence"] == [7, ""]  # Online
        assert [app["id"] for app in state["apps"]] == [REGISTERED.bytes]
        assert state["objects"] == []
        await send({"t": "get", "rid": 5, "what": "apps"})
        apps = await receive("get_reply")
        assert [app["id"] for app in apps["apps"]] == [REGISTERED.bytes]
        # A presence set from the command line reaches the subscription as a notify.
        assert cli("presence", "set", "busy", "in a call", data_dir=tmp_path).returncode == 0
        notify = await receive("notify")
        assert notify == {"t": "notify", "k": "presence", "v": [5, "in a call"]}
        await send({"t": "unsubscribe", "rid": 6})
        assert (await receive("unsubscribe_reply"))["rid"] == 6
