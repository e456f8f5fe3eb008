"""PCP (the Port Control Protocol, RFC 6887) messages for the ANNOUNCE and MAP opcodes, read and
written strictly (sans-IO).

PCP is NAT-PMP's successor, on the same UDP port of the router (:data:`PORT`). A MAP request asks
the router to map a port of its public address to a port of this host for a lifetime in seconds
(0 removes the mapping); its answer says which public address and port the router chose. Each
mapping carries a random *nonce* of 12 bytes that the client repeats to renew or remove it. Every
answer carries the router's epoch, read like NAT-PMP's (a restart loses the mappings). A router
that speaks only NAT-PMP answers a PCP request with NAT-PMP's "unsupported version"
(RFC 6887 section 9): :func:`parse_response` says so with :attr:`PcpResult.UNSUPP_VERSION`, and
the caller falls back to NAT-PMP.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from peerkit.nat.natpmp import Mapping, PortMappingError, Protocol, refusal

__all__ = (
    "NONCE_SIZE",
    "PORT",
    "Announced",
    "PcpError",
    "PcpResult",
    "announce_request",
    "map_request",
    "parse_response",
)

#: The router's PCP port (NAT-PMP's).
PORT: Final = 5351
#: Bytes of a mapping nonce.
NONCE_SIZE: Final = 12
#: The largest PCP message (RFC 6887 section 7).
MAX_MESSAGE: Final = 1100

_VERSION: Final = 2
_ANNOUNCE: Final = 0
_MAP: Final = 1
_HEADER: Final = 24
_MAP_DATA: Final = 36
_PROTOCOLS: Final[dict[str, int]] = {"udp": 17, "tcp": 6}


class PcpResult(enum.IntEnum):
    """The result codes of RFC 6887 section 7.4."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


class PcpError(PortMappingError):
    """The router refused (``code`` is its result code), or its answer is not one to our request
    (``code`` is None)."""


@dataclass(frozen=True, slots=True)
class Announced:
    """The answer to ANNOUNCE: the router speaks PCP; its epoch."""

    epoch: int


def _address(host: str) -> bytes:
    # An address as PCP writes it: 16 bytes, IPv4 as an IPv4-mapped IPv6 address.
    address = ipaddress.ip_address(host)
    if address.version == 4:
        return bytes(10) + b"\xff\xff" + address.packed
    return address.packed


def _read_address(data: bytes) -> str:
    address = ipaddress.IPv6Address(data)
    return str(address.ipv4_mapped) if address.ipv4_mapped is not None else str(address)


def _header(opcode: int, lifetime: int, client_ip: str) -> bytes:
    if not 0 <= lifetime < 2**32:
        raise ValueError("a lifetime is 0 to 2**32 - 1 seconds")
    return struct.pack("!BBHI16s", _VERSION, opcode, 0, lifetime, _address(client_ip))


def announce_request(client_ip: str) -> bytes:
    """The ANNOUNCE request (does the router speak PCP, and its epoch?) from ``client_ip``, the
    address this host sends from.

    :raises ValueError: when ``client_ip`` is not an IP address.
    """
    return _header(_ANNOUNCE, 0, client_ip)


def map_request(
    nonce: bytes,
    protocol: Protocol,
    internal_port: int,
    external_port: int = 0,
    lifetime: int = 7200,
    *,
    client_ip: str,
) -> bytes:
    """The MAP request: map a port of the router (``external_port`` a suggestion, 0: any) to
    ``internal_port`` of ``client_ip`` (the address this host sends from) for ``lifetime`` seconds
    (0: remove it); ``nonce`` (:data:`NONCE_SIZE` random bytes) names the mapping.

    :raises ValueError: for a port, lifetime, nonce or address out of range, or an unknown protocol.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
    if protocol not in _PROTOCOLS:
        raise ValueError(f"a mapping is for udp or tcp, not {protocol!r}")
    if not 0 < internal_port < 65536 or not 0 <= external_port < 65536:
        raise ValueError("ports are 1 to 65535 (the external one may be 0: any)")
    any_address = "0.0.0.0" if ipaddress.ip_address(client_ip).version == 4 else "::"
    return _header(_MAP, lifetime, client_ip) + struct.pack(
        "!12sB3xHH16s", nonce, _PROTOCOLS[protocol], internal_port, external_port, _address(any_address)
    )


def parse_response(data: bytes, request: bytes) -> Announced | Mapping:
    """The router's answer ``data`` to ``request`` (made by this module): for MAP, the
    :class:`~peerkit.nat.natpmp.Mapping` with the public address it chose.

    :raises PcpError: when the router refused (with its result code; ``UNSUPP_VERSION`` also for
        a router that answers in NAT-PMP), or ``data`` is not an answer to ``request``.
    """
    if len(request) < _HEADER or request[0] != _VERSION:
        raise ValueError("not a PCP request")
    opcode = request[1]
    if len(data) >= 4 and data[0] == 0:  # NAT-PMP's answer: it speaks only NAT-PMP
        raise PcpError("the router speaks NAT-PMP, not PCP", PcpResult.UNSUPP_VERSION)
    if len(data) < _HEADER or len(data) > MAX_MESSAGE or len(data) % 4:
        raise PcpError(f"a PCP answer of {len(data)} bytes is malformed")
    version, answered, code, lifetime, epoch = struct.unpack("!BBxBII", data[:12])
    if version != _VERSION or answered != 0x80 | opcode:
        raise PcpError(f"not an answer to opcode {opcode} (version {version}, opcode {answered})")
    if code != PcpResult.SUCCESS:
        raise refusal(PcpError, PcpResult, code)
    if opcode == _ANNOUNCE:
        return Announced(epoch)
    if len(data) < _HEADER + _MAP_DATA:
        raise PcpError(f"an answer to MAP of {len(data)} bytes is too short")
    nonce, number, internal, external, address = struct.unpack("!12sB3xHH16s", data[24:60])
    asked_nonce, asked_number, asked_internal = struct.unpack("!12sB3xH", request[24:42])
    if (nonce, number, internal) != (asked_nonce, asked_number, asked_internal):
        raise PcpError("the answer is for another mapping (nonce, protocol or port)")
    protocol: Protocol = "udp" if number == _PROTOCOLS["udp"] else "tcp"
    return Mapping(protocol, internal, external, lifetime, epoch, _read_address(address))
