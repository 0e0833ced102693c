from __future__ import annotations

from collections.abc import Iterator

import pytest

from ephemera.client import Client
from tests.conftest import Server


@pytest.fixture
def admin(server: Server) -> Iterator[Client]:
    """An admin client of the module's own `server` (a module may define another `admin`)."""
    with Client(server.url, server.admin_key) as client:
        yield client
