from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit import Identity, IdentityError, PeerId
from peerkit.identity import KEY_FILE_NAME
from peerkit.proto.crypto import public_key


def test_peer_id_text_form_is_52_lowercase_base32_characters(alice: Identity) -> None:
    text = str(alice.id)
    assert len(text) == 52
    assert text == text.lower()
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert PeerId.parse(text) == alice.id
    assert PeerId.parse(text.upper()) == alice.id
    assert bytes(alice.id) == alice.id.key
    assert len(alice.id.key) == 32


def test_fingerprint_is_the_first_16_characters_in_groups_of_four(alice: Identity) -> None:
    fp = alice.fingerprint
    assert fp.replace("-", "") == str(alice.id)[:16]
    assert [len(g) for g in fp.split("-")] == [4, 4, 4, 4]


@given(st.binary(min_size=32, max_size=32))
def test_a_fingerprint_leaves_the_text_form_unmade(seed: bytes) -> None:
    # (a node's logs name its contacts by fingerprint: each id would keep its 52 characters)
    peer_id = PeerId.from_verified(Identity.from_seed(seed).id.key)
    fp = peer_id.fingerprint
    assert peer_id._text is None
    assert fp.replace("-", "") == str(peer_id)[:16]


def test_the_noise_static_key_is_the_x25519_form_of_the_identity(alice: Identity) -> None:
    assert public_key(alice.x25519_private) == alice.x25519_public == alice.id.x25519


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("abc", "3 characters; a peer id is 52"),
        ("1" * 52, "not base32"),
        ("a" * 51 + "8", "not base32"),
    ],
)
def test_peer_id_parse_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PeerId.parse(text)


def test_peer_id_rejects_keys_that_are_not_ed25519_points() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PeerId(b"short")
    with pytest.raises(TypeError):
        PeerId("text")  # type: ignore[arg-type]
    # y = 2 is not on the curve: the conversion to X25519 fails.
    with pytest.raises(ValueError, match="not a valid Ed25519 public key"):
        PeerId((2).to_bytes(32, "little"))


def test_save_and_load_round_trip_with_mode_0600(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / "sub" / KEY_FILE_NAME
    alice.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).id == alice.id
    assert sorted(p.name for p in path.parent.iterdir()) == [KEY_FILE_NAME]  # no temp file left


def test_load_or_create_creates_once(tmp_path: Path) -> None:
    first, created = Identity.load_or_create(tmp_path)
    again, created_again = Identity.load_or_create(tmp_path)
    assert created
    assert not created_again
    assert first.id == again.id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, alice: Identity, mode: int) -> None:
    path = tmp_path / KEY_FILE_NAME
    alice.save(path)
    os.chmod(path, mode)
    with pytest.raises(IdentityError, match=r"accessible by other users .*chmod 600"):
        Identity.load(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "does not start with the peerkit header"),
        (b"garbage", "does not start with the peerkit header"),
        (b"peerkit-ed25519-seed-v1\n!!!not base64\n", "not base64"),
        (b"peerkit-ed25519-seed-v1\nAAAA\n", "the key is 3 bytes, not 32"),
    ],
)
def test_a_corrupt_key_file_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match=match):
        Identity.load(path)


@pytest.mark.parametrize("line", [1, 2], ids=["seed", "id"])
def test_a_key_file_with_one_character_changed_is_refused_not_loaded_as_another_identity(
    tmp_path: Path, alice: Identity, line: int
) -> None:
    path = tmp_path / KEY_FILE_NAME
    alice.save(path)
    lines = path.read_bytes().split(b"\n")
    assert lines[2] == b"id " + str(alice.id).encode()  # the id beside the seed: its checksum
    text = bytearray(lines[line])
    text[5] = ord("B") if text[5] != ord("B") else ord("C")  # still valid base64 / base32
    lines[line] = bytes(text)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(IdentityError, match="does not match the id written beside it"):
        Identity.load(path)


def test_a_key_file_written_without_its_id_still_loads(tmp_path: Path, alice: Identity) -> None:
    path = tmp_path / KEY_FILE_NAME
    alice.save(path)
    path.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[:2]) + b"\n")  # as older peerkits wrote it
    assert Identity.load(path).id == alice.id


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no identity key file"):
        Identity.load(tmp_path / "nope.key")


def test_signatures_verify_under_the_peer_id(alice: Identity) -> None:
    signature = alice.sign(b"message")
    alice.id.verify_key().verify(b"message", signature)
