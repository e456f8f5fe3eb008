"""Files sent over the files application (:mod:`peerkit.files`): folders, names taken, files
already there, a cut transfer resumed, bytes that do not match their hash, a file that changed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import blake3
import pytest

from peerkit import AppStream, Identity, InvitationResponse, Node, ProtocolError, files, streams
from peerkit.files import (
    Outgoing,
    ReceiveReport,
    SendReport,
    check_destination,
    prepare,
    receive_files,
    send_files,
)
from peerkit.proto.files import Entry, decode_summary, encode_offer, encode_summary, encode_want
from peerkit.testing import MemoryNetwork, node_pair
from peerkit.wellknown import FILES

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def nodes() -> AsyncIterator[tuple[Node, Node]]:
    async with node_pair(network=MemoryNetwork(), discovery=False) as (alice, bob):
        await alice.register_application(FILES)
        await bob.register_application(FILES)
        yield alice, bob


async def transfer(
    alice: Node,
    bob: Node,
    outgoing: list[Outgoing],
    into: Path,
    receiving: Callable[[AppStream, Any], Awaitable[ReceiveReport]] | None = None,
    totals: dict[str, int] | None = None,
) -> tuple[SendReport | BaseException, ReceiveReport | BaseException]:
    """Offer ``outgoing`` from alice to bob, who receives into ``into``: both reports (or errors);
    ``totals`` gets what each side's ``total`` callback was told ("sent", "received")."""
    told = totals if totals is not None else {}
    data = encode_summary([o.entry for o in outgoing])
    got: list[ReceiveReport | BaseException] = []
    accepted = anyio.Event()

    async def invited(invitation: Any) -> InvitationResponse:
        accepted.set()
        return InvitationResponse.ACCEPTED

    async def on_stream(stream: AppStream) -> None:
        summary = decode_summary(data)
        try:
            got.append(
                await (
                    receiving(stream, summary)
                    if receiving
                    else receive_files(stream, summary, into, total=lambda n: told.update(received=n))
                )
            )
        except Exception as exc:
            got.append(exc)

    handles = [bob.add_invitation_handler(FILES, invited), bob.add_stream_handler(FILES, on_stream)]
    try:
        peer = alice.peer(bob.id, bob.endpoint)
        assert await peer.invite(FILES, data=data) is InvitationResponse.ACCEPTED
        sent: SendReport | BaseException
        try:
            async with await peer.open_stream(FILES) as stream:
                sent = await send_files(stream, outgoing, total=lambda n: told.update(sent=n))
        except Exception as exc:
            sent = exc
        with anyio.fail_after(10):
            while not got:
                await anyio.sleep(0.01)
        return sent, got[0]
    finally:
        for handle in handles:
            handle.remove()


def receiving_each(bob: Node, into: Path, offers: list[bytes]) -> list[ReceiveReport | BaseException]:
    """Bob receives each files stream into ``into``, the offer it takes the first summary left in
    ``offers`` (a test may add more as it goes): what each receiving gave, in the order they end."""
    got: list[ReceiveReport | BaseException] = []

    async def on_stream(stream: AppStream) -> None:
        try:
            got.append(await receive_files(stream, decode_summary(offers.pop(0)), into))
        except Exception as exc:
            got.append(exc)

    bob.add_stream_handler(FILES, on_stream)
    return got


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(
    monkeypatch: pytest.MonkeyPatch, name: str, what: Callable[[tuple[Any, ...], Any], Any]
) -> list[Any]:
    """Watch the calls of ``peerkit.files.<name>``: a list of ``what(args, result)`` for each."""
    records: list[Any] = []
    original = getattr(files, name)

    def watched(*args: Any) -> Any:
        result = original(*args)
        records.append(what(args, result))
        return result

    monkeypatch.setattr(files, name, watched)
    return records


async def send_folder(tmp_path: Path, sizes: dict[str, int]) -> SendReport:
    """Send a folder of files of ``sizes`` (random bytes) from alice to bob; alice's report, once
    every file arrived intact."""
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, size in sizes.items():
        (folder / name).write_bytes(os.urandom(size))
    into = tmp_path / "into"
    into.mkdir()
    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, await prepare([folder]), into)
    assert isinstance(sent, SendReport), sent
    assert isinstance(got, ReceiveReport), got
    assert (sent.received, sent.failed, sent.sent_bytes) == (len(sizes), [], sum(sizes.values()))
    for name in sizes:
        assert (into / "notes" / name).read_bytes() == (folder / name).read_bytes()
    return sent


