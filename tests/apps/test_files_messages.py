"""The files application's messages (:mod:`peerkit.proto.files`): round trips in few frames,
unsafe paths refused, and nothing but :class:`ProtocolError` from a peer's bytes."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit import ProtocolError
from peerkit.proto.files import (
    MAX_FILES,
    Done,
    Entry,
    check_offer,
    check_path,
    decode_message,
    decode_summary,
    encode_done,
    encode_offer,
    encode_summary,
    encode_want,
    encode_want_pending,
    offer_digest,
)
from peerkit.proto.framing import FrameDecoder
from peerkit.proto.messages import encode

DIGEST = hashlib.sha256(b"x").digest()


def frames(wire: bytes) -> list[tuple[str, object, bool]]:
    return [decode_message(f) for f in FrameDecoder().feed(wire)]


def test_a_large_offer_splits_into_frames_and_reads_back_whole() -> None:
    long = "/".join(["é" * 120] * 8)  # (1,000 characters, 1,900 bytes)
    entries = [Entry(f"{long[: 1000 - len(str(i)) - 1]}/{i}", i, DIGEST) for i in range(200)]
    got = frames(encode_offer(entries))
    assert len(got) > 1
    assert [more for _, _, more in got] == [True] * (len(got) - 1) + [False]
    assert [e for _, rows, _ in got for e in rows] == entries  # type: ignore[attr-defined]
    wanted = [(i, i * 7) for i in range(0, 2 * MAX_FILES // 10, 2)]
    assert [w for _, rows, _ in frames(encode_want(wanted)) for w in rows] == wanted  # type: ignore[attr-defined]
    assert frames(encode_want([])) == [("want", [], False)]
    assert frames(encode_want_pending()) == [("want", [], True)]  # (still deciding: more follow)
    assert frames(encode_done(Done(3, ((1, "r" * 500),)))) == [("done", Done(3, ((1, "r" * 200),)), False)]


def test_the_summary_names_the_first_top_level_names_and_binds_the_offer() -> None:
    entries = [Entry(f"d{i % 10}/f{i}", 1, DIGEST) for i in range(30)]
    summary = decode_summary(encode_summary(entries))
    assert (summary.files, summary.size, summary.digest) == (30, 30, offer_digest(entries))
    assert summary.names == tuple(f"d{i}" for i in range(8))
    assert offer_digest(entries[:-1]) != summary.digest
    with pytest.raises(ValueError, match="1 to 10000 files"):
        encode_summary([])


@pytest.mark.parametrize(
    "path",
    [
        *("", "/etc/passwd", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\nb"),
        *("x" * 1025, "y" * 256 + "/z"),
        *("a\x7fb", "a\x9bb", "invoice\u202etxt.exe", "a\u2066b", "a\u2028b"),  # (DEL, C1, bidi, line sep.)
        *("invoice\u200b.pdf", "\u3164"),  # (characters that show as nothing)
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match=r"path|part|backslash|control|nothing"):
        check_path(path)
    body = {"type": "files", "files": [[path, 1, DIGEST]], "more": False}
    with pytest.raises(ProtocolError, match="malformed files 'files' message"):
        decode_message(encode(body))


@pytest.mark.parametrize(
    "body",
    [
        {"type": "files", "files": [["a", -1, DIGEST]], "more": False},
        {"type": "files", "files": [["a", 1, b"short"]], "more": False},
        {"type": "files", "files": [["a", 1]], "more": False},
        {"type": "want", "from": [[0, -5]], "more": False},
        {"type": "want", "from": [[MAX_FILES, 0]], "more": False},
        {"type": "want", "from": [], "more": 1},
        {"type": "done", "received": 1, "failed": [[0, 5]]},
        {"type": "done", "received": -1, "failed": []},
        {"type": "chunk"},
        [],
    ],
)
def test_malformed_messages_are_protocol_errors(body: object) -> None:
    with pytest.raises(ProtocolError):
        decode_message(encode(body))


@given(st.binary(max_size=400))
def test_any_bytes_give_a_message_or_a_protocol_error(data: bytes) -> None:
    for decoder in (decode_message, decode_summary):
        with contextlib.suppress(ProtocolError):
            decoder(data)


@given(
    st.lists(
        st.tuples(
            st.text(
                st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_categories=["Cc", "Cf"]),
                min_size=1,
                max_size=30,
            ),
            st.integers(0, 2**40),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_offers_of_safe_names_round_trip(rows: list[tuple[str, int]]) -> None:
    entries = []
    for text, size in rows:
        name = text.replace("/", "_").replace("\\", "_")
        if name not in (".", ".."):
            entries.append(Entry(name, size, DIGEST))
    if entries:
        assert [e for _, got, _ in frames(encode_offer(entries)) for e in got] == entries  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("paths", "problem"),
    [
        (["x", "x/y"], "'x' is a file and the folder of 'x/y'"),
        (["x/y/z", "a", "x/y"], "'x/y' is a file and the folder of 'x/y/z'"),
        (["x", "x-1", "x.txt", "x/y"], "'x' is a file and the folder of 'x/y'"),  # ('-', '.' < '/')
        (["a/b", "c", "a/b"], "'a/b' is listed twice"),
        # Empty files, each at the end of a chain of folders of its own: a receiver made them all.
        ([f"d{i}/" + "a/" * 400 + "f" for i in range(30)], "the paths make more than 10,000 folders"),
    ],
)
def test_an_offer_whose_files_cannot_all_be_saved_is_refused(paths: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=f"^{problem}$"):
        check_offer(paths)


@given(st.lists(st.lists(st.sampled_from("ab"), min_size=1, max_size=4), min_size=1, max_size=12))
def test_check_offer_finds_what_comparing_every_pair_finds(parts: list[list[str]]) -> None:
    paths = ["/".join(p) for p in parts]
    clash = any(
        a == b or a.startswith(b + "/") for i, a in enumerate(paths) for j, b in enumerate(paths) if i != j
    )
    try:
        check_offer(paths)
    except ValueError:
        assert clash
    else:
        assert not clash
    check_offer(["a", "a-b", "a.b", "ab", "b/a", "b/ab"])  # (no clash: nothing raised)


def test_an_offer_of_as_many_files_as_may_be_makes_fewer_folders_than_may_be() -> None:
    check_offer([f"{i // 100}/{i // 10 % 10}/f{i}" for i in range(MAX_FILES)])  # (1,100 folders)
