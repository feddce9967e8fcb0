"""Fixtures shared by the wire tests: the test service and a server around it."""

from __future__ import annotations

import pytest

from wire import Server

from .service import WireService


@pytest.fixture
def service() -> WireService:
    return WireService()


@pytest.fixture
def server(service: WireService) -> Server:
    return Server(service.handlers())
