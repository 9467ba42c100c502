"""Serve the control app on its own listener, inside the running event loop (mitmproxy's):
no second process, no thread.

``serve`` binds the socket synchronously (so a port in use fails at once, and ``.port``
is known when it returns: port 0 picks a free one), then runs uvicorn as an asyncio task
on the current loop. uvicorn's own signal handlers are not installed: the host process
(mitmproxy, ``fiveplane run``) keeps its Ctrl-C handling. ``ThreadedControlServer`` runs
the same in a thread with its own loop, for tests and tools without a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger("fiveplane.control")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:   # leave the host's signal handlers alone
        yield


class ControlServer:
    """A running control listener: ``host``, ``port``, ``url``; ``stop()`` ends it (returns
    an awaitable that completes when it has shut down)."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, host: str, port: int,
                 task: asyncio.Task[None]) -> None:
        self._server = server
        self._sock = sock
        self.host = host
        self.port = port
        self.task = task

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return bool(self._server.started)

    async def ready(self, timeout: float = 10.0) -> None:
        """Wait until uvicorn accepts connections (the socket already queues them)."""
        async with asyncio.timeout(timeout):
            while not self._server.started:
                if self.task.done():
                    await self.task
                    raise RuntimeError("control server stopped while starting")
                await asyncio.sleep(0.01)

    def stop(self) -> asyncio.Task[None]:
        self._server.should_exit = True
        return self.task


def bind(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def serve(app: ASGIApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          loop: asyncio.AbstractEventLoop | None = None) -> ControlServer:
    """Start serving ``app`` on ``host:port`` as a task of the running loop (or ``loop``).
    Raises ``OSError`` when the address cannot be bound."""
    loop = loop or asyncio.get_running_loop()
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2, server_header=False,
                            proxy_headers=False)
    server = _Server(config)
    task = loop.create_task(_run(server, sock), name=f"fiveplane-control:{bound_port}")
    log.info("control API and console on http://%s:%d", host, bound_port)
    return ControlServer(server, sock, host, bound_port, task)


async def _run(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as e:      # uvicorn exits on startup failure; never end the host
        log.error("control server failed to start (%s)", e)
    finally:
        sock.close()


class ThreadedControlServer:
    """The control server on a thread of its own (tests, scripts). Context manager."""

    def __init__(self, app: ASGIApp, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._server: ControlServer | None = None
        self._thread = threading.Thread(target=self._main, args=(app, host, port),
                                        name="fiveplane-control", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        if self._server is None:
            raise RuntimeError("control server did not start")

    def _main(self, app: ASGIApp, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            try:
                self._server = serve(app, host, port)
                await self._server.ready()
            except BaseException as e:
                self._error = e
                self._started.set()
                return
            self._started.set()
            await self._server.task

        try:
            self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    @property
    def server(self) -> ControlServer:
        assert self._server is not None
        return self._server

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive() and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.stop)
        self._thread.join(timeout)

    def __enter__(self) -> ThreadedControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
