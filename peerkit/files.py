"""Files sent from one person to another over an application stream of the well-known ``files``
application (:data:`peerkit.wellknown.FILES`): what ``peerkit send`` and ``peerkit receive`` do.

The sender hashes what it offers (:func:`prepare`) and invites the peer with the offer's summary
as the invitation's data (:func:`~peerkit.proto.files.encode_summary`); the invitee decides from
it, and once it accepted, the sender opens a stream and calls :func:`send_files`, the invitee
:func:`receive_files`. Every file is checked against its BLAKE3 hash before it takes its name. Until
then it is written to a hidden partial file beside it, which a later offer of the same file
resumes after a cut. Nothing existing is overwritten unless ``decide`` says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
import blake3
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from peerkit.errors import ProtocolError
from peerkit.filepaths import check_names, walk
from peerkit.model import printable
from peerkit.proto.files import (
    Done,
    Entry,
    Summary,
    check_offer,
    decode_message,
    encode_done,
    encode_offer,
    encode_want,
    encode_want_pending,
    offer_digest,
)
from peerkit.proto.framing import FrameDecoder
from peerkit.streams import AppStream

__all__ = (
    "BATCH",
    "BUFFERS",
    "FILES_AT_ONCE",
    "Decision",
    "Outgoing",
    "ReceiveReport",
    "SendReport",
    "check_destination",
    "prepare",
    "receive_files",
    "send_files",
)

#: Bytes read from (or written to) a file at a time, in a worker thread (4 MiB: larger writes cost
#: the kernel less, and the thread waits for the GIL less often).
BATCH: Final = 4 << 20
#: Buffers of a transfer at each end (each up to BATCH, no larger than the file needs: 12 MiB at
#: most): one the stream fills or empties while the others wait for, or are in, the worker thread.
#: They are made once per :func:`send_files` or :func:`receive_files` and go round from file to file.
BUFFERS: Final = 3
#: Files hashed (by :func:`prepare`) or looked at (by :func:`receive_files`) in one trip to a worker
#: thread, at most; a trip also ends once BATCH bytes were hashed in it.
FILES_AT_ONCE: Final = 32
#: Seconds the receiver waits for each part of the offer, and the sender for the receiver's answer;
#: and seconds a transfer goes on while its peer moves no byte (sends none, or reads none).
ANSWER_TIMEOUT: Final = 60.0
#: Seconds between the receiver's empty ``want`` frames while it decides which files it wants (it
#: looks at the files it has, and may ask its user about each name taken): each one restarts the
#: sender's ANSWER_TIMEOUT, so that a person may take their time to answer.
DECIDING_KEEPALIVE: Final = 20.0
#: Seconds a sender waits in all for the receiver to say which files it wants (its keepalives
#: come meanwhile): a receiver cannot hold a sender longer.
WANT_TIMEOUT: Final = 900.0

#: What to do with a file whose name is taken: replace it, keep both (``name (1).ext``), or skip.
Decision = Literal["overwrite", "rename", "skip"]
Progress = Callable[[int], None]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A file to send: where it is, and the offer's entry for it."""

    source: Path
    entry: Entry


@dataclass(slots=True)
class SendReport:
    """What a sending did."""

    #: Files the receiver reported intact (including those it already had).
    received: int = 0
    #: Bytes sent.
    sent_bytes: int = 0
    #: Files the receiver did not want (it has them, or it skipped them).
    skipped: int = 0
    #: (path, reason) for each file that failed.
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class ReceiveReport:
    """What a receiving did."""

    #: The final path of each file received intact.
    saved: list[Path] = field(default_factory=list)
    #: Paths (as offered) already here with the same bytes: not sent again.
    already: list[str] = field(default_factory=list)
    #: Paths skipped by ``decide``.
    skipped: list[str] = field(default_factory=list)
    #: (path, reason) for each file that failed.
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Bytes received (resumed parts not counted).
    received_bytes: int = 0
    #: Bytes of partial files resumed instead of sent again.
    resumed_bytes: int = 0


# -- sending ----------------------------------------------------------------------------------