async def test_a_file_and_a_folder_arrive_intact_and_a_taken_name_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "album" / "2026").mkdir(parents=True)
    (src / "album" / "cover.jpg").write_bytes(os.urandom(300_000))
    (src / "album" / "2026" / "a.txt").write_text("alpha")
    (src / "album" / "empty.bin").write_bytes(b"")
    (src / "notes.md").write_text("mine")
    into = tmp_path / "into"
    into.mkdir()
    (into / "notes.md").write_text("theirs, kept")
    hashed: list[int] = []
    outgoing = await prepare([src / "album", src / "notes.md"], hashed.append)
    assert [o.entry.path for o in outgoing] == [
        "album/cover.jpg",
        "album/empty.bin",
        "album/2026/a.txt",
        "notes.md",
    ]
    assert sum(hashed) == 300_000 + 5 + 4
    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, outgoing, into)
        assert isinstance(sent, SendReport), sent
        assert isinstance(got, ReceiveReport), got
        assert (sent.received, sent.failed, sent.skipped) == (4, [], 0)
        assert sha(into / "album" / "cover.jpg") == sha(src / "album" / "cover.jpg")
        assert (into / "album" / "2026" / "a.txt").read_text() == "alpha"
        assert (into / "album" / "empty.bin").read_bytes() == b""
        assert (into / "notes.md").read_text() == "theirs, kept"  # never overwritten
        assert (into / "notes (1).md").read_text() == "mine"
        again_sent, again = await transfer(alice, bob, outgoing, into)  # all there already: nothing sent
        assert isinstance(again, ReceiveReport)
        assert isinstance(again_sent, SendReport)
        assert sorted(again.already) == ["album/2026/a.txt", "album/cover.jpg", "album/empty.bin"]
        assert (again_sent.sent_bytes, again_sent.skipped) == (4, 3)  # (only notes.md: a new copy)
    assert not list(into.rglob("*.peerkit-part"))


async def test_the_receiver_writes_whole_buffers_reused_from_file_to_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stream messages of 7 bytes each (a peer may send them so) are gathered into the receiver's
    # buffers (BATCH bytes, 512 here, or what is left to come), each written whole, never held as
    # messages; the same few buffers serve every file, and none is larger than the files need.
    monkeypatch.setattr(streams, "STREAM_CHUNK", 7)
    monkeypatch.setattr(files, "BATCH", 512)
    # (the bytes of each piece written, trip by trip; every buffer, kept: with an id of its own)
    trips = record(monkeypatch, "_store", lambda args, _: [len(piece.data) for piece in args[0]])
    fitted = record(monkeypatch, "_fit", lambda args, out: (out, out is not args[0]))
    await send_folder(tmp_path, {"a.bin": 2_000, "b.bin": 300, "c.bin": 1_100})
    # Each buffer is filled whole (the files follow each other in it) and written in one trip.
    assert trips == [[512], [512], [512], [464, 48], [252, 260], [512], [328]]
    # One buffer to hash with, and BUFFERS at each end, made for the first file and kept.
    made = [buffer for buffer, new in fitted if new]
    assert len(made) <= 1 + 2 * files.BUFFERS
    assert max(len(buffer) for buffer in made) == 512


async def test_a_small_file_is_moved_with_small_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = record(monkeypatch, "_fit", lambda _, out: len(out))
    await send_folder(tmp_path, {"note.txt": 12})
    assert len(made) >= 3  # (hashing, sending, receiving)
    assert max(made) <= 1 << 16  # (not BATCH, 4 MiB, cleared for 12 bytes)


async def test_a_folder_of_many_files_holds_a_hasher_only_while_a_file_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A BLAKE3 hasher is about 2 KB: one for each of 10,000 offered files, made up front and kept
    # to the end, was 20 MB held by the receiver.
    live = [0, 0]  # (now, at most)

    class Counted:
        AUTO = blake3.blake3.AUTO

        def __init__(self, **options: Any) -> None:
            self._hasher = blake3.blake3(**options)
            live[0] += 1
            live[1] = max(live)

        def update(self, data: Any) -> None:
            self._hasher.update(data)

        def digest(self) -> bytes:
            return self._hasher.digest()

        def __del__(self) -> None:
            live[0] -= 1

    monkeypatch.setattr(files, "blake3", type("Blake3", (), {"blake3": Counted}))
    await send_folder(tmp_path, {f"{n}.txt": n for n in range(200)})
    assert live[1] <= 2, f"{live[1]} hashers held at once"
    assert live[0] == 0


def cut_after(size: int, into: Path) -> Callable[[AppStream, Any], Awaitable[ReceiveReport]]:
    """Receiving into ``into`` that breaks off (the connection cut) once ``size`` bytes arrived."""

    async def receiving(stream: AppStream, summary: Any) -> ReceiveReport:
        arrived = 0

        def progress(n: int) -> None:
            nonlocal arrived
            arrived += n
            if arrived >= size:
                raise anyio.BrokenResourceError("cut")

        try:
            return await receive_files(stream, summary, into, progress=progress)
        finally:
            await stream.aclose()

    return receiving


async def test_a_cut_transfer_resumes_from_its_partial_file(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4_000_000))
    into = tmp_path / "into"
    outgoing = await prepare([big])
    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, outgoing, into, cut_after(2_000_000, into))
        assert isinstance(got, anyio.BrokenResourceError)
        assert not isinstance(sent, SendReport)
        assert not (into / "big.bin").exists()  # never under its name half done
        (partial,) = into.glob(".*.peerkit-part")
        kept = partial.stat().st_size
        assert 0 < kept < 4_000_000
        sent, got = await transfer(alice, bob, outgoing, into)
        assert isinstance(got, ReceiveReport), got
        assert isinstance(sent, SendReport), sent
        assert got.resumed_bytes == kept
        assert sent.sent_bytes == got.received_bytes == 4_000_000 - kept
        assert sha(into / "big.bin") == sha(big)
        assert not partial.exists()


