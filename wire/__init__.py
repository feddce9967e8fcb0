"""gRPC over HTTP/2 for Trio, in pure Python (h2 + hpack); knows nothing of health checking.

Layers: a sans-I/O core (``status``, ``errors``, ``framing``, ``compression``, ``timeout``,
``metadata``, ``events``, ``handlers``, ``connection``, ``client_connection``, ``reflection``)
that never imports Trio, and a Trio layer around it: ``transport`` (the single writer), ``calls``
(``ServerCall``, ``PushCall``), ``request_stream`` (the requests of client-streaming and bidi
calls), ``driver`` (one server connection), ``server`` and ``client``.

The names below are loaded on first use (PEP 562), so ``import wire`` or importing a sans-I/O
module never loads Trio; ``from wire import Server`` loads the server side.
"""

# Private aliases: every public attribute of the package is a name of __all__ (or a submodule).
import importlib as _importlib
import importlib.util as _importlib_util
import typing as _typing

if _typing.TYPE_CHECKING:
    from .calls import ConnectionInfo, PushCall, ServerCall
    from .client import (
        BidiStream,
        Channel,
        ConnectError,
        ResponseStream,
        UnaryResponse,
        open_channel,
        parse_target,
    )
    from .client_connection import ClientConfig, ClientConnection
    from .connection import ServerConfig, ServerConnection
    from .driver import ConnectionStats, ServerOptions
    from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError, RpcError, WireError
    from .handlers import (
        MethodHandler,
        MethodKind,
        stream_stream,
        stream_unary,
        unary_stream,
        unary_stream_push,
        unary_unary,
    )
    from .metadata import Metadata
    from .request_stream import RequestStream
    from .server import Server
    from .status import ErrorCode, StatusCode

__version__ = "0.1.0"

# Public name -> the module (relative to this package) that defines it.
_LAZY: dict[str, str] = {
    "BidiStream": "client",
    "Channel": "client",
    "ClientConfig": "client_connection",
    "ClientConnection": "client_connection",
    "ConnectError": "client",
    "ConnectionInfo": "calls",
    "ConnectionStats": "driver",
    "ErrorCode": "status",
    "LocalProtocolError": "errors",
    "Metadata": "metadata",
    "MethodHandler": "handlers",
    "MethodKind": "handlers",
    "ProtocolError": "errors",
    "PushCall": "calls",
    "RemoteProtocolError": "errors",
    "RequestStream": "request_stream",
    "ResponseStream": "client",
    "RpcError": "errors",
    "Server": "server",
    "ServerCall": "calls",
    "ServerConfig": "connection",
    "ServerConnection": "connection",
    "ServerOptions": "driver",
    "StatusCode": "status",
    "UnaryResponse": "client",
    "WireError": "errors",
    "open_channel": "client",
    "parse_target": "client",
    "stream_stream": "handlers",
    "stream_unary": "handlers",
    "unary_stream": "handlers",
    "unary_stream_push": "handlers",
    "unary_unary": "handlers",
}

# Spelled out for type checkers; tests/wire/test_imports.py checks it matches _LAZY.
__all__ = [
    "BidiStream",
    "Channel",
    "ClientConfig",
    "ClientConnection",
    "ConnectError",
    "ConnectionInfo",
    "ConnectionStats",
    "ErrorCode",
    "LocalProtocolError",
    "Metadata",
    "MethodHandler",
    "MethodKind",
    "ProtocolError",
    "PushCall",
    "RemoteProtocolError",
    "RequestStream",
    "ResponseStream",
    "RpcError",
    "Server",
    "ServerCall",
    "ServerConfig",
    "ServerConnection",
    "ServerOptions",
    "StatusCode",
    "UnaryResponse",
    "WireError",
    "__version__",
    "open_channel",
    "parse_target",
    "stream_stream",
    "stream_unary",
    "unary_stream",
    "unary_stream_push",
    "unary_unary",
]


def __getattr__(name: str) -> _typing.Any:
    """Load a public name from its module on first use (then it is a plain attribute).

    A submodule is imported on first use too, so ``import wire; wire.metadata.Metadata`` keeps
    working as it did when this package imported everything eagerly.
    """
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's attributes, the names not loaded yet included."""
    return sorted({*globals(), *_LAZY})