async def prepare(
    paths: Sequence[Path | str] | Path | str,
    progress: Progress | None = None,
    *,
    left_out: Callable[[Path, str], object] | None = None,
) -> list[Outgoing]:
    """The files ``paths`` name (one path, or a sequence of them), hashed (in a worker thread): a
    folder stands for every file under it, under the folder's name; ``progress(n)`` is called as
    ``n`` more bytes are hashed.

    What a folder holds that is not sent is told to ``left_out(path, why)`` before any file is
    hashed (logged as a warning when it is None): a link to a folder (links named in ``paths`` are
    followed, those in a folder only to files: a folder could hold itself), a link to nothing, a
    named pipe, socket or device, an empty folder (the offer is of files), and a file or folder
    that this user cannot read.

    :raises ValueError: when a path does not exist or is not a file or folder, two would take the
        same name, a name is no safe path in an offer (see :func:`peerkit.proto.files.check_path`),
        or there are none or more than 10,000 files.
    :raises TypeError: when a path is neither a ``str`` nor a path.
    """
    if isinstance(paths, str | os.PathLike):  # (one path: not a sequence of one-letter paths)
        paths = [paths]
    if not isinstance(paths, Iterable):
        raise TypeError(f"prepare takes a path or a sequence of paths, not {type(paths).__name__}")
    paths = list(paths)
    for path in paths:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"a path to send is a str or a Path, not {type(path).__name__}")
    found, omitted = await anyio.to_thread.run_sync(walk, paths)
    for path, why in omitted:
        if left_out is None:
            logger.warning("not sent: %s (%s)", printable(str(path)), why)
        else:
            left_out(path, why)
    check_names(found)
    sources = [source for source, _ in found]
    hashed: list[tuple[bytes, int]] = []
    spare = [bytearray()]
    while len(hashed) < len(sources):
        hashed += await anyio.to_thread.run_sync(_hash_some, sources, len(hashed), progress, spare)
    return [
        Outgoing(source, Entry(name, size, digest))
        for (source, name), (digest, size) in zip(found, hashed, strict=True)
    ]


def _fit(buffer: bytearray, size: int) -> bytearray:
    # ``buffer`` if it holds ``size`` bytes, else a new buffer that does. Buffers are made as large
    # as the files need (up to BATCH) and reused from file to file: clearing 4 MiB for each file of
    # a kilobyte cost far more than sending it.
    return buffer if len(buffer) >= size else bytearray(size)


def _hash_some(
    sources: list[Path], start: int, progress: Progress | None, spare: list[bytearray]
) -> list[tuple[bytes, int]]:
    # In a worker thread: the hash and length of the files from ``sources[start]`` on, until
    # FILES_AT_ONCE are hashed or BATCH bytes read. Small files share a trip to the thread (one a
    # file was most of the time of a folder of small ones); a large file still goes alone, and a
    # cancelled prepare() stops between trips.
    out: list[tuple[bytes, int]] = []
    total = 0
    for source in sources[start : start + FILES_AT_ONCE]:
        out.append(_hash_file(source, progress, spare))
        total += out[-1][1]
        if total >= BATCH:
            break
    return out


def _hash_file(path: Path, progress: Progress | None, spare: list[bytearray]) -> tuple[bytes, int]:
    # The BLAKE3 hash and length of the file, read in a worker thread into the buffer ``spare``
    # holds (and hashed on every core: nothing else is going on while a file is hashed before it
    # is offered).
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = _hash_into(path, hasher, spare, progress)
    return hasher.digest(), size


def _hash_into(
    path: Path, hasher: blake3.blake3, spare: list[bytearray], progress: Progress | None = None
) -> int:
    # Hash the file's bytes into ``hasher``, read into the buffer ``spare`` holds; its length.
    size = 0
    with path.open("rb", buffering=0) as f:
        buffer = spare[0] = _fit(spare[0], min(BATCH, max(os.fstat(f.fileno()).st_size, 1 << 16)))
        with memoryview(buffer) as view:
            while n := f.readinto(view):
                hasher.update(view[:n])
                size += n
                if progress is not None:
                    anyio.from_thread.run_sync(progress, n)
    return size


