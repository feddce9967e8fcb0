"""Fixtures for every test package: the HTTP/2 engine a server runs on."""

from __future__ import annotations

import pytest

from wire.http2 import ENGINES


@pytest.fixture(params=ENGINES, ids=list(ENGINES))
def http2(request: pytest.FixtureRequest) -> str:
    """The name of an HTTP/2 engine ("h2", "native"): a test asking for it runs on each.

    Select it with ``ServerConfig(http2=http2)``.
    """
    engine: str = request.param
    return engine
