from __future__ import annotations

import socket

import pytest

from peerkit.identity import Identity


@pytest.fixture
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture
def bob() -> Identity:
    return Identity.generate()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


#: A parameter for tests that run on IPv6 loopback (skipped where the machine has no IPv6).
IPV6 = pytest.param("::1", marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback"), id="ipv6")
