"""The ``compensations`` section: which side-effecting calls the proxy can undo, and how.

Compiled once into immutable objects: the gateway asks ``Compensations.for_action`` on
every forwarded call (a frozenset lookup when the tool names no compensation, nothing
at all for HTTP when no HTTP compensation exists), and ``Compensation.resolve`` /
``Compensation.url_for`` build the undo call from the call and its result.

A ``from_result`` path is dotted keys and list indexes into the result: for an MCP tool,
``structuredContent`` when the server sent one, else the JSON document in the first
text content item; for HTTP, the JSON response body (``id``, ``ticket.id``, ``items.0.id``).
An HTTP undo URL names result values as ``{result.PATH}`` in its path or query only
(never in the scheme, host or port: a result must not choose where the proxy sends),
each percent-encoded as one path segment.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from ..action import Action, Kind
from .match import MCP_KEYS, CompiledMatch, Issue, Path, compile_match, unknown_servers
from .matchers import is_glob

_SEGMENT = re.compile(r"[^.\s\[\]{}]+")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_LITERAL, _FROM_RESULT, _FROM_ARGS = "literal", "from_result", "from_args"


class Unresolvable(Exception):
    """The result (or the call) does not carry a value the undo call needs."""


@dataclass(frozen=True, slots=True)
class ArgSource:
    kind: str                          # literal | from_result | from_args
    value: Any = None                  # the literal
    path: tuple[str | int, ...] = ()   # from_result: keys and indexes; from_args: (name,)


@dataclass(frozen=True, slots=True, eq=False)
class Compensation:
    id: str
    match: CompiledMatch
    tools: frozenset[str]              # tool names the match can admit ("" : any)
    server: str | None                 # the undo call's server; None: the matched call's
    tool: str                          # MCP: the undo tool ("" for HTTP)
    args: tuple[tuple[str, ArgSource], ...]   # MCP arguments / HTTP JSON body
    line: int
    method: str = ""                   # HTTP: the undo request's method ...
    url: tuple[str | tuple[str | int, ...], ...] = ()   # ... and URL: text and result paths

    @property
    def http(self) -> bool:
        return not self.tool

    @property
    def undo_summary(self) -> str:
        if self.tool:
            return self.tool
        url = "".join(p if isinstance(p, str) else "{result." + ".".join(map(str, p)) + "}"
                      for p in self.url)
        return f"{self.method} {url}"

    def url_for(self, result: Any) -> str:
        """The HTTP undo URL with its ``{result.PATH}`` values (each one encoded as a
        single path segment: a value cannot add segments, a query or a fragment)."""
        out: list[str] = []
        document: Any = _MISSING
        for part in self.url:
            if isinstance(part, str):
                out.append(part)
                continue
            if document is _MISSING:
                document = result_document(result)
            value = _walk(document, part, "the url")
            if isinstance(value, Mapping | list | bool):
                raise Unresolvable(f"the result's `{'.'.join(map(str, part))}` is not a "
                                   "string or number")
            # dots too: a value of `..` must not become a dot segment that climbs
            out.append(quote(str(value), safe="").replace(".", "%2E"))
        return "".join(out)

    @property
    def needs_result(self) -> bool:
        return any(src.kind == _FROM_RESULT for _, src in self.args)

    def resolve(self, call: Action, result: Any) -> dict[str, Any]:
        """The undo call's arguments; ``Unresolvable`` says which value is missing."""
        out: dict[str, Any] = {}
        document: Any = _MISSING
        for name, src in self.args:
            if src.kind == _LITERAL:
                out[name] = src.value
            elif src.kind == _FROM_ARGS:
                key = str(src.path[0])
                if key not in call.arguments:
                    raise Unresolvable(f"the call has no argument `{key}` for `{name}`")
                out[name] = call.arguments[key]
            else:
                if document is _MISSING:
                    document = result_document(result)
                out[name] = _walk(document, src.path, name)
        return out


_MISSING: Any = object()


