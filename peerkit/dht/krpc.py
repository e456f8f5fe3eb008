"""KRPC messages (BEP 5, BEP 32, BEP 43, BEP 44), read and written strictly (sans-IO).

A message is a bencoded dictionary: a query (``y`` = ``q``) names its method in ``q`` and its
arguments in ``a``; a response (``r``) carries its values in ``r``; an error (``e``) carries
``[code, text]``. :func:`parse` turns a datagram into a :class:`Query`, :class:`Response` or
:class:`Error`, checking every field a method needs (types and sizes), or raises
:class:`KrpcError` with the code to answer with (203: protocol error). Nodes travel in compact
form: 26 bytes each for IPv4 (``nodes``), 38 for IPv6 (``nodes6``).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from peerkit.dht.bencode import BencodeError, Value, decode, encode

__all__ = (
    "ID_SIZE",
    "VERSION",
    "Address",
    "Error",
    "ErrorCode",
    "KrpcError",
    "Node",
    "Query",
    "Response",
    "compact_address",
    "compact_nodes",
    "parse",
    "read_address",
    "read_nodes",
)

#: Bytes of a node id (and of a target).
ID_SIZE: Final = 20
#: This implementation's client version, sent as ``v`` (two letters and two bytes).
VERSION: Final = b"PK\x00\x01"
#: Methods this node answers (others get 204).
METHODS: Final = frozenset({b"ping", b"find_node", b"get_peers", b"get", b"put"})

Address = tuple[str, int]


class ErrorCode(enum.IntEnum):
    """KRPC error codes (BEP 5)."""

    GENERIC = 201
    SERVER = 202
    PROTOCOL = 203
    METHOD_UNKNOWN = 204


class KrpcError(Exception):
    """A message that cannot be taken; ``code`` is what to answer a query with."""

    def __init__(self, code: int, text: str, tid: bytes | None = None) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text
        #: The transaction id to answer, when the message had one.
        self.tid = tid

    def reply(self) -> bytes:
        """The error message that answers the query."""
        return Error(self.tid or b"", self.code, self.text).encode()


@dataclass(frozen=True, slots=True)
class Node:
    """A DHT node: its id and where it listens."""

    id: bytes
    address: Address


@dataclass(frozen=True, slots=True)
class Query:
    """A query: ``method`` with its arguments ``args`` (``id`` checked, the rest by method)."""

    tid: bytes
    method: bytes
    args: dict[bytes, Value]
    #: BEP 43: the sender is read-only (not to be added to routing tables).
    read_only: bool = False

    @property
    def sender(self) -> bytes:
        """The querying node's id."""
        value = self.args[b"id"]
        assert isinstance(value, bytes)
        return value

    def encode(self) -> bytes:
        """The datagram."""
        message: dict[bytes, Value] = {b"t": self.tid, b"y": b"q", b"q": self.method, b"a": self.args}
        message[b"v"] = VERSION
        if self.read_only:
            message[b"ro"] = 1
        return encode(message)


@dataclass(frozen=True, slots=True)
class Response:
    """A response: the values ``values`` (``id`` checked); ``ip`` is how the responder saw us."""

    tid: bytes
    values: dict[bytes, Value]
    ip: Address | None = None

    @property
    def sender(self) -> bytes:
        """The responding node's id."""
        value = self.values[b"id"]
        assert isinstance(value, bytes)
        return value

    def encode(self) -> bytes:
        """The datagram."""
        message: dict[bytes, Value] = {b"t": self.tid, b"y": b"r", b"r": self.values, b"v": VERSION}
        if self.ip is not None:
            message[b"ip"] = compact_address(self.ip)
        return encode(message)

    def nodes(self) -> list[Node]:
        """The nodes it names (``nodes`` and ``nodes6``), malformed entries left out."""
        found: list[Node] = []
        for key, size in ((b"nodes", 26), (b"nodes6", 38)):
            blob = self.values.get(key)
            if isinstance(blob, bytes) and len(blob) % size == 0:
                found += read_nodes(blob, size)
        return found


@dataclass(frozen=True, slots=True)
class Error:
    """An error answer."""

    tid: bytes
    code: int
    text: str = field(default="")

    def encode(self) -> bytes:
        """The datagram."""
        return encode({b"t": self.tid, b"y": b"e", b"e": [self.code, self.text.encode()], b"v": VERSION})


def compact_address(address: Address) -> bytes:
    """An address in compact form: 4 (or 16) address bytes and the port, big-endian."""
    host, port = address
    return ipaddress.ip_address(host).packed + struct.pack("!H", port)