async def send_files(
    stream: AppStream,
    outgoing: Sequence[Outgoing],
    progress: Progress | None = None,
    *,
    total: Progress | None = None,
) -> SendReport:
    """Send the offer ``outgoing`` over ``stream`` (opened after the invitation with its summary was
    accepted) and the bytes the receiver wants, calling ``progress(n)`` as ``n`` more are sent.
    ``total(n)`` is called once the receiver said what it wants, before the first byte: ``n``
    bytes will be sent (files it has already, or skips, are not; a file it has part of, from
    where it stopped).

    :raises ValueError: when a file changed, or was deleted, since :func:`prepare` (the stream is
        closed: the receiver keeps what it has, to resume).
    :raises ProtocolError: when the receiver broke the protocol or did not answer in time.
    :raises anyio.BrokenResourceError: when the connection broke.
    """
    entries = [o.entry for o in outgoing]
    await stream.send(encode_offer(entries))
    frames = _Frames(stream)
    wanted: list[tuple[int, int]] = []
    more = True
    with anyio.move_on_after(WANT_TIMEOUT) as waited:
        while more:
            _, rows, more = await frames.next("want")  # (empty while the receiver decides)
            assert isinstance(rows, list)
            wanted += rows
            if len(wanted) > len(entries):
                raise ProtocolError("the receiver wants more files than were offered")
    if waited.cancelled_caught:
        raise ProtocolError(f"the receiver did not say which files it wants within {WANT_TIMEOUT:g} s")
    last = -1
    for index, offset in wanted:
        if not last < index < len(entries) or offset > entries[index].size:
            raise ProtocolError("the receiver wants a file or an offset that was not offered")
        last = index
    if total is not None:
        total(sum(entries[index].size - offset for index, offset in wanted))
    report = SendReport(skipped=len(entries) - len(wanted))
    report.sent_bytes = await _send_wanted(stream, [(outgoing[i], offset) for i, offset in wanted], progress)
    _, done, _ = await frames.next("done")
    assert isinstance(done, Done)
    not_wanted = set(range(len(entries))).difference(index for index, _ in wanted)
    for index, reason in done.failed:
        path = entries[index].path if index < len(entries) else f"#{index}"
        report.failed.append((path, reason))
        if index in not_wanted:  # (one the receiver cannot save: failed, not skipped)
            not_wanted.discard(index)
            report.skipped -= 1
    report.received = done.received + report.skipped
    return report


async def _send_wanted(
    stream: AppStream, wanted: list[tuple[Outgoing, int]], progress: Progress | None
) -> int:
    # The bytes of each file wanted from its offset on, file after file, read in a worker thread
    # while the buffer before is sent; the bytes sent. The buffers go round: filled with the bytes
    # of one file or of several small ones, sent, then free again.
    full, filled = anyio.create_memory_object_stream[tuple[memoryview, bytearray]](BUFFERS)
    free, freed = _pool([bytearray() for _ in range(BUFFERS)])
    changed: list[Path] = []

    async def read() -> None:
        async with full:
            left = sum(item.entry.size - offset for item, offset in wanted)
            cursor = (0, wanted[0][1] if wanted else 0)
            while cursor[0] < len(wanted):
                size = min(BATCH, left)
                buffer = _fit(await freed.receive(), size)
                n, cursor, short = await anyio.to_thread.run_sync(
                    _read_some, wanted, cursor, memoryview(buffer)[:size]
                )
                await full.send((memoryview(buffer)[:n], buffer))
                left -= n
                if short:  # (what was read is sent: the receiver keeps it)
                    changed.append(wanted[cursor[0]][0].source)
                    return

    sent = 0
    async with (
        _unless_stalled(stream, lambda: sent, "the receiver took no byte"),
        _one_error(),
        filled,
        free,
        freed,
        anyio.create_task_group() as tg,  # (its tasks end first)
    ):
        tg.start_soon(read)
        async for chunk, buffer in filled:
            await stream.send(chunk)
            sent += len(chunk)
            free.send_nowait(buffer)
            if progress is not None:
                progress(len(chunk))
    if changed:
        await stream.aclose()
        raise ValueError(f"{changed[0]} changed while it was sent: send it again")
    return sent


def _pool(
    buffers: list[bytearray],
) -> tuple[MemoryObjectSendStream[bytearray], MemoryObjectReceiveStream[bytearray]]:
    # Where a transfer's free buffers wait (all of them at first): taken to be filled or emptied,
    # given back once written or sent.
    free, freed = anyio.create_memory_object_stream[bytearray](len(buffers))
    for buffer in buffers:
        free.send_nowait(buffer)
    return free, freed