def result_document(result: Any) -> Any:
    """What ``from_result`` paths walk: ``structuredContent``, else the JSON text of the
    first text content item. ``Unresolvable`` when there is neither."""
    if isinstance(result, HttpResult):
        if not 200 <= result.status < 300:
            raise Unresolvable(f"the call failed (HTTP {result.status})")
        try:
            return json.loads(result.body)
        except ValueError:
            raise Unresolvable("the response body is not JSON") from None
    if not isinstance(result, Mapping):
        raise Unresolvable("the result is not an object")
    if result.get("isError") is True:
        raise Unresolvable("the call returned an error result")
    structured = result.get("structuredContent")
    if isinstance(structured, Mapping | list):
        return structured
    for item in result.get("content") or ():
        if isinstance(item, Mapping) and item.get("type") == "text":
            try:
                return json.loads(str(item.get("text", "")))
            except ValueError:
                raise Unresolvable("the result's text is not JSON") from None
    raise Unresolvable("the result has neither structuredContent nor text content")


@dataclass(frozen=True, slots=True)
class HttpResult:
    """What came back for a plain HTTP call."""

    status: int
    body: bytes


def _walk(document: Any, path: tuple[str | int, ...], name: str) -> Any:
    value = document
    for step in path:
        if isinstance(value, Mapping) and str(step) in value:
            value = value[str(step)]
        elif isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            value = value[step]
        else:
            where = ".".join(str(p) for p in path)
            raise Unresolvable(f"the result has no `{where}` for `{name}`")
    if value is None:
        raise Unresolvable(f"the result's `{'.'.join(map(str, path))}` is null for `{name}`")
    return value


def parse_path(text: str) -> tuple[str | int, ...] | None:
    """``a.b.0.c`` → ("a", "b", 0, "c"); None when malformed (empty segment, spaces,
    brackets)."""
    if not isinstance(text, str) or not text:
        return None
    out: list[str | int] = []
    for segment in text.split("."):
        if not _SEGMENT.fullmatch(segment):
            return None
        out.append(int(segment) if segment.isdigit() else segment)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Compensations:
    items: tuple[Compensation, ...] = ()
    tools: frozenset[str] = frozenset()    # every tool some item can match ("" : any)
    http: tuple[Compensation, ...] = ()

    def for_action(self, action: Action) -> tuple[Compensation, ...]:
        """The compensations the (allowed, about to be forwarded) call needs."""
        if action.kind is Kind.HTTP:
            return tuple(c for c in self.http if c.match.admits(action)) if self.http else ()
        if not self.items or action.mcp_method != "tools/call":
            return ()
        if action.name not in self.tools and "" not in self.tools:
            return ()
        return tuple(c for c in self.items if not c.http and c.match.admits(action))

    def get(self, compensation_id: str) -> Compensation | None:
        for c in self.items:
            if c.id == compensation_id:
                return c
        return None


