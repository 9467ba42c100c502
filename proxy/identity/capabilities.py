"""Capabilities: a grant is exactly a policy rule's ``match`` mapping, compiled with
``proxy.policy.match.compile_match`` (the policy's own matchers and normalization)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..action import Action
from ..paths import normalize_path
from ..policy.match import (
    IMPLIED_METHOD,
    MATCH_KEYS,
    MCP_KEYS,
    CompiledMatch,
    Issue,
    Path,
    _as_list,
    _is_number,
    compile_match,
    glob_test,
    host_pattern_test,
    is_glob,
    normalize_hosts,
)

# --- capability sets --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class CapabilitySet:
    """The grants of one block: admits an action when any grant admits it."""

    grants: tuple[CompiledMatch, ...]

    def admits(self, action: Action) -> bool:
        for grant in self.grants:  # noqa: SIM110 -- a loop beats any() on the hot path
            if grant.admits(action):
                return True
        return False

    def may_call(self, action: Action) -> bool:
        return any(grant.may_call(action) for grant in self.grants)

    def reaches(self, action: Action) -> bool:
        return any(grant.reaches(action) for grant in self.grants)


_COMPILED: dict[str, CapabilitySet] = {}
_COMPILED_LIMIT = 4096


def compile_capabilities(grants: Any, path: Path = ()) -> tuple[CapabilitySet | None,
                                                                list[Issue]]:
    """A list of ``match`` mappings → ``CapabilitySet`` (or every issue found).

    Compiled sets are immutable and memoized by their canonical JSON: many tokens carry
    the same grants (one template per kind of sub-agent), so a new token usually costs
    only its signature checks."""
    if not isinstance(grants, list):
        return None, [("policy_schema_error", "capabilities are a list of grants", path)]
    try:
        key = json.dumps(grants, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        key = None
    if key is not None:
        found = _COMPILED.get(key)
        if found is not None:
            return found, []
    result, issues = _compile_capabilities(grants, path)
    if result is not None and key is not None:
        if len(_COMPILED) >= _COMPILED_LIMIT:
            _COMPILED.clear()
        _COMPILED[key] = result
    return result, issues


def _compile_capabilities(grants: list[Any], path: Path) -> tuple[CapabilitySet | None,
                                                                  list[Issue]]:
    compiled: list[CompiledMatch] = []
    issues: list[Issue] = []
    for i, grant in enumerate(grants):
        one, bad = compile_match(grant, (*path, i))
        issues.extend(bad)
        if one is not None:
            compiled.append(one)
    if issues:
        return None, issues
    return CapabilitySet(tuple(compiled)), []


def describe(grant: Mapping[str, Any]) -> str:
    """A one-line human rendering of a grant, e.g. ``server=crm tool=refund amount<=100``."""
    parts: list[str] = []
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}
    for key in MATCH_KEYS:
        if key not in grant or key == "args":
            continue
        value = grant[key]
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key}={text}")
    for arg, spec in (grant.get("args") or {}).items():
        for op, want in spec.items():
            if op in symbols:
                parts.append(f"{arg}{symbols[op]}{want!r}" if isinstance(want, str)
                             else f"{arg}{symbols[op]}{want}")
            elif op == "present":
                parts.append(f"{arg} present" if want else f"{arg} absent")
            else:
                parts.append(f"{arg} {op} {want!r}")
    return " ".join(parts) or "(empty)"


# --- "provably within" (display only: `token inspect` flags possibly widened grants) ----


def _values(grant: Mapping[str, Any], key: str) -> list[Any] | None:
    return None if key not in grant else _as_list(grant[key])


def _mcp_method_of(grant: Mapping[str, Any]) -> list[str] | None:
    for key, method in IMPLIED_METHOD.items():
        if key in grant:
            return [method]
    return _values(grant, "mcp_method")


def _covers_value(key: str, pattern: Any, value: Any) -> bool:
    if pattern == value or pattern in ("*", "**"):
        return True
    if not isinstance(pattern, str) or not isinstance(value, str):
        return False
    if key == "host":
        if is_glob(value.removeprefix("*.")):
            return False
        test = host_pattern_test([pattern])
        if value.startswith("*."):   # a subdomain wildcard is covered by a wider one only
            return pattern.startswith("*.") and value.endswith(pattern[1:])
        return test is None or test(value)
    if is_glob(value):
        return False
    return glob_test([pattern], segment=key == "path")(value)


def _dim_within(key: str, child: list[Any] | None, parent: list[Any] | None) -> bool:
    if parent is None:
        return True
    if child is None:
        return False
    return all(any(_covers_value(key, p, c) for p in parent) for c in child)


def _bound_within(op: str, want: Any, child: Mapping[str, Any]) -> bool:
    if not _is_number(want):
        return False
    upper = op in ("le", "lt")
    for cop, cwant in child.items():
        if cop in ("eq", "in"):
            values = cwant if cop == "in" else [cwant]
            if values and all(_is_number(v) for v in values) and all(
                    (v <= want if op == "le" else v < want if op == "lt"
                     else v >= want if op == "ge" else v > want) for v in values):
                return True
        if not _is_number(cwant):
            continue
        if upper and cop in ("le", "lt") and (cwant < want or (cwant == want and (
                op == "le" or cop == "lt"))):
            return True
        if not upper and cop in ("ge", "gt") and (cwant > want or (cwant == want and (
                op == "ge" or cop == "gt"))):
            return True
    return False


def _args_within(child: Mapping[str, Any], parent: Mapping[str, Any]) -> bool:
    for arg, pred in parent.items():
        mine = child.get(arg)
        if not isinstance(mine, Mapping):
            return False
        for op, want in pred.items():
            if op in mine and mine[op] == want and type(mine[op]) is type(want):
                continue
            if op in ("le", "lt", "ge", "gt") and _bound_within(op, want, mine):
                continue
            if op == "present" and want is True and any(o != "present" for o in mine):
                continue
            return False
    return True


def _normalized(grant: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(grant)
    if "host" in out:
        hosts, issues = normalize_hosts(_as_list(out["host"]))
        out["host"] = list(hosts) if not issues else _as_list(out["host"])
    if "method" in out:
        out["method"] = [str(m).upper() for m in _as_list(out["method"])]
    if "scheme" in out:
        out["scheme"] = [str(s).lower() for s in _as_list(out["scheme"])]
    if "path" in out:
        out["path"] = [normalize_path(p) if isinstance(p, str) and not is_glob(p) else p
                       for p in _as_list(out["path"])]
    return out


def grant_within(child: Mapping[str, Any], parent: Mapping[str, Any]) -> bool:
    """Conservative: ``True`` only when every action ``child`` admits is provably
    admitted by ``parent``. ``False`` means "could not prove it" (a possibly widened
    grant — harmless, since authority is the intersection, but worth showing)."""
    c, p = _normalized(child), _normalized(parent)
    if bool(MCP_KEYS & c.keys()) != bool(MCP_KEYS & p.keys()):
        return False
    for key in ("host", "scheme", "port", "method", "path", "server"):
        if not _dim_within(key, _values(c, key), _values(p, key)):
            return False
    if not _dim_within("mcp_method", _mcp_method_of(c), _mcp_method_of(p)):
        return False
    pnamed = next((k for k in IMPLIED_METHOD if k in p), None)
    if pnamed is not None and not _dim_within(pnamed, _values(c, pnamed), _values(p, pnamed)):
        return False
    return _args_within(c.get("args") or {}, p.get("args") or {})


def widened(child: Sequence[Mapping[str, Any]],
            parent: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indexes of ``child`` grants not provably within any ``parent`` grant."""
    return [i for i, g in enumerate(child) if not any(grant_within(g, p) for p in parent)]
