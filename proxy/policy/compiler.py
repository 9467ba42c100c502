"""Policy compiler: YAML text → ``CompiledPolicy``, in ordered stages that each collect
issues, so one run reports every mistake with ``file:line`` and a stable code.

Stages: parse (YAML, duplicate keys) → schema (JSON Schema, unknown keys) → network →
servers → rules (patterns, predicates, references, unique ids) → index.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from ..action import Action
from ..decision import Plane, Verdict
from ..errors import PolicyError, PolicyIssue
from ..netaddr import METADATA_NETWORKS, HostError, normalize_host
from ..paths import normalize_path
from ..planes.endpoint import ANY, EndpointPlane
from ..planes.network import Destination, DestinationIndex, InternalException, NetworkPlane
from . import loader
from .compiled import CompiledPolicy, ServerRef
from .matchers import compile_predicate, glob_test, is_glob
from .rules import Rule, default_reason, make_decision

DEFAULT_MAX_BODY = 10 * 1024 * 1024
MAX_ISSUES = 50

IMPLIED_METHOD = {"tool": "tools/call", "resource": "resources/read", "prompt": "prompts/get"}
MCP_KEYS = frozenset({"server", "mcp_method", "tool", "resource", "prompt", "args"})


@cache
def schema() -> dict[str, Any]:
    text = resources.files("proxy").joinpath("data/policy.schema.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@dataclass
class _Ctx:
    file: str
    doc: Any
    version: str
    issues: list[PolicyIssue] = field(default_factory=list)

    def issue(self, code: str, message: str, path: tuple[str | int, ...] = (),
              rule_id: str | None = None) -> None:
        if rule_id is None and len(path) >= 2 and path[0] == "rules":
            rule_id = _rule_id(self.doc, path[1])
        self.issues.append(
            PolicyIssue(code, message, self.file, loader.line_of(self.doc, path), rule_id)
        )


def _rule_id(doc: Any, index: str | int) -> str | None:
    try:
        rid = doc["rules"][index]["id"]
    except (KeyError, IndexError, TypeError):
        return None
    return rid if isinstance(rid, str) else None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def policy_version(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- stage: schema ---------------------------------------------------------------


def _check_schema(ctx: _Ctx) -> None:
    validator = jsonschema.Draft202012Validator(schema())
    for error in sorted(validator.iter_errors(ctx.doc), key=lambda e: list(e.absolute_path)):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - allowed):
                hint = difflib.get_close_matches(key, sorted(allowed), n=1)
                more = f" (did you mean `{hint[0]}`?)" if hint else ""
                ctx.issue("policy_unknown_key", f"unknown key `{key}`{more}", (*path, key))
            continue
        where = ".".join(str(p) for p in path) or "policy"
        message = error.message
        if error.validator == "oneOf":
            message = f"{_short(error.instance)} is not a valid value here"
        elif error.validator == "enum":
            choices = ", ".join(map(str, error.validator_value))
            message = f"{_short(error.instance)} is not one of: {choices}"
        ctx.issue("policy_schema_error", f"`{where}`: {message}", path)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# --- stage: network ---------------------------------------------------------------


def _hosts(ctx: _Ctx, patterns: Iterable[str], path: tuple[str | int, ...]) -> tuple[str, ...]:
    out = []
    for pattern in patterns:
        if pattern == "*":
            out.append("*")
            continue
        prefix, bare = ("*.", pattern[2:]) if pattern.startswith("*.") else ("", pattern)
        if is_glob(bare):
            if prefix or not re.fullmatch(r"[A-Za-z0-9.*?\-_\[\]]+", bare):
                ctx.issue("policy_pattern_error", f"bad host pattern `{pattern}`", path)
                continue
            out.append(bare.lower())
            continue
        try:
            out.append(prefix + normalize_host(bare))
        except HostError as e:
            ctx.issue("policy_pattern_error", f"bad host `{pattern}`: {e}", path)
    return tuple(out)


def _ports(value: Any) -> frozenset[int] | None:
    return None if value is None else frozenset(_as_list(value))


def _destinations(ctx: _Ctx, section: str, items: list[Any]) -> DestinationIndex:
    entries = []
    for i, item in enumerate(items):
        path = ("network", section, i)
        if not isinstance(item, dict) or "host" not in item:
            continue  # reported by the schema stage
        hosts = _hosts(ctx, _as_list(item["host"]), (*path, "host"))
        dest = Destination(
            id=item.get("id") or f"network.{section}[{i}]",
            ports=_ports(item.get("ports")),
            schemes=frozenset(_as_list(item["schemes"])) if "schemes" in item else None,
        )
        entries.append((hosts, dest))
    return DestinationIndex(entries)


def _network(ctx: _Ctx, section: dict[str, Any]) -> NetworkPlane:
    allow = _destinations(ctx, "allow", section["allow"]) if "allow" in section else None
    deny = _destinations(ctx, "deny", section.get("deny", []))
    internal = []
    for i, item in enumerate(section.get("allow_internal", [])):
        path = ("network", "allow_internal", i, "cidr")
        try:
            net = ipaddress.ip_network(item["cidr"], strict=False)
        except (ValueError, TypeError, KeyError) as e:
            ctx.issue("policy_pattern_error", f"bad cidr `{item['cidr']}`: {e}", path)
            continue
        if any(net.overlaps(m) for m in METADATA_NETWORKS if m.version == net.version):
            ctx.issue(
                "policy_unsafe_error",
                f"`{item['cidr']}` covers a cloud metadata address; those are never allowed",
                path,
            )
            continue
        internal.append(InternalException(
            id=item.get("id") or f"network.allow_internal[{i}]",
            network=net, ports=_ports(item.get("ports")),
        ))
    return NetworkPlane(ctx.version, allow, deny, tuple(internal))


# --- stage: servers ---------------------------------------------------------------


def _servers(ctx: _Ctx, section: dict[str, Any]) -> dict[tuple[str, str, int, str], ServerRef]:
    out: dict[tuple[str, str, int, str], ServerRef] = {}
    for name, spec in section.items():
        path = ("mcp_servers", name, "url")
        parts = urlsplit(spec["url"])
        try:
            host = normalize_host(parts.hostname or "")
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except (HostError, ValueError) as e:
            ctx.issue("policy_pattern_error", f"bad server url `{spec['url']}`: {e}", path)
            continue
        ref = ServerRef(name, parts.scheme, host, port, normalize_path(parts.path) or "/")
        key = (ref.scheme, ref.host, ref.port, ref.path.rstrip("/") or "/")
        if key in out:
            ctx.issue("policy_conflict_error",
                      f"server `{name}` has the same url as `{out[key].name}`", path)
            continue
        out[key] = ref
    return out


# --- stage: rules -----------------------------------------------------------------


def _field_test(attr: str, test: Any) -> Any:
    def check(action: Action) -> bool:
        return bool(test(getattr(action, attr)))
    return check


def _rule(ctx: _Ctx, i: int, spec: dict[str, Any], servers: set[str], seen: dict[str, int],
          mcp_out: list[Any], http_out: list[Any]) -> Rule | None:
    rid = spec["id"]
    path: tuple[str | int, ...] = ("rules", i)
    line = loader.line_of(ctx.doc, path)
    if rid in seen:
        ctx.issue("policy_duplicate_id", f"rule id `{rid}` already used at line {seen[rid]}",
                  (*path, "id"))
    seen.setdefault(rid, line)
    match: dict[str, Any] = spec["match"]
    mpath = (*path, "match")
    verdict = Verdict(spec["effect"])
    tests: list[Any] = []
    errors_before = len(ctx.issues)

    host_keys: tuple[str, ...] = (ANY,)
    if "host" in match:
        hosts = _hosts(ctx, _as_list(match["host"]), (*mpath, "host"))
        if "*" not in hosts:
            if any(is_glob(h.removeprefix("*.")) for h in hosts):
                tests.append(_field_test("host", glob_test(hosts)))
            else:
                host_keys = hosts  # exact and "*.parent" keys are both index keys
    if "scheme" in match:
        schemes = frozenset(s.lower() for s in _as_list(match["scheme"]))
        tests.append(_field_test("scheme", schemes.__contains__))
    if "port" in match:
        tests.append(_field_test("port", frozenset(_as_list(match["port"])).__contains__))
    if "path" in match:
        paths = [normalize_path(p) if not is_glob(p) else p for p in _as_list(match["path"])]
        tests.append(_field_test("path", glob_test(paths, segment=True)))
    http_methods = None
    if "method" in match:
        http_methods = tuple(m.upper() for m in _as_list(match["method"]))

    is_mcp = bool(MCP_KEYS & match.keys())
    if is_mcp:
        if http_methods is not None:
            ctx.issue("policy_conflict_error",
                      "`method` is for HTTP rules; use `mcp_method` for MCP", (*mpath, "method"))
        named = [k for k in IMPLIED_METHOD if k in match]
        if len(named) > 1:
            ctx.issue("policy_conflict_error",
                      f"use only one of {', '.join(named)} in a rule", mpath)
            return None
        methods: list[str] = [str(m) for m in _as_list(match.get("mcp_method", []))]
        names: list[str] = []
        if named:
            implied = IMPLIED_METHOD[named[0]]
            if methods and methods != [implied]:
                ctx.issue("policy_conflict_error",
                          f"`{named[0]}` implies mcp_method `{implied}`", (*mpath, "mcp_method"))
            methods = [implied]
            names = [str(n) for n in _as_list(match[named[0]])]
        server_patterns = [str(s) for s in _as_list(match.get("server", []))]
        for s in server_patterns:
            if not is_glob(s) and s not in servers and "://" not in s:
                hint = difflib.get_close_matches(s, sorted(servers), n=1)
                more = f" (did you mean `{hint[0]}`?)" if hint else ""
                ctx.issue("policy_reference_error",
                          f"unknown MCP server `{s}`{more}; declare it under mcp_servers",
                          (*mpath, "server"))
        if "args" in match and methods and set(methods) - set(IMPLIED_METHOD.values()):
            ctx.issue("policy_conflict_error",
                      "`args` only applies to tools/call, prompts/get and resources/read",
                      (*mpath, "args"))
        dims = []
        for attr, patterns in (("server", server_patterns), ("mcp_method", methods),
                               ("name", names)):
            if not patterns or "*" in patterns or "**" in patterns:
                dims.append((ANY,))
            elif any(is_glob(p) for p in patterns):
                dims.append((ANY,))
                tests.append(_field_test(attr, glob_test(patterns)))
            else:
                dims.append(tuple(patterns))
        arg_tests = []
        for arg, pred in (match.get("args") or {}).items():
            try:
                arg_tests.append((arg, compile_predicate(arg, pred)))
            except (ValueError, TypeError, re.error) as e:
                ctx.issue("policy_predicate_error", f"argument `{arg}`: {e}",
                          (*mpath, "args", arg))
    else:
        arg_tests = []
        dims = []

    if len(ctx.issues) > errors_before:
        return None
    reason = spec.get("reason") or default_reason(rid, verdict)
    rule = Rule(
        id=rid, verdict=verdict, plane=Plane.ENDPOINT, reason=reason,
        decision=make_decision(verdict, (rid,), reason, ctx.version, Plane.ENDPOINT),
        tests=tuple(tests), arg_tests=tuple(arg_tests), file=ctx.file, line=line,
    )
    if is_mcp:
        mcp_out.append((rule, *dims))
    else:
        http_out.append((rule, host_keys, http_methods or (ANY,)))
    return rule


# --- entry points -----------------------------------------------------------------


def compile_text(text: str, filename: str = "<policy>") -> CompiledPolicy:
    """Compile one policy document; raises ``PolicyError`` listing every issue."""
    doc, issues = loader.parse_text(text, filename)
    if doc is None and not issues:
        issues = [PolicyIssue("policy_schema_error", "the policy is empty", filename, 1)]
    if doc is not None and not isinstance(doc, dict):
        issues.append(PolicyIssue("policy_schema_error", "a policy must be a mapping",
                                  filename, 1))
    if doc is None or not isinstance(doc, dict):
        raise PolicyError(issues[:MAX_ISSUES])
    ctx = _Ctx(filename, doc, policy_version(text), issues)
    _check_schema(ctx)
    shape_ok = not ctx.issues
    mcp_rules: list[Any] = []
    http_rules: list[Any] = []
    rules: list[Rule] = []
    # Semantic stages also run on a document with schema errors, so one run reports every
    # mistake; a stage that trips on what the schema already reported is skipped.
    tolerated = () if shape_ok else (TypeError, KeyError, AttributeError, ValueError)
    network = None
    servers: dict[tuple[str, str, int, str], ServerRef] = {}
    with contextlib.suppress(tolerated):
        network = _network(ctx, doc.get("network", {}))
    with contextlib.suppress(tolerated):
        servers = _servers(ctx, doc.get("mcp_servers", {}))
    names = {ref.name for ref in servers.values()}
    seen: dict[str, int] = {}
    for i, spec in enumerate(doc.get("rules", []) if isinstance(doc.get("rules"), list) else []):
        try:
            rule = _rule(ctx, i, spec, names, seen, mcp_rules, http_rules)
        except tolerated:
            continue
        if rule is not None:
            rules.append(rule)
    if ctx.issues:
        raise PolicyError(sorted(ctx.issues, key=lambda i: i.line)[:MAX_ISSUES])
    assert network is not None

    defaults = doc.get("defaults", {})
    default_verdict = Verdict(defaults.get("effect", "deny"))
    reason = ("no rule matched: denied by default" if default_verdict is Verdict.DENY
              else "no rule matched: allowed by the policy default")
    return CompiledPolicy(
        name=doc["name"],
        version=ctx.version,
        source=text,
        file=filename,
        default_decision=make_decision(
            default_verdict, ("defaults.effect",), reason, ctx.version, Plane.REASONING
        ),
        max_body_bytes=defaults.get("max_body_bytes", DEFAULT_MAX_BODY),
        network=network,
        endpoint=EndpointPlane(ctx.version, mcp_rules, http_rules, frozenset(names)),
        rules=tuple(rules),
        servers=servers,
    )


def compile_file(path: str | Path) -> CompiledPolicy:
    text, issues = loader.read_file(path)
    if text is None:
        raise PolicyError(issues)
    return compile_text(text, str(path))
