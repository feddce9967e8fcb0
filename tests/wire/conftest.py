"""Fixtures shared by the wire tests: the test service and a server around it (on each
HTTP/2 engine, through the root ``http2`` fixture)."""

from __future__ import annotations

import pytest

from wire import Server, ServerConfig

from .service import WireService


@pytest.fixture
def service() -> WireService:
    return WireService()


@pytest.fixture
def server(service: WireService, http2: str) -> Server:
    return Server(service.handlers(), config=ServerConfig(http2=http2))
