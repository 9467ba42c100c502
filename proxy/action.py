"""The action model: what crossed the proxy, as plain data the adjudicator decides on.

One flat, immutable ``Action`` serves every stop point; ``kind`` says which fields are
meaningful. Flat beats a class hierarchy here: compiled matchers read attributes
directly, with no isinstance checks on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from .principal import ANONYMOUS, Principal


class Kind(StrEnum):
    CONNECT = "connect"            # CONNECT / TLS client hello: only the destination is known
    HTTP = "http"                  # a plain HTTP request (not MCP)
    MCP = "mcp"                    # a client → server MCP JSON-RPC message
    MCP_SERVER = "mcp_server"      # a server → client MCP request or notification
    RESPONSE = "response"          # response headers / body / chunk
    SESSION_END = "session_end"


class StopPoint(StrEnum):
    CONNECT = "connect"
    REQUEST_HEADERS = "request_headers"
    REQUEST_BODY = "request_body"
    RESPONSE_HEADERS = "response_headers"
    RESPONSE_BODY = "response_body"
    SERVER_TO_CLIENT = "server_to_client"
    SESSION_END = "session_end"


EMPTY_ARGS: Mapping[str, Any] = MappingProxyType({})

# MCP methods whose params.name / params.uri names the thing acted on.
NAMED_METHODS = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
}


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    stop: StopPoint
    scheme: str
    host: str                       # normalized: lowercase, no trailing dot, canonical IP text
    port: int
    method: str = ""                # HTTP method
    path: str = ""                  # normalized path, no query
    server: str = ""                # MCP server identity: declared name, or origin + path
    mcp_method: str = ""            # JSON-RPC method
    name: str = ""                  # tool / prompt name or resource uri
    arguments: Mapping[str, Any] = EMPTY_ARGS
    rpc_id: str | int | None = None
    addresses: tuple[str, ...] = ()  # resolved IP addresses of ``host`` (empty: not resolved yet)
    principal: Principal = ANONYMOUS
    session: str = ""
    # Session context, filled by the gateway before deciding so the adjudicator stays a
    # pure function of the action (and a recorded action can be re-decided):
    at: float = 0.0                          # decision time (unix seconds)
    marks: Mapping[str, float] = EMPTY_ARGS  # label -> last time seen in this session
    tainted: frozenset[str] = frozenset()    # argument names carrying untrusted values
    extra: Mapping[str, Any] = field(default=EMPTY_ARGS)

    @property
    def target(self) -> str:
        default = 443 if self.scheme == "https" else 80
        hostport = self.host if self.port == default else f"{self.host}:{self.port}"
        if ":" in self.host:
            hostport = f"[{self.host}]" if self.port == default else f"[{self.host}]:{self.port}"
        return f"{self.scheme}://{hostport}{self.path}"

    def summary(self) -> str:
        if self.kind in (Kind.MCP, Kind.MCP_SERVER):
            what = f"{self.mcp_method} {self.name}".strip()
            return f"MCP {what} on {self.server or self.target}"
        if self.kind is Kind.CONNECT:
            return f"CONNECT {self.host}:{self.port}"
        return f"{self.method} {self.target}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind.value,
            "stop": self.stop.value,
            "scheme": self.scheme,
            "host": self.host,
            "port": self.port,
        }
        for key in ("method", "path", "server", "mcp_method", "name", "session"):
            value = getattr(self, key)
            if value:
                d[key] = value
        if self.rpc_id is not None:
            d["rpc_id"] = self.rpc_id
        if self.addresses:
            d["addresses"] = list(self.addresses)
        if self.arguments:
            d["arguments"] = dict(self.arguments)
        if self.at:
            d["at"] = self.at
        if self.marks:
            d["marks"] = dict(self.marks)
        if self.tainted:
            d["tainted"] = sorted(self.tainted)
        d["principal"] = self.principal.to_dict()
        return d
