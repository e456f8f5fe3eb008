"""The files application's messages (docs/protocol.md, "The files application"), sans-IO.

An offer is a list of files, each a relative path, a size and the BLAKE3 hash of its bytes. The
invitation carries its summary (:func:`encode_summary`): how many files, how many bytes, the first
names, and the offer's digest, which binds the list sent later on the stream to what was accepted.
On the stream, the sender's ``files`` frames list the offer, the receiver's ``want`` frames say
where each wanted file starts (0, or the length of a partial file kept from a cut transfer), the
sender sends the wanted bytes back to back, and the receiver's ``done`` reports what arrived intact.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from peerkit.errors import ProtocolError
from peerkit.model import check_encodable, quoted, shows_as_itself
from peerkit.proto.framing import encode_frame
from peerkit.proto.messages import decode, encode, encode_deterministic

__all__ = (
    "MAX_FILES",
    "MAX_FOLDERS",
    "MAX_PATH",
    "MAX_SIZE",
    "Done",
    "Entry",
    "Summary",
    "check_offer",
    "check_path",
    "decode_message",
    "decode_summary",
    "encode_done",
    "encode_offer",
    "encode_summary",
    "encode_want",
    "encode_want_pending",
    "offer_digest",
)

#: Files in one offer, at most.
MAX_FILES: Final = 10_000
#: Characters of one path, at most; each of its parts is at most 255 UTF-8 bytes.
MAX_PATH: Final = 1024
#: Folders the paths of one offer make, at most (its files hold no more in any likely tree: what
#: it bounds is an offer of empty files, each at the end of a chain of folders of its own).
MAX_FOLDERS: Final = 10_000
#: Bytes of one file, at most (1 PiB).
MAX_SIZE: Final = 2**50
#: Files listed (or wanted) per frame, at most: well within
#: :data:`~peerkit.proto.messages.MAX_ITEMS`.
PER_FRAME: Final = 1000
#: Bytes of rows packed into one frame, at most (a frame holds 65,535).
FRAME_BUDGET: Final = 60_000
#: Failures a ``done`` frame lists, at most.
MAX_FAILED: Final = 100
#: Names a summary shows, at most.
SUMMARY_NAMES: Final = 8
#: Characters of a reason a file failed, at most.
MAX_REASON: Final = 200


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of an offer."""

    #: Where it goes, relative to the receiver's folder: parts joined by ``/``.
    path: str
    #: Its length in bytes.
    size: int
    #: The BLAKE3 hash of its bytes (32 bytes).
    digest: bytes

    def __post_init__(self) -> None:
        check_path(self.path)
        if type(self.size) is not int or not 0 <= self.size <= MAX_SIZE:
            raise ValueError(f"a file's size is 0 to {MAX_SIZE} bytes, not {self.size!r}")
        if not isinstance(self.digest, bytes) or len(self.digest) != 32:
            raise ValueError("a file's hash is 32 bytes")


@dataclass(frozen=True, slots=True)
class Summary:
    """What an invitation to the files application offers."""

    #: How many files.
    files: int
    #: Their bytes in all.
    size: int
    #: The first names (top-level files and folders), at most 8.
    names: tuple[str, ...]
    #: The offer's digest (:func:`offer_digest`).
    digest: bytes


@dataclass(frozen=True, slots=True)
class Done:
    """The receiver's report: how many wanted files arrived intact, and which failed and why."""

    received: int
    failed: tuple[tuple[int, str], ...]


def check_path(path: str) -> None:
    """:raises ValueError: when ``path`` is not a safe relative path (absolute, ``..``, empty parts,
    backslashes, control characters, bidirectional controls, line separators and characters that
    show as nothing -- a name that would show as another, "invoice\\u202etxt.exe" -- too long)."""
    if not isinstance(path, str):
        raise TypeError(f"a path is text, not {type(path).__name__}")
    if not 0 < len(path) <= MAX_PATH:
        raise ValueError(f"a path is 1 to {MAX_PATH} characters, not {len(path)}")
    check_encodable(path, quoted(path))
    if "\\" in path or not shows_as_itself(path):
        raise ValueError(
            f"{quoted(path)} holds a control or bidirectional character, one that shows as nothing, "
            "or a backslash"
        )
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"{path!r} is not a relative path of named parts (no '', '.', '..')")
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            raise ValueError(f"a part of {path[:40]!r}... is longer than 255 bytes")


def check_offer(paths: Sequence[str]) -> None:
    """:raises ValueError: when the offer's ``paths`` could not all be saved as they are: one listed
    twice, or one that is a file and a folder of another file at once (``x`` and ``x/y``); or they
    make more than :data:`MAX_FOLDERS` folders (a receiver makes them all)."""
    folders: set[str] = set()
    for path in paths:  # (each walks up to the first folder known: the work is that of the folders)
        folder = path.rpartition("/")[0]
        while folder and folder not in folders:
            folders.add(folder)
            folder = folder.rpartition("/")[0]
        if len(folders) > MAX_FOLDERS:
            raise ValueError(f"the paths make more than {MAX_FOLDERS:,} folders")
    # Sorted with "/" as the least character (a path holds no NUL), a file's descendants come
    # right after it: each path is compared with the next one only.
    keys = sorted(path.replace("/", "\0") for path in paths)
    for first, then in itertools.pairwise(keys):
        if then == first or then.startswith(first + "\0"):
            folder, path = first.replace("\0", "/"), then.replace("\0", "/")
            what = "listed twice" if then == first else f"a file and the folder of {quoted(path)}"
            raise ValueError(f"{quoted(folder)} is {what}")


