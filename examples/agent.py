"""A small example agent that works only through fiveplane.

In ``docker-compose.yml`` it runs on a network where the proxy is the only reachable host::

    HTTP_PROXY=http://proxy:8080 HTTPS_PROXY=http://proxy:8080 \\
    SSL_CERT_FILE=/certs/mitmproxy-ca-cert.pem  python examples/agent.py

It waits for the proxy's CA certificate (``SSL_CERT_FILE``, written by the proxy into the shared
certs volume on its first start) and for the proxy to accept connections, then, with the ``mcp``
SDK over streamable HTTP and everything sent through the proxy:

1. lists the MCP server's tools (fiveplane hides the tools the policy never allows),
2. calls an allowed tool (``get_customer``),
3. calls a denied tool (``delete_all``) - fiveplane answers with a JSON-RPC error,
4. GETs the HTTP upstream (allowed) and a host that is not in ``network.allow`` (refused).

It prints what happened and a final ``AGENT_REPORT {json}`` line; the exit code is 0 when every
step went the way the compose policy says it should. Importing this module has no side effects:
``run(AgentConfig(...))`` returns the structured :class:`AgentReport` (the e2e tests use it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_MCP_URL = "http://mcp-server:8000/mcp"
DEFAULT_HTTP_URL = "http://http-upstream:8081/status"
DEFAULT_DENIED_URL = "https://example.com/"
DENIED_CODE = -32003  # fiveplane's JSON-RPC error code for "denied by policy"
DECISION_HEADER = "x-fiveplane-decision"

__all__ = [
    "AgentConfig",
    "AgentReport",
    "Outcome",
    "main",
    "run",
    "run_async",
    "wait_for_file",
    "wait_for_tcp",
]


# --------------------------------------------------------------------------------------------
# configuration and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentConfig:
    mcp_url: str = DEFAULT_MCP_URL
    http_url: str | None = DEFAULT_HTTP_URL  # an allowed GET (None: skip)
    denied_url: str | None = DEFAULT_DENIED_URL  # a host the policy refuses (None: skip)
    proxy: str | None = None  # every request goes through this proxy (None: direct)
    ca_file: str | None = None  # the CA to trust for TLS (None: system trust store)
    mode: str = "auto"  # mcp.Client mode: "auto" (2026-07-28 if offered) or "legacy"
    allowed_tool: str = "get_customer"
    allowed_arguments: Mapping[str, Any] = field(default_factory=lambda: {"customer_id": "c-1"})
    denied_tool: str = "delete_all"
    denied_arguments: Mapping[str, Any] = field(default_factory=lambda: {"confirm": True})
    timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AgentConfig:
        """Proxy from ``HTTPS_PROXY``/``HTTP_PROXY`` (either case; the agent sends everything
        through one proxy), CA from ``SSL_CERT_FILE``; ``overrides`` win."""
        env = os.environ if env is None else env

        def get(*names: str) -> str | None:
            for name in names:
                value = env.get(name) or env.get(name.lower())
                if value:
                    return value
            return None

        values: dict[str, Any] = {
            "proxy": get("HTTPS_PROXY", "HTTP_PROXY"),
            "ca_file": get("SSL_CERT_FILE"),
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class Outcome:
    """What happened to one attempted action."""

    action: str  # e.g. "tools/call get_customer" or "GET http://..."
    allowed: bool | None  # did the proxy let it through? None: failed before any verdict
    ok: bool  # did it succeed end to end?
    result: Any = None  # tool result (structured or text) or the response body
    status: int | None = None  # HTTP status, for HTTP actions
    error: str | None = None
    rule_ids: list[str] = field(default_factory=list)  # fiveplane rules that decided a denial
    reason: str | None = None
    decision_id: str | None = None

    def line(self) -> str:
        if self.ok:
            return f"ALLOWED  {self.action}: {_short(self.result)}"
        if self.allowed is False:
            rules = ", ".join(self.rule_ids) or "-"
            why = self.reason or self.error
            return f"DENIED   {self.action}: [{rules}] {why}"
        return f"FAILED   {self.action}: {self.error}"


@dataclass
class AgentReport:
    proxy: str | None
    mcp_url: str
    protocol_version: str | None = None
    tools: list[str] = field(default_factory=list)  # as listed through the proxy
    allowed_call: Outcome | None = None
    denied_call: Outcome | None = None
    http_get: Outcome | None = None
    denied_host: Outcome | None = None

    @property
    def as_expected(self) -> bool:
        """True when the allowed steps succeeded and the denied ones were denied."""
        return (
            bool(self.tools)
            and self.allowed_call is not None
            and self.allowed_call.ok
            and self.denied_call is not None
            and self.denied_call.allowed is False
            and (self.http_get is None or self.http_get.ok)
            and (self.denied_host is None or self.denied_host.allowed is False)
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "as_expected": self.as_expected}


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# the flow
# --------------------------------------------------------------------------------------------


def _verify(config: AgentConfig) -> ssl.SSLContext:
    if config.ca_file:
        return ssl.create_default_context(cafile=config.ca_file)
    return ssl.create_default_context()


def _http_client(config: AgentConfig) -> Any:
    import httpx2

    # Explicit proxy and trust, never the environment: NO_PROXY and friends cannot reroute it.
    return httpx2.AsyncClient(
        proxy=config.proxy,
        verify=_verify(config),
        trust_env=False,
        timeout=httpx2.Timeout(config.timeout, read=max(config.timeout, 30.0)),
    )


@asynccontextmanager
async def _mcp_client(config: AgentConfig) -> AsyncIterator[Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with _http_client(config) as http:
        transport = streamable_http_client(config.mcp_url, http_client=http)
        async with Client(transport, mode=config.mode) as client:  # type: ignore[arg-type]
            yield client


async def _call_tool(client: Any, name: str, arguments: Mapping[str, Any]) -> Outcome:
    from mcp.shared.exceptions import MCPError

    action = f"tools/call {name}"
    try:
        result = await client.call_tool(name, dict(arguments))
    except MCPError as e:
        data = e.data if isinstance(e.data, dict) else {}
        if e.code == DENIED_CODE and "decision_id" in data:
            return Outcome(
                action, allowed=False, ok=False, error=e.message,
                rule_ids=list(data.get("rule_ids") or []), reason=data.get("reason"),
                decision_id=data.get("decision_id"),
            )
        # an error from the server itself: the proxy let the call through
        return Outcome(action, allowed=True, ok=False, error=f"MCP error {e.code}: {e.message}")
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        return Outcome(action, allowed=True, ok=False, error=f"tool error: {text}")
    value = result.structured_content
    if value is None:
        value = " ".join(getattr(c, "text", "") for c in result.content)
    return Outcome(action, allowed=True, ok=True, result=value)


async def _get(http: Any, url: str) -> Outcome:
    import httpx2

    action = f"GET {url}"
    try:
        resp = await http.get(url)
    except httpx2.ProxyError as e:
        # the proxy refused the CONNECT tunnel (HTTPS): httpx keeps only the status line
        m = re.match(r"(\d{3})\b", str(e))
        status = int(m.group(1)) if m else None
        refused = status is not None and status >= 400
        return Outcome(
            action, allowed=False if refused else None, ok=False, status=status,
            error=f"proxy refused the tunnel: {e}",
        )
    except httpx2.HTTPError as e:
        return Outcome(action, allowed=None, ok=False, error=f"{type(e).__name__}: {e}")
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    decision = resp.headers.get(DECISION_HEADER)
    if decision and resp.status_code == 403:
        info = body if isinstance(body, dict) else {}
        return Outcome(
            action, allowed=False, ok=False, status=resp.status_code, result=body,
            error=info.get("error"), rule_ids=list(info.get("rule_ids") or []),
            reason=info.get("reason"), decision_id=decision,
        )
    return Outcome(
        action, allowed=True, ok=resp.is_success, status=resp.status_code, result=body,
        error=None if resp.is_success else f"HTTP {resp.status_code}",
    )


async def run_async(config: AgentConfig) -> AgentReport:
    """The agent's whole flow; returns what happened (never raises for a denial)."""
    report = AgentReport(proxy=config.proxy, mcp_url=config.mcp_url)
    async with _mcp_client(config) as client:
        report.protocol_version = client.protocol_version
        listed = await client.list_tools()
        report.tools = sorted(t.name for t in listed.tools)
        report.allowed_call = await _call_tool(
            client, config.allowed_tool, config.allowed_arguments
        )
        report.denied_call = await _call_tool(client, config.denied_tool, config.denied_arguments)
    async with _http_client(config) as http:
        if config.http_url:
            report.http_get = await _get(http, config.http_url)
        if config.denied_url:
            report.denied_host = await _get(http, config.denied_url)
    return report


