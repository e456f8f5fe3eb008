"""NAT-PMP (RFC 6886) messages, read and written strictly (sans-IO).

A client asks the router (its default gateway, UDP port :data:`PORT`) for the router's public
IPv4 address, or to map a port of the router to a port of this host, for a lifetime in seconds;
a lifetime of 0 removes a mapping. Every answer carries the router's *epoch*, the seconds since
its mappings were last lost: an epoch lower than expected means that the router restarted and the
mappings must be made again (:func:`epoch_is_continuous`).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

__all__ = (
    "PORT",
    "ExternalAddress",
    "Mapping",
    "NatPmpError",
    "PortMappingError",
    "ResultCode",
    "epoch_is_continuous",
    "external_address_request",
    "mapping_request",
    "parse_response",
    "refusal",
)

#: The router's NAT-PMP port.
PORT: Final = 5351
_VERSION: Final = 0
_OPCODES: Final = {"udp": 1, "tcp": 2}

Protocol = Literal["udp", "tcp"]


class ResultCode(enum.IntEnum):
    """The result codes of RFC 6886 section 3.5."""

    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


class PortMappingError(Exception):
    """A router did not map a port or tell its address (NAT-PMP or UPnP alike); ``code`` is the
    router's own error code when it refused, None when it did not answer in a way to read."""

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.code = code


E = TypeVar("E", bound=PortMappingError)


class NatPmpError(PortMappingError):
    """The router refused (``code`` is its result code), or its answer is not one to our request
    (``code`` is None)."""


@dataclass(frozen=True, slots=True)
class ExternalAddress:
    """The router's public IPv4 address."""

    address: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Mapping:
    """A port of the router mapped to a port of this host, for ``lifetime`` seconds (0: removed);
    ``external_address`` is the public address mapped, when the answer says (PCP, UPnP)."""

    protocol: Protocol
    internal_port: int
    external_port: int
    lifetime: int
    epoch: int
    external_address: str | None = None


def external_address_request() -> bytes:
    """The request for the router's public address."""
    return bytes([_VERSION, 0])


def mapping_request(
    protocol: Protocol, internal_port: int, external_port: int = 0, lifetime: int = 7200
) -> bytes:
    """The request to map ``external_port`` of the router (0: any; a suggestion) to
    ``internal_port`` of this host for ``lifetime`` seconds (0: remove the mapping of
    ``internal_port``, with ``external_port`` 0).

    :raises ValueError: for a port or lifetime out of range, or an unknown protocol.
    """
    if protocol not in _OPCODES:
        raise ValueError(f"a mapping is for udp or tcp, not {protocol!r}")
    if not 0 < internal_port < 65536 or not 0 <= external_port < 65536:
        raise ValueError("ports are 1 to 65535 (the external one may be 0: any)")
    if not 0 <= lifetime < 2**32:
        raise ValueError("a lifetime is 0 to 2**32 - 1 seconds")
    return struct.pack("!BBHHHI", _VERSION, _OPCODES[protocol], 0, internal_port, external_port, lifetime)


def parse_response(data: bytes, request: bytes) -> ExternalAddress | Mapping:
    """The router's answer ``data`` to ``request``.

    :raises NatPmpError: when the router refused (with its result code), or ``data`` is not an
        answer to ``request`` (wrong length, version, opcode, or a mapping of another port).
    """
    if len(request) < 2:
        raise ValueError("not a NAT-PMP request")
    opcode = request[1]
    size = 12 if opcode == 0 else 16
    if len(data) < 4:
        raise NatPmpError(f"an answer of {len(data)} bytes is too short")
    version, answered, code = struct.unpack("!BBH", data[:4])
    if version != _VERSION or answered != 128 + opcode:
        raise NatPmpError(f"not an answer to opcode {opcode} (version {version}, opcode {answered})")
    if code != ResultCode.SUCCESS:
        raise refusal(NatPmpError, ResultCode, code)
    if len(data) != size:
        raise NatPmpError(f"an answer to opcode {opcode} is {size} bytes, not {len(data)}")
    (epoch,) = struct.unpack("!I", data[4:8])
    if opcode == 0:
        return ExternalAddress(str(ipaddress.IPv4Address(data[8:12])), epoch)
    internal, external, lifetime = struct.unpack("!HHI", data[8:16])
    if internal != struct.unpack("!H", request[4:6])[0]:
        raise NatPmpError(f"the answer maps port {internal}, not the one asked for")
    protocol: Protocol = "udp" if opcode == 1 else "tcp"
    return Mapping(protocol, internal, external, lifetime, epoch)


def refusal(error: type[E], codes: type[enum.IntEnum], code: int) -> E:
    """The ``error`` a router's result ``code`` (one of ``codes``, or another) stands for."""
    try:
        name = codes(code).name.lower().replace("_", " ")
    except ValueError:
        name = f"code {code}"
    return error(f"the router refused: {name}", code)


def epoch_is_continuous(previous: int, previous_at: float, epoch: int, now: float) -> bool:
    """Whether a router that said ``previous`` at ``previous_at`` (seconds, any clock) and says
    ``epoch`` at ``now`` kept its mappings (RFC 6886 section 3.6: the new epoch may lag the time
    passed by at most an eighth, plus 2 s)."""
    elapsed = now - previous_at
    return epoch + 2 >= previous + elapsed * 7 / 8