async def test_a_cut_folder_keeps_the_files_that_arrived_and_resumes_the_one_cut(tmp_path: Path) -> None:
    # Five files of 300 kB share one buffer at the receiver; the connection is cut at 700 kB: the
    # first two are saved, the third kept in part, and sending again sends only what is missing.
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.bin").write_bytes(os.urandom(300_000))
    into = tmp_path / "into"
    outgoing = await prepare([folder])
    async with nodes() as (alice, bob):
        _, got = await transfer(alice, bob, outgoing, into, cut_after(700_000, into))
        assert isinstance(got, anyio.BrokenResourceError)
        assert sorted(p.name for p in (into / "notes").glob("*.bin")) == ["0.bin", "1.bin"]
        (partial,) = (into / "notes").glob(".*.peerkit-part")
        kept = partial.stat().st_size
        assert 100_000 <= kept < 300_000
        totals: dict[str, int] = {}
        sent, again = await transfer(alice, bob, outgoing, into, totals=totals)
    assert isinstance(sent, SendReport), sent
    assert isinstance(again, ReceiveReport), again
    assert sorted(again.already) == ["notes/0.bin", "notes/1.bin"]
    assert again.resumed_bytes == kept
    assert sent.sent_bytes == again.received_bytes == 900_000 - kept
    # (each side's total, told before the first byte: neither the files there nor the part kept)
    assert totals == {"sent": 900_000 - kept, "received": 900_000 - kept}
    for i in range(5):
        assert sha(into / "notes" / f"{i}.bin") == sha(folder / f"{i}.bin")
    assert not list(into.rglob("*.peerkit-part"))


async def test_bytes_that_do_not_match_the_offer_are_not_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("the real bytes")
    lie = Outgoing(real, Entry("real.txt", 14, hashlib.sha256(b"other bytes!!!").digest()))
    into = tmp_path / "into"
    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, [lie], into)
        assert isinstance(got, ReceiveReport)
        assert isinstance(sent, SendReport)
        assert got.failed == [("real.txt", "its bytes do not match the offer's BLAKE3 hash (not kept)")]
        assert sent.failed == got.failed
        assert not list(into.iterdir())


@pytest.mark.parametrize("change", ["shorter", "deleted"])
async def test_a_file_that_changed_after_hashing_stops_the_sender(tmp_path: Path, change: str) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "a.txt").write_text("first, sent whole")
    path = folder / "b.txt"
    path.write_text("a long line of text")
    outgoing = await prepare([folder])
    if change == "shorter":
        path.write_text("short")
    else:
        path.unlink()
    into = tmp_path / "into"
    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, outgoing, into)
        assert isinstance(sent, ValueError)
        assert str(sent) == f"{path} changed while it was sent: send it again"
        assert isinstance(got, anyio.BrokenResourceError | ProtocolError)
    assert (into / "logs" / "a.txt").read_text() == "first, sent whole"


async def test_an_offer_that_is_not_the_one_accepted_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    a, b = await prepare([tmp_path / "a"]), await prepare([tmp_path / "b"])
    async with nodes() as (alice, bob):

        async def expecting_b(stream: AppStream, summary: Any) -> ReceiveReport:
            return await receive_files(
                stream, decode_summary(encode_summary([b[0].entry])), tmp_path / "into"
            )

        _, got = await transfer(alice, bob, a, tmp_path / "into", expecting_b)
        assert isinstance(got, ProtocolError)
        assert "not the one accepted" in str(got)


def test_a_destination_is_a_folder_that_can_be_written_or_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a file").write_text("x")
    check_destination(tmp_path)  # there
    check_destination(tmp_path / "new" / "deeper")  # made when files arrive
    with pytest.raises(NotADirectoryError, match=r"cannot save files into .*a file: it is a file"):
        check_destination(tmp_path / "a file")
    with pytest.raises(NotADirectoryError, match=r"into .*a file/sub: .*a file is a file, not a folder"):
        check_destination(tmp_path / "a file" / "sub")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # (root may write anywhere)
    with pytest.raises(PermissionError, match=r"into .*/new: .* is not writable by this user"):
        check_destination(tmp_path / "new")


async def test_a_receiver_that_cannot_save_says_why_before_asking_for_a_byte(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "taken").write_text("a file where the folder should be")
    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, await prepare([tmp_path / "a"]), tmp_path / "taken" / "in")
    assert isinstance(got, NotADirectoryError)
    assert "cannot save files into" in str(got)
    assert isinstance(sent, ProtocolError)  # (the protocol has no word for it: the stream ends)
    assert "the receiver took the offer but not the files" in str(sent)


