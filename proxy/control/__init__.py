"""The approvers' interfaces: a JSON control API and a small web console on a separate
listener (127.0.0.1:8081 by default), and the ``fiveplane approvals|sessions`` CLI.

Importable without mitmproxy. The server side needs starlette and uvicorn; the CLI and
the client only httpx, so names are imported lazily (``proxy.control.cli`` does not load
the web stack).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..approvals import ApprovalStore
    from ..observe import Telemetry
    from ..state import StateStore
    from .server import ControlServer

_LAZY = {
    "COOKIE": "app", "create_app": "app",
    "DEFAULT_APPROVER": "auth", "TOKEN_ENV": "auth", "TOKEN_FILE": "auth", "Approver": "auth",
    "ControlAuth": "auth", "ensure_token_file": "auth", "read_token_file": "auth",
    "ControlClient": "client", "ControlError": "client",
    "DEFAULT_HOST": "server", "DEFAULT_PORT": "server", "ControlServer": "server",
    "ThreadedControlServer": "server", "serve": "server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def start_control(approvals: ApprovalStore, sessions: StateStore | None, *,
                  state_dir: str | Path, token: str | None = None,
                  approver: str = "operator", host: str = "127.0.0.1", port: int = 8081,
                  allowed_hosts: Iterable[str] | None = None, telemetry: Telemetry | None = None,
                  metrics_token: str | None = None,
                  evidence: Callable[[str], dict[str, Any] | None] | None = None
                  ) -> ControlServer:
    """Everything ``fiveplane run`` needs, on the running loop: the approvers (``token``, or
    the token file in ``state_dir``, created on first run with mode 0600), the app, the
    listener, with the activity page and ``/metrics`` when ``telemetry`` is given.
    Raises ``ConfigError`` (bad token) or ``OSError`` (cannot bind)."""
    from .app import create_app
    from .auth import ControlAuth
    from .server import serve

    auth = ControlAuth.from_options(state_dir, token, approver)
    if allowed_hosts is None and host not in ("127.0.0.1", "::1", "localhost"):
        allowed_hosts = ("127.0.0.1", "localhost", "::1", host)
    app = create_app(approvals, auth, sessions, allowed_hosts=allowed_hosts,
                     telemetry=telemetry, metrics_token=metrics_token, evidence=evidence)
    return serve(app, host, port)


__all__ = [*sorted(_LAZY), "start_control"]
