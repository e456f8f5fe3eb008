"""UPnP Internet Gateway Device messages (sans-IO): SSDP search, the device description, and the
SOAP actions of the WANIPConnection (or WANPPPConnection) service.

A client multicasts an SSDP ``M-SEARCH`` for an Internet gateway on its LAN; the router answers
with the ``LOCATION`` of its description (XML, over HTTP), which names the control URL of its
WAN connection service. The client then POSTs SOAP actions there: ``GetExternalIPAddress``,
``AddPortMapping``, ``DeletePortMapping``. Everything a router sends is read strictly and within
size limits; XML with a document type (entities) is refused before it is parsed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from peerkit.nat.natpmp import PortMappingError

__all__ = (
    "MAX_DOCUMENT",
    "SEARCH_TARGET",
    "SSDP_ADDRESS",
    "Service",
    "UpnpError",
    "UrlParts",
    "http_request",
    "parse_description",
    "parse_http_response",
    "parse_search_response",
    "parse_soap_response",
    "search_request",
    "soap_body",
    "split_url",
)

#: Where SSDP searches go.
SSDP_ADDRESS: Final = ("239.255.255.250", 1900)
#: What a search asks for.
SEARCH_TARGET: Final = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
#: The largest description, SOAP answer or SSDP answer read.
MAX_DOCUMENT: Final = 65536
#: The services that map ports, most wanted first.
SERVICES: Final = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
_SOAP_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
_CONTROL: Final = "urn:schemas-upnp-org:control-1-0"


class UpnpError(PortMappingError):
    """The router refused an action (``code``: its UPnP error code, e.g. 718 for a port mapped
    to another host), or what it sent cannot be read (``code`` None)."""


@dataclass(frozen=True, slots=True)
class Service:
    """A router's port-mapping service: its type and the absolute URL to POST actions to."""

    type: str
    control_url: str


@dataclass(frozen=True, slots=True)
class UrlParts:
    """An ``http://host:port/path`` URL, split."""

    host: str
    port: int
    path: str


def split_url(url: str) -> UrlParts:
    """The parts of an ``http`` URL whose host is an IP address (a router on the LAN).

    :raises UpnpError: for any other URL.
    """
    try:
        parts = urlsplit(url)
        host = str(ipaddress.ip_address(parts.hostname or ""))
        port = parts.port or 80
    except ValueError:
        raise UpnpError(f"{url[:100]!r} is not an http URL with an IP address") from None
    if parts.scheme != "http":
        raise UpnpError(f"{url[:100]!r} is not an http URL")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return UrlParts(host, port, path)


# -- SSDP ---------------------------------------------------------------------------------------
def search_request(target: str = SEARCH_TARGET, wait: int = 2) -> bytes:
    """An SSDP ``M-SEARCH`` for ``target``, answers within ``wait`` seconds."""
    lines = [
        "M-SEARCH * HTTP/1.1",
        f"HOST: {SSDP_ADDRESS[0]}:{SSDP_ADDRESS[1]}",
        'MAN: "ssdp:discover"',
        f"MX: {wait}",
        f"ST: {target}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def parse_search_response(data: bytes) -> str | None:
    """The ``LOCATION`` in an SSDP answer (an http URL with an IP address), or None when ``data``
    is not such an answer."""
    if len(data) > MAX_DOCUMENT:
        return None
    try:
        status, headers, _ = parse_http_response(data + (b"" if b"\r\n\r\n" in data else b"\r\n\r\n"))
    except UpnpError:
        return None
    location = headers.get("location")
    if status != 200 or location is None:
        return None
    try:
        split_url(location)
    except UpnpError:
        return None
    return location


# -- HTTP ---------------------------------------------------------------------------------------
def http_request(
    method: str, url: UrlParts, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """An HTTP/1.1 request that closes the connection after its answer."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    lines = [f"{method} {url.path} HTTP/1.1", f"Host: {host}:{url.port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_http_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (names in lower case) and body of a whole HTTP response (read to its
    end: chunked bodies are joined).

    :raises UpnpError: when it is not one.
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise UpnpError("the answer is not an HTTP response (no end of headers)")
    lines = head.decode("latin-1").split("\r\n")
    fields = lines[0].split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise UpnpError(f"the answer is not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    elif "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit() or int(length) > len(body):
            raise UpnpError("the answer's body is shorter than its Content-Length")
        body = body[: int(length)]
    return int(fields[1]), headers, body


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise UpnpError("a malformed chunked body") from None
        if not sep or size < 0 or len(rest) < size:
            raise UpnpError("a truncated chunked body")
        if size == 0:
            return bytes(out)
        out += rest[:size]
        body = rest[size + 2 :]


# -- the description ----------------------------------------------------------------------------
def _xml(data: bytes) -> ElementTree.Element:
    if len(data) > MAX_DOCUMENT:
        raise UpnpError(f"an XML document over {MAX_DOCUMENT} bytes")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise UpnpError("an XML document with a document type (refused: entities)")
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise UpnpError(f"malformed XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_description(data: bytes, location: str) -> Service:
    """The port-mapping service in a device description fetched from ``location``.

    :raises UpnpError: when the document is malformed or names no such service.
    """
    root = _xml(data)
    base = location
    found: dict[str, str] = {}
    for element in root.iter():
        name = _local(element.tag)
        if name == "URLBase" and element.text:
            base = element.text.strip()
        elif name == "service":
            fields = {_local(child.tag): (child.text or "").strip() for child in element}
            kind, control = fields.get("serviceType", ""), fields.get("controlURL", "")
            if kind in SERVICES and control and kind not in found:
                found[kind] = control
    for kind in SERVICES:
        if kind in found:
            url = urljoin(base, found[kind])
            split_url(url)
            return Service(kind, url)
    raise UpnpError("the router's description names no WANIPConnection or WANPPPConnection service")


# -- SOAP -----------------------------------------------------------------------------------------
def soap_body(service: str, action: str, arguments: list[tuple[str, str]]) -> bytes:
    """The SOAP envelope of ``action`` with ``arguments`` (in the order the action lists them)."""
    args = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in arguments)
    return (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{_SOAP_ENV}" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action} xmlns:u="{escape(service)}">{args}</u:{action}></s:Body></s:Envelope>'
    ).encode()


def parse_soap_response(status: int, body: bytes, action: str) -> dict[str, str]:
    """The output arguments of ``action``'s answer.

    :raises UpnpError: with the router's error code for a fault, or when the answer is malformed.
    """
    root = _xml(body) if body else None
    if root is not None:
        for element in root.iter():
            if _local(element.tag) == "UPnPError":
                fields = {_local(child.tag): (child.text or "").strip() for child in element}
                code = fields.get("errorCode", "")
                text = fields.get("errorDescription", "") or "refused"
                raise UpnpError(
                    f"the router refused {action}: {text[:200]} ({code[:10]})",
                    int(code) if code.isdigit() else None,
                )
            if _local(element.tag) == f"{action}Response":
                if status != 200:
                    break
                return {_local(child.tag): (child.text or "").strip()[:256] for child in element}
    raise UpnpError(f"the router answered {action} with HTTP {status} and no {action}Response")
