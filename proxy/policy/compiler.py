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
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from ..decision import Directive, Plane, Verdict
from ..dlp.policy import compile_data
from ..errors import PolicyError, PolicyIssue
from ..identity.config import IdentityConfig, compile_identity
from ..identity.plane import IdentityPlane, compile_principal_match
from ..mcp.config import McpConfig, compile_mcp
from ..netaddr import METADATA_NETWORKS, HostError, normalize_host
from ..paths import normalize_path
from ..planes.endpoint import ANY, EndpointPlane
from ..planes.network import Destination, DestinationIndex, InternalException, NetworkPlane
from . import loader
from .compensations import Compensations, compile_compensations
from .compiled import CompiledPolicy, ServerRef
from .match import compile_match, unknown_servers
from .matchers import is_glob
from .narrowing import CODE as NARROW_CODE
from .narrowing import Narrowing, compile_narrowing, read_test
from .rules import Rule, default_reason, make_decision
from .sessions import Budget, compile_budgets, compile_untrusted, compile_when
from .until import Completion, Until, compile_until

DEFAULT_MAX_BODY = 10 * 1024 * 1024
MAX_ISSUES = 50



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
    narrowings: dict[str, Narrowing] = field(default_factory=dict)

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


_PARKING = frozenset({Verdict.DEFER, Verdict.PAUSE})


def _until(ctx: _Ctx, spec: dict[str, Any], path: tuple[str | int, ...], rule_ids: set[str],
           completions: list[Completion]) -> Until | None:
    """The ``until`` precondition of a defer / pause rule (and its ``timeout`` checks)."""
    verdict = Verdict(spec["effect"])
    for key in ("until", "timeout"):
        if key in spec and verdict not in _PARKING:
            ctx.issue("policy_until_error", f"`{key}` applies to defer and pause rules only, "
                      f"not to `effect: {verdict.value}`", (*path, key))
    if verdict is Verdict.DEFER and "until" not in spec:
        ctx.issue("policy_until_error", "a defer rule needs `until`: the precondition "
                  "that releases the call", (*path, "effect"))
    if "until" not in spec or verdict not in _PARKING:
        return None
    until, found, issues = compile_until(spec["id"], spec["until"], (*path, "until"), rule_ids)
    for code, message, where in issues:
        ctx.issue(code, message, where)
    completions.extend(found)
    return until


def _rule(ctx: _Ctx, i: int, spec: dict[str, Any], servers: set[str], seen: dict[str, int],
          mcp_out: list[Any], http_out: list[Any], rule_ids: set[str] | None = None,
          completions: list[Completion] | None = None) -> Rule | None:
    rid = spec["id"]
    path: tuple[str | int, ...] = ("rules", i)
    line = loader.line_of(ctx.doc, path)
    if rid in seen:
        ctx.issue("policy_duplicate_id", f"rule id `{rid}` already used at line {seen[rid]}",
                  (*path, "id"))
    seen.setdefault(rid, line)
    mpath = (*path, "match")
    match = {k: v for k, v in spec["match"].items() if k != "principal"}
    extra_tests: list[Any] = []
    if "principal" in spec["match"]:
        test, found = compile_principal_match(spec["match"]["principal"], (*mpath, "principal"))
        for code, message, where in found:
            ctx.issue(code, message, where)
        if test is not None:
            extra_tests.append(test)
    compiled = None
    if match:
        compiled, found = compile_match(match, mpath)
        for code, message, where in found:
            ctx.issue(code, message, where)
    for name in unknown_servers(match, servers):
        hint = difflib.get_close_matches(name, sorted(servers), n=1)
        more = f" (did you mean `{hint[0]}`?)" if hint else ""
        ctx.issue("policy_reference_error",
                  f"unknown MCP server `{name}`{more}; declare it under mcp_servers",
                  (*mpath, "server"))
    tainted: frozenset[str] = frozenset()
    if "when" in spec:
        when_tests, tainted, found = compile_when(spec["when"], (*path, "when"))
        for code, message, where in found:
            ctx.issue(code, message, where)
        extra_tests.extend(when_tests)
    until = _until(ctx, spec, path, rule_ids or set(), completions if completions is not None
                   else [])
    if until is not None:
        # The rule holds the call only while its precondition does not hold: deciding the
        # call again once it holds is the re-adjudication.
        extra_tests.append(lambda a, holds=until.holds: not holds(a))
    if compiled is None and match:
        return None
    verdict = Verdict(spec["effect"])
    if spec.get("rollback") and verdict not in (Verdict.DENY, Verdict.ROLLBACK):
        ctx.issue("policy_conflict_error",
                  f"`rollback: true` needs a refusing rule (effect deny or rollback), not "
                  f"`{verdict.value}`: only a refusal rolls the session back",
                  (*path, "rollback"))
    reason = spec.get("reason") or default_reason(rid, verdict)
    directives: tuple[Directive, ...] = ()
    if spec.get("labels"):
        directives = (Directive(Plane.REASONING, "mark",
                                MappingProxyType({"labels": tuple(spec["labels"])})),)
    directives = (*directives, *_narrowing(ctx, i, spec, verdict))
    tests = extra_tests
    if compiled is not None:
        # The index answers exact dimensions it files rules under: keep only the others.
        indexed = ({"server", "mcp_method", "name"} if compiled.mcp else
                   ({"host"} if compiled.host_keys != (ANY,) else set())
                   | ({"method"} if compiled.http_methods else set()))
        tests = [*(_exact_test(a, v) for a, v in compiled.exact if a not in indexed),
                 *compiled.other, *extra_tests]
    rule = Rule(
        id=rid, verdict=verdict, plane=Plane.ENDPOINT, reason=reason,
        decision=make_decision(verdict, (rid,), reason, ctx.version, Plane.ENDPOINT,
                               directives=directives),
        tests=tuple(tests), arg_tests=compiled.arg_tests if compiled else (),
        file=ctx.file, line=line, tainted_args=tainted, until=until,
        timeout=float(spec["timeout"]) if "timeout" in spec else None,
    )
    if compiled is None:  # only `principal`: applies to every request and MCP message
        mcp_out.append((rule, (ANY,), (ANY,), (ANY,)))
        http_out.append((rule, (ANY,), (ANY,)))
    elif compiled.mcp:
        mcp_out.append((rule, compiled.servers, compiled.mcp_methods, compiled.names))
    else:
        http_out.append((rule, compiled.host_keys, compiled.http_methods or (ANY,)))
    return rule