async def test_files_the_receiver_cannot_save_are_failures_on_both_sides(tmp_path: Path) -> None:
    # A file where a folder of the offer goes, a folder where a file goes (asked to overwrite it):
    # the receiver cannot save those files, and its sender is told so rather than counting them
    # as "already there or skipped"; the reasons name no path of the receiver's but the offer's.
    src = tmp_path / "src"
    (src / "trip").mkdir(parents=True)
    (src / "trip" / "a.txt").write_text("a")
    (src / "trip" / "b.txt").write_text("b")
    (src / "plan.txt").write_text("plan")
    (src / "fine.txt").write_text("fine")
    into = tmp_path / "into"
    into.mkdir()
    (into / "trip").write_text("a file called trip")
    (into / "plan.txt").mkdir()

    async def overwrite(stream: AppStream, summary: Any) -> ReceiveReport:
        async def decide(entry: Entry, existing: Path) -> files.Decision:
            return "overwrite"

        return await receive_files(stream, summary, into, decide)

    outgoing = await prepare([src / "trip", src / "plan.txt", src / "fine.txt"])
    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, outgoing, into, overwrite)
    assert isinstance(got, ReceiveReport), got
    assert isinstance(sent, SendReport), sent
    cannot = [
        ("trip/a.txt", "trip is a file or a link in the receiving folder, not a folder"),
        ("trip/b.txt", "trip is a file or a link in the receiving folder, not a folder"),
        ("plan.txt", "a folder or a link has its name in the receiving folder"),
    ]
    assert (got.saved, got.failed) == ([into / "fine.txt"], cannot)
    assert sorted(sent.failed) == sorted(cannot)
    assert (sent.received, sent.skipped, sent.sent_bytes) == (1, 0, 4)
    assert (into / "trip").read_text() == "a file called trip"


async def test_an_offer_of_x_and_x_slash_y_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    # A file and a folder of one name cannot both be saved: the receiver once made the folder,
    # then failed on the file with a bare "[Errno 21] Is a directory", a partial file left behind.
    (tmp_path / "one").write_text("1")
    (tmp_path / "two").write_text("22")
    outgoing = [
        Outgoing(tmp_path / "one", Entry("x", 1, blake3.blake3(b"1").digest())),
        Outgoing(tmp_path / "two", Entry("x/y", 2, blake3.blake3(b"22").digest())),
    ]
    into = tmp_path / "into"
    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, outgoing, into)
    assert isinstance(got, ProtocolError)
    assert str(got) == "malformed file offer: 'x' is a file and the folder of 'x/y'"
    assert isinstance(sent, ProtocolError)
    assert not into.exists()
    # peerkit's own sender makes no such offer: a file and a folder given under one name.
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "a" / "x" / "y").write_text("y")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(
        ValueError, match=r"^these cannot be sent together: 'x' is a file and the folder of 'x/y'$"
    ):
        await prepare([tmp_path / "b" / "x", tmp_path / "a" / "x"])


@pytest.mark.parametrize("told", ["nothing", "overwrite"])
async def test_a_name_taken_while_its_file_arrives_is_not_replaced(tmp_path: Path, told: str) -> None:
    # Something else makes a folder where a file goes while it arrives: the file takes the first
    # free name beside it. Told to overwrite what was there (a file then), it cannot replace a
    # folder: that file fails alone (its bytes not kept), the others are saved, and the sender
    # hears which.
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    (src / "small.txt").write_text("small")
    into = tmp_path / "into"
    if told == "overwrite":
        (into / "src").mkdir(parents=True)
        (into / "src" / "big.bin").write_text("an old file, to be overwritten")

    async def receiving(stream: AppStream, summary: Any) -> ReceiveReport:
        def progress(n: int) -> None:
            taken = into / "src" / "big.bin"
            if not taken.is_dir():
                taken.unlink(missing_ok=True)
                taken.mkdir()

        async def overwrite(entry: Entry, existing: Path) -> files.Decision:
            return "overwrite"

        return await receive_files(stream, summary, into, overwrite, progress)

    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, await prepare(src), into, receiving)
    assert isinstance(got, ReceiveReport), got
    assert isinstance(sent, SendReport), sent
    if told == "nothing":
        assert (got.saved, got.failed) == ([into / "src" / "big (1).bin", into / "src" / "small.txt"], [])
        assert (sent.received, sent.failed) == (2, [])
        assert (into / "src" / "big (1).bin").read_bytes() == (src / "big.bin").read_bytes()
    else:
        failure = ("src/big.bin", "it could not take its name: is a directory (not kept)")
        assert (got.saved, got.failed) == ([into / "src" / "small.txt"], [failure])
        assert (sent.received, sent.failed) == (1, [failure])
    assert (into / "src" / "big.bin").is_dir()
    assert not list(into.rglob("*.peerkit-part"))


async def test_a_connection_broken_mid_file_is_the_senders_one_error(tmp_path: Path) -> None:
    # The sender's reader of the file waited for a free buffer when the stream broke, and the
    # buffers' stream was closed before it was cancelled: two errors in a group, which no caller
    # catches ("unexpected ExceptionGroup" in peerkit send), rather than the broken connection.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(files.BUFFERS * files.BATCH + 1))
    (outgoing,) = await prepare(big)

    class Breaking:
        def __init__(self) -> None:
            self.replies = encode_want([(0, 0)])

        async def send(self, data: bytes) -> None:
            if len(data) >= files.BATCH:  # (the file's bytes, once every buffer is full)
                await anyio.sleep(0.1)
                raise anyio.BrokenResourceError("the connection to the peer broke")

        async def receive(self, max_bytes: int = 65536) -> bytes:
            replies, self.replies = self.replies, b""
            if not replies:
                await anyio.sleep_forever()
            return replies

        async def aclose(self) -> None:
            pass

    with pytest.raises(anyio.BrokenResourceError, match="the connection to the peer broke"):
        await send_files(Breaking(), [outgoing])  # type: ignore[arg-type]


