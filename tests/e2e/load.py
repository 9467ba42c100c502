"""Concurrent MCP ``tools/call`` load through one or several proxy addresses (not a test
module): each call on its own connection, so ``SO_REUSEPORT`` spreads them over workers
and a list of proxies spreads them over replicas."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from clients import JSONRPC_ACCEPT, modern_request, parse_jsonrpc


async def _call(client: httpx.AsyncClient, server_url: str, tool: str, args: dict[str, Any],
                rpc_id: int, session: str | None) -> dict[str, Any]:
    body, headers = modern_request("tools/call", {"name": tool, "arguments": args}, id=rpc_id)
    headers = {**headers, "Content-Type": "application/json", "Accept": JSONRPC_ACCEPT,
               "Connection": "close"}
    if session is not None:
        headers["X-Fiveplane-Session"] = session
    try:
        resp = await client.post(server_url, json=body, headers=headers)
        msgs = parse_jsonrpc(resp)
        if len(msgs) != 1 or "jsonrpc" not in msgs[0]:
            return {"_status": resp.status_code, "_raw": resp.text[:500]}
        return msgs[0]
    except httpx.HTTPError as e:
        return {"_transport_error": repr(e)}


async def _many(proxies: Sequence[str], ca: str | Path | None, server_url: str, tool: str,
                args: Sequence[dict[str, Any]], session: str | None,
                timeout: float) -> list[dict[str, Any]]:
    clients = [httpx.AsyncClient(proxy=p, verify=str(ca) if ca else False, trust_env=False,
                                 timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))
               for p in proxies]
    try:
        chosen = itertools.cycle(clients)
        return list(await asyncio.gather(*[
            _call(next(chosen), server_url, tool, a, i + 1, session)
            for i, a in enumerate(args)]))
    finally:
        for c in clients:
            await c.aclose()


def concurrent_calls(proxies: Sequence[str], ca: str | Path | None, server_url: str, tool: str,
                     args: Sequence[dict[str, Any]], *, session: str | None = None,
                     timeout: float = 60.0) -> list[dict[str, Any]]:
    """Send every ``tools/call tool(args[i])`` at once, round-robin over ``proxies``; the
    JSON-RPC reply of each (or ``_transport_error`` / ``_status``), in order."""
    return asyncio.run(_many(proxies, ca, server_url, tool, args, session, timeout))


def passed(replies: Sequence[dict[str, Any]]) -> int:
    return sum("result" in r and not r["result"].get("isError") for r in replies)


def denied_by(replies: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many replies were JSON-RPC errors, by the first rule id (or the message)."""
    out: dict[str, int] = {}
    for r in replies:
        if isinstance(r.get("error"), dict):
            data = r["error"].get("data") or {}
            key = (data.get("rule_ids") or [r["error"].get("message", "?")])[0]
        elif "_status" in r or "_transport_error" in r:
            key = "not a JSON-RPC reply"
        else:
            continue
        out[key] = out.get(key, 0) + 1
    return out
