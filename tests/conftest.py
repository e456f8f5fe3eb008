from __future__ import annotations

import pytest

from peerkit.identity import Identity


@pytest.fixture
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture
def bob() -> Identity:
    return Identity.generate()
