"""gRPC over HTTP/2 for Trio, in pure Python (h2 + hpack); knows nothing of health checking.

Layers: a sans-I/O core (``status``, ``errors``, ``framing``, ``compression``, ``timeout``,
``metadata``, ``events``, ``connection``) that never imports Trio, and a Trio layer
(``transport``, ``server``, ``client``) around it; ``client_connection`` is the sans-I/O client.
"""

from .client import (
    Channel,
    ConnectError,
    ResponseStream,
    UnaryResponse,
    open_channel,
    parse_target,
)
from .client_connection import ClientConfig, ClientConnection
from .connection import ServerConfig, ServerConnection
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError, RpcError, WireError
from .handlers import MethodHandler, MethodKind, unary_stream, unary_stream_push, unary_unary
from .metadata import Metadata
from .server import ConnectionInfo, PushCall, Server, ServerCall, ServerOptions
from .status import ErrorCode, StatusCode

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "ClientConfig",
    "ClientConnection",
    "ConnectError",
    "ConnectionInfo",
    "ErrorCode",
    "LocalProtocolError",
    "Metadata",
    "MethodHandler",
    "MethodKind",
    "ProtocolError",
    "PushCall",
    "RemoteProtocolError",
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
    "unary_stream",
    "unary_stream_push",
    "unary_unary",
]
