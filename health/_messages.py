"""Parsing of the generated health messages with the error gRPC wants for bad bytes.

One place turns a protobuf ``DecodeError`` into ``RpcError(INTERNAL)`` (the spec's answer to an
unparsable message), for the server's requests and the client's responses alike.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from wire import RpcError, StatusCode

__all__ = ["parse_message"]

M = TypeVar("M", bound=Message)


def parse_message(cls: type[M], data: bytes) -> M:
    """Parse ``data`` as ``cls``; unparsable bytes raise ``RpcError(INTERNAL)``."""
    message = cls()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise RpcError(StatusCode.INTERNAL, f"cannot parse {cls.__name__}: {exc}") from None
    return message