def run(config: AgentConfig) -> AgentReport:
    import anyio

    return anyio.run(run_async, config)


# --------------------------------------------------------------------------------------------
# waiting for the proxy
# --------------------------------------------------------------------------------------------


def wait_for_file(path: str | Path, timeout: float) -> bool:
    """Poll until ``path`` exists and is not empty."""
    deadline = time.monotonic() + timeout
    p = Path(path)
    while True:
        try:
            if p.stat().st_size > 0:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


def wait_for_tcp(url: str, timeout: float) -> bool:
    """Poll until the host:port of ``url`` accepts TCP connections."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Example agent: MCP and HTTP through fiveplane (proxy from HTTP(S)_PROXY, "
        "trust from SSL_CERT_FILE).",
    )
    p.add_argument("--mcp-url", default=DEFAULT_MCP_URL)
    p.add_argument("--http-url", default=DEFAULT_HTTP_URL, help="allowed GET ('' to skip)")
    p.add_argument("--denied-url", default=DEFAULT_DENIED_URL, help="refused host ('' to skip)")
    p.add_argument("--mode", default="auto", help="mcp.Client mode: auto or legacy")
    p.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for the CA file and the proxy (default 60)")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    return p


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = AgentConfig.from_env(
        env, mcp_url=args.mcp_url, http_url=args.http_url or None,
        denied_url=args.denied_url or None, mode=args.mode,
    )

    def say(*parts: Any, **kwargs: Any) -> None:
        if not args.json:
            print(*parts, **kwargs)

    if config.ca_file:
        say(f"agent: waiting for the proxy CA {config.ca_file}", flush=True)
        if not wait_for_file(config.ca_file, args.wait):
            print(f"agent: no CA file at {config.ca_file} after {args.wait}s", file=sys.stderr)
            return 2
    if config.proxy:
        say(f"agent: waiting for the proxy {config.proxy}", flush=True)
        if not wait_for_tcp(config.proxy, args.wait):
            print(f"agent: proxy {config.proxy} not reachable after {args.wait}s",
                  file=sys.stderr)
            return 2
    else:
        say("agent: no HTTP(S)_PROXY set, talking to the servers directly", flush=True)
    try:
        report = run(config)
    except Exception as e:  # the MCP session itself failed: say so, do not dump a trace
        print(f"agent: MCP session with {config.mcp_url} failed: {e!r}", file=sys.stderr)
        return 1
    say(f"agent: MCP {report.protocol_version} at {report.mcp_url} via {report.proxy}")
    say(f"agent: tools listed through the proxy: {', '.join(report.tools) or '(none)'}")
    for outcome in (report.allowed_call, report.denied_call, report.http_get,
                    report.denied_host):
        if outcome is not None:
            say("agent: " + outcome.line())
    say(f"agent: {'as expected' if report.as_expected else 'NOT as expected'}")
    print(("" if args.json else "AGENT_REPORT ") + json.dumps(report.to_dict(), default=str),
          flush=True)
    return 0 if report.as_expected else 1


if __name__ == "__main__":
    sys.exit(main())
