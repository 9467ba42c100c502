"""The ``compensations`` section: which side-effecting calls the proxy can undo, and how.

Compiled once into immutable objects: the gateway asks ``Compensations.for_action`` on
every forwarded MCP call (a frozenset lookup when the tool names no compensation), and
``Compensation.resolve`` builds the undo call's arguments from the call and its result.

A ``from_result`` path is dotted keys and list indexes into the tool result:
``structuredContent`` when the server sent one, else the JSON document in the first
text content item (``id``, ``ticket.id``, ``items.0.id``).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..action import Action
from .match import CompiledMatch, Issue, Path, compile_match, unknown_servers
from .matchers import is_glob

_SEGMENT = re.compile(r"[^.\s\[\]]+")
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
    tool: str
    args: tuple[tuple[str, ArgSource], ...]
    line: int

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

    def for_action(self, action: Action) -> tuple[Compensation, ...]:
        """The compensations the (allowed, about to be forwarded) call needs."""
        if not self.items or action.mcp_method != "tools/call":
            return ()
        if action.name not in self.tools and "" not in self.tools:
            return ()
        return tuple(c for c in self.items if c.match.admits(action))

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
        if "tool" not in match_spec:
            issues.append(("policy_compensation_error",
                           "a compensation matches MCP tool calls: `match` needs `tool`",
                           mpath))
            continue
        for name in unknown_servers(match_spec, servers):
            issues.append(_unknown_server(name, servers, (*mpath, "server")))
        match, bad = compile_match(match_spec, mpath)
        issues.extend(bad)
        undo = spec["undo"]
        upath = (*path, "undo")
        server = undo.get("server")
        if server is not None and server not in servers:
            issues.append(_unknown_server(server, servers, (*upath, "server")))
        args: list[tuple[str, ArgSource]] = []
        for name, value in (undo.get("args") or {}).items():
            apath = (*upath, "args", name)
            if isinstance(value, Mapping) and _FROM_RESULT in value:
                parsed = parse_path(value[_FROM_RESULT])
                if parsed is None:
                    issues.append(("policy_compensation_error",
                                   f"malformed from_result path {value[_FROM_RESULT]!r}: use "
                                   "dotted keys and list indexes, e.g. `ticket.id` or "
                                   "`items.0.id`", (*apath, _FROM_RESULT)))
                    continue
                args.append((name, ArgSource(_FROM_RESULT, path=parsed)))
            elif isinstance(value, Mapping) and _FROM_ARGS in value:
                args.append((name, ArgSource(_FROM_ARGS, path=(str(value[_FROM_ARGS]),))))
            else:
                args.append((name, ArgSource(_LITERAL, value=value)))
        if match is None:
            continue
        names = match_spec["tool"] if isinstance(match_spec["tool"], list) else [
            match_spec["tool"]]
        tools = frozenset("" if is_glob(n) else n for n in names)
        out.append(Compensation(cid, match, tools, server, undo["tool"], tuple(args),
                                lines(path)))
    return Compensations(tuple(out), frozenset().union(*(c.tools for c in out))), issues


def _unknown_server(name: str, servers: frozenset[str] | set[str], path: Path) -> Issue:
    hint = difflib.get_close_matches(name, sorted(servers), n=1)
    more = f" (did you mean `{hint[0]}`?)" if hint else ""
    return ("policy_reference_error",
            f"unknown MCP server `{name}`{more}; declare it under mcp_servers", path)