async def test_a_peer_that_moves_no_byte_holds_a_transfer_no_longer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A peer that keeps its connection alive (it answers keepalives) and moves nothing held a
    # transfer for ever: a sender that offers and then sends nothing held a place of 'serve
    # --accept files' (4 in all); a receiver that stops reading held 'peerkit send'. Each side
    # gives up after ANSWER_TIMEOUT seconds without progress, keeping what arrived.
    monkeypatch.setattr(files, "ANSWER_TIMEOUT", 0.5)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(48 << 20))
    (outgoing,) = await prepare(big)
    data = encode_summary([outgoing.entry])
    into = tmp_path / "into"
    stalls = [anyio.Event(), anyio.Event()]

    async def stalling_receiver(stream: AppStream) -> None:  # wants the file, then reads nothing
        frames = files._Frames(stream)
        await frames.next("files")
        await stream.send(encode_want([(0, 0)]))
        await stalls[0].wait()

    alice, bob = (Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) for _ in "ab")
    async with alice, bob:
        for node in (alice, bob):
            await node.register_application(FILES)
        handle = bob.add_stream_handler(FILES, stalling_receiver)
        peer = alice.peer(bob.id, bob.endpoint)
        with anyio.fail_after(20):
            async with await peer.open_stream(FILES) as stream:
                with pytest.raises(ProtocolError, match=r"^the receiver took no byte for 0\.5 s$"):
                    await send_files(stream, [outgoing])
        stalls[0].set()
        handle.remove()
        results = receiving_each(bob, into, [data])
        with anyio.fail_after(20):
            async with await peer.open_stream(FILES) as stream:  # offers, then sends nothing
                await stream.send(encode_offer([outgoing.entry]))
                while not results:
                    await anyio.sleep(0.05)
    (got,) = results
    assert isinstance(got, ProtocolError)
    assert str(got) == "the sender sent no byte for 0.5 s"


async def test_two_transfers_of_one_file_into_one_folder_at_once_neither_spoils_the_other(
    tmp_path: Path,
) -> None:
    # Both wrote the one partial file of that path and hash (each checking the bytes it
    # received, not those written: a spoilt file could take the name); the second is refused
    # that file now, and the first finishes intact.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 << 20))
    (outgoing,) = await prepare(big)
    data = encode_summary([outgoing.entry])
    into = tmp_path / "into"

    async with nodes() as (alice, bob):
        got = receiving_each(bob, into, [data, data])
        peer = alice.peer(bob.id, bob.endpoint)
        with anyio.fail_after(20):
            async with await peer.open_stream(FILES) as first:  # by hand: half, then a pause
                await first.send(encode_offer([outgoing.entry]))
                frames = files._Frames(first)
                _, wanted, _ = await frames.next("want")
                assert wanted == [(0, 0)]
                await first.send(big.read_bytes()[: 1 << 20])  # (the file is bob's to write now)
                async with await peer.open_stream(FILES) as second:
                    report = await send_files(second, [outgoing])
                busy = ("big.bin", "another transfer is receiving it here now")
                assert (report.received, report.failed, report.sent_bytes) == (0, [busy], 0)
                await first.send(big.read_bytes()[1 << 20 :])
                _, done, _ = await frames.next("done")
                assert done == files.Done(1, ())
            while len(got) < 2:
                await anyio.sleep(0.01)
    first_report, second_report = got[1], got[0]  # (the second ended first)
    assert isinstance(second_report, ReceiveReport)
    assert second_report.failed == [busy]
    assert isinstance(first_report, ReceiveReport)
    assert first_report.saved == [into / "big.bin"]
    assert (into / "big.bin").read_bytes() == big.read_bytes()


async def test_transfers_into_one_file_system_at_once_share_its_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each checked the free space against its own bytes alone: four at once could together fill
    # the disk and all fail halfway. The second is refused what the first will still write.
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(os.urandom(3 << 20))
    second.write_bytes(os.urandom((1 << 20) + 1))
    (one,) = await prepare(first)
    (two,) = await prepare(second)
    room = 3 << 20  # (the first's bytes; with 1 MiB of them sent, 2 MiB or more to come)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=room))
    data = {one.entry.path: encode_summary([one.entry]), two.entry.path: encode_summary([two.entry])}
    offered: list[bytes] = []
    into = tmp_path / "into"

    async with nodes() as (alice, bob):
        got = receiving_each(bob, into, offered)
        peer = alice.peer(bob.id, bob.endpoint)
        with anyio.fail_after(20):
            offered.append(data["first.bin"])
            async with await peer.open_stream(FILES) as paused:  # half of it, then a pause
                await paused.send(encode_offer([one.entry]))
                frames = files._Frames(paused)
                await frames.next("want")
                await paused.send(first.read_bytes()[: 1 << 20])
                offered.append(data["second.bin"])
                async with await peer.open_stream(FILES) as stream:
                    with pytest.raises(ProtocolError, match="took the offer but not the files"):
                        await send_files(stream, [two])
                while len(got) < 1:
                    await anyio.sleep(0.01)
                assert isinstance(got[0], OSError)
                assert "the files need 1,048,577, and other transfers into it " in str(got[0])
                await paused.send(first.read_bytes()[1 << 20 :])
                await frames.next("done")
            offered.append(data["second.bin"])  # (the first is done: its bytes are written)
            async with await peer.open_stream(FILES) as stream:
                assert (await send_files(stream, [two])).received == 1


