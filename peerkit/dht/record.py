"""An identity's record in the DHT: the signed discovery records of its devices, sealed, in one
BEP 44 item.

The item is stored under the identity's own key (the peer id) and the salt :data:`SALT`. Its
value is a list of entries, newest first, one per device signed in with the identity (at most
:data:`MAX_DEVICES`). An entry is ``[mark, seq, sealed]``: the device's signed discovery record
envelope (the one every provider carries, so the :class:`~peerkit.discovery.Directory` verifies it
as usual) sealed with the locator key (XSalsa20-Poly1305, pynacl's ``SecretBox``), the record's seq
in the clear, and an 8-byte mark by which the device knows its own entry (keyed BLAKE2b of the seq
under the device's tag, which never leaves the device: marks of one device do not look alike).
The locator key goes only to allowed contacts, so a stranger who knows a peer id learns that a
record exists, how many devices wrote it and when, and nothing of where they are.

- A device publishes by reading the item, replacing its own entry (known by its mark, whatever
  key sealed it: a record sealed with a key since replaced is dropped), keeping the other devices'
  entries that are fresher than :data:`STALE` (their seq is Unix milliseconds), and storing the
  result under a higher seq with BEP 44's cas (:func:`merged_item`).
- The nonce is derived from the key and the envelope (keyed BLAKE2b), so the same entries sealed
  twice are the same value: a republish never puts two values under one seq.
- The publishing device's record has the item's seq; a reader checks that every record is the
  key's, at its entry's seq, and no newer than the item, so an old record cannot be passed off
  under a newer item.
- The value must bencode to at most 1000 bytes: :func:`fit_record` cuts a device's own record by a
  fixed rule (the endpoint name, then addresses from the last, then the nickname) and never fails;
  other devices' entries that do not fit are left out, the oldest first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Final

from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.hash import blake2b
from nacl.secret import SecretBox
from nacl.utils import random as random_bytes

from peerkit.dht.bencode import Value, encode
from peerkit.dht.bep44 import MAX_VALUE, MutableItem
from peerkit.discovery.base import make_record, read_record
from peerkit.errors import InvalidRecord
from peerkit.proto.records import Signer

__all__ = (
    "MAX_DEVICES",
    "SALT",
    "STALE",
    "TAG_SIZE",
    "LocatorError",
    "carries",
    "fit_record",
    "merged_item",
    "new_locator_key",
    "open_item",
    "own_entry",
    "seal",
    "sealed_item",
    "unseal",
)

#: The salt of every peerkit record item.
SALT: Final = b"peerkit-locator-v1"
#: Bytes sealing adds (the nonce and the tag).
SEAL_OVERHEAD: Final = SecretBox.NONCE_SIZE + SecretBox.MACBYTES
#: Bytes of the device tag sealed before each record.
TAG_SIZE: Final = 8
#: Devices of one identity whose entries an item holds at most.
MAX_DEVICES: Final = 4
#: Seconds after which another device's entry is dropped when a device merges (it republishes
#: hourly while signed in).
STALE: Final = 3 * 3600
# The bencoding around one entry in a list: l l8:<mark>i<seq>e<len>:<sealed> e e, at most.
_ENTRY_OVERHEAD: Final = len(b"ll8:12345678i9999999999999999e1000:ee") - len(b"1000")
#: The most bytes a record envelope may take to fit sealed, alone, in one item.
MAX_SEALED_ENVELOPE: Final = MAX_VALUE - _ENTRY_OVERHEAD - 3 - SEAL_OVERHEAD


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
    endpoints: Sequence[tuple[str, int] | tuple[str, int, str]],
    relays: Sequence[tuple[str, int, bytes]] = (),
    relay: bool = False,
    limit: int = MAX_SEALED_ENVELOPE,
) -> bytes:
    """The node's signed record, cut to at most ``limit`` bytes by the module's rule."""
    addresses, through = list(endpoints), list(relays)
    name, nick = endpoint_name, nickname
    while True:
        envelope = make_record(
            signer, seq, nickname=nick, endpoint_name=name, endpoints=addresses, relays=through, relay=relay
        )
        if len(envelope) <= limit:
            return envelope
        if name:
            name = ""
        elif len(addresses) > 1:
            addresses.pop()
        elif nick:
            nick = ""
        elif len(through) > 1:
            through.pop()
        elif addresses:
            addresses.pop()
        elif through:
            through.pop()
        else:
            raise AssertionError("a record with nothing in it is over the limit")  # never: ~150 bytes


def _mark(tag: bytes, seq: int) -> bytes:
    # How the device ``tag`` marks its entry at ``seq``.
    if len(tag) != TAG_SIZE:
        raise ValueError(f"a device tag is {TAG_SIZE} bytes, not {len(tag)}")
    return blake2b(b"%d" % seq, digest_size=TAG_SIZE, key=tag, person=b"peerkit-device", encoder=RawEncoder)


def _entry(envelope: bytes, seq: int, tag: bytes, locator_key: bytes) -> list[Value]:
    return [_mark(tag, seq), seq, seal(envelope, locator_key)]


def sealed_item(
    signer: Signer,
    envelope: bytes,
    seq: int,
    locator_key: bytes,
    *,
    tag: bytes = bytes(TAG_SIZE),
    others: Sequence[list[Value]] = (),
) -> MutableItem:
    """The item that carries ``envelope`` (``signer``'s record at ``seq``, of the device
    ``tag``) sealed, followed by ``others`` (entries of other devices, as found)."""
    value: list[Value] = [_entry(envelope, seq, tag, locator_key), *others]
    return MutableItem.create(signer.sign, bytes(signer.id), value, seq, SALT)


def _entries(item: MutableItem) -> list[tuple[bytes, int, bytes]]:
    # An item's entries (mark, seq, sealed), checked for shape only.
    value: Any = item.decoded()
    if not isinstance(value, list) or len(value) > MAX_DEVICES:
        raise LocatorError("the item's value is not a list of sealed records")
    entries = []
    for entry in value:
        match entry:
            case [bytes(mark), int(seq), bytes(sealed)] if len(mark) == TAG_SIZE and 0 <= seq <= item.seq:
                entries.append((mark, seq, sealed))
            case _:
                raise LocatorError("an entry of the item is not [mark, seq, sealed record] at most its seq")
    return entries


def _opened(sealed: bytes, seq: int, key: bytes, locator_key: bytes) -> bytes:
    # The envelope of one entry, checked to be ``key``'s record at ``seq``.
    envelope = unseal(sealed, locator_key)
    try:
        record = read_record(envelope)[0]
    except InvalidRecord as exc:
        raise LocatorError(f"the sealed record does not verify: {exc}") from None
    if record.id != key or record.seq != seq:
        raise LocatorError("the sealed record is not the item's key's record at its entry's seq")
    return envelope


def open_item(item: MutableItem, locator_key: bytes) -> list[bytes]:
    """The record envelopes an item carries that open with ``locator_key``, newest first, each
    checked to be the item's key's record at its entry's seq (empty: every device signed out).

    :raises LocatorError: when the item is malformed, or it has entries and none opens.
    """
    entries = _entries(item)
    envelopes: list[tuple[int, bytes]] = []
    error: LocatorError | None = None
    for _, seq, sealed in entries:
        try:
            envelopes.append((seq, _opened(sealed, seq, item.key, locator_key)))
        except LocatorError as exc:
            error = exc
    if entries and not envelopes:
        assert error is not None
        raise error
    return [envelope for _, envelope in sorted(envelopes, key=lambda e: -e[0])]


def carries(item: MutableItem, tag: bytes) -> bool:
    """Whether ``item`` holds an entry of the device ``tag`` (false for a malformed item)."""
    try:
        return any(mark == _mark(tag, seq) for mark, seq, _ in _entries(item))
    except LocatorError:
        return False


def own_entry(item: MutableItem, tag: bytes, locator_key: bytes) -> bytes | None:
    """The record envelope of the device ``tag`` in ``item``, if it has an entry there that opens
    with ``locator_key`` and verifies (None otherwise)."""
    try:
        entries = _entries(item)
    except LocatorError:
        return None
    for mark, seq, sealed in entries:
        if mark == _mark(tag, seq):
            try:
                return _opened(sealed, seq, item.key, locator_key)
            except LocatorError:
                return None
    return None


def merged_item(
    signer: Signer,
    envelope: bytes | None,
    seq: int,
    locator_key: bytes,
    *,
    tag: bytes,
    current: MutableItem | Sequence[MutableItem] | None,
    now_ms: int,
) -> MutableItem:
    """The item a device stores: its own ``envelope`` (its record at ``seq``; None when it signs
    out) first, then the entries of ``current`` (the item found, or the items found under one
    seq when devices wrote at the same moment) of other devices seen within :data:`STALE`,
    newest first, as many as fit. An entry is the device's own when it carries the mark of
    ``tag``; entries of a damaged item are dropped."""
    found = [] if current is None else [current] if isinstance(current, MutableItem) else list(current)
    entries: dict[tuple[bytes, int, bytes], None] = {}
    for item in found:
        if item.key == bytes(signer.id):
            with contextlib.suppress(LocatorError):
                entries.update(dict.fromkeys(_entries(item)))
    others: list[list[Value]] = []
    for mark, entry_seq, sealed in sorted(entries, key=lambda e: -e[1]):
        if entry_seq < now_ms - STALE * 1000 or entry_seq >= seq or mark == _mark(tag, entry_seq):
            continue  # stale, or this device's own older entry (replaced)
        others.append([mark, entry_seq, sealed])
    own = [] if envelope is None else [_entry(envelope, seq, tag, locator_key)]
    while True:
        value: list[Value] = [*own, *others[: MAX_DEVICES - len(own)]]
        if len(encode(value)) <= MAX_VALUE:
            return MutableItem.create(signer.sign, bytes(signer.id), value, seq, SALT)
        others.pop()  # the oldest other device's entry goes (own alone always fits)


assert len(encode([[bytes(TAG_SIZE), 10**16 - 1, bytes(MAX_SEALED_ENVELOPE + SEAL_OVERHEAD)]])) <= MAX_VALUE
