"""``match`` mappings: the single place where a policy rule's ``match`` or a delegation
token's grant becomes tests on an ``Action``.

The policy compiler uses it for rules (it also returns the index keys the endpoint
plane files rules under) and the identity plane for grants, so a grant and a rule with
the same mapping can never disagree.

Semantics (same as a policy rule):

* a mapping with any MCP key (``server``, ``mcp_method``, ``tool``, ``resource``,
  ``prompt``, ``args``) applies to MCP actions only; any other mapping applies to HTTP
  actions only;
* ``tool`` / ``resource`` / ``prompt`` imply ``mcp_method`` ``tools/call`` /
  ``resources/read`` / ``prompts/get``;
* hosts are normalized with ``proxy.netaddr.normalize_host`` (``*.example.com`` = any
  subdomain, ``*`` = any host), exact paths with ``proxy.paths.normalize_path``; path
  globs use ``*`` within a segment and ``**`` across segments; HTTP methods are upper-cased;
* every listed test must pass; an argument that cannot be tested (missing, wrong type,
  non-finite number) never admits (fail closed).

A compiled match keeps *every* test explicit (also for exact dimensions the endpoint
index answers), because a grant is evaluated without an index; the policy compiler
drops the tests its index makes redundant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..action import Action, Kind
from ..netaddr import HostError, normalize_host
from ..paths import normalize_path
from .matchers import (
    MISSING,
    ArgTest,
    PredicateError,
    compile_predicate,
    glob_test,
    host_test,
    is_glob,
)

ActionTest = Callable[[Action], bool]
Path = tuple[str | int, ...]
Issue = tuple[str, str, Path]
"""(code, message, path): the fields of a ``proxy.errors.PolicyIssue`` minus the place."""

ANY = "\0any"   # the endpoint plane's wildcard index key (same value as planes.endpoint.ANY)

IMPLIED_METHOD = {"tool": "tools/call", "resource": "resources/read", "prompt": "prompts/get"}
MCP_KEYS = frozenset({"server", "mcp_method", "tool", "resource", "prompt", "args"})
MATCH_KEYS = ("host", "scheme", "port", "method", "path", "server", "mcp_method", "tool",
              "resource", "prompt", "args")
PREDICATE_OPS = ("eq", "ne", "in", "not_in", "regex", "gt", "ge", "lt", "le", "present")

_HOST_GLOB = re.compile(r"[A-Za-z0-9.*?\-_\[\]]+")
_MCP_KINDS = frozenset({Kind.MCP, Kind.MCP_SERVER})
_HTTP_KINDS = frozenset({Kind.HTTP})


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


# --- shape (mirrors #/$defs/match of proxy/data/policy.schema.json) -------------------


def _is_strings(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, str) and v for v in value))


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _predicate_shape(spec: Any, path: Path) -> list[Issue]:
    if not isinstance(spec, Mapping) or not spec:
        return [("policy_schema_error", "a predicate is a non-empty mapping of tests", path)]
    out: list[Issue] = []
    for op, want in spec.items():
        where = (*path, op)
        if op not in PREDICATE_OPS:
            out.append(("policy_schema_error",
                        f"unknown predicate `{op}` (use one of {', '.join(PREDICATE_OPS)})",
                        where))
        elif op in ("gt", "ge", "lt", "le") and not _is_number(want):
            out.append(("policy_schema_error", f"`{op}` needs a finite number", where))
        elif op in ("in", "not_in") and not isinstance(want, list):
            out.append(("policy_schema_error", f"`{op}` needs a list", where))
        elif op == "regex" and not isinstance(want, str):
            out.append(("policy_schema_error", "`regex` needs a string", where))
        elif op == "present" and not isinstance(want, bool):
            out.append(("policy_schema_error", "`present` needs true or false", where))
    return out


def check_shape(match: Any, path: Path = ()) -> list[Issue]:
    """Structural problems of a ``match`` mapping (unknown keys, wrong types), as the
    policy's JSON Schema reports them. Empty when the shape is right."""
    if not isinstance(match, Mapping) or not match:
        return [("policy_schema_error", "a grant is a non-empty mapping", path)]
    out: list[Issue] = []
    for key, value in match.items():
        where = (*path, key)
        if key not in MATCH_KEYS:
            out.append(("policy_unknown_key", f"unknown key `{key}`", where))
        elif key == "port":
            ok = _is_port(value) or (isinstance(value, list) and bool(value)
                                     and all(_is_port(v) for v in value))
            if not ok:
                out.append(("policy_schema_error",
                            "`port` is a port number (1-65535) or a non-empty list of them",
                            where))
        elif key == "args":
            if not isinstance(value, Mapping):
                out.append(("policy_schema_error",
                            "`args` maps argument names to predicates", where))
                continue
            for arg, spec in value.items():
                if not isinstance(arg, str):
                    out.append(("policy_schema_error", "argument names are strings", where))
                    continue
                out.extend(_predicate_shape(spec, (*where, arg)))
        elif not _is_strings(value):
            out.append(("policy_schema_error",
                        f"`{key}` is a non-empty string or a non-empty list of them", where))
    return out