def _read_some(
    wanted: list[tuple[Outgoing, int]], cursor: tuple[int, int], view: memoryview
) -> tuple[int, tuple[int, int], bool]:
    # In a worker thread: fill ``view`` with the wanted bytes from ``cursor`` (a file's index in
    # ``wanted`` and a position in it) on, file after file, opening FILES_AT_ONCE files at most.
    # How many bytes, the cursor after them, and whether a file ended before its size (it changed
    # since it was hashed; the cursor is then in it).
    index, position = cursor
    filled = opened = 0
    while index < len(wanted) and opened < FILES_AT_ONCE:
        item = wanted[index][0]
        if position < item.entry.size:
            if filled == len(view):
                break
            want = min(len(view) - filled, item.entry.size - position)
            n = _read_at(item.source, position, view[filled : filled + want])
            opened += 1
            filled += n
            position += n
            if n < want:
                return filled, (index, position), True
            if position < item.entry.size:
                break  # (the view is full)
        index += 1
        position = wanted[index][1] if index < len(wanted) else 0
    return filled, (index, position), False


def _read_at(source: Path, position: int, view: memoryview) -> int:
    # Fill ``view`` with the file's bytes from ``position`` on; how many there were (fewer only at
    # the file's end, none when it is gone). The file is opened for each read: a transfer holds
    # none open between trips.
    filled = 0
    try:
        f = source.open("rb", buffering=0)
    except FileNotFoundError:
        return 0  # (deleted since it was hashed: it changed)
    with f:
        f.seek(position)
        while filled < len(view) and (n := f.readinto(view[filled:])):
            filled += n
    return filled


@contextlib.asynccontextmanager
async def _one_error() -> AsyncIterator[None]:
    # A task group's one error as itself (a caller catches what the docstrings name, not groups).
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise


@contextlib.asynccontextmanager
async def _unless_stalled(stream: AppStream, moved: Callable[[], object], what: str) -> AsyncIterator[None]:
    # The body, watched: when ``moved()`` (what the transfer has done so far) stays the same for
    # ANSWER_TIMEOUT seconds, the stream is closed and ProtocolError("<what> for N s") raised
    # rather than the closed stream's error. A peer that keeps its connection alive and moves
    # nothing holds a transfer (and its buffers, and a place of 'serve') no longer.
    stalled = False

    async def watch() -> None:
        nonlocal stalled
        seen = moved()
        while True:
            await anyio.sleep(ANSWER_TIMEOUT)
            if moved() == seen:
                stalled = True
                await stream.aclose()
                return
            seen = moved()

    try:
        async with _one_error(), anyio.create_task_group() as watching:
            watching.start_soon(watch)
            yield
            watching.cancel_scope.cancel()
    except Exception:
        if not stalled:
            raise
    if stalled:
        raise ProtocolError(f"{what} for {ANSWER_TIMEOUT:g} s")


#: What a stream that ends before a message may mean, for people.
_ENDED_BEFORE: Final = {
    "want": ": the receiver took the offer but not the files (no folder it may write them in, too "
    "little free space: its side says which), or it stopped",
}


class _Frames:
    # Frames of the files application read off a stream, one at a time.

    def __init__(self, stream: AppStream) -> None:
        self._stream = stream
        self._decoder = FrameDecoder()
        self._ready: list[bytes | memoryview] = []

    async def next(self, expected: str) -> tuple[str, object, bool]:
        with anyio.move_on_after(ANSWER_TIMEOUT) as waited:
            while not self._ready:
                try:
                    data = await self._stream.receive()
                except anyio.EndOfStream:
                    why = _ENDED_BEFORE.get(expected, "")
                    raise ProtocolError(f"the stream ended before the {expected!r} message{why}") from None
                self._ready += self._decoder.feed(data)
        if waited.cancelled_caught:
            raise ProtocolError(f"no {expected!r} message within {ANSWER_TIMEOUT:g} s")
        kind, body, more = decode_message(self._ready.pop(0))
        if kind != expected:
            raise ProtocolError(f"a {kind!r} message came where {expected!r} belongs")
        return kind, body, more

    @property
    def leftover(self) -> int:
        return sum(len(f) for f in self._ready) + self._decoder.pending


# -- receiving --------------------------------------------------------------------------------


async def _rename(entry: Entry, existing: Path) -> Decision:
    return "rename"


