"""Signed records and contact cards (docs/protocol.md section 5), sans-IO.

A record's body is the RFC 8949 core deterministic CBOR of a map holding at least ``"id"`` (the
signer's 32-byte Ed25519 public key) and ``"seq"`` (an unsigned integer, strictly increasing per id).
Its signature is
Ed25519 over ``domain + body``, where the domain is :data:`RECORD_DOMAIN` for discovery records and
:data:`CARD_DOMAIN` for contact cards. The envelope is the CBOR map ``{"body": bytes, "sig": bytes}``.

The caller supplies ``seq`` (for example Unix time in milliseconds): nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import nacl.exceptions
import nacl.signing

from peerkit.errors import InvalidRecord, ProtocolError, StaleRecord
from peerkit.proto import messages

__all__ = (
    "CARD_DOMAIN",
    "MALFORMED",
    "MAX_ENVELOPE",
    "RECORD_DOMAIN",
    "SeqTracker",
    "SignedRecord",
    "Signer",
    "open_record",
    "sign_record",
)

RECORD_DOMAIN: Final = b"peerkit-record-v1\x00"
CARD_DOMAIN: Final = b"peerkit-card-v1\x00"
#: The largest envelope peerkit reads, in bytes.
MAX_ENVELOPE: Final = 32768
#: How the message of an envelope that is no CBOR (or is cut short) starts.
MALFORMED: Final = "signed record is malformed"
_MAX_SEQ: Final = 2**64 - 1


class Signer(Protocol):
    """Anything that signs with an Ed25519 key and knows its public key (an ``Identity``)."""

    @property
    def id(self) -> Any:
        """The peer id; ``bytes(id)`` gives the 32-byte Ed25519 public key."""

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedRecord:
    """A verified record."""

    #: The signer's 32-byte Ed25519 public key.
    id: bytes
    #: The record's sequence number.
    seq: int
    #: The whole decoded body, ``id`` and ``seq`` included.
    body: dict[str, Any]
    #: The envelope bytes as received (to pass the record on unchanged).
    envelope: bytes


def sign_record(
    signer: Signer, seq: int, content: Mapping[str, Any], *, domain: bytes = RECORD_DOMAIN
) -> bytes:
    """Sign a record: ``content`` plus ``"id"`` and ``"seq"``. Returns the envelope bytes.

    :raises ValueError: when ``seq`` is out of range or ``content`` sets ``id`` or ``seq`` itself.
    """
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= _MAX_SEQ:
        raise ValueError(f"record seq must be an integer in 0..2**64-1, not {seq!r}")
    if "id" in content or "seq" in content:
        raise ValueError('record content must not set "id" or "seq"; they come from the signer')
    key = bytes(signer.id)
    body = messages.encode_deterministic({**content, "id": key, "seq": seq})
    signature = signer.sign(domain + body)
    envelope = messages.encode_deterministic({"body": body, "sig": signature})
    if len(envelope) > MAX_ENVELOPE:
        raise ValueError(f"signed record is {len(envelope)} bytes; the limit is {MAX_ENVELOPE}")
    return envelope


def open_record(envelope: bytes, *, domain: bytes = RECORD_DOMAIN) -> SignedRecord:
    """Verify an envelope and return its record.

    :raises InvalidRecord: when the envelope is malformed, the body is not canonical, or the
        signature does not verify under the key the body names.
    """
    if not isinstance(envelope, (bytes, bytearray, memoryview)):
        raise TypeError(f"envelope must be bytes, not {type(envelope).__name__}")
    envelope = bytes(envelope)
    if len(envelope) > MAX_ENVELOPE:
        raise InvalidRecord(f"signed record is {len(envelope)} bytes; the limit is {MAX_ENVELOPE}")
    try:
        outer = messages.decode(envelope)
        if not isinstance(outer, dict) or set(outer) != {"body", "sig"}:
            raise InvalidRecord('signed record must be a map of exactly "body" and "sig"')
        body_bytes, signature = outer["body"], outer["sig"]
        if not isinstance(body_bytes, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
            raise InvalidRecord('signed record "body" must be bytes and "sig" 64 bytes')
        body = messages.decode(body_bytes)
    except ProtocolError as exc:
        raise InvalidRecord(f"{MALFORMED}: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRecord("signed record body is not a map")
    key, seq = body.get("id"), body.get("seq")
    if not isinstance(key, bytes) or len(key) != 32:
        raise InvalidRecord('signed record body has no 32-byte "id"')
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= _MAX_SEQ:
        raise InvalidRecord('signed record body has no unsigned "seq"')
    if not all(isinstance(k, str) for k in body):
        raise InvalidRecord("signed record body keys must be text")
    # The signature first: a forgery is refused without the cost of re-encoding its body.
    try:
        nacl.signing.VerifyKey(key).verify(domain + body_bytes, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise InvalidRecord("signed record signature does not verify under the key it names") from None
    if messages.encode_deterministic(body) != body_bytes:
        raise InvalidRecord("signed record body is not in canonical CBOR (RFC 8949 core deterministic)")
    return SignedRecord(id=key, seq=seq, body=body, envelope=envelope)


class SeqTracker:
    """Remembers the last accepted ``seq`` per id, and refuses replays.

    :param capacity: how many ids to remember; the least recently updated are forgotten first,
        so memory stays bounded under a flood of distinct ids. Ids accepted as ``kept`` (a node's
        contacts) are remembered apart and never forgotten to make room: otherwise records
        signed with enough new ids would make a contact's old records (old addresses) pass again.
    """

    __slots__ = ("_capacity", "_kept", "_last")

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._last: OrderedDict[bytes, int] = OrderedDict()
        self._kept: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._last) + len(self._kept)

    def last(self, key: bytes) -> int | None:
        """The last ``seq`` accepted for ``key``, if any."""
        kept = self._kept.get(key)
        return kept if kept is not None else self._last.get(key)

    def accept(self, record: SignedRecord, *, kept: bool = False) -> None:
        """Record that ``record`` is accepted (for good when ``kept``).

        :raises StaleRecord: when its ``seq`` is not greater than the last accepted for its id.
        """
        last = self.last(record.id)
        if last is not None and record.seq <= last:
            raise StaleRecord(
                f"record seq {record.seq} is not newer than {last}, already accepted for this id"
            )
        if kept:
            self._last.pop(record.id, None)
            self._kept[record.id] = record.seq
            return
        self._kept.pop(record.id, None)
        self._last[record.id] = record.seq
        self._last.move_to_end(record.id)
        while len(self._last) > self._capacity:
            self._last.popitem(last=False)
