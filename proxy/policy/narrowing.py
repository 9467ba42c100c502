"""Narrowing specs: a rule's ``narrow:`` mapping compiled once into an immutable
``Narrowing`` (argument clamps, allowed subsets, fixed values, session attenuation).

Applying and composing narrowings lives in ``proxy.narrow``; this module only checks and
compiles what the policy says, reporting every mistake with a stable code
(``policy_narrow_error``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..action import Action, Kind
from .match import Issue, Path
from .matchers import glob_test

CODE = "policy_narrow_error"
READ_ONLY = "read_only"
# HTTP methods a read-only session keeps (RFC 9110 safe methods minus TRACE).
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Numeric-only and string-only predicates of ``match.args``: a clamp on an argument the
# same rule tests as a string (or a subset on one it bounds as a number) cannot be right.
_NUMERIC_OPS = frozenset({"gt", "ge", "lt", "le"})
_STRING_OPS = frozenset({"regex"})

NOT_SET: Any = object()


@dataclass(frozen=True, slots=True, eq=False)
class ArgNarrowing:
    """What one rule does to one argument."""

    name: str
    max: float | None = None
    min: float | None = None
    subset: tuple[Any, ...] | None = None           # allowed items, strings may be globs
    allowed: Callable[[Any], bool] | None = None    # compiled test of ``subset``
    set: Any = NOT_SET                              # the value the argument gets


@dataclass(frozen=True, slots=True, eq=False)
class Narrowing:
    """One rule's narrowing, ready for the hot path."""

    rule_id: str
    args: tuple[ArgNarrowing, ...]
    session: str | None = None           # "read_only": attenuate the rest of the session
    label: str | None = None             # the session label that carries the attenuation
    read_tools: tuple[str, ...] = ()     # tools a read-only session may still call
    spec: Mapping[str, Any] = MappingProxyType({})   # normalized, for the evidence directive


def session_label(rule_id: str) -> str:
    return f"{READ_ONLY}:{rule_id}"


def compile_narrowing(rule_id: str, spec: Any, match: Mapping[str, Any] | None,
                      path: Path) -> tuple[Narrowing | None, list[Issue]]:
    """Compile a rule's ``narrow`` mapping (the schema already checked its shape)."""
    issues: list[Issue] = []
    if not isinstance(spec, Mapping):
        return None, issues
    tested = (match or {}).get("args") or {}
    args: list[ArgNarrowing] = []
    plain: dict[str, Any] = {}
    for name, arg in (spec.get("args") or {}).items():
        where = (*path, "args", name)
        compiled, found = _arg(str(name), arg, tested.get(name), where)
        issues.extend(found)
        if compiled is not None:
            args.append(compiled)
            plain[str(name)] = dict(arg)
    session = spec.get("session")
    read_tools = tuple(spec.get("read_tools") or ())
    if read_tools and session != READ_ONLY:
        issues.append((CODE, "`read_tools` only applies with `session: read_only`",
                       (*path, "read_tools")))
    if not args and session is None:
        issues.append((CODE, "a narrow spec needs `args` or `session`", path))
    out: dict[str, Any] = {}
    if plain:
        out["args"] = plain
    if session is not None:
        out["session"] = session
    if read_tools:
        out["read_tools"] = list(read_tools)
    narrowing = Narrowing(
        rule_id=rule_id, args=tuple(sorted(args, key=lambda a: a.name)), session=session,
        label=session_label(rule_id) if session == READ_ONLY else None,
        read_tools=read_tools, spec=MappingProxyType(out))
    return narrowing, issues


def _arg(name: str, spec: Any, predicate: Any, where: Path
         ) -> tuple[ArgNarrowing | None, list[Issue]]:
    issues: list[Issue] = []
    if not isinstance(spec, Mapping) or not spec:
        issues.append((CODE, f"argument `{name}` needs one of max, min, subset, set", where))
        return None, issues
    hi, lo = spec.get("max"), spec.get("min")
    for key, bound in (("max", hi), ("min", lo)):
        if bound is not None and (not _number(bound) or not math.isfinite(bound)):
            issues.append((CODE, f"`{key}` of `{name}` must be a finite number", (*where, key)))
    numeric = hi is not None or lo is not None
    if _number(hi) and _number(lo) and lo > hi:
        issues.append((CODE, f"`{name}`: min {lo} is above max {hi}", where))
    subset = spec.get("subset")
    allowed = None
    if subset is not None:
        if not isinstance(subset, list) or not subset:
            issues.append((CODE, f"`subset` of `{name}` must list at least one allowed value"
                                 " (an empty subset would drop every value)",
                           (*where, "subset")))
            subset = None
        elif numeric:
            issues.append((CODE, f"`{name}` cannot be both clamped (max/min) and filtered "
                                 "(subset): one is for numbers, the other for lists", where))
        else:
            allowed = _subset_test(tuple(subset))
    if "set" in spec and (numeric or subset is not None):
        issues.append((CODE, f"`{name}`: `set` fixes the value, so it cannot be combined "
                             "with max, min or subset", where))
    ops = set(predicate) if isinstance(predicate, Mapping) else set()
    if numeric and (ops & _STRING_OPS or _strings(predicate)):
        issues.append((CODE, f"`{name}` is clamped as a number, but this rule's match tests "
                             "it as a string", where))
    if subset is not None and ops & _NUMERIC_OPS:
        issues.append((CODE, f"`{name}` is filtered as a list, but this rule's match bounds "
                             "it as a number", where))
    if issues:
        return None, issues
    return ArgNarrowing(
        name=name, max=hi, min=lo, subset=tuple(subset) if subset is not None else None,
        allowed=allowed, set=spec.get("set", NOT_SET)), issues


def _strings(predicate: Any) -> bool:
    """Whether a `match.args` predicate only admits strings (`eq`/`in` with strings)."""
    if isinstance(predicate, str):
        return True
    if not isinstance(predicate, Mapping):
        return False
    listed = predicate.get("in")
    return isinstance(predicate.get("eq"), str) or (
        isinstance(listed, list) and bool(listed) and all(isinstance(x, str) for x in listed))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _subset_test(items: tuple[Any, ...]) -> Callable[[Any], bool]:
    """Strings may be globs (``*@example.com``); other scalars compare by value and type."""
    patterns = [i for i in items if isinstance(i, str)]
    others = [i for i in items if not isinstance(i, str)]
    strings = glob_test(patterns) if patterns else (lambda _v: False)

    def allowed(value: Any) -> bool:
        if isinstance(value, str):
            return strings(value)
        return any(type(value) is type(o) and value == o for o in others)
    return allowed


def read_test(narrowing: Narrowing) -> Callable[[Action], bool]:
    """True when ``action`` is not a read, so a read-only session must refuse it.

    Read means: an HTTP request with a safe method (GET, HEAD, OPTIONS); any MCP message
    other than ``tools/call``; a ``tools/call`` of a tool ``read_tools`` names. Tool
    annotations (``readOnlyHint``) are the server's word, not the policy's, so they do
    not count."""
    label = narrowing.label
    reads = glob_test(list(narrowing.read_tools)) if narrowing.read_tools else (
        lambda _n: False)

    def writes(action: Action) -> bool:
        if label not in action.marks:
            return False
        if action.kind is Kind.HTTP:
            return action.method not in READ_METHODS
        if action.kind is Kind.MCP:
            return action.mcp_method == "tools/call" and not reads(action.name)
        return False
    return writes