def check_destination(into: Path | str) -> None:
    """Check that files can be saved into the folder ``into``: it is a folder this process may
    write in, or one it can make (the nearest folder above it that is there is writable).
    :func:`receive_files` checks it before it asks for a byte; a program can check it before it
    waits for an offer. A blocking call (a few ``stat``s).

    :raises OSError: naming what stands in the way (a file where a folder should be, a folder
        this process may not write in).
    """
    path = Path(into)
    there = path
    while not there.exists() and there.parent != there:
        there = there.parent
    if not there.is_dir():
        where = "it is a file" if there == path else f"{there} is a file, not a folder"
        raise NotADirectoryError(f"cannot save files into {path}: {where}")
    if not os.access(there, os.W_OK | os.X_OK):
        where = "it is" if there == path else f"{there} is"
        raise PermissionError(f"cannot save files into {path}: {where} not writable by this user")


async def receive_files(
    stream: AppStream,
    summary: Summary,
    into: Path,
    decide: Callable[[Entry, Path], Awaitable[Decision]] = _rename,
    progress: Progress | None = None,
    *,
    total: Progress | None = None,
) -> ReceiveReport:
    """Receive the offer ``summary`` announced (in the invitation accepted) over ``stream`` into the
    folder ``into``, calling ``progress(n)`` as ``n`` more bytes arrive. ``total(n)`` is called once
    it is known which files come, before the first byte: ``n`` bytes will come (not those of the
    files there already or skipped, nor those a partial file holds).

    A file whose name is taken by other bytes is renamed, overwritten or skipped as ``decide``
    answers (by default renamed: ``name (1).ext``); one already there with the same bytes is not
    sent again. A cut transfer leaves its partial files, which the same offer resumes.

    :raises ProtocolError: when the offer is not the one summarized, or the sender broke the
        protocol (what arrived intact is kept).
    :raises anyio.BrokenResourceError: when the connection broke (partial files are kept).
    :raises OSError: when ``into`` cannot be written (:func:`check_destination`) or made, or has
        too little free space.
    """
    frames = _Frames(stream)
    entries: list[Entry] = []
    more = True
    while more:
        _, rows, more = await frames.next("files")
        assert isinstance(rows, list)
        entries += rows
        if len(entries) > summary.files:
            raise ProtocolError("the offer lists more files than its summary")
    if offer_digest(entries) != summary.digest or frames.leftover:
        raise ProtocolError("the offer on the stream is not the one accepted")
    try:
        check_offer([entry.path for entry in entries])
    except ValueError as exc:  # (before anything is made or written)
        raise ProtocolError(f"malformed file offer: {exc}") from None
    await anyio.to_thread.run_sync(_make_destination, into)
    report = ReceiveReport()
    plans: list[_Plan] = []
    buffers = [bytearray() for _ in range(BUFFERS)]
    found: list[_Found] = []
    refused: list[tuple[int, str]] = []  # (files that cannot be saved: told to the sender too)
    async with _deciding(stream):
        while len(found) < len(entries):
            found += await anyio.to_thread.run_sync(_survey_some, entries, len(found), into, buffers)
        for index, (entry, there) in enumerate(zip(entries, found, strict=True)):
            failures = len(report.failed)
            plan = await _plan(index, entry, there, decide, report)
            if plan is not None:
                plans.append(plan)
            elif len(report.failed) > failures:
                refused.append((index, report.failed[-1][1]))
    plans, busy = _claim(plans)
    for plan in busy:
        report.failed.append((plan.entry.path, "another transfer is receiving it here now"))
        refused.append((plan.index, report.failed[-1][1]))
    needed = sum(p.entry.size - p.offset for p in plans)
    arriving = _ARRIVING.setdefault(os.stat(into).st_dev, [])

    def to_come() -> int:  # (what this transfer will still write: others count it)
        return max(needed - report.received_bytes, 0)

    try:
        free = shutil.disk_usage(into).free
        others = sum(left() for left in arriving)
        if needed + others > free:
            also = f", and other transfers into it {others:,} more" if others else ""
            raise OSError(f"{into} has {free:,} bytes free; the files need {needed:,}{also}")
        arriving.append(to_come)
        if total is not None:
            total(needed)
        await stream.send(encode_want([(p.index, p.offset) for p in plans]))
        failed = await _receive_planned(stream, plans, progress, report, buffers)
        await stream.send(encode_done(Done(len(plans) - len(failed), tuple(sorted(refused + failed)))))
    finally:
        _RECEIVING.difference_update(p.partial.absolute() for p in plans)
        if to_come in arriving:
            arriving.remove(to_come)
    return report


