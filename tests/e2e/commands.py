"""The one place that spells the command lines of the services the e2e tests start.

``tests/e2e/conftest.py`` builds its processes from these functions and ``docker-compose.yml``
runs the same command lines (``tests/test_compose.py`` compares them), so the compose example and
the e2e tests cannot drift apart. Every function returns a plain ``list[str]``; ``python`` is the
interpreter (``sys.executable`` here, ``python`` inside the container) and ``root`` the
repository root the scripts are found under (this checkout here, ``/app`` in the image).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path, PurePath

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
MCP_SERVER_SCRIPT = PurePath("tests/e2e/servers/mcp_server.py")
HTTP_UPSTREAM_SCRIPT = PurePath("tests/e2e/servers/http_upstream.py")

__all__ = [
    "HTTP_UPSTREAM_SCRIPT",
    "MCP_SERVER_SCRIPT",
    "REPO_ROOT",
    "fiveplane_argv",
    "http_upstream_argv",
    "mcp_server_argv",
    "redis_server_argv",
    "replica_extra",
]


def mcp_server_argv(
    port: int | str,
    *,
    host: str | None = None,
    calls_log: str | PurePath | None = None,
    name: str = "crm",
    json_response: bool = False,
    extra: Sequence[str] = (),
    python: str = sys.executable,
    root: str | PurePath = REPO_ROOT,
) -> list[str]:
    """``python tests/e2e/servers/mcp_server.py --port P [--host H] [--calls-log F] --name N
    [--json-response] ...`` (serves ``http://HOST:PORT/mcp``; port 0 = ephemeral)."""
    argv = [python, str(PurePath(root) / MCP_SERVER_SCRIPT), "--port", str(port)]
    if host is not None:
        argv += ["--host", host]
    if calls_log is not None:
        argv += ["--calls-log", str(calls_log)]
    argv += ["--name", name]
    if json_response:
        argv.append("--json-response")
    return argv + [str(a) for a in extra]


def http_upstream_argv(
    port: int | str,
    *,
    host: str | None = None,
    tls_dir: str | PurePath | None = None,
    extra: Sequence[str] = (),
    python: str = sys.executable,
    root: str | PurePath = REPO_ROOT,
) -> list[str]:
    """``python tests/e2e/servers/http_upstream.py --port P [--host H] [--tls-dir D] ...``
    (prints ``upstream listening on http(s)://HOST:PORT``; port 0 = ephemeral)."""
    argv = [python, str(PurePath(root) / HTTP_UPSTREAM_SCRIPT), "--port", str(port)]
    if host is not None:
        argv += ["--host", host]
    if tls_dir is not None:
        argv += ["--tls-dir", str(tls_dir)]
    return argv + [str(a) for a in extra]


def fiveplane_argv(
    policy: str | PurePath,
    listen: str,
    certs: str | PurePath,
    state_dir: str | PurePath,
    *,
    upstream_ca: str | PurePath | None = None,
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """``python -m proxy run --policy P --listen HOST:PORT --certs C --state-dir S
    [--upstream-ca CA] ...`` (the ``fiveplane run`` command)."""
    argv = [
        python,
        "-m",
        "proxy",
        "run",
        "--policy",
        str(policy),
        "--listen",
        listen,
        "--certs",
        str(certs),
        "--state-dir",
        str(state_dir),
    ]
    if upstream_ca is not None:
        argv += ["--upstream-ca", str(upstream_ca)]
    return argv + [str(a) for a in extra]


def redis_server_argv(
    port: int | str,
    *,
    host: str,
    aof: bool = True,
    extra: Sequence[str] = (),
    binary: str = "redis-server",
) -> list[str]:
    """``redis-server --port P --bind H --protected-mode no --save "" --appendonly yes
    --appendfsync always --maxmemory-policy noeviction ...``: the shared state of the
    replicas. No RDB snapshots; with ``aof`` every acknowledged write (a budget charge, an
    approval) is on disk before Redis answers, so a restart loses none. ``noeviction``: an
    evicted budget counter would reset the budget."""
    argv = [binary, "--port", str(port), "--bind", host, "--protected-mode", "no",
            "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
    argv += ["--maxmemory-policy", "noeviction"]
    return argv + [str(a) for a in extra]


def replica_extra(redis_url: str, instance: str) -> list[str]:
    """What a replica adds to :func:`fiveplane_argv`: the shared state and its own evidence
    chain (``--state REDIS_URL --instance NAME``)."""
    return ["--state", redis_url, "--instance", instance]