# --- compiled form ----------------------------------------------------------------------


def _field_test(attr: str, test: Callable[[Any], bool]) -> ActionTest:
    def check(action: Action) -> bool:
        return bool(test(getattr(action, attr)))
    return check


@dataclass(frozen=True, slots=True, eq=False)
class CompiledMatch:
    """One ``match`` mapping, ready to test actions.

    ``tests`` hold every non-argument test (destination first, then operation);
    ``scope`` the destination tests plus the server test (what "may talk to this MCP
    server at all" means for protocol plumbing such as ``initialize``). The index
    fields describe the mapping the way the endpoint plane files rules (``ANY`` marks a
    wildcard dimension). ``exact`` and ``other`` split ``tests`` for the hot path:
    exact-value dimensions as (attribute, allowed values), then the remaining tests."""

    source: Mapping[str, Any]
    mcp: bool
    kinds: frozenset[Kind]
    tests: tuple[ActionTest, ...]
    scope: tuple[ActionTest, ...]
    arg_tests: tuple[tuple[str, ArgTest], ...]
    host_keys: tuple[str, ...]
    http_methods: tuple[str, ...] | None
    servers: tuple[str, ...]
    mcp_methods: tuple[str, ...]
    names: tuple[str, ...]
    exact: tuple[tuple[str, frozenset[Any]], ...] = ()
    other: tuple[ActionTest, ...] = ()

    def admits(self, action: Action) -> bool:
        """All tests pass; an argument that cannot be tested does not admit."""
        kind = action.kind
        if self.mcp:
            if kind is not Kind.MCP and kind is not Kind.MCP_SERVER:
                return False
        elif kind is not Kind.HTTP:
            return False
        for attr, values in self.exact:
            if getattr(action, attr) not in values:
                return False
        for test in self.other:
            if not test(action):
                return False
        if self.arg_tests:
            args = action.arguments
            try:
                for name, test_arg in self.arg_tests:
                    if not test_arg(args.get(name, MISSING)):
                        return False
            except PredicateError:
                return False
        return True

    def may_call(self, action: Action) -> bool:
        """Whether some arguments could make ``action`` admitted (``tools/list``)."""
        return action.kind in self.kinds and all(test(action) for test in self.tests)

    def reaches(self, action: Action) -> bool:
        """Whether this grant allows anything on the action's destination and server."""
        return action.kind in self.kinds and all(test(action) for test in self.scope)


_BOUNDS = frozenset({"gt", "ge", "lt", "le"})


