"""Client helpers for end-to-end tests: plain HTTP through a proxy, a real MCP client through a
proxy, and raw JSON-RPC for hand-crafted (malformed) messages.

All clients use an explicit proxy and ``trust_env=False`` so the environment can never reroute
test traffic; TLS trust is an explicit ``ssl.SSLContext`` built from the proxy's CA file.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
from mcp import Client

__all__ = [
    "JSONRPC_ACCEPT",
    "http_client",
    "legacy_handshake",
    "mcp_client",
    "parse_jsonrpc",
    "post_jsonrpc",
    "ssl_context",
]

JSONRPC_ACCEPT = "application/json, text/event-stream"
LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"


def ssl_context(ca_file: str | Path | None) -> ssl.SSLContext | bool:
    """Verification context trusting only ``ca_file`` (True = system defaults when None)."""
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


def http_client(
    proxy_url: str | None,
    ca_file: str | Path | None = None,
    *,
    timeout: float = 10.0,
    **kwargs: Any,
) -> httpx.Client:
    """Synchronous httpx client routed through ``proxy_url`` (None = direct)."""
    return httpx.Client(
        proxy=proxy_url,
        verify=ssl_context(ca_file),
        trust_env=False,
        timeout=timeout,
        **kwargs,
    )


def async_http_client(
    proxy_url: str | None,
    ca_file: str | Path | None = None,
    *,
    timeout: float = 10.0,
    **kwargs: Any,
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        proxy=proxy_url,
        verify=ssl_context(ca_file),
        trust_env=False,
        timeout=timeout,
        **kwargs,
    )


@asynccontextmanager
async def mcp_client(
    server_url: str,
    proxy_url: str | None = None,
    ca_file: str | Path | None = None,
    mode: str = "legacy",
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    read_timeout: float = 30.0,
    **client_kwargs: Any,
) -> AsyncIterator[Client]:
    """An entered ``mcp.Client`` talking streamable HTTP to ``server_url`` via ``proxy_url``.

    ``mode``: ``"legacy"`` (initialize + session + SSE, negotiates 2025-11-25), ``"auto"``
    (probes ``server/discover`` -> 2026-07-28 against our test server) or a pinned modern
    version string. Client-side response caching is disabled (``cache=None``) unless passed,
    so every list/read reaches the proxy.
    """
    from mcp.client.streamable_http import streamable_http_client

    client_kwargs.setdefault("cache", None)
    http = httpx2.AsyncClient(
        proxy=proxy_url,
        verify=ssl_context(ca_file),
        trust_env=False,
        headers=headers,
        timeout=httpx2.Timeout(timeout, read=read_timeout),
    )
    async with http:
        transport = streamable_http_client(server_url, http_client=http)
        async with Client(transport, mode=mode, **client_kwargs) as client:  # type: ignore[arg-type]
            yield client


def post_jsonrpc(
    client: httpx.Client,
    url: str,
    body: bytes | str | dict | list,
    headers: dict[str, str] | None = None,
    session_id: str | None = None,
    protocol_version: str | None = None,
) -> httpx.Response:
    """POST a (possibly malformed) JSON-RPC message as an MCP client would.

    ``body``: dict/list are JSON-encoded; bytes/str are sent verbatim. Default headers are
    ``Content-Type: application/json`` and ``Accept: application/json, text/event-stream``;
    ``headers`` override/extend them (a value of ``None`` removes a default).
    """
    content = json.dumps(body).encode() if isinstance(body, dict | list) else body
    if isinstance(content, str):
        content = content.encode()
    hdrs: dict[str, str | None] = {"Content-Type": "application/json", "Accept": JSONRPC_ACCEPT}
    if session_id is not None:
        hdrs["Mcp-Session-Id"] = session_id
    if protocol_version is not None:
        hdrs["MCP-Protocol-Version"] = protocol_version
    for k, v in (headers or {}).items():
        for existing in [e for e in hdrs if e.lower() == k.lower()]:
            del hdrs[existing]
        hdrs[k] = v
    final = {k: v for k, v in hdrs.items() if v is not None}
    return client.post(url, content=content, headers=final)


def parse_jsonrpc(resp: httpx.Response) -> list[dict[str, Any]]:
    """JSON-RPC messages in a response: a JSON body (object or batch array) or every SSE
    ``data:`` event of a ``text/event-stream`` body. Empty list for 202/no body."""
    ctype = resp.headers.get("content-type", "")
    text = resp.text
    if not text.strip():
        return []
    if "text/event-stream" in ctype:
        out: list[dict[str, Any]] = []
        data: list[str] = []
        for line in [*text.splitlines(), ""]:
            if line == "":
                if data:
                    payload = "\n".join(data)
                    data = []
                    try:
                        out.append(json.loads(payload))
                    except ValueError:
                        out.append({"_raw": payload})
                continue
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        return out
    parsed = json.loads(text)
    return parsed if isinstance(parsed, list) else [parsed]


def legacy_handshake(
    client: httpx.Client,
    url: str,
    protocol_version: str = LEGACY_VERSION,
    client_name: str = "fiveplane-e2e-raw",
) -> str:
    """Raw 2025-era handshake (initialize + notifications/initialized); returns the session id."""
    resp = post_jsonrpc(
        client,
        url,
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": protocol_version,
                "capabilities": {},
                "clientInfo": {"name": client_name, "version": "0"},
            },
        },
    )
    resp.raise_for_status()
    session_id = resp.headers.get("mcp-session-id")
    if not session_id:
        raise AssertionError(f"no Mcp-Session-Id in initialize response: {resp.headers}")
    ack = post_jsonrpc(
        client,
        url,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        session_id=session_id,
        protocol_version=protocol_version,
    )
    if ack.status_code != 202:
        raise AssertionError(f"notifications/initialized -> {ack.status_code} {ack.text!r}")
    return session_id


def modern_request(
    method: str,
    params: dict[str, Any] | None = None,
    id: int | str = 1,
    protocol_version: str = MODERN_VERSION,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Body + headers of a stateless 2026-07-28 request (``_meta`` and ``Mcp-Method``/``Mcp-Name``
    headers as the SDK sends them) for use with :func:`post_jsonrpc`."""
    p = dict(params or {})
    meta = dict(p.get("_meta") or {})
    meta.setdefault("io.modelcontextprotocol/protocolVersion", protocol_version)
    meta.setdefault("io.modelcontextprotocol/clientCapabilities", {})
    meta.setdefault(
        "io.modelcontextprotocol/clientInfo", {"name": "fiveplane-e2e-raw", "version": "0"}
    )
    p["_meta"] = meta
    headers = {"MCP-Protocol-Version": protocol_version, "Mcp-Method": method}
    name = p.get("name") if method in ("tools/call", "prompts/get") else p.get("uri")
    if isinstance(name, str):
        headers["Mcp-Name"] = name
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": p}, headers


