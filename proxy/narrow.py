"""Realizing ``narrow``: compose the narrowings of every rule that narrowed a call, apply
them to its arguments (MCP) or top-level JSON body fields (HTTP), and re-decide the
narrowed form.

Why re-decide: narrowing must never widen. The narrowed call goes on only when the policy
admits it on its own: a narrowed form that another rule denies is denied, one that needs
approval is held, one that another rule narrows further is narrowed again until nothing
changes. Composition is order-free and toward the stricter form: the lowest cap, the
highest floor, the intersection of allowed subsets; two rules fixing one argument to
different values, or a floor above a cap, cannot both hold and deny the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from .action import NAMED_METHODS, Action, Kind
from .decision import Decision, Plane, Verdict
from .policy.narrowing import NOT_SET, Narrowing
from .policy.rules import make_decision

Fields = Mapping[str, Any] | Callable[[], Mapping[str, Any] | None] | None
NO_BODY: Mapping[str, Any] = MappingProxyType({})  # nothing was sent that could be narrowed
MAX_ROUNDS = 4  # a narrowed form re-narrowed this often without settling is denied
_CACHE_LIMIT = 4096
# Composed constraints by the (immutable) narrowings they come from: the same rules narrow
# call after call, so composing is paid once per combination, not per call.
_composed: dict[tuple[Narrowing, ...], tuple[Constraint, ...] | NarrowError] = {}


class NarrowError(Exception):
    """The narrowing cannot be applied to this call (fail closed: the call is denied)."""


@dataclass(frozen=True, slots=True)
class Constraint:
    """Every narrowing rule's word on one argument, composed."""

    name: str
    max: float | None = None
    min: float | None = None
    allowed: tuple[Callable[[Any], bool], ...] = ()
    set: Any = NOT_SET
    rule_ids: tuple[str, ...] = ()

    def admits(self, value: Any) -> bool:
        """Whether ``value`` already satisfies this constraint (narrowing leaves it)."""
        if self.set is not NOT_SET:
            return _same(value, self.set)
        if self.max is not None or self.min is not None:
            if not _finite(value):
                return False
            if self.max is not None and value > self.max:
                return False
            if self.min is not None and value < self.min:
                return False
        if self.allowed:
            items = value if isinstance(value, list) else [value]
            return bool(items) and all(t(i) for i in items for t in self.allowed)
        return True


def narrow_rule_ids(decision: Decision) -> tuple[str, ...]:
    return tuple(sorted({str(d.params["rule"]) for d in decision.directives
                         if d.kind == "narrow"}))


def compose(narrowings: Iterable[Narrowing]) -> tuple[Constraint, ...]:
    """One constraint per argument, the stricter of every rule's; raises ``NarrowError``
    when two rules cannot both hold."""
    key = tuple(sorted(narrowings, key=lambda n: n.rule_id))
    got = _composed.get(key)
    if got is None:
        try:
            got = _compose(key)
        except NarrowError as e:
            got = e
        if len(_composed) >= _CACHE_LIMIT:
            _composed.clear()
        _composed[key] = got
    if isinstance(got, NarrowError):
        raise NarrowError(str(got))
    return got


def _compose(narrowings: tuple[Narrowing, ...]) -> tuple[Constraint, ...]:
    by_name: dict[str, Constraint] = {}
    for n in narrowings:
        for arg in n.args:
            c = by_name.get(arg.name) or Constraint(arg.name)
            hi = arg.max if c.max is None else (c.max if arg.max is None else min(c.max, arg.max))
            lo = arg.min if c.min is None else (c.min if arg.min is None else max(c.min, arg.min))
            value = c.set
            if arg.set is not NOT_SET:
                if value is not NOT_SET and not _same(value, arg.set):
                    raise NarrowError(
                        f"rules {', '.join(f'`{r}`' for r in (*c.rule_ids, n.rule_id))} "
                        f"set `{arg.name}` to different values")
                value = arg.set
            allowed = c.allowed + ((arg.allowed,) if arg.allowed is not None else ())
            by_name[arg.name] = Constraint(arg.name, hi, lo, allowed, value,
                                           (*c.rule_ids, n.rule_id))
    for c in by_name.values():
        if c.max is not None and c.min is not None and c.min > c.max:
            raise NarrowError(f"rules {_ids(c)} ask `{c.name}` to be at least {c.min:g} and at "
                              f"most {c.max:g}")
        if c.set is not NOT_SET and (c.max is not None or c.min is not None or c.allowed):
            probe = replace(c, set=NOT_SET)
            if not probe.admits(c.set):
                raise NarrowError(f"rules {_ids(c)} set `{c.name}` to a value they also forbid")
    return tuple(by_name[k] for k in sorted(by_name))


def apply(constraints: tuple[Constraint, ...], subject: Mapping[str, Any]) -> dict[str, Any]:
    """The narrowed form of ``subject`` (arguments or top-level body fields); absent
    arguments stay absent unless a rule sets them."""
    out = dict(subject)
    for c in constraints:
        if c.set is not NOT_SET:
            out[c.name] = c.set
            continue
        if c.name not in out:
            continue
        value = out[c.name]
        if c.max is not None or c.min is not None:
            if not _finite(value):
                raise NarrowError(f"`{c.name}` is not a finite number ({_kind(value)}), so it "
                                  f"cannot be clamped by {_ids(c)}")
            if c.max is not None and value > c.max:
                value = _like(value, c.max)
            if c.min is not None and value < c.min:
                value = _like(value, c.min)
        if c.allowed:
            value = _filter(c, value)
        out[c.name] = value
    return out