@contextlib.asynccontextmanager
async def _deciding(stream: AppStream) -> AsyncIterator[None]:
    # The body decides which files to want: meanwhile an empty ``want`` frame goes every
    # DECIDING_KEEPALIVE seconds, each whole (shielded: the stream is never left inside a frame).
    # The sender says nothing until it has the answer, so whatever comes from it now is its
    # leaving (or a broken protocol): that ends the body at once (its questions go unasked).
    async def keep_alive() -> None:
        while True:
            await anyio.sleep(DECIDING_KEEPALIVE)
            with anyio.CancelScope(shield=True), anyio.move_on_after(ANSWER_TIMEOUT):
                await stream.send(encode_want_pending())

    async def watch() -> None:
        try:
            await stream.receive()
        except anyio.EndOfStream:
            raise anyio.BrokenResourceError("the sender stopped before any file was sent") from None
        raise ProtocolError("the sender sent bytes before the receiver said which files it wants")

    async with _one_error(), anyio.create_task_group() as tg:
        tg.start_soon(keep_alive)
        tg.start_soon(watch)
        yield
        tg.cancel_scope.cancel()


#: For each file system (by device), what the transfers of this process that write to it will
#: still write: a transfer checks the free space against its own bytes and theirs (four at once
#: into one folder, each checking alone, could together fill it and all fail halfway).
_ARRIVING: Final[dict[int, list[Callable[[], int]]]] = {}

#: The partial files that transfers of this process write now: two transfers of one file into
#: one folder (a sender that sends again before its cut was noticed, two senders of one file)
#: would write one partial file at once, each checking the bytes it received, not those written.
_RECEIVING: Final[set[Path]] = set()


def _claim(plans: list[_Plan]) -> tuple[list[_Plan], list[_Plan]]:
    # The plans whose partial files this transfer may write (claimed in _RECEIVING until it ends),
    # and those another transfer writes now.
    mine: list[_Plan] = []
    busy: list[_Plan] = []
    for plan in plans:
        key = plan.partial.absolute()  # (one folder named two ways is one folder)
        if key in _RECEIVING:
            busy.append(plan)
        else:
            _RECEIVING.add(key)
            mine.append(plan)
    return mine, busy


def _make_destination(into: Path) -> None:
    # The folder ``into``, made if need be; what stood in the way, named.
    check_destination(into)
    try:
        into.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot make the folder {into} to save files into: {exc.strerror}") from exc


@dataclass(slots=True)
class _Plan:
    index: int
    entry: Entry
    target: Path
    partial: Path
    offset: int
    #: The BLAKE3 hash of the partial file's bytes so far: made when they start (or when a partial
    #: file was found) and let go once the file is checked, so that a transfer of thousands of files
    #: holds one or two (each is about 2 KB).
    hasher: blake3.blake3 | None
    #: Whether ``decide`` said to replace the file there: else a file that takes the name meanwhile
    #: (another transfer's) is kept, and this one takes the first free name beside it.
    replace: bool = False


async def _plan(
    index: int,
    entry: Entry,
    there: _Found,
    decide: Callable[[Entry, Path], Awaitable[Decision]],
    report: ReceiveReport,
) -> _Plan | None:
    # Where ``entry`` goes and from which offset, from what is ``there``; None when it is not wanted.
    target, state, hasher, offset = there
    if state == "already":
        report.already.append(entry.path)
        return None
    if state not in _USABLE:
        report.failed.append((entry.path, state))
        return None
    if state != "free":
        decision = await decide(entry, target)
        if decision == "skip":
            report.skipped.append(entry.path)
            return None
        if decision == "rename":
            target = await anyio.to_thread.run_sync(_free_name, target)
        elif state == "not a file":
            report.failed.append((entry.path, "a folder or a link has its name in the receiving folder"))
            return None
        else:
            return _Plan(index, entry, target, _partial(entry, target), offset, hasher, replace=True)
    return _Plan(index, entry, target, _partial(entry, target), offset, hasher)


#: What is where an offered file goes: its path, what is there (see _place, or "already": the same
#: bytes), and how much of it a partial file holds, hashed (the hasher, None when there is none,
#: and the offset).
_Found = tuple[Path, str, blake3.blake3 | None, int]
#: What may be there for a file to be received (another state is the problem that stops it).
_USABLE: Final = ("free", "taken", "same size", "not a file")