def test_a_file_received_never_takes_a_name_another_took_meanwhile(tmp_path: Path) -> None:
    # Two transfers into one folder, one name free when each planned: the one that ends second
    # replaced the first's file (unless its user said to replace what was there).
    (tmp_path / "notes.txt").write_text("the first transfer's")
    partial = tmp_path / ".x.peerkit-part"
    partial.write_text("the second transfer's")
    assert files._give_name(partial, tmp_path / "notes.txt", replace=False) == tmp_path / "notes (1).txt"
    assert (tmp_path / "notes.txt").read_text() == "the first transfer's"
    assert (tmp_path / "notes (1).txt").read_text() == "the second transfer's"
    assert not partial.exists()
    partial.write_text("replacing, as its user said")
    assert files._give_name(partial, tmp_path / "notes.txt", replace=True) == tmp_path / "notes.txt"
    assert (tmp_path / "notes.txt").read_text() == "replacing, as its user said"


def test_where_there_are_no_hard_links_a_taken_name_is_looked_at_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: Any, target: Any) -> None:  # (as a FAT file system answers)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "notes.txt").write_text("there first")
    partial = tmp_path / ".x.peerkit-part"
    partial.write_text("received")
    assert files._give_name(partial, tmp_path / "notes.txt", replace=False) == tmp_path / "notes (1).txt"
    assert (tmp_path / "notes.txt").read_text() == "there first"
    partial.write_text("received again")
    assert files._give_name(partial, tmp_path / "free.txt", replace=False) == tmp_path / "free.txt"
    assert (tmp_path / "free.txt").read_text() == "received again"
    assert not partial.exists()


async def test_prepare_takes_one_path_as_one_path(tmp_path: Path) -> None:
    # (a str was once read as a sequence of one-letter paths: "/tmp/x" walked "/" first)
    (tmp_path / "note.txt").write_text("hi")
    for one in (str(tmp_path / "note.txt"), tmp_path / "note.txt"):
        (outgoing,) = await prepare(one)
        assert (outgoing.entry.path, outgoing.entry.size) == ("note.txt", 2)
    with pytest.raises(TypeError, match="a path or a sequence of paths, not int"):
        await prepare(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a str or a Path, not bytes"):
        await prepare([b"note.txt"])  # type: ignore[list-item]


async def test_prepare_names_what_it_cannot_send(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file or folder"):
        await prepare([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no file to send"):
        await prepare([tmp_path / "empty"])
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "same").write_text("1")
    (tmp_path / "same").write_text("2")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "x").mkdir()
    (tmp_path / "y" / "x" / "same").write_text("3")
    with pytest.raises(ValueError, match="two files would be called 'x/same'"):
        await prepare([tmp_path / "x", tmp_path / "y" / "x"])
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "fine").write_text("4")
    (tmp_path / "z" / "invoice\u202etxt.exe").write_text("5")  # (shows as "invoiceexe.txt")
    with pytest.raises(ValueError, match=r"invoice\\u202etxt\.exe cannot be sent under its name"):
        await prepare([tmp_path / "z"])
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "caf\udce9.txt").write_text("6")  # (a name whose bytes are not UTF-8)
    with pytest.raises(ValueError, match=r"holds '\\udce9', which is no character"):
        await prepare([tmp_path / "w"])


