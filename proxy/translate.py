"""Turn what the addon saw (plain data, no mitmproxy types) into an ``Action``, or into
a refusal when the proxy cannot be sure what the upstream will see.

Everything ambiguous is refused, never passed: batches, duplicate JSON keys, unknown
content encodings, compression bombs, header/body mismatches (``Mcp-Method`` must equal
the body's method), tool names outside the MCP character set, oversized bodies.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .action import NAMED_METHODS, Action, Kind, StopPoint
from .codec import BodyError, decode_body, loads_strict
from .netaddr import HostError, normalize_host
from .paths import normalize_path
from .policy.compiled import CompiledPolicy
from .principal import ANONYMOUS, Principal
from .state.session import MCP_SESSION_HEADER, SESSION_HEADER, pick_session_id

# MCP 2025-11-25: tool names SHOULD use only these characters; anything else (unicode
# look-alikes, spaces, control characters) is refused rather than guessed at.
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_METHOD = re.compile(r"[\x21-\x7e]{1,128}")
_MCP_HEADERS = ("mcp-protocol-version", "mcp-session-id", "mcp-method", "mcp-name")
_SINGLE_HEADERS = frozenset({*_MCP_HEADERS, "content-type", "content-encoding", "content-length"})
MAX_JSON_DEPTH = 64
# Member names that parsers matching keys case-insensitively (Go's encoding/json, many
# .NET setups) would read from `METHOD`, `Name`, "argument\u017f"...: such spellings are refused.
_MESSAGE_KEYS = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})
_PARAMS_KEYS = frozenset({"name", "uri", "arguments", "_meta"})
_FIRST_VALUE = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Refusal:
    """The request cannot be judged safely; ``code`` becomes rule id ``mediation.<code>``."""

    code: str
    message: str
    rpc_id: str | int | None = None


@dataclass(frozen=True, slots=True)
class RequestView:
    method: str
    scheme: str
    host: str
    port: int
    path: str                              # as sent, may include the query
    headers: tuple[tuple[str, str], ...]   # lowercased names, in order, repeats kept
    body: bytes
    principal: Principal = ANONYMOUS


def header_map(headers: Iterable[tuple[str, str]]) -> dict[str, str] | Refusal:
    out: dict[str, str] = {}
    for name, value in headers:
        if name in out and name in _SINGLE_HEADERS:
            return Refusal("ambiguous_header", f"header `{name}` appears more than once")
        out[name] = value
    return out


def translate_connect(host: str, port: int, principal: Principal = ANONYMOUS) -> Action | Refusal:
    try:
        norm = normalize_host(host)
    except HostError as e:
        return Refusal("bad_host", f"cannot interpret host {host!r}: {e}")
    return Action(Kind.CONNECT, StopPoint.CONNECT, "https" if port == 443 else "http",
                  norm, port, principal=principal)


def translate_request(view: RequestView, policy: CompiledPolicy) -> Action | Refusal:
    headers = header_map(view.headers)
    if isinstance(headers, Refusal):
        return headers
    try:
        host = normalize_host(view.host)
    except HostError as e:
        return Refusal("bad_host", f"cannot interpret host {view.host!r}: {e}")
    path = normalize_path(view.path)
    method = view.method.upper()
    if "websocket" in headers.get("upgrade", "").lower():
        return Refusal("unsupported_protocol",
                       "WebSocket upgrades are not governed by this proxy, so they are refused")
    base = Action(Kind.HTTP, StopPoint.REQUEST_BODY, view.scheme, host, view.port,
                  method=method, path=path, principal=view.principal,
                  session=pick_session_id(headers.get(SESSION_HEADER),
                                          headers.get(MCP_SESSION_HEADER)) or "")
    limit = policy.max_body_bytes
    if len(view.body) > limit:
        return Refusal("body_too_large",
                       f"request body of {len(view.body)} bytes exceeds the {limit}-byte limit")
    try:
        body = decode_body(view.body, headers.get("content-encoding"), limit=limit)
    except BodyError as e:
        return Refusal(e.code, f"request body refused: {e}")

    ref = policy.server_at(view.scheme, host, view.port, path)
    marked = ref is not None or any(h in headers for h in _MCP_HEADERS)
    server = ref.name if ref else f"{view.scheme}://{host}:{view.port}{path}"
    if marked and method in ("GET", "DELETE"):
        pseudo = "transport/stream" if method == "GET" else "transport/terminate"
        return replace(base, kind=Kind.MCP, server=server, mcp_method=pseudo)
    if not marked and not _looks_like_jsonrpc(body, headers):
        if _is_json(headers) and body.strip():
            try:
                loads_strict(body, max_depth=MAX_JSON_DEPTH)
            except BodyError as e:
                return Refusal(e.code, f"JSON request body refused: {e}")
        return base
    if method != "POST":
        return Refusal("mcp_bad_method", f"MCP endpoints take POST, GET or DELETE, not {method}")
    return translate_jsonrpc(base, server, body, headers)


def _is_json(headers: Mapping[str, str]) -> bool:
    ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return ctype == "application/json" or ctype.endswith("+json")


def _looks_like_jsonrpc(body: bytes, headers: Mapping[str, str]) -> bool:
    # Servers often parse JSON whatever the Content-Type says: sniff the body too.
    text = body.lstrip()
    if text[:1] not in (b"{", b"["):
        return False
    if b"jsonrpc" in body.lower():  # JSONRPC too: some parsers match keys case-insensitively
        return True
    if b"\\" not in body:
        return False  # without an escape no JSON key can spell "jsonrpc" differently
    # `{"\u006asonrpc": ...}` is `jsonrpc` to every JSON parser: decode the first value
    # (as streaming parsers do, ignoring what follows) and look at its keys.
    try:
        value, _ = _FIRST_VALUE.raw_decode(text.decode("utf-8", "replace"))
    except RecursionError:
        return True  # too deep to look at: the JSON-RPC path refuses it
    except ValueError:
        return False  # not JSON to a JSON parser either
    items = value if isinstance(value, list) else [value]
    return any(isinstance(i, dict) and any(k.casefold() == "jsonrpc" for k in i)
               for i in items)


def _case_ambiguity(msg: Mapping[str, Any]) -> str | None:
    """Why a parser that matches keys case-insensitively could read ``msg`` differently
    (two keys that differ only in case, or a variant of a JSON-RPC/MCP member name)."""
    params = msg.get("params")
    for obj, names in ((msg, _MESSAGE_KEYS), (params, _PARAMS_KEYS)):
        if isinstance(obj, dict):
            for key in obj:
                if key not in names and key.casefold() in names:
                    return f"key {key!r} is {key.casefold()!r} to case-insensitive parsers"
    stack: list[Any] = [msg]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            seen: dict[str, str] = {}
            for key, value in item.items():
                other = seen.setdefault(key.casefold(), key)
                if other != key:
                    return f"keys {other!r} and {key!r} differ only in case"
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _decode_header_value(value: str) -> str:
    # 2026-07-28: non-ASCII values travel as =?base64?...?=
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return "\0invalid"
    return value


def translate_jsonrpc(
    base: Action, server: str, body: bytes, headers: Mapping[str, str]
) -> Action | Refusal:
    try:
        msg = loads_strict(body, max_depth=MAX_JSON_DEPTH)
    except BodyError as e:
        return Refusal(e.code, f"MCP message refused: {e}")
    if isinstance(msg, list):
        return Refusal("jsonrpc_batch",
                       "JSON-RPC batches are refused: send one MCP message per request")
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        return Refusal("jsonrpc_invalid", "not a JSON-RPC 2.0 message object")
    ambiguity = _case_ambiguity(msg)
    if ambiguity is not None:
        rpc_id = msg.get("id")
        return Refusal("duplicate_key", f"MCP message refused: {ambiguity} (servers disagree "
                       "on which value wins)",
                       rpc_id if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool)
                       else None)
    rpc_id = msg.get("id")
    if "id" in msg and (not isinstance(rpc_id, str | int) or isinstance(rpc_id, bool)):
        return Refusal("jsonrpc_invalid", "JSON-RPC id must be a string or an integer")
    if "method" not in msg:
        if "id" in msg and ("result" in msg) != ("error" in msg):
            return replace(base, kind=Kind.MCP, server=server, mcp_method="client/response",
                            rpc_id=rpc_id)
        return Refusal("jsonrpc_invalid", "JSON-RPC message without method", rpc_id)
    method = msg["method"]
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        return Refusal("jsonrpc_invalid", "JSON-RPC method must be a printable ASCII string",
                       rpc_id)
    params = msg.get("params", {})
    if not isinstance(params, dict):
        return Refusal("jsonrpc_invalid", "JSON-RPC params must be an object", rpc_id)
    name = ""
    arguments: Mapping[str, Any] = {}
    key = NAMED_METHODS.get(method)
    if key is not None:
        name = params.get(key)
        if not isinstance(name, str):
            return Refusal("mcp_invalid", f"{method} needs a string `{key}`", rpc_id)
        if key == "name" and not _NAME.fullmatch(name):
            return Refusal(
                "mcp_bad_name",
                f"{method} name {name!r} has characters outside [A-Za-z0-9_.-] "
                "(look-alike or hidden characters are refused)", rpc_id)
        args = params.get("arguments", {})
        if not isinstance(args, dict):
            return Refusal("mcp_invalid", f"{method} arguments must be an object", rpc_id)
        arguments = args
    declared_method = headers.get("mcp-method")
    if declared_method is not None and declared_method != method:
        return Refusal("mcp_header_mismatch",
                       f"Mcp-Method header {declared_method!r} does not match body method "
                       f"{method!r}", rpc_id)
    declared_name = headers.get("mcp-name")
    if declared_name is not None and _decode_header_value(declared_name) != name:
        return Refusal("mcp_header_mismatch",
                       f"Mcp-Name header does not match the body's {key or 'name'} {name!r}",
                       rpc_id)
    return replace(base, kind=Kind.MCP, server=server, mcp_method=method, name=name,
                    arguments=arguments, rpc_id=rpc_id)