def compile_arg(name: str, spec: Mapping[str, Any]) -> ArgTest:
    """``proxy.policy.matchers.compile_predicate``, with an inline fast path for pure
    numeric bounds on plain finite numbers (``type`` exactly int or float). Anything
    else — missing, bool, str, NaN, infinities, subclasses — goes to the matcher
    itself, so the answers (and the PredicateError) are the matcher's."""
    slow = compile_predicate(name, spec)
    if not spec or not _BOUNDS.issuperset(spec):
        return slow
    lo = [(float(w), op == "ge") for op, w in spec.items() if op in ("gt", "ge")]
    hi = [(float(w), op == "le") for op, w in spec.items() if op in ("lt", "le")]
    if len(spec) == 1:
        (op, want), = spec.items()
        bound = float(want)
        if op == "le":
            def le(v: Any) -> bool:
                t = v.__class__
                if t is int or (t is float and v - v == 0.0):
                    return bool(v <= bound)
                return slow(v)
            return le
        if op == "lt":
            def lt(v: Any) -> bool:
                t = v.__class__
                if t is int or (t is float and v - v == 0.0):
                    return bool(v < bound)
                return slow(v)
            return lt

    def bounds(v: Any) -> bool:
        t = v.__class__
        if t is int or (t is float and v - v == 0.0):
            for b, inclusive in lo:
                if not (v >= b if inclusive else v > b):
                    return False
            for b, inclusive in hi:  # noqa: SIM110 -- hot path
                if not (v <= b if inclusive else v < b):
                    return False
            return True
        return slow(v)
    return bounds


def normalize_hosts(patterns: Sequence[Any], path: Path = ()) -> tuple[tuple[str, ...],
                                                                        list[Issue]]:
    """Host patterns as the policy compiler normalizes them: ``*``, ``*.parent``
    (normalized parent), globs (lower-cased, restricted characters), exact hosts
    (``normalize_host``)."""
    out: list[str] = []
    issues: list[Issue] = []
    for pattern in patterns:
        pattern = str(pattern)
        if pattern == "*":
            out.append("*")
            continue
        prefix, bare = ("*.", pattern[2:]) if pattern.startswith("*.") else ("", pattern)
        if is_glob(bare):
            if prefix or not _HOST_GLOB.fullmatch(bare):
                issues.append(("policy_pattern_error", f"bad host pattern `{pattern}`", path))
                continue
            out.append(bare.lower())
            continue
        try:
            out.append(prefix + normalize_host(bare))
        except HostError as e:
            issues.append(("policy_pattern_error", f"bad host `{pattern}`: {e}", path))
    return tuple(out), issues


def host_pattern_test(hosts: Sequence[str]) -> Callable[[str], bool] | None:
    """The test for normalized host patterns; ``None`` when any host matches."""
    if "*" in hosts:
        return None
    if any(is_glob(h.removeprefix("*.")) for h in hosts):
        return glob_test(hosts)
    return host_test(hosts)


def _dimension(patterns: list[str]) -> tuple[tuple[str, ...], Callable[[str], bool] | None,
                                             frozenset[str] | None]:
    """Index keys, explicit test and exact values of one MCP dimension (server, method,
    name)."""
    if not patterns or "*" in patterns or "**" in patterns:
        return (ANY,), None, None
    if any(is_glob(p) for p in patterns):
        return (ANY,), glob_test(patterns), None
    exact = frozenset(patterns)
    return tuple(patterns), exact.__contains__, exact