async def test_prepare_says_what_a_folder_holds_that_is_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A link to a file is followed (as the file shows when opened); nothing else that is not a
    # file is sent, and each is told, rather than left out without a word.
    top = tmp_path / "top"
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "kept").mkdir()
    (top / "kept" / "f.txt").write_text("f")
    (top / "note.txt").write_text("n")
    (top / "to-note").symlink_to(top / "note.txt")
    (top / "to-kept").symlink_to(top / "kept")
    (top / "to-nothing").symlink_to(tmp_path / "gone")
    (top / "to-null").symlink_to("/dev/null")
    os.mkfifo(top / "pipe")
    (top / "locked").mkdir()
    (top / "locked" / "secret").write_text("s")
    scandir = os.scandir

    def refusing(path: Any) -> Any:  # (the tests run as root, whom a mode of 000 does not stop)
        if str(path) == str(top / "locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    (top / "private.txt").write_text("p")
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: "private" not in str(path) and access(path, mode))
    told: list[tuple[Path, str]] = []
    outgoing = await prepare(top, left_out=lambda path, why: told.append((path, why)))
    assert [o.entry.path for o in outgoing] == ["top/note.txt", "top/to-note", "top/kept/f.txt"]
    assert sorted(told) == sorted(
        [
            (top / "locked", "cannot be read: permission denied"),
            (top / "pipe", "a named pipe"),
            (top / "private.txt", "cannot be read: permission denied"),
            (top / "sub" / "deeper", "an empty folder"),
            (top / "to-kept", "a link to a folder, not followed"),
            (top / "to-nothing", "a link to nothing"),
            (top / "to-null", "a link to a device"),
        ]
    )
    with caplog.at_level("WARNING", logger="peerkit.files"):  # (no left_out: a warning each)
        await prepare(top)
    assert f"not sent: {top / 'pipe'} (a named pipe)" in caplog.messages
    assert len(caplog.messages) == 7
    # Named by the caller, a link is followed, and what is no file or folder is refused as such.
    assert [o.entry.path for o in await prepare(top / "to-kept")] == ["kept/f.txt"]
    with pytest.raises(ValueError, match=r"pipe: a named pipe, not a file or folder"):
        await prepare(top / "pipe")
    with pytest.raises(ValueError, match=r"to-nothing: a link to nothing"):
        await prepare(top / "to-nothing")
    with pytest.raises(ValueError, match=r"^/dev/null: a device, not a file or folder"):
        await prepare("/dev/null")


async def test_prepare_hashes_small_files_together_and_a_large_one_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trip to the worker thread per file was most of the time of a folder of small files; a
    # trip ends at FILES_AT_ONCE files or BATCH bytes (patched to 1,000), so a large file goes alone.
    monkeypatch.setattr(files, "BATCH", 1_000)
    trips = record(monkeypatch, "_hash_some", lambda _, out: len(out))
    folder = tmp_path / "notes"
    folder.mkdir()
    sizes = [10] * 40 + [5_000] + [10] * 3
    for i, size in enumerate(sizes):
        (folder / f"{i:02}.txt").write_bytes(os.urandom(size))
    outgoing = await prepare([folder])
    assert trips == [files.FILES_AT_ONCE, 9, 3]  # (the large file ends the second trip)
    assert [o.entry.size for o in outgoing] == sizes
    for o in outgoing:
        assert o.entry.digest == blake3.blake3(o.source.read_bytes()).digest()
        assert o.entry.path == f"notes/{o.source.name}"


async def test_the_receiver_looks_at_small_files_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where each offered file goes, and what is there, is looked at FILES_AT_ONCE files a trip to
    # the worker thread; a trip ends once BATCH bytes (1,000 here) of files already there were hashed.
    monkeypatch.setattr(files, "BATCH", 1_000)
    trips = record(monkeypatch, "_survey_some", lambda _, out: len(out))
    stored = record(monkeypatch, "_store", lambda args, _: len(args[0]))  # (pieces written a trip)
    folder = tmp_path / "notes"
    folder.mkdir()
    sizes = [10] * 40 + [5_000] + [10] * 3
    for i, size in enumerate(sizes):
        (folder / f"{i:02}.txt").write_bytes(os.urandom(size))
    into = tmp_path / "into"
    into.mkdir()
    outgoing = await prepare([folder])
    async with nodes() as (alice, bob):
        _, got = await transfer(alice, bob, outgoing, into)
        assert isinstance(got, ReceiveReport), got
        assert len(got.saved) == len(sizes)
        assert trips == [files.FILES_AT_ONCE, 12]  # (nothing there yet: nothing hashed)
        assert stored[0] == files.FILES_AT_ONCE  # (and the small files are written together)
        trips.clear()
        _, again = await transfer(alice, bob, outgoing, into)
    assert isinstance(again, ReceiveReport), again
    assert sorted(again.already) == sorted(o.entry.path for o in outgoing)
    assert trips == [files.FILES_AT_ONCE, 9, 3]  # (the large file there ends the second trip)


async def test_the_sender_reads_small_files_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Files follow each other in the sender's buffers (BATCH, 1,000 here), FILES_AT_ONCE at most a
    # trip to the worker thread; empty files and large ones among them arrive as well.
    monkeypatch.setattr(files, "BATCH", 1_000)
    trips = record(monkeypatch, "_read_some", lambda _, out: out[0])  # (bytes read, trip by trip)
    sizes = [10] * 40 + [0, 2_500] + [10] * 3 + [0]
    await send_folder(tmp_path, {f"{i:02}.txt": size for i, size in enumerate(sizes)})
    # 32 files; then 8 and the first 920 bytes of the large one; 1,000; the last 580 and 3 x 10.
    assert trips == [320, 1_000, 1_000, 610]


