"""Run our health server on a chosen HTTP/2 engine: ``serve_ours.py ENGINE serve [args]``.

The same process as ``python -m health serve [args]``, with every ``wire.Server`` that is given
no ``ServerConfig`` made with ``ServerConfig(http2=ENGINE)``: the benchmark measures both engines
in one run whether or not this checkout's ``serve`` has an ``--http2`` flag yet.
"""

from __future__ import annotations

import sys
from typing import Any

from wire.connection import ServerConfig
from wire.server import Server


def main() -> int:
    engine = sys.argv[1]
    config = ServerConfig(http2=engine)  # type: ignore[arg-type]  # a bad name fails here
    init = Server.__init__

    def init_on_engine(self: Server, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("config") is None and len(args) < 2:
            kwargs["config"] = config
        init(self, *args, **kwargs)

    Server.__init__ = init_on_engine  # type: ignore[method-assign]
    from health.__main__ import main as health_main

    return health_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