def _narrowing(ctx: _Ctx, i: int, spec: dict[str, Any], verdict: Verdict
               ) -> tuple[Directive, ...]:
    """The evidence directive of a narrow rule; its compiled form goes to ``ctx``."""
    path: tuple[str | int, ...] = ("rules", i)
    if "narrow" not in spec:
        if verdict is Verdict.NARROW:
            ctx.issue(NARROW_CODE, "`effect: narrow` needs a `narrow` spec saying what to "
                      "narrow", (*path, "effect"))
        return ()
    if verdict is not Verdict.NARROW:
        ctx.issue(NARROW_CODE, f"`narrow` only applies to `effect: narrow`, not "
                  f"`{verdict.value}`", (*path, "narrow"))
        return ()
    narrowing, found = compile_narrowing(spec["id"], spec["narrow"], spec.get("match"),
                                         (*path, "narrow"))
    for code, message, where in found:
        ctx.issue(code, message, where)
    if narrowing is None or found:
        return ()
    ctx.narrowings[narrowing.rule_id] = narrowing
    return (Directive(Plane.ENDPOINT, "narrow",
                      MappingProxyType({"rule": narrowing.rule_id, **narrowing.spec})),)


def _read_only_rule(ctx: _Ctx, narrowing: Narrowing, line: int) -> Rule:
    """The deny a `session: read_only` narrowing leaves behind: an ordinary rule over the
    session label, so recorded decisions re-decide like any other."""
    rid = f"{narrowing.rule_id}:read_only"
    tools = (f" and the tools {', '.join(narrowing.read_tools)}" if narrowing.read_tools
             else "")
    reason = (f"rule `{narrowing.rule_id}` narrowed this session to read-only: only GET, HEAD "
              f"and OPTIONS requests, MCP messages other than tools/call{tools} are allowed")
    return Rule(
        id=rid, verdict=Verdict.DENY, plane=Plane.ENDPOINT, reason=reason,
        decision=make_decision(Verdict.DENY, (rid,), reason, ctx.version, Plane.ENDPOINT),
        tests=(read_test(narrowing),), arg_tests=(), file=ctx.file, line=line)


def _exact_test(attr: str, values: frozenset[Any]) -> Any:
    getter = operator.attrgetter(attr)
    return lambda action: getter(action) in values


# --- entry points -----------------------------------------------------------------