def read_address(blob: bytes) -> Address | None:
    """An address from its compact form (6 or 18 bytes), or None."""
    if len(blob) not in (6, 18):
        return None
    port = struct.unpack("!H", blob[-2:])[0]
    return str(ipaddress.ip_address(blob[:-2])), port


def compact_nodes(nodes: Iterable[Node], *, ipv6: bool) -> bytes:
    """``nodes`` of one family in compact form (the others are left out)."""
    out = []
    for node in nodes:
        try:
            packed = compact_address(node.address)
        except ValueError:
            continue
        if (len(packed) == 18) == ipv6:
            out.append(node.id + packed)
    return b"".join(out)


def read_nodes(blob: bytes, size: int) -> list[Node]:
    """Nodes in compact form (``size`` 26 for IPv4, 38 for IPv6); port 0 entries are left out."""
    found = []
    for at in range(0, len(blob) - size + 1, size):
        address = read_address(blob[at + ID_SIZE : at + size])
        if address is not None and address[1] != 0:
            found.append(Node(blob[at : at + ID_SIZE], address))
    return found


def _need(args: dict[bytes, Value], key: bytes, kind: type, tid: bytes, *, size: int | None = None) -> Any:
    value = args.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KrpcError(ErrorCode.PROTOCOL, f"{key.decode()} missing or of the wrong type", tid)
    if size is not None and len(value) != size:  # type: ignore[arg-type]
        raise KrpcError(ErrorCode.PROTOCOL, f"{key.decode()} must be {size} bytes", tid)
    return value


#: Arguments each method needs beyond ``id``: (key, type, exact size or None).
_ARGUMENTS: Final[dict[bytes, tuple[tuple[bytes, type, int | None], ...]]] = {
    b"ping": (),
    b"find_node": ((b"target", bytes, ID_SIZE),),
    b"get_peers": ((b"info_hash", bytes, ID_SIZE),),
    b"get": ((b"target", bytes, ID_SIZE),),
    b"put": ((b"token", bytes, None), (b"v", object, None)),
}


def parse(data: bytes) -> Query | Response | Error:
    """The message in a datagram.

    :raises KrpcError: when it is not a well-formed KRPC message (code 203), or a query names a
        method this node does not answer (204); ``tid`` is set when the message had one.
    """
    try:
        message = decode(data)
    except BencodeError as exc:
        raise KrpcError(ErrorCode.PROTOCOL, f"not bencoded: {exc}") from None
    if not isinstance(message, dict):
        raise KrpcError(ErrorCode.PROTOCOL, "a message must be a dictionary")
    tid = message.get(b"t")
    if not isinstance(tid, bytes) or not 1 <= len(tid) <= 16:
        raise KrpcError(ErrorCode.PROTOCOL, "a message needs a transaction id of 1 to 16 bytes")
    kind = message.get(b"y")
    if kind == b"q":
        method = message.get(b"q")
        args = message.get(b"a")
        if not isinstance(method, bytes) or not isinstance(args, dict):
            raise KrpcError(ErrorCode.PROTOCOL, "a query needs q and a", tid)
        _need(args, b"id", bytes, tid, size=ID_SIZE)
        needed = _ARGUMENTS.get(method)
        if needed is None:
            raise KrpcError(ErrorCode.METHOD_UNKNOWN, "Method Unknown", tid)
        for key, kind_of, size in needed:
            if kind_of is object:
                if key not in args:
                    raise KrpcError(ErrorCode.PROTOCOL, f"{key.decode()} missing", tid)
            else:
                _need(args, key, kind_of, tid, size=size)
        return Query(tid, method, args, read_only=message.get(b"ro") == 1)
    if kind == b"r":
        values = message.get(b"r")
        if not isinstance(values, dict):
            raise KrpcError(ErrorCode.PROTOCOL, "a response needs r", tid)
        _need(values, b"id", bytes, tid, size=ID_SIZE)
        ip = message.get(b"ip")
        return Response(tid, values, read_address(ip) if isinstance(ip, bytes) else None)
    if kind == b"e":
        error = message.get(b"e")
        if (
            not isinstance(error, list)
            or len(error) < 2
            or not isinstance(error[0], int)
            or not isinstance(error[1], bytes)
        ):
            raise KrpcError(ErrorCode.PROTOCOL, "an error needs [code, text]", tid)
        return Error(tid, error[0], error[1].decode("utf-8", "replace"))
    raise KrpcError(ErrorCode.PROTOCOL, "y must be q, r or e", tid)
