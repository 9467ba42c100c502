"""SO_REUSEPORT on the proxy's listening socket, for ``fiveplane run --workers N``.

Each worker is a full ``fiveplane run`` process (one mitmproxy master per process) that
binds the same HOST:PORT with ``SO_REUSEPORT``; the kernel spreads incoming connections
over the workers' sockets (by a hash of the connection's addresses). mitmproxy 12 binds
with ``asyncio.start_server(self.handle_stream, host, port)`` and has no option for it,
so ``enable()`` replaces ``AsyncioServerInstance.listen`` in this one place with the same
call plus ``reuse_port=True``. ``tests/e2e/test_workers.py`` pins the upstream line this
mirrors (a mitmproxy upgrade that changes it fails the test instead of silently binding
without the option).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mitmproxy.proxy import mode_servers

UPSTREAM_LISTEN = mode_servers.AsyncioServerInstance.listen
UPSTREAM_CALL = "asyncio.start_server(self.handle_stream, host, port)"


async def _listen(self: Any, host: str, port: int) -> list[Any]:
    # port 0 (a free port each) and UDP-based modes keep mitmproxy's behaviour; the
    # supervisor always passes a concrete port and only runs the TCP regular mode
    if port == 0 or self.mode.transport_protocol != "tcp":
        return await UPSTREAM_LISTEN(self, host, port)  # type: ignore[no-any-return]
    return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]


def enable() -> None:
    """Bind every TCP proxy listener of this process with ``SO_REUSEPORT``."""
    mode_servers.AsyncioServerInstance.listen = _listen  # type: ignore[method-assign]
