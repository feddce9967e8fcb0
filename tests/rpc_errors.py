"""Catching the ``RpcError`` of a call that runs in the background, for tests of both packages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from wire import RpcError


async def record_rpc_error(call: Callable[[], Awaitable[object]], errors: list[RpcError]) -> None:
    """Await ``call()``; the ``RpcError`` it ends with (if any) is appended to ``errors``."""
    try:
        await call()
    except RpcError as exc:
        errors.append(exc)