def compile_compensations(items: Any, servers: frozenset[str] | set[str],
                          lines: Any) -> tuple[Compensations, list[Issue]]:
    """``lines(path) -> int`` gives a document path's line (for ``Compensation.line``)."""
    out: list[Compensation] = []
    issues: list[Issue] = []
    seen: set[str] = set()
    for i, spec in enumerate(items or []):
        path: Path = ("compensations", i)
        cid = spec["id"]
        if cid in seen:
            issues.append(("policy_duplicate_id", f"compensation id `{cid}` used twice",
                           (*path, "id")))
        seen.add(cid)
        match_spec = spec["match"]
        mpath = (*path, "match")
        undo = spec["undo"]
        upath = (*path, "undo")
        for name in unknown_servers(match_spec, servers):
            issues.append(_unknown_server(name, servers, (*mpath, "server")))
        match, bad = compile_match(match_spec, mpath)
        issues.extend(bad)
        is_mcp = match.mcp if match is not None else any(k in match_spec for k in MCP_KEYS)
        if is_mcp and "tool" not in match_spec:
            issues.append(("policy_compensation_error",
                           "an MCP compensation matches tool calls: `match` needs `tool`",
                           mpath))
            continue
        if is_mcp != ("tool" in undo):
            issues.append(("policy_compensation_error",
                           "an MCP call is undone by `undo: {tool: ...}`, an HTTP request by "
                           "`undo: {method: ..., url: ...}`" if is_mcp else
                           "an HTTP request is undone by `undo: {method: ..., url: ...}`, "
                           "not by a tool", upath))
            continue
        server = undo.get("server")
        if server is not None and server not in servers:
            issues.append(_unknown_server(server, servers, (*upath, "server")))
        args: list[tuple[str, ArgSource]] = []
        for name, value in (undo.get("args") or {}).items():
            apath = (*upath, "args", name)
            if isinstance(value, Mapping) and _FROM_RESULT in value:
                parsed = parse_path(value[_FROM_RESULT])
                if parsed is None:
                    issues.append(_bad_path(value[_FROM_RESULT], (*apath, _FROM_RESULT)))
                    continue
                args.append((name, ArgSource(_FROM_RESULT, path=parsed)))
            elif isinstance(value, Mapping) and _FROM_ARGS in value:
                args.append((name, ArgSource(_FROM_ARGS, path=(str(value[_FROM_ARGS]),))))
            else:
                args.append((name, ArgSource(_LITERAL, value=value)))
        url: tuple[str | tuple[str | int, ...], ...] = ()
        if not is_mcp:
            if "method" not in undo or "url" not in undo:
                issues.append(("policy_compensation_error",
                               "an HTTP undo needs `method` and `url`", upath))
                continue
            url, bad_url = _compile_url(undo["url"], (*upath, "url"))
            issues.extend(bad_url)
        if match is None:
            continue
        if is_mcp:
            names = match_spec["tool"] if isinstance(match_spec["tool"], list) else [
                match_spec["tool"]]
            tools = frozenset("" if is_glob(n) else n for n in names)
            out.append(Compensation(cid, match, tools, server, undo["tool"], tuple(args),
                                    lines(path)))
        else:
            out.append(Compensation(cid, match, frozenset(), None, "", tuple(args),
                                    lines(path), method=str(undo["method"]).upper(), url=url))
    mcp = tuple(c for c in out if not c.http)
    return Compensations(tuple(out), frozenset().union(*(c.tools for c in mcp)),
                         tuple(c for c in out if c.http)), issues


def _bad_path(text: Any, path: Path) -> Issue:
    return ("policy_compensation_error",
            f"malformed from_result path {text!r}: use dotted keys and list indexes, e.g. "
            "`ticket.id` or `items.0.id`", path)


def _compile_url(text: str, path: Path) -> tuple[tuple[str | tuple[str | int, ...], ...],
                                                 list[Issue]]:
    """``https://h/tickets/{result.id}`` → ("https://h/tickets/", ("id",)); placeholders
    only after the authority."""
    parts = urlsplit(_PLACEHOLDER.sub("x", text))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (), [("policy_compensation_error",
                     f"undo url {text!r} must be an absolute http(s) URL", path)]
    authority_end = text.find("/", len(parts.scheme) + 3)
    authority_end = len(text) if authority_end < 0 else authority_end
    out: list[str | tuple[str | int, ...]] = []
    issues: list[Issue] = []
    last = 0
    for m in _PLACEHOLDER.finditer(text):
        if m.start() < authority_end:
            issues.append(("policy_compensation_error",
                           f"undo url {text!r}: a result value may not choose the scheme, "
                           "host or port; use placeholders in the path or query only", path))
            continue
        name = m.group(1)
        parsed = parse_path(name[len("result."):]) if name.startswith("result.") else None
        if parsed is None:
            issues.append(("policy_compensation_error",
                           f"undo url placeholder {{{name}}}: write `{{result.PATH}}` with a "
                           "dotted path, e.g. `{result.id}`", path))
            continue
        out.extend((text[last:m.start()], parsed))
        last = m.end()
    out.append(text[last:])
    return tuple(p for p in out if p != ""), issues


def _unknown_server(name: str, servers: frozenset[str] | set[str], path: Path) -> Issue:
    hint = difflib.get_close_matches(name, sorted(servers), n=1)
    more = f" (did you mean `{hint[0]}`?)" if hint else ""
    return ("policy_reference_error",
            f"unknown MCP server `{name}`{more}; declare it under mcp_servers", path)