def _survey_some(entries: list[Entry], start: int, into: Path, spare: list[bytearray]) -> list[_Found]:
    # In a worker thread: what is there for the entries from ``entries[start]`` on, until
    # FILES_AT_ONCE are looked at or BATCH bytes hashed (files there already, partial files).
    out: list[_Found] = []
    hashed = 0
    for entry in entries[start : start + FILES_AT_ONCE]:
        out.append(_survey(entry, into, spare))
        _, state, _, offset = out[-1]
        hashed += offset + (entry.size if state in ("already", "same size") else 0)
        if hashed >= BATCH:
            break
    return out


def _survey(entry: Entry, into: Path, spare: list[bytearray]) -> _Found:
    # What is there for ``entry`` (see _Found).
    target, state = _place(entry, into)
    if state == "same size":
        try:
            if _hash_file(target, None, spare)[0] == entry.digest:
                return target, "already", None, 0
        except FileNotFoundError:
            state = "free"  # (it went meanwhile)
        except OSError:
            state = "taken"  # (it cannot be read: not known to be the same)
    if state not in _USABLE:
        return target, state, None, 0
    return target, state, *_resumable(_partial(entry, target), entry.size, spare)


def _partial(entry: Entry, target: Path) -> Path:
    # The hidden partial file of ``entry`` beside ``target`` (the same for the same offered file).
    key = hashlib.sha256(entry.path.encode("utf-8", "surrogatepass") + entry.digest).hexdigest()[:24]
    return target.parent / f".{key}.peerkit-part"


def _place(entry: Entry, into: Path) -> tuple[Path, str]:
    # Where ``entry`` goes (its folders made), and what is there: "free", "taken" (a file of another
    # size), "same size", "not a file", or the problem.
    target = into.joinpath(*entry.path.split("/"))
    for parent in reversed(target.relative_to(into).parents[:-1]):
        folder = into / parent
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            return target, f"{parent.as_posix()} is a file or a link in the receiving folder, not a folder"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        found = target.lstat()
    except FileNotFoundError:
        return target, "free"
    if not stat.S_ISREG(found.st_mode):
        return target, "not a file"
    return target, "same size" if found.st_size == entry.size else "taken"


def _resumable(partial: Path, size: int, spare: list[bytearray]) -> tuple[blake3.blake3 | None, int]:
    # How much of a file of ``size`` bytes its partial file holds, and their hash (None: no partial).
    if partial.is_file() and not partial.is_symlink() and partial.stat().st_size <= size:
        hasher = blake3.blake3()
        return hasher, _hash_into(partial, hasher, spare)
    return None, 0


def _free_name(target: Path) -> Path:
    # ``name (1).ext``, ``name (2).ext``, ...: the first name not taken.
    stem, suffix = (target.stem, target.suffix) if target.suffix else (target.name, "")
    for n in range(1, 10_000):
        candidate = target.with_name(f"{stem} ({n}){suffix}")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
    raise OSError(f"no free name beside {target}")


@dataclass(frozen=True, slots=True)
class _Piece:
    # Bytes of one file received, to be hashed and written at ``position`` of its partial file.
    plan: _Plan
    position: int
    data: memoryview
    #: Whether they end the file (it is then checked and given its name).
    last: bool


