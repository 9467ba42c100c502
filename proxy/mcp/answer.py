"""Answer a withheld server → client request in the client's stead.

Why: a 2025-era MCP server sends ``sampling/createMessage``, ``elicitation/create`` or
``roots/list`` as an event on an SSE stream and then waits for the client to POST the
response. When the policy withholds that request, the client never sees it, so without an
answer the server's tool waits until its own timeout — and the agent's call with it. The
proxy therefore POSTs the JSON-RPC error itself, as ``fiveplane wrap`` does over stdio.

The answer is an action like any other: adjudicated as ``client/response`` (MCP plumbing,
allowed for declared servers), recorded before it is sent, sent only to the addresses the
network plane admits and with the proxy's upstream trust. Any failure is recorded as a
refusal and logged; the server then times out as it would have without the proxy.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..action import Action, Kind, StopPoint
from ..decision import Decision
from ..errors import AuditError
from ..netaddr import HostError, parse_ip
from ..replies import jsonrpc_error

log = logging.getLogger("fiveplane.mcp")

ANSWER_TIMEOUT = 10.0
# The headers of the stream's request that make the answer land in the same session.
CARRIED = ("mcp-session-id", "mcp-protocol-version", "authorization", "host")


def answer_action(request: Action, rpc_id: str | int, addresses: tuple[str, ...]) -> Action:
    """The client → server response the proxy sends for ``request``'s stream."""
    return replace(request, kind=Kind.MCP, stop=StopPoint.REQUEST_BODY, method="POST",
                   mcp_method="client/response", name="", arguments={}, rpc_id=rpc_id,
                   addresses=addresses or request.addresses)


async def answer_server(gateway: Any, request: Action, rpc_id: str | int, decision: Decision,
                        decision_id: str, *, url: str, headers: Mapping[str, str],
                        verify: ssl.SSLContext | bool,
                        resolve: Callable[[str, int], Awaitable[tuple[str, ...]]]) -> bool:
    """POST the JSON-RPC error for the withheld request ``rpc_id`` to ``url``; True when
    the server accepted it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    action = answer_action(request, rpc_id, ())
    try:
        addresses = await resolve(host, port)
        action = answer_action(request, rpc_id, addresses)
        network = gateway.policy.network
        candidates = [*addresses] + ([host] if _is_ip(host) else [])
        for address in candidates:
            blocked = network.address_verdict(address, port, via=host)
            if blocked is not None:
                gateway.refuse(action, blocked.id, f"the answer to the withheld request was "
                                                   f"not sent: {blocked.reason}")
                return False
        judged = gateway.judge(action)
        if not judged.decision.verdict.proceeds:
            log.warning("the answer to withheld request %r was not sent: %s", rpc_id,
                        judged.decision.reason)
            return False
        try:
            await judged.commit.wait()
        except AuditError as e:
            gateway.cancel(judged, e)
            return False
        body = json.dumps(jsonrpc_error(rpc_id, decision, decision_id)).encode()
        sent = {k: v for k, v in headers.items() if k.lower() in CARRIED}
        sent.update({"content-type": "application/json",
                     "accept": "application/json, text/event-stream"})
        async with httpx.AsyncClient(verify=verify, trust_env=False, timeout=ANSWER_TIMEOUT,
                                     follow_redirects=False) as client:
            response = await client.post(url, content=body, headers=sent)
        if response.status_code >= 300:
            raise OSError(f"the server answered {response.status_code}")
        log.info("answered withheld %r on %s for the client (decision %s)", rpc_id,
                 request.server, decision_id)
        return True
    except Exception as e:  # recorded; the server times out as it would without us
        log.warning("could not answer withheld request %r on %s: %r", rpc_id, request.server, e)
        try:
            gateway.refuse(action, "mcp.answer_failed",
                           f"the answer to the withheld request {rpc_id!r} could not be "
                           f"delivered: {e!r}")
        except Exception:
            log.exception("could not record the failed answer")
        return False


def _is_ip(host: str) -> bool:
    try:
        return parse_ip(host) is not None
    except HostError:
        return False


def upstream_trust(ca_file: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """The trust the proxy itself uses upstream (mitmproxy: certifi, or the configured
    ``ssl_verify_upstream_trusted_ca``)."""
    if insecure:
        return False
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