def compile_match(match: Mapping[str, Any], path: Path = ()) -> tuple[CompiledMatch | None,
                                                                      list[Issue]]:
    """Compile one ``match`` mapping. Returns ``(compiled, [])`` or ``(None, issues)``;
    ``path`` prefixes the issue paths. Server names are not checked against declared
    servers here (a token is independent of any policy): see ``unknown_servers``."""
    issues = check_shape(match, path)
    if issues:
        return None, issues
    dest: list[ActionTest] = []
    ops: list[ActionTest] = []
    scope_server: list[ActionTest] = []
    exact: list[tuple[str, frozenset[Any]]] = []
    exact_tests: list[ActionTest] = []

    def exact_test(attr: str, values: frozenset[Any]) -> ActionTest:
        test = _field_test(attr, values.__contains__)
        exact.append((attr, values))
        exact_tests.append(test)
        return test

    host_keys: tuple[str, ...] = (ANY,)
    if "host" in match:
        hosts, bad = normalize_hosts(_as_list(match["host"]), (*path, "host"))
        issues.extend(bad)
        test = host_pattern_test(hosts)
        if test is not None:
            if not any(is_glob(h.removeprefix("*.")) for h in hosts):
                host_keys = hosts
            if any(h.startswith("*.") for h in hosts) or any(is_glob(h) for h in hosts):
                dest.append(_field_test("host", test))
            else:
                dest.append(exact_test("host", frozenset(hosts)))
    if "scheme" in match:
        schemes = frozenset(s.lower() for s in _as_list(match["scheme"]))
        dest.append(exact_test("scheme", schemes))
    if "port" in match:
        dest.append(exact_test("port", frozenset(_as_list(match["port"]))))
    if "path" in match:
        paths = [normalize_path(p) if not is_glob(p) else p for p in _as_list(match["path"])]
        dest.append(_field_test("path", glob_test(paths, segment=True)))
    http_methods = None
    if "method" in match:
        http_methods = tuple(m.upper() for m in _as_list(match["method"]))
        if "*" in http_methods:
            http_methods = None  # any method

    is_mcp = bool(MCP_KEYS & match.keys())
    servers: tuple[str, ...] = (ANY,)
    methods_keys: tuple[str, ...] = (ANY,)
    names_keys: tuple[str, ...] = (ANY,)
    arg_tests: list[tuple[str, ArgTest]] = []
    if is_mcp:
        if http_methods is not None:
            issues.append(("policy_conflict_error",
                           "`method` is for HTTP rules; use `mcp_method` for MCP",
                           (*path, "method")))
        named = [k for k in IMPLIED_METHOD if k in match]
        if len(named) > 1:
            issues.append(("policy_conflict_error",
                           f"use only one of {', '.join(named)} in a rule", path))
            return None, issues
        methods = [str(m) for m in _as_list(match.get("mcp_method", []))]
        names: list[str] = []
        if named:
            implied = IMPLIED_METHOD[named[0]]
            if methods and methods != [implied]:
                issues.append(("policy_conflict_error",
                               f"`{named[0]}` implies mcp_method `{implied}`",
                               (*path, "mcp_method")))
            methods = [implied]
            names = [str(n) for n in _as_list(match[named[0]])]
        if "args" in match and methods and set(methods) - set(IMPLIED_METHOD.values()):
            issues.append(("policy_conflict_error",
                           "`args` only applies to tools/call, prompts/get and resources/read",
                           (*path, "args")))
        server_patterns = [str(s) for s in _as_list(match.get("server", []))]
        for attr, patterns in (("server", server_patterns), ("mcp_method", methods),
                               ("name", names)):
            keys, test, values = _dimension(patterns)
            if attr == "server":
                servers = keys
            elif attr == "mcp_method":
                methods_keys = keys
            else:
                names_keys = keys
            if test is None:
                continue
            one = exact_test(attr, values) if values is not None else _field_test(attr, test)
            ops.append(one)
            if attr == "server":
                scope_server.append(one)
        for arg, pred in (match.get("args") or {}).items():
            try:
                arg_tests.append((arg, compile_arg(arg, pred)))
            except (ValueError, TypeError, re.error) as e:
                issues.append(("policy_predicate_error", f"argument `{arg}`: {e}",
                               (*path, "args", arg)))
    elif http_methods is not None:
        ops.append(exact_test("method", frozenset(http_methods)))

    if issues:
        return None, issues
    return CompiledMatch(
        exact=tuple(exact),
        other=tuple(t for t in (*dest, *ops) if t not in exact_tests),
        source=match,
        mcp=is_mcp,
        kinds=_MCP_KINDS if is_mcp else _HTTP_KINDS,
        tests=(*dest, *ops),
        scope=(*dest, *scope_server),
        arg_tests=tuple(arg_tests),
        host_keys=host_keys,
        http_methods=http_methods,
        servers=servers,
        mcp_methods=methods_keys,
        names=names_keys,
    ), []


def unknown_servers(match: Mapping[str, Any], declared: set[str] | frozenset[str]) -> list[str]:
    """Exact server names in ``match`` that are neither declared nor an origin URL (the
    policy compiler reports these; a token's grants may name any server)."""
    return [s for s in (str(x) for x in _as_list(match.get("server", [])))
            if not is_glob(s) and s not in declared and "://" not in s]