def read_evidence(state_dir: str | Path) -> list[dict[str, Any]]:
    """The decision records a fiveplane process wrote under ``<state_dir>/audit``, oldest
    first: each record's body, with ``decision_id`` and ``decision.policy_version``
    spelled as in denials (``id`` and ``policy`` in the schema)."""
    import json as _json
    import time as _time

    from proxy.audit.verify import log_files

    audit = Path(state_dir) / "audit"
    out: list[dict[str, Any]] = []
    if not audit.exists():
        return out
    # Refusals are recorded without waiting for their fsync: let the writer settle.
    sizes: list[int] = []
    for _ in range(50):
        now = [p.stat().st_size for p in log_files(audit)]
        if now == sizes:
            break
        sizes = now
        _time.sleep(0.1)
    for path in log_files(audit):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                entry = _json.loads(line)
            except ValueError:
                continue  # a torn last line while the writer is busy
            if entry.get("type") != "record":
                continue
            body = entry["body"]
            decision = {**body["decision"], "policy_version": body.get("policy")}
            out.append({**body, "decision_id": body["id"], "decision": decision,
                        "action": body.get("action") or {}})
    return out


def assert_reconstructable(state_dir: str | Path) -> str:
    """``fiveplane audit verify`` passes on the evidence under ``state_dir`` and
    ``fiveplane audit explain --all`` re-decides every recorded decision with 0
    mismatches. Returns explain's output."""
    import subprocess
    import sys

    audit = str(Path(state_dir) / "audit")
    for args in (["verify", audit], ["explain", audit, "--all"]):
        done = subprocess.run([sys.executable, "-m", "proxy", "audit", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout
