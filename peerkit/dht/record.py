"""A node's record in the DHT: its signed discovery record, sealed, in one BEP 44 item.

The item is stored under the node's own key (the peer id) and the salt :data:`SALT`. Its value
is the node's signed discovery record envelope (the one every provider carries, so the
:class:`~peerkit.discovery.Directory` verifies it as usual) sealed with the node's *locator key*
(XSalsa20-Poly1305, pynacl's ``SecretBox``). The locator key goes only to allowed contacts, so a
stranger who knows a peer id learns that a record exists, and nothing of where the peer is.

- The nonce is derived from the key and the envelope (keyed BLAKE2b), so the same record sealed
  twice is the same value: a republish never puts two values under one seq.
- The item's seq is the record's seq; a reader checks that they agree and that the record is the
  key's, so an old record cannot be passed off under a newer item.
- The value must bencode to at most 1000 bytes: :func:`fit_record` drops what must go, in a fixed
  order (the endpoint name, then addresses from the last, then the nickname), and never fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.hash import blake2b
from nacl.secret import SecretBox
from nacl.utils import random as random_bytes

from peerkit.dht.bencode import encode
from peerkit.dht.bep44 import MAX_VALUE, MutableItem
from peerkit.discovery.base import make_record, read_record
from peerkit.errors import InvalidRecord
from peerkit.proto.records import Signer

__all__ = (
    "SALT",
    "LocatorError",
    "fit_record",
    "new_locator_key",
    "open_item",
    "seal",
    "sealed_item",
    "unseal",
)

#: The salt of every peerkit record item.
SALT: Final = b"peerkit-locator-v1"
#: Bytes sealing adds (the nonce and the tag).
SEAL_OVERHEAD: Final = SecretBox.NONCE_SIZE + SecretBox.MACBYTES
#: The most bytes a record envelope may take to fit sealed in one item.
MAX_SEALED_ENVELOPE: Final = MAX_VALUE - len(b"1000:") - SEAL_OVERHEAD


class LocatorError(Exception):
    """An item that is not a readable record of its key (a wrong locator key, or a forgery)."""


def new_locator_key() -> bytes:
    """A fresh locator key (32 random bytes)."""
    return random_bytes(SecretBox.KEY_SIZE)


def seal(envelope: bytes, key: bytes) -> bytes:
    """``envelope`` sealed with the locator ``key`` (the same input gives the same bytes)."""
    nonce = blake2b(
        envelope, digest_size=SecretBox.NONCE_SIZE, key=key, person=b"peerkit-locator", encoder=RawEncoder
    )
    return bytes(SecretBox(key).encrypt(envelope, nonce))


def unseal(sealed: bytes, key: bytes) -> bytes:
    """The envelope inside ``sealed``.

    :raises LocatorError: when ``key`` does not open it.
    """
    try:
        return bytes(SecretBox(key).decrypt(sealed))
    except (CryptoError, ValueError, TypeError):
        raise LocatorError("the record does not open with this locator key") from None


class _raw:
    @staticmethod
    def encode(data: bytes) -> bytes:
        return data

    @staticmethod
    def decode(data: bytes) -> bytes:
        return data


def fit_record(
    signer: Signer,
    seq: int,
    *,
    nickname: str,
    endpoint_name: str,
    endpoints: Sequence[tuple[str, int]],
    limit: int = MAX_SEALED_ENVELOPE,
) -> bytes:
    """The node's signed record, cut to at most ``limit`` bytes by the module's rule."""
    addresses = list(endpoints)
    name, nick = endpoint_name, nickname
    while True:
        envelope = make_record(signer, seq, nickname=nick, endpoint_name=name, endpoints=addresses)
        if len(envelope) <= limit:
            return envelope
        if name:
            name = ""
        elif len(addresses) > 1:
            addresses.pop()
        elif nick:
            nick = ""
        elif addresses:
            addresses.pop()
        else:
            raise AssertionError("a record with nothing in it is over the limit")  # never: ~150 bytes


def sealed_item(signer: Signer, envelope: bytes, seq: int, locator_key: bytes) -> MutableItem:
    """The item that carries ``envelope`` (``signer``'s record at ``seq``) sealed."""
    return MutableItem.create(signer.sign, bytes(signer.id), seal(envelope, locator_key), seq, SALT)


def open_item(item: MutableItem, locator_key: bytes) -> bytes:
    """The record envelope an item carries, checked to be its key's record at its seq.

    :raises LocatorError: when it does not open, or is not the key's record at that seq.
    """
    value = item.decoded()
    if not isinstance(value, bytes):
        raise LocatorError("the item's value is not a sealed record")
    envelope = unseal(value, locator_key)
    try:
        record = read_record(envelope)[0]
    except InvalidRecord as exc:
        raise LocatorError(f"the sealed record does not verify: {exc}") from None
    if record.id != item.key or record.seq != item.seq:
        raise LocatorError("the sealed record is not the item's key's record at the item's seq")
    return envelope


assert len(encode(bytes(MAX_SEALED_ENVELOPE + SEAL_OVERHEAD))) <= MAX_VALUE
