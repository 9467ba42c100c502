"""How a refusal looks to the agent: a JSON-RPC error for MCP requests (so SDKs raise
with our reason), a 403 JSON body for HTTP. Both name the rule and the decision id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .codec import sse_encode
from .decision import Decision

DENIED_CODE = -32003  # JSON-RPC server-error range: "denied by policy"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _data(decision: Decision, decision_id: str) -> dict[str, Any]:
    return {
        "verdict": decision.verdict.value,
        "rule_ids": list(decision.rule_ids),
        "reason": decision.reason,
        "policy_version": decision.policy_version,
        "decision_id": decision_id,
    }


def message(decision: Decision) -> str:
    rules = ", ".join(f"`{r}`" for r in decision.rule_ids)
    return f"fiveplane {decision.verdict.value} ({rules}): {decision.reason}"


def jsonrpc_error(rpc_id: str | int | None, decision: Decision, decision_id: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "error": {"code": DENIED_CODE, "message": message(decision),
                  "data": _data(decision, decision_id)},
    }


def deny_reply(decision: Decision, decision_id: str, *, mcp: bool,
               rpc_id: str | int | None) -> Reply:
    headers = {"Content-Type": "application/json", "X-Fiveplane-Decision": decision_id,
               "Cache-Control": "no-store"}
    if mcp and rpc_id is not None:
        body = json.dumps(jsonrpc_error(rpc_id, decision, decision_id)).encode()
        return Reply(200, headers, body)
    body = json.dumps({"error": message(decision), **_data(decision, decision_id)}).encode()
    return Reply(403, headers, body)


def sse_error_event(rpc_id: str | int | None, decision: Decision, decision_id: str) -> bytes:
    return sse_encode(json.dumps(jsonrpc_error(rpc_id, decision, decision_id)),
                      event="message")


def challenge(reply: Reply) -> Reply:
    """A refusal for a missing token as a proxy-auth challenge, so clients that only send
    credentials when asked (``http://agent:<token>@proxy``) retry with them."""
    headers = {**reply.headers, "Proxy-Authenticate": 'Basic realm="fiveplane"'}
    return Reply(407, headers, reply.body)