async def test_a_file_there_that_goes_or_cannot_be_read_does_not_stop_the_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files of the same size are where two offered files go: one is deleted between the look and
    # the hash (it is then free), the other cannot be read (it is then taken: renamed by default).
    source = tmp_path / "out"
    source.mkdir()
    (source / "gone.txt").write_bytes(b"new bytes")
    (source / "locked.txt").write_bytes(b"new bytes")
    into = tmp_path / "into"
    (into / "out").mkdir(parents=True)
    (into / "out" / "gone.txt").write_bytes(b"old bytes")
    (into / "out" / "locked.txt").write_bytes(b"old bytes")
    place, hash_file = files._place, files._hash_file

    def going(entry: Any, folder: Path) -> tuple[Path, str]:
        target, state = place(entry, folder)
        if target.name == "gone.txt":
            target.unlink()  # (after the look)
        return target, state

    def hashing(path: Path, *args: Any) -> tuple[bytes, int]:
        if path.name == "locked.txt" and into in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return hash_file(path, *args)

    monkeypatch.setattr(files, "_place", going)
    monkeypatch.setattr(files, "_hash_file", hashing)
    async with nodes() as (alice, bob):
        sent, got = await transfer(alice, bob, await prepare([source]), into)
    assert isinstance(sent, SendReport), sent
    assert isinstance(got, ReceiveReport), got
    assert (sent.received, sent.failed) == (2, [])
    assert (into / "out" / "gone.txt").read_bytes() == b"new bytes"
    assert (into / "out" / "locked.txt").read_bytes() == b"old bytes"
    assert (into / "out" / "locked (1).txt").read_bytes() == b"new bytes"


async def test_a_receiver_whose_user_takes_their_time_to_answer_keeps_the_sender_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A person asked about a name taken may answer after the sender's ANSWER_TIMEOUT (60 s): the
    # sender gave up ("no 'want' message within 60 s"). While it decides, the receiver says it
    # still is, so the sender waits on (up to WANT_TIMEOUT in all).
    monkeypatch.setattr(files, "ANSWER_TIMEOUT", 0.5)
    monkeypatch.setattr(files, "DECIDING_KEEPALIVE", 0.1)
    (tmp_path / "plan.txt").write_text("new plan")
    into = tmp_path / "into"
    into.mkdir()
    (into / "plan.txt").write_text("old plan")
    outgoing = await prepare(tmp_path / "plan.txt")
    asked: list[str] = []

    async def slowly(stream: AppStream, summary: Any) -> ReceiveReport:
        async def decide(entry: Entry, existing: Path) -> files.Decision:
            asked.append(entry.path)
            await anyio.sleep(1.5)  # (three times the sender's ANSWER_TIMEOUT)
            return "overwrite"

        return await receive_files(stream, summary, into, decide)

    async with nodes() as (alice, bob):
        sent, received = await transfer(alice, bob, outgoing, into, slowly)
    assert isinstance(sent, SendReport), sent
    assert isinstance(received, ReceiveReport), received
    assert (asked, sent.received) == (["plan.txt"], 1)
    assert (into / "plan.txt").read_text() == "new plan"
    # A receiver cannot hold a sender for ever: WANT_TIMEOUT in all.
    monkeypatch.setattr(files, "WANT_TIMEOUT", 1.0)
    (into / "plan.txt").write_text("old plan")
    async with nodes() as (alice, bob):
        sent, received = await transfer(alice, bob, outgoing, into, slowly)
    assert isinstance(sent, ProtocolError)
    assert str(sent) == "the receiver did not say which files it wants within 1 s"
    assert isinstance(received, anyio.BrokenResourceError | ProtocolError), received
    assert (into / "plan.txt").read_text() == "old plan"  # (nothing was overwritten)


@pytest.mark.parametrize(
    ("sender", "error", "said"),
    [
        ("leaves", anyio.BrokenResourceError, "the sender stopped before any file was sent"),
        ("sends early", ProtocolError, "the sender sent bytes before the receiver said which files it wants"),
    ],
)
async def test_a_sender_that_leaves_while_the_receiver_decides_ends_its_questions_at_once(
    tmp_path: Path, sender: str, error: type[Exception], said: str
) -> None:
    # The receiver asks its user about a name taken; the sender stops meanwhile: the question
    # used to wait for an answer nobody needed (and the keepalive found the sender gone late).
    (tmp_path / "plan.txt").write_text("new plan")
    into = tmp_path / "into"
    into.mkdir()
    (into / "plan.txt").write_text("old plan")
    (outgoing,) = await prepare(tmp_path / "plan.txt")
    asked = anyio.Event()
    outcome: list[BaseException | ReceiveReport] = []

    async def receiving(stream: AppStream) -> None:
        async def decide(entry: Entry, existing: Path) -> files.Decision:
            asked.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        try:
            outcome.append(await receive_files(stream, decode_summary(data), into, decide))
        except Exception as exc:
            outcome.append(exc)

    data = encode_summary([outgoing.entry])
    async with nodes() as (alice, bob):
        bob.add_stream_handler(FILES, receiving)
        with anyio.fail_after(10):
            async with await alice.peer(bob.id, bob.endpoint).open_stream(FILES) as stream:
                await stream.send(encode_offer([outgoing.entry]))
                await asked.wait()
                if sender == "sends early":
                    await stream.send(b"the file's bytes, too soon")
            while not outcome:
                await anyio.sleep(0.01)
    (got,) = outcome
    assert isinstance(got, error)
    assert str(got) == said
    assert (into / "plan.txt").read_text() == "old plan"
