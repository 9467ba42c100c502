"""IBM ContextForge (PyPI ``mcp-contextforge-gateway``) as a peer gateway target of the
proxy benchmark.

ContextForge is a *reverse* MCP gateway, not a forward proxy: clients talk MCP to the
gateway, which federates registered MCP servers and exposes "virtual servers" whose tool
lists are chosen by the operator. Setup, all on 127.0.0.1 and with no external service:

* its own venv (``peers.py``), SQLite database in the run's temporary directory,
  ``CACHE_TYPE=memory`` (no Redis), strong random secrets (it refuses weak ones),
  ``SSRF_ALLOW_LOCALHOST=true`` (it refuses loopback upstreams otherwise),
  ``USE_STATEFUL_SESSIONS=true`` (for the 2025-11-25 session style),
  ``RATE_LIMITING_ENABLED=false`` (by default MCP endpoints answer HTTP 429 after 100
  requests per minute), the admin API on;
* an admin JWT minted with its own ``mcpgateway.utils.create_jwt_token``;
* the benchmark's MCP server registered as gateway ``bench`` (``POST /gateways``, the
  tools are discovered as ``bench-echo``, ``bench-delete-all`` ...);
* **the equivalent allow rule**: a virtual server whose only tool is ``bench-echo``
  (``POST /servers``); clients call ``/servers/<id>/mcp``. Checked: ``bench-delete-all``
  through it is refused ("Unknown tool").
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT_S = 180.0
ADMIN = "admin@example.com"


@dataclass
class Gateway:
    url: str                    # the virtual server's MCP endpoint
    headers: dict[str, str]     # Authorization
    tool: str                   # the echo tool's name through the gateway
    pid: int
    startup_s: float
    version: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(work: Path, port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite:///{work / 'contextforge.db'}",
        "CACHE_TYPE": "memory",
        "JWT_SECRET_KEY": secrets.token_urlsafe(48),
        "AUTH_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
        "PLATFORM_ADMIN_EMAIL": ADMIN,
        "PLATFORM_ADMIN_PASSWORD": "Bench-" + secrets.token_urlsafe(18),
        "DEFAULT_USER_PASSWORD": "Bench-" + secrets.token_urlsafe(18),
        "BASIC_AUTH_PASSWORD": "Bench-" + secrets.token_urlsafe(18),
        "MCPGATEWAY_ADMIN_API_ENABLED": "true",
        "MCPGATEWAY_UI_ENABLED": "false",
        "SSRF_ALLOW_LOCALHOST": "true",
        "USE_STATEFUL_SESSIONS": "true",
        "RATE_LIMITING_ENABLED": "false",     # default: 100 MCP requests/min, then HTTP 429
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }


def start(procs: Any, work: Path, python: Path, mcp_port: int, env_base: dict[str, str],
          log: Any) -> Gateway:
    """Start ContextForge, register the MCP server and the echo-only virtual server.
    Raises ``RuntimeError`` with the reason when anything fails."""
    port = _free_port()
    env = {**env_base, **environment(work, port)}
    env.pop("PYTHONPATH", None)
    exe = python.with_name("mcpgateway")
    t0 = time.monotonic()
    proc = procs.start_env("contextforge", [exe, "--host", "127.0.0.1", "--port", str(port)],
                           env, cwd=work)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(trust_env=False, timeout=10.0) as c:
        while True:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"ContextForge exited ({proc.proc.returncode}):\n"
                                   f"{proc.output()[-3000:]}")
            try:
                if c.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ContextForge not healthy after {READY_TIMEOUT_S:.0f} s:\n"
                                   f"{proc.output()[-3000:]}")
            time.sleep(0.5)
    startup_s = time.monotonic() - t0
    r = subprocess.run([str(python), "-m", "mcpgateway.utils.create_jwt_token", "-u", ADMIN,
                        "--admin", "-e", "240"], capture_output=True, text=True, env=env,
                       cwd=str(work), timeout=120, check=False)
    token = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0 or token.count(".") != 2:
        raise RuntimeError(f"create_jwt_token failed ({r.returncode}): {r.stderr[-1500:]}")
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(trust_env=False, timeout=60.0, headers=auth) as c:
        g = c.post(base + "/gateways", json={"name": "bench", "transport": "STREAMABLEHTTP",
                                             "url": f"http://127.0.0.1:{mcp_port}/mcp"})
        if g.status_code >= 300:
            raise RuntimeError(f"POST /gateways -> {g.status_code}: {g.text[:1000]}")
        tools = {t["name"]: t["id"] for t in c.get(base + "/tools").json()}
        echo = next((n for n in tools if n.endswith("echo")), None)
        if echo is None:
            raise RuntimeError(f"echo tool not discovered; tools: {sorted(tools)}")
        s = c.post(base + "/servers", json={"server": {"name": "bench-echo-only",
                                                       "associated_tools": [tools[echo]]}})
        if s.status_code >= 300:
            raise RuntimeError(f"POST /servers -> {s.status_code}: {s.text[:1000]}")
        sid = s.json()["id"]
        version = c.get(base + "/version").json().get("app", {}).get("version", "?") \
            if c.get(base + "/version").status_code == 200 else "?"
    url = f"{base}/servers/{sid}/mcp"
    log(f"  proxy: ContextForge :{port} ready in {startup_s:.0f} s (virtual server {sid}, "
        f"tools {echo})")
    return Gateway(url, auth, echo, proc.proc.pid, startup_s, str(version))


def sanity(gw: Gateway, accept: str) -> list[str]:
    """The allow rule holds: only the echo tool is reachable through the virtual server."""
    problems = []
    with httpx.Client(trust_env=False, timeout=60.0, headers=gw.headers) as c:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": gw.tool.replace("echo", "delete-all"),
                           "arguments": {"confirm": True}}}
        r = c.post(gw.url, content=json.dumps(body),
                   headers={"Content-Type": "application/json", "Accept": accept,
                            "MCP-Protocol-Version": "2025-11-25"})
        try:
            msg = r.json()
        except ValueError:
            msg = {}
        refused = "error" in msg or (msg.get("result") or {}).get("isError") is True
        if not refused:
            problems.append(f"delete-all through the echo-only virtual server not refused: "
                            f"{r.status_code} {r.text[:200]}")
    return problems
