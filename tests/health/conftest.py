"""Fixtures for the health tests: the server configuration of an end-to-end test.

A test that serves the health service over HTTP/2 asks for ``server_config`` and runs once per
engine (through the root ``http2`` fixture); pure status-map tests do not ask and run once.
"""

from __future__ import annotations

import pytest

from wire import ServerConfig


@pytest.fixture
def server_config(http2: str) -> ServerConfig:
    """A default ``ServerConfig`` on the engine of this run (``dataclasses.replace`` it)."""
    return ServerConfig(http2=http2)


@pytest.fixture
def http2_flags(http2: str) -> tuple[str, ...]:
    """The ``python -m health serve`` flags that select this run's engine."""
    return ("--http2", http2)