def compile_text(text: str, filename: str = "<policy>", *,
                 resolve_secrets: bool = True, offline: bool = False) -> CompiledPolicy:
    """Compile one policy document; raises ``PolicyError`` listing every issue.

    ``resolve_secrets=False`` checks a policy without reading the credentials it names
    (``fiveplane check`` on a machine that does not hold them). ``offline=True``
    compiles a stored version to re-decide recorded actions: no secrets, and trusted
    root keys that cannot be read are skipped (recorded chains are not re-verified)."""
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
    shadow_mcp: list[Any] = []     # `mode: shadow` rules: decided and recorded, not enforced
    shadow_http: list[Any] = []
    rules: list[Rule] = []
    shadow_ids: set[str] = set()
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
    identity: IdentityConfig | None = None
    try:
        identity, found = compile_identity(
            doc.get("identity"), Path(filename).parent, servers=names,
            resolve_secrets=resolve_secrets and not offline, offline=offline, file=filename)
        for code, message, where in found:
            ctx.issue(code, message, where)
    except tolerated:
        pass
    seen: dict[str, int] = {}
    specs = doc.get("rules", []) if isinstance(doc.get("rules"), list) else []
    rule_ids = {s["id"] for s in specs if isinstance(s, dict) and isinstance(s.get("id"), str)}
    completions: list[Completion] = []
    for i, spec in enumerate(specs):
        shadow = isinstance(spec, dict) and spec.get("mode") == "shadow"
        mcp_out, http_out = (shadow_mcp, shadow_http) if shadow else (mcp_rules, http_rules)
        try:
            rule = _rule(ctx, i, spec, names, seen, mcp_out, http_out, rule_ids,
                         completions)
        except tolerated:
            continue
        if rule is not None:
            rules.append(rule)
            if shadow:
                shadow_ids.add(rule.id)
            narrowing = ctx.narrowings.get(rule.id)
            if narrowing is not None and narrowing.label is not None:
                guard = _read_only_rule(ctx, narrowing, rule.line)
                if guard.id in seen:
                    ctx.issue("policy_duplicate_id", f"rule id `{guard.id}` is taken by the "
                              f"read-only guard of rule `{rule.id}`", ("rules", i, "id"))
                seen.setdefault(guard.id, rule.line)
                mcp_out.append((guard, (ANY,), (ANY,), (ANY,)))
                http_out.append((guard, (ANY,), (ANY,)))
    mcp = McpConfig()
    try:
        mcp, found = compile_mcp(doc.get("mcp"))
        for code, message, where in found:
            ctx.issue(code, message, where)
    except tolerated:
        pass
    data = None
    try:
        data, found = compile_data(doc.get("data"))
        for code, message, where in found:
            ctx.issue(code, message, where)
    except tolerated:
        pass
    budgets: tuple[Budget, ...] = ()
    untrusted: tuple[Any, ...] = ()
    try:
        budgets, found = compile_budgets(doc.get("budgets", []))
        more_untrusted, found2 = compile_untrusted(doc.get("provenance", {}))
        untrusted = more_untrusted
        for code, message, where in (*found, *found2):
            ctx.issue(code, message, where)
    except tolerated:
        pass
    compensations = Compensations()
    try:
        compensations, found = compile_compensations(
            doc.get("compensations", []), frozenset(names),
            lambda where: loader.line_of(doc, where))
        for code, message, where in found:
            ctx.issue(code, message, where)
    except tolerated:
        pass
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
        # No declared servers: protocol plumbing is the enforced plane's business.
        shadow=(EndpointPlane(ctx.version, shadow_mcp, shadow_http, frozenset())
                if shadow_mcp or shadow_http else None),
        shadow_rules=frozenset(shadow_ids),
        narrowings=MappingProxyType(dict(ctx.narrowings)),
        identity=identity,
        identity_plane=IdentityPlane(identity, ctx.version) if identity else None,
        budgets=budgets,
        untrusted=untrusted,
        untrusted_servers=frozenset(
            name for name, spec in doc.get("mcp_servers", {}).items()
            if spec.get("trust") == "untrusted_output"),
        tainted_args=frozenset().union(*(r.tainted_args for r in rules)),
        provenance_ttl=doc.get("provenance", {}).get("ttl"),
        data=data,
        mcp=mcp,
        approval_timeout=float(defaults.get("approval_timeout", 300.0)),
        rules=tuple(rules),
        servers=servers,
        compensations=compensations,
        rollback_rules=frozenset(
            spec["id"] for spec in doc.get("rules", [])
            if spec.get("rollback") or spec.get("effect") == Verdict.ROLLBACK.value),
        completions=tuple(completions),
        awaited_approvals=frozenset(
            label.removeprefix("@approved:") for r in rules if r.until is not None
            for label in r.until.labels if label.startswith("@approved:")),
        rules_by_id=MappingProxyType({r.id: r for r in rules}),
    )


def compile_file(path: str | Path, *, resolve_secrets: bool = True) -> CompiledPolicy:
    text, issues = loader.read_file(path)
    if text is None:
        raise PolicyError(issues)
    return compile_text(text, str(path), resolve_secrets=resolve_secrets)