async def _receive_planned(
    stream: AppStream,
    plans: list[_Plan],
    progress: Progress | None,
    report: ReceiveReport,
    buffers: list[bytearray],
) -> list[tuple[int, str]]:
    # Receive the rest of every planned file, file after file, into its partial file; check each
    # and give it its name. The (index, problem) of each that failed. A cut connection raises (the
    # partial files are kept). The buffers go round: filled from the stream with the pieces of one
    # file or of several small ones (FILES_AT_ONCE at most), each piece then hashed and written in
    # one trip to a worker thread while the next buffer fills, then free again.
    failed: list[tuple[int, str]] = []
    full, filled = anyio.create_memory_object_stream[tuple[list[_Piece], bytearray]](len(buffers))
    free, freed = _pool(buffers)

    stored = 0  # (batches written: the writer's progress, which is not the sender's to make)

    async def write() -> None:
        nonlocal stored
        async with filled:
            async for batch, emptied in filled:
                problems = await anyio.to_thread.run_sync(_store, batch)
                stored += 1
                free.send_nowait(emptied)
                for piece, problem in zip(batch, problems, strict=True):
                    if not piece.last:
                        continue
                    if problem is None:
                        report.saved.append(piece.plan.target)
                    else:
                        failed.append((piece.plan.index, problem))
                        report.failed.append((piece.plan.entry.path, problem))

    left = sum(plan.entry.size - plan.offset for plan in plans)  # (bytes still to come, all files)
    buffer: bytearray | None = None
    pieces: list[_Piece] = []
    cap = used = 0  # (the current buffer's bytes in use at most, and so far)
    cut: Exception | None = None
    async with _unless_stalled(stream, lambda: (report.received_bytes, stored), "the sender sent no byte"):
        async with _one_error(), free, freed, anyio.create_task_group() as tg:
            tg.start_soon(write)
            async with full:
                for plan in plans:
                    report.resumed_bytes += plan.offset
                    position = plan.offset
                    while True:
                        need = plan.entry.size - position
                        if buffer is None or (need and used == cap) or len(pieces) == FILES_AT_ONCE:
                            if buffer is not None:
                                await full.send((pieces, buffer))
                            cap, used, pieces = min(BATCH, left), 0, []
                            buffer = _fit(await freed.receive(), cap)
                        size, held = min(cap - used, need), 0
                        try:
                            while held < size:
                                try:
                                    data = await stream.receive(size - held)
                                except anyio.EndOfStream:
                                    raise anyio.BrokenResourceError(
                                        "the sender ended the stream inside a file"
                                    ) from None
                                buffer[used + held : used + held + len(data)] = data
                                held += len(data)
                                report.received_bytes += len(data)
                                if progress is not None:
                                    progress(len(data))
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ProtocolError) as exc:
                            cut = exc  # (the writer writes what is queued, and what was received)
                        last = cut is None and held == need
                        if held or last:
                            pieces.append(
                                _Piece(plan, position, memoryview(buffer)[used : used + held], last)
                            )
                        used += held
                        position += held
                        left -= held
                        if cut is not None or last:
                            break
                    if cut is not None:
                        break
                if buffer is not None:
                    await full.send((pieces, buffer))
        if cut is not None:
            raise cut
    return failed


def _store(pieces: list[_Piece]) -> list[str | None]:
    # In a worker thread: hash and write each piece (one system call), opening its partial file
    # anew (a transfer holds no file open between trips; small files share a trip). After a file's
    # last bytes: check it and give it its name. The problem of each piece, or None.
    problems: list[str | None] = []
    for piece in pieces:
        plan, data = piece.plan, piece.data
        if plan.hasher is None:
            plan.hasher = blake3.blake3()
        with plan.partial.open("r+b" if piece.position else "wb", buffering=0) as f:
            f.seek(piece.position)
            plan.hasher.update(data)
            written = f.write(data) or 0
            while written < len(data):  # (a short write: the rest)
                written += f.write(data[written:]) or 0
        problems.append(_check(plan) if piece.last else None)
    return problems


def _check(plan: _Plan) -> str | None:
    # A file received whole: give it its name if its bytes are the offer's; the problem, or None.
    hasher, plan.hasher = plan.hasher, None
    if hasher is None or hasher.digest() != plan.entry.digest:
        plan.partial.unlink(missing_ok=True)
        return "its bytes do not match the offer's BLAKE3 hash (not kept)"
    try:
        plan.target = _give_name(plan.partial, plan.target, plan.replace)
    except OSError as exc:  # (something took its name meanwhile: the others go on)
        plan.partial.unlink(missing_ok=True)
        return f"it could not take its name: {(exc.strerror or str(exc)).lower()} (not kept)"
    return None


def _give_name(partial: Path, target: Path, replace: bool) -> Path:
    # Give the checked partial file its name: ``target``, or (unless ``replace``) the first free
    # name beside it when a file took that one meanwhile (another transfer into the same folder).
    # A hard link takes a name only if it is free; where the file system has none, a look first.
    # The name it took.
    if replace:
        os.replace(partial, target)
        return target
    while True:
        try:
            os.link(partial, target)
        except FileExistsError:
            target = _free_name(target)
            continue
        except OSError:  # (no hard links here)
            if target.exists() or target.is_symlink():
                target = _free_name(target)
            os.replace(partial, target)
            return target
        partial.unlink()
        return target
