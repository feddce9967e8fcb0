"""HTTP/2 engines for the gRPC server connection: one interface, two implementations.

``interface`` holds the contract (``Engine``, ``EngineHandler``, ``EngineLimits``); ``h2engine``
the default engine over the ``h2`` library; ``native`` our own RFC 9113 codec, opt-in for high
load. ``open_engine(name, handler, limits)`` makes one by its name, as ``ServerConfig.http2``
names it. Like uvicorn's ``--http h11|httptools``, the gRPC layer never knows which one it
drives.
"""

from __future__ import annotations

from typing import Literal

from .interface import MAX_STREAM_ID, Engine, EngineHandler, EngineLimits, HeaderList

__all__ = [
    "ENGINES",
    "MAX_STREAM_ID",
    "Engine",
    "EngineHandler",
    "EngineLimits",
    "EngineName",
    "HeaderList",
    "open_engine",
]

EngineName = Literal["h2", "native"]
#: The engine names, the default first.
ENGINES: tuple[EngineName, ...] = ("h2", "native")


def open_engine(name: str, handler: EngineHandler, limits: EngineLimits) -> Engine:
    """Make the engine called ``name`` ("h2" or "native") reporting to ``handler``."""
    if name == "h2":
        from .h2engine import H2Engine

        return H2Engine(handler, limits)
    if name == "native":
        from .native import NativeEngine

        return NativeEngine(handler, limits)
    raise ValueError(f"http2: unknown HTTP/2 engine {name!r}; expected one of {list(ENGINES)}")
