"""BEP 44 mutable items: signing, verifying, targets, and the rules of a put (sans-IO).

A mutable item is a value (any bencoded value of at most :data:`MAX_VALUE` bytes) stored under
``target = SHA1(public key + salt)``, with a sequence number, signed by the key's holder over the
bencoded ``salt`` (when there is one), ``seq`` and ``v`` without the enclosing dictionary::

    4:salt6:foobar3:seqi1e1:v12:Hello World!

peerkit signs these with the identity key. That is safe because every other thing peerkit signs
starts with a ``peerkit-...\\x00`` domain (records, cards), while every BEP 44 signature covers
bytes starting with ``3:seq`` or ``4:salt``: no signature can be taken from one context to the
other. Every future signing context must keep that rule (:data:`PEERKIT_DOMAIN_PREFIX`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from peerkit.dht.bencode import BencodeError, Value, decode, encode

__all__ = (
    "MAX_SALT",
    "MAX_VALUE",
    "PEERKIT_DOMAIN_PREFIX",
    "ItemError",
    "ItemRefused",
    "MutableItem",
    "check_put",
    "signed_bytes",
    "target",
)

#: The most bytes a bencoded value may take.
MAX_VALUE: Final = 1000
#: The most bytes a salt may take.
MAX_SALT: Final = 64
#: What every other peerkit signing context starts with (see the module docstring).
PEERKIT_DOMAIN_PREFIX: Final = b"peerkit-"


class ItemError(enum.IntEnum):
    """BEP 44's error codes for a put."""

    TOO_BIG = 205
    BAD_SIGNATURE = 206
    SALT_TOO_BIG = 207
    CAS_MISMATCH = 301
    SEQ_NOT_HIGHER = 302


_MESSAGES: Final = {
    ItemError.TOO_BIG: "message (v field) too big",
    ItemError.BAD_SIGNATURE: "invalid signature",
    ItemError.SALT_TOO_BIG: "salt (salt field) too big",
    ItemError.CAS_MISMATCH: "CAS mismatch",
    ItemError.SEQ_NOT_HIGHER: "sequence number less than current",
}


class ItemRefused(Exception):
    """A put that BEP 44 refuses, with its error code and message."""

    def __init__(self, code: ItemError) -> None:
        super().__init__(f"{code.value}: {_MESSAGES[code]}")
        #: The BEP 44 error code.
        self.code = code
        #: The text KRPC error replies carry.
        self.text = _MESSAGES[code]


def target(key: bytes, salt: bytes = b"") -> bytes:
    """The 20-byte id a mutable item is stored under."""
    return hashlib.sha1(key + salt, usedforsecurity=False).digest()


def signed_bytes(salt: bytes, seq: int, encoded_value: bytes) -> bytes:
    """The bytes a signature covers (see the module docstring)."""
    head = b"4:salt%d:%s" % (len(salt), salt) if salt else b""
    return head + b"3:seqi%de1:v" % seq + encoded_value


@dataclass(frozen=True, slots=True)
class MutableItem:
    """One mutable item, as stored and as sent (``value`` is its bencoding)."""

    #: The signer's 32-byte Ed25519 public key.
    key: bytes
    #: The salt (empty: none).
    salt: bytes
    seq: int
    #: The value's bencoding.
    value: bytes
    #: The 64-byte signature over :func:`signed_bytes`.
    sig: bytes

    @classmethod
    def create(
        cls, sign: Callable[[bytes], bytes], key: bytes, value: Value, seq: int, salt: bytes = b""
    ) -> MutableItem:
        """``value`` under ``seq`` (and ``salt``), signed with ``sign`` (the holder of ``key``:
        ``MutableItem.create(identity.sign, identity.id.key, ...)``).

        :raises ItemRefused: when the value or salt is too big (205, 207).
        :raises BencodeError: when ``value`` cannot be bencoded.
        """
        encoded = encode(value)
        _check_sizes(salt, encoded)
        return cls(key, salt, seq, encoded, sign(signed_bytes(salt, seq, encoded)))

    @property
    def target(self) -> bytes:
        """The id it is stored under."""
        return target(self.key, self.salt)

    def decoded(self) -> Value:
        """The value itself."""
        return decode(self.value)

    def verify(self) -> bool:
        """Whether the signature is the key's over this salt, seq and value."""
        if len(self.key) != 32 or len(self.sig) != 64:
            return False
        try:
            VerifyKey(self.key).verify(signed_bytes(self.salt, self.seq, self.value), self.sig)
        except (BadSignatureError, ValueError):
            return False
        return True


def _check_sizes(salt: bytes, encoded_value: bytes) -> None:
    if len(encoded_value) > MAX_VALUE:
        raise ItemRefused(ItemError.TOO_BIG)
    if len(salt) > MAX_SALT:
        raise ItemRefused(ItemError.SALT_TOO_BIG)


def check_put(new: MutableItem, stored: MutableItem | None, cas: int | None = None) -> bool:
    """Whether a node holding ``stored`` takes ``new`` (with a ``cas`` condition, if given).

    :returns: True to store it, False when it is the same item again (keep it, refresh it).
    :raises ItemRefused: with BEP 44's code, in its order: too big, salt too big, a bad
        signature, a cas that is not the stored seq, a seq lower than the stored one, or the same
        seq with another value.
    """
    _check_sizes(new.salt, new.value)
    try:
        decode(new.value)
    except BencodeError:
        raise ItemRefused(ItemError.BAD_SIGNATURE) from None  # not an item anyone signed as such
    if not new.verify():
        raise ItemRefused(ItemError.BAD_SIGNATURE)
    if stored is None:
        return True
    if cas is not None and cas != stored.seq:
        raise ItemRefused(ItemError.CAS_MISMATCH)
    if new.seq < stored.seq:
        raise ItemRefused(ItemError.SEQ_NOT_HIGHER)
    if new.seq == stored.seq:
        if new.value != stored.value:
            raise ItemRefused(ItemError.SEQ_NOT_HIGHER)  # never two values under one seq
        return False
    return True