def _filter(c: Constraint, value: Any) -> Any:
    def ok(item: Any) -> bool:
        return isinstance(item, str | int | float | bool) and all(t(item) for t in c.allowed)
    if isinstance(value, list):
        kept = [item for item in value if ok(item)]
        if not kept:
            raise NarrowError(f"no value of `{c.name}` is allowed by {_ids(c)}")
        return kept
    if isinstance(value, str | int | float | bool) and ok(value):
        return value
    raise NarrowError(f"`{c.name}` is not allowed by {_ids(c)}")


@dataclass(frozen=True, slots=True)
class Narrowed:
    """What narrowing did to one call."""

    rule_ids: tuple[str, ...]          # every rule whose narrowing was applied
    before: Mapping[str, Any]          # arguments (MCP) / top-level body fields (HTTP) as sent
    after: Mapping[str, Any]           # ... as forwarded
    action: Action                     # the call that goes on (MCP: narrowed arguments)
    enforced: Decision                 # what the gateway enforces
    changed: tuple[str, ...] = ()      # names whose value the narrowing changed
    failed: bool = False               # the narrowing could not be applied (denied)

    def to_record(self) -> dict[str, Any]:
        """What the evidence keeps: the narrowed form, the changed values as sent."""
        changed = self.changed
        return {"rule_ids": list(self.rule_ids), "changed": list(changed),
                "arguments": dict(self.after),
                "before": {k: self.before[k] for k in changed if k in self.before}}


def narrow(action: Action, decision: Decision, narrowings: Mapping[str, Narrowing],
           decide: Callable[[Action], Decision],
           fields: Fields = None) -> Narrowed:
    """Apply ``decision``'s narrowings to ``action`` (or to ``fields``, the top-level fields
    of an HTTP request's JSON body, or a function that reads them only when needed),
    re-decide the narrowed form until it settles, and say what to enforce. Never raises:
    whatever goes wrong denies."""
    if callable(fields):
        fields = fields() if action.kind is Kind.HTTP else None
    # What can be narrowed: MCP arguments; the fields of an HTTP JSON object body (None: a
    # body that is not one, which nothing can be sure of); NO_BODY: nothing was sent to
    # narrow (an HTTP request without a body, an MCP message without arguments).
    subject: Mapping[str, Any] | None
    if action.kind is Kind.MCP and action.mcp_method in NAMED_METHODS:
        subject = action.arguments
    elif action.kind is Kind.HTTP:
        subject = fields
    else:
        subject = NO_BODY
    applied: set[str] = set()
    current, after = action, dict(subject or {})
    try:
        verdict_now = decision
        for _ in range(MAX_ROUNDS):
            applied.update(narrow_rule_ids(verdict_now))
            constraints = compose(narrowings[i] for i in sorted(applied))
            if constraints and subject is None:
                raise NarrowError(_cannot_rewrite(action))
            narrowed = apply(constraints, after)
            if _same(narrowed, after):
                break  # settled: the latest decision was made on exactly this form
            if subject is NO_BODY:
                raise NarrowError(f"{_nothing_sent(action)}, so `{'`, `'.join(sorted(narrowed))}`"
                                  " cannot be set")
            after = narrowed
            if action.kind is not Kind.MCP:
                break  # HTTP body fields are not visible to the policy: nothing to re-decide
            current = replace(current, arguments=narrowed)
            verdict_now = decide(current)
            if verdict_now.verdict is not Verdict.NARROW:
                break
        else:
            raise NarrowError(f"the narrowed call still changes after {MAX_ROUNDS} rounds")
    except Exception as e:
        reason = f"{decision.reason}; the narrowing cannot be applied, so the call is denied " \
                 f"(fail closed): {e if isinstance(e, NarrowError) else repr(e)}"
        denied = make_decision(Verdict.DENY, decision.rule_ids, reason,
                               decision.policy_version, Plane.ENDPOINT, decision.errors)
        return Narrowed(tuple(sorted(applied)), subject or {}, dict(subject or {}), action,
                        denied, failed=True)
    before = subject or {}
    enforced = decision
    if verdict_now.verdict not in (Verdict.ALLOW, Verdict.NARROW):
        enforced = make_decision(
            verdict_now.verdict, verdict_now.rule_ids,
            f"after narrowing by {', '.join(f'`{r}`' for r in sorted(applied))}: "
            f"{verdict_now.reason}", verdict_now.policy_version, verdict_now.plane,
            verdict_now.errors, verdict_now.directives)
    missing = object()
    changed = tuple(sorted(name for name in {*before, *after}
                           if not _same(before.get(name, missing), after.get(name, missing))))
    return Narrowed(tuple(sorted(applied)), before, after, current, enforced, changed)


def _nothing_sent(action: Action) -> str:
    if action.kind is Kind.HTTP:
        return "the request has no body"
    if action.kind is Kind.MCP:
        return f"MCP {action.mcp_method} carries no arguments"
    return f"a {action.kind.value} action carries no arguments"


def _cannot_rewrite(action: Action) -> str:
    return "the request body is not a JSON object, so its fields cannot be narrowed"


def _ids(c: Constraint) -> str:
    return ", ".join(f"`{r}`" for r in c.rule_ids)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _like(value: Any, bound: float) -> Any:
    """The bound in the value's own number type where that loses nothing (900.0 → 500.0)."""
    if isinstance(value, float) and isinstance(bound, int):
        return float(bound)
    return bound


def _kind(value: Any) -> str:
    return "missing" if value is None else type(value).__name__


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON type (``1 == True`` and ``500 == 500.0`` in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
