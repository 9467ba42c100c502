"""The e2e MCP server (``tests/e2e/servers/mcp_server.py``, unchanged code) with two
transport fixes for benchmarking, applied by patching uvicorn before ``main()`` runs:

* ``TCP_NODELAY`` on the listening socket (Linux copies it to accepted connections).
  ``mcp_server.py`` binds its own ``socket.socket(AF_INET, SOCK_STREAM)``, whose
  ``proto`` is 0, and asyncio's ``_set_nodelay`` only acts on sockets with
  ``proto == IPPROTO_TCP``; uvicorn writes response headers and body separately, so
  Nagle + the client's delayed ACK add ~40 ms to *every* response (measured: a 404 takes
  44 ms instead of 0.8 ms). A uvicorn bound by host/port does not have this problem.
* a 600 s HTTP keep-alive instead of uvicorn's 5 s: the interleaved rounds leave each
  client idle for seconds, and a dropped connection would charge a reconnect (through a
  proxy: also a new upstream connection) to the first request of a chunk.
* up to 50,000 open sessions instead of the MCP SDK's 10,000 (``DEFAULT_MAX_SESSIONS``;
  beyond it the server answers ``503 Too many open sessions``): the memory curve keeps
  10,000 sessions (plus warm-up) open at once.

Same arguments and ready line as the original.
"""

from __future__ import annotations

import functools
import socket
import sys
from pathlib import Path
from typing import Any

E2E_DIR = Path(__file__).resolve().parent.parent / "e2e"
sys.path.insert(0, str(E2E_DIR))

import uvicorn  # noqa: E402
from mcp.server import streamable_http_manager as shm  # noqa: E402
from servers import mcp_server  # noqa: E402

KEEP_ALIVE_S = 600
MAX_SESSIONS = 50_000

_serve = uvicorn.Server.serve


async def _serve_nodelay(self: uvicorn.Server, sockets: list[socket.socket] | None = None
                         ) -> Any:
    for sock in sockets or ():
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return await _serve(self, sockets)


uvicorn.Server.serve = _serve_nodelay  # type: ignore[method-assign]
_manager_init = shm.StreamableHTTPSessionManager.__init__


def _manager_init_more(self: Any, *args: Any, **kwargs: Any) -> None:
    # the SDK passes its default explicitly (lowlevel Server.streamable_http_app)
    if kwargs.get("max_sessions", shm.DEFAULT_MAX_SESSIONS) == shm.DEFAULT_MAX_SESSIONS:
        kwargs["max_sessions"] = MAX_SESSIONS
    _manager_init(self, *args, **kwargs)


shm.StreamableHTTPSessionManager.__init__ = _manager_init_more  # type: ignore[method-assign]
uvicorn.Config = functools.partial(uvicorn.Config, timeout_keep_alive=KEEP_ALIVE_S)  # type: ignore[misc]

if __name__ == "__main__":
    sys.exit(mcp_server.main())
