"""Helpers for tests and benchmarks: build actions and policies in one line."""

from __future__ import annotations

import textwrap
from typing import Any

from .action import Action, Kind, StopPoint
from .engine import Adjudicator
from .policy import CompiledPolicy, compile_text
from .principal import ANONYMOUS, Principal


def policy(yaml_text: str, filename: str = "<test>") -> CompiledPolicy:
    return compile_text(textwrap.dedent(yaml_text), filename)


def adjudicator(yaml_text: str) -> Adjudicator:
    return Adjudicator(policy(yaml_text))


def mcp_call(tool: str, server: str = "crm", *, method: str = "tools/call",
             host: str = "crm.example.com", port: int = 443, principal: Principal = ANONYMOUS,
             **arguments: Any) -> Action:
    return Action(Kind.MCP, StopPoint.REQUEST_BODY, "https", host, port, method="POST",
                  path="/mcp", server=server, mcp_method=method, name=tool,
                  arguments=arguments, rpc_id=1, principal=principal)


def http_request(method: str, url_host: str, path: str = "/", *, scheme: str = "https",
                 port: int | None = None, addresses: tuple[str, ...] = ()) -> Action:
    return Action(Kind.HTTP, StopPoint.REQUEST_BODY, scheme, url_host,
                  port or (443 if scheme == "https" else 80), method=method, path=path,
                  addresses=addresses)
