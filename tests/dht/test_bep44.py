"""peerkit.dht.bep44: BEP 44's published test vectors, the put rules, and domain separation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit import Identity
from peerkit.dht.bencode import encode
from peerkit.dht.bep44 import (
    MAX_SALT,
    PEERKIT_DOMAIN_PREFIX,
    ItemError,
    ItemRefused,
    MutableItem,
    check_put,
    signed_bytes,
    target,
)

# BEP 44, "Test vectors" (the key pair is given there in expanded form; the signatures verify).
PUBLIC = bytes.fromhex("77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548")
VECTORS = [
    (
        b"",
        b"3:seqi1e1:v12:Hello World!",
        "4a533d47ec9c7d95b1ad75f576cffc641853b750",
        "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff"
        "1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01",
    ),
    (
        b"foobar",
        b"4:salt6:foobar3:seqi1e1:v12:Hello World!",
        "411eba73b6f087ca51a3795d9c8c938d365e32c1",
        "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d"
        "df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08",
    ),
]


@pytest.mark.parametrize(("salt", "signed", "target_hex", "signature_hex"), VECTORS)
def test_the_published_test_vectors(salt: bytes, signed: bytes, target_hex: str, signature_hex: str) -> None:
    value = encode(b"Hello World!")
    assert signed_bytes(salt, 1, value) == signed
    assert target(PUBLIC, salt).hex() == target_hex
    item = MutableItem(PUBLIC, salt, 1, value, bytes.fromhex(signature_hex))
    assert item.verify()
    assert item.target.hex() == target_hex
    assert item.decoded() == b"Hello World!"
    assert not MutableItem(PUBLIC, salt, 2, value, item.sig).verify()  # another seq
    assert not MutableItem(PUBLIC, salt + b"x", 1, value, item.sig).verify()  # another salt


def sign(identity: Identity, value: object, seq: int, salt: bytes = b"s") -> MutableItem:
    return MutableItem.create(identity.sign, identity.id.key, value, seq, salt)  # type: ignore[arg-type]


def test_the_put_rules_in_their_order() -> None:
    alice = Identity.generate()
    first = sign(alice, b"one", 5)
    assert check_put(first, None)
    assert check_put(sign(alice, b"two", 6), first)
    assert not check_put(sign(alice, b"one", 5), first)  # the same item again: a refresh
    with pytest.raises(ItemRefused, match="302: sequence number less than current") as lower:
        check_put(sign(alice, b"zero", 4), first)
    assert lower.value.code is ItemError.SEQ_NOT_HIGHER
    with pytest.raises(ItemRefused) as same_seq:  # never two values under one seq
        check_put(sign(alice, b"other", 5), first)
    assert same_seq.value.code is ItemError.SEQ_NOT_HIGHER
    with pytest.raises(ItemRefused, match="301: CAS mismatch"):
        check_put(sign(alice, b"two", 6), first, cas=4)
    assert check_put(sign(alice, b"two", 6), first, cas=5)
    forged = MutableItem(first.key, first.salt, 6, first.value, first.sig)
    with pytest.raises(ItemRefused, match="206: invalid signature"):
        check_put(forged, first)
    mallory = Identity.generate()
    stolen = MutableItem(alice.id.key, b"s", 7, encode(b"x"), sign(mallory, b"x", 7).sig)
    with pytest.raises(ItemRefused, match="206"):
        check_put(stolen, None)


def test_sizes_are_refused_with_their_codes() -> None:
    alice = Identity.generate()
    assert len(sign(alice, bytes(996), 1).value) == 1000  # "996:" + 996 bytes: the most there is
    with pytest.raises(ItemRefused, match="205: message \\(v field\\) too big"):
        sign(alice, bytes(997), 1)
    with pytest.raises(ItemRefused, match="207: salt \\(salt field\\) too big"):
        sign(alice, b"v", 1, salt=bytes(MAX_SALT + 1))
    big = MutableItem(alice.id.key, b"", 1, encode(bytes(997)), bytes(64))
    with pytest.raises(ItemRefused) as caught:  # size first, before the signature is looked at
        check_put(big, None)
    assert caught.value.code is ItemError.TOO_BIG
    assert caught.value.text == "message (v field) too big"


@given(st.binary(max_size=64), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(max_size=900))
def test_what_is_signed_verifies_and_starts_unlike_any_peerkit_domain(
    salt: bytes, seq: int, value: bytes
) -> None:
    alice = Identity.from_seed(bytes(range(32)))
    item = sign(alice, value, seq, salt)
    assert item.verify()
    signed = signed_bytes(salt, seq, item.value)
    assert signed.startswith((b"3:seq", b"4:salt"))
    assert not signed.startswith(PEERKIT_DOMAIN_PREFIX)


def _domains_and_signed(tree: ast.AST) -> tuple[list[object], list[tuple[int, str]]]:
    # The values of constants named *_DOMAIN, and what each call of .sign( signs.
    domains: list[object] = []
    signed: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            names = list(node.targets)
        elif isinstance(node, ast.AnnAssign):
            names = [node.target]
        value = getattr(node, "value", None)
        named = any(isinstance(n, ast.Name) and n.id.endswith("_DOMAIN") for n in names)
        if named and isinstance(value, ast.Constant):
            domains.append(value.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sign":
            signed.append((node.lineno, ast.unparse(node.args[0]) if node.args else ""))
    return domains, signed


def test_every_peerkit_signing_context_starts_with_its_domain() -> None:
    # Each call of .sign( in the package signs bytes that begin with a b"peerkit-...\0" constant
    # (or is BEP 44's signed_bytes): found in the source, so a new signing context without a
    # domain fails here.
    package = Path(__file__).resolve().parents[2] / "peerkit"
    allowed = ("domain + body", "message", "signed_bytes(salt, seq, encoded)")
    found: list[object] = []
    for path in package.rglob("*.py"):
        domains, signed = _domains_and_signed(ast.parse(path.read_text("utf-8")))
        found += domains
        for line, argument in signed:
            assert argument in allowed, f"{path.name}:{line} signs {argument} without a domain"
    assert found, "no signing domain found"
    for domain in found:
        assert isinstance(domain, bytes)
        assert domain.startswith(PEERKIT_DOMAIN_PREFIX)
        assert domain.endswith(b"\x00")