def _rows(entries: Sequence[Entry]) -> list[list[Any]]:
    return [[e.path, e.size, e.digest] for e in entries]


def offer_digest(entries: Sequence[Entry]) -> bytes:
    """The SHA-256 of the offer's deterministic CBOR encoding: ``[[path, size, blake3], ...]``."""
    return hashlib.sha256(encode_deterministic(_rows(entries))).digest()


def _check_count(n: int) -> None:
    if not 0 < n <= MAX_FILES:
        raise ValueError(f"an offer holds 1 to {MAX_FILES} files, not {n}")


def encode_summary(entries: Sequence[Entry]) -> bytes:
    """The invitation data that offers ``entries``.

    :raises ValueError: when there are none, or more than :data:`MAX_FILES`.
    """
    _check_count(len(entries))
    names = list(dict.fromkeys(e.path.split("/", 1)[0] for e in entries))[:SUMMARY_NAMES]
    return encode(
        {
            "files": len(entries),
            "bytes": sum(e.size for e in entries),
            "names": names,
            "offer": offer_digest(entries),
        }
    )


def decode_summary(data: bytes) -> Summary:
    """:raises ProtocolError: when ``data`` is not an offer's summary."""
    body = decode(data)
    try:
        if not isinstance(body, dict):
            raise ValueError("not a map")
        files, size, names, digest = body["files"], body["bytes"], body["names"], body["offer"]
        if type(files) is not int or type(size) is not int or size < 0:
            raise ValueError("'files' and 'bytes' are counts")
        _check_count(files)
        if not isinstance(names, list) or len(names) > SUMMARY_NAMES:
            raise ValueError(f"'names' is a list of at most {SUMMARY_NAMES}")
        for name in names:
            check_path(name)
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise ValueError("'offer' is a 32-byte digest")
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed file offer: {exc}") from None
    return Summary(files, size, tuple(names), digest)


def _chunks(kind: str, key: str, rows: Sequence[Any], sizes: Sequence[int]) -> Iterator[bytes]:
    # Rows packed into as few frames as hold them: at most PER_FRAME rows, FRAME_BUDGET bytes.
    start = 0
    while True:
        end, budget = start, FRAME_BUDGET
        while end < len(rows) and end - start < PER_FRAME and sizes[end] <= budget:
            budget -= sizes[end]
            end += 1
        more = end < len(rows)
        yield encode_frame(encode({"type": kind, key: list(rows[start:end]), "more": more}))
        if not more:
            return
        start = end


def _sizes(entries: Sequence[Entry]) -> list[int]:
    # Each row's encoded size, at most: the path's bytes, the digest, the size, the heads.
    return [len(e.path.encode("utf-8", "surrogatepass")) + 60 for e in entries]


def encode_offer(entries: Sequence[Entry]) -> bytes:
    """The sender's ``files`` frames, listing the offer."""
    _check_count(len(entries))
    return b"".join(_chunks("files", "files", _rows(entries), _sizes(entries)))


def encode_want(wanted: Sequence[tuple[int, int]]) -> bytes:
    """The receiver's ``want`` frames: (index in the offer, offset to start from) per wanted file, in
    the offer's order."""
    return b"".join(_chunks("want", "from", [list(w) for w in wanted], [20] * len(wanted)))


def encode_want_pending() -> bytes:
    """A ``want`` frame that wants nothing yet and says more follow: what a receiver sends while it
    is still deciding (looking at the files it has, asking its user about a name taken), so that
    the sender, which gives up on a silent receiver, waits on."""
    return encode_frame(encode({"type": "want", "from": [], "more": True}))


def encode_done(done: Done) -> bytes:
    """The receiver's ``done`` frame (its reasons cut to 200 characters, 100 failures at most)."""
    failed = [[i, reason[:MAX_REASON]] for i, reason in done.failed[:MAX_FAILED]]
    return encode_frame(encode({"type": "done", "received": done.received, "failed": failed}))


def decode_message(frame: bytes | memoryview) -> tuple[str, Any, bool]:
    """One frame of the files application: its type, what it carries (a list of :class:`Entry`
    for ``files``, of (index, offset) for ``want``, a :class:`Done`), and whether more follow.

    :raises ProtocolError: when it is malformed.
    """
    body = decode(frame)
    if not isinstance(body, dict) or body.get("type") not in ("files", "want", "done"):
        raise ProtocolError("a files message is a map whose 'type' is files, want or done")
    kind = body["type"]
    try:
        if kind == "done":
            received, failed = body["received"], body["failed"]
            if type(received) is not int or received < 0 or not isinstance(failed, list):
                raise ValueError("'received' is a count and 'failed' a list")
            if len(failed) > MAX_FAILED:
                raise ValueError(f"'failed' lists at most {MAX_FAILED}")
            pairs = tuple((_index(i), _reason(r)) for i, r in failed)
            return kind, Done(received, pairs), False
        more, rows = body["more"], body["files" if kind == "files" else "from"]
        if not isinstance(more, bool) or not isinstance(rows, list) or len(rows) > PER_FRAME:
            raise ValueError(f"'more' is a boolean and the list holds at most {PER_FRAME}")
        if kind == "files":
            return kind, [Entry(*row) for row in rows], more
        return kind, [(_index(i), _offset(o)) for i, o in rows], more
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed files {quoted(kind)} message: {exc}") from None


def _index(value: object) -> int:
    if type(value) is not int or not 0 <= value < MAX_FILES:
        raise ValueError(f"{quoted(value)} is not a file's index")
    return value


def _offset(value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SIZE:
        raise ValueError(f"{quoted(value)} is not an offset")
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise ValueError("a reason is text of at most 200 characters")
    return value
