"""Session-aware parts of a policy: `when` conditions, budgets and provenance sources.

A `when` condition compiles to ordinary action tests over the session context the
gateway puts on the action (``Action.marks``, ``Action.tainted``, ``Action.at``), so
sequence rules cost a dict lookup and the adjudicator stays pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..action import Action
from ..state import Scope
from .match import CompiledMatch, Issue, Path, _as_list, compile_match, normalize_hosts
from .matchers import host_test

ActionTest = Any


def compile_when(spec: Mapping[str, Any], path: Path
                 ) -> tuple[list[ActionTest], frozenset[str], list[Issue]]:
    """Tests for a rule's ``when`` mapping, the argument names it needs checked for
    taint, and issues."""
    tests: list[ActionTest] = []
    issues: list[Issue] = []
    within = spec.get("within")
    for label in spec.get("labels", []):
        tests.append(_seen(label, within))
    for label in spec.get("absent", []):
        seen = _seen(label, within)
        tests.append(lambda a, seen=seen: not seen(a))
    tainted = frozenset(spec.get("tainted_args", []))
    if tainted:
        tests.append(lambda a: not a.tainted.isdisjoint(tainted))
    if "outside" in spec:
        hosts, bad = normalize_hosts(_as_list(spec["outside"]), (*path, "outside"))
        issues.extend(bad)
        inside = host_test(hosts)
        tests.append(lambda a: not inside(a.host))
    return tests, tainted, issues


def _seen(label: str, within: float | None) -> ActionTest:
    if within is None:
        return lambda a: label in a.marks

    def recent(a: Action) -> bool:
        when = a.marks.get(label)
        return when is not None and a.at - when <= within
    return recent


@dataclass(frozen=True, slots=True, eq=False)
class Budget:
    id: str
    match: CompiledMatch
    sum: str | None          # argument summed; None counts calls
    limit: float
    per: Scope
    window: float | None
    reason: str

    def amount(self, action: Action) -> Any:
        """What this call costs (the raw argument: the store refuses non-numbers)."""
        if self.sum is None:
            return 1
        return action.arguments.get(self.sum)


def compile_budgets(items: list[Mapping[str, Any]]) -> tuple[tuple[Budget, ...], list[Issue]]:
    budgets: list[Budget] = []
    issues: list[Issue] = []
    seen: set[str] = set()
    for i, spec in enumerate(items):
        path: Path = ("budgets", i)
        if spec["id"] in seen:
            issues.append(("policy_duplicate_id", f"budget id `{spec['id']}` used twice",
                           (*path, "id")))
        seen.add(spec["id"])
        match, bad = compile_match(spec["match"], (*path, "match"))
        issues.extend(bad)
        if match is None:
            continue
        per = Scope(spec.get("per", "principal"))
        what = f"the sum of `{spec['sum']}`" if "sum" in spec else "the number of calls"
        window = spec.get("window")
        span = f" per {window:g} s" if window else ""
        reason = spec.get("reason") or (
            f"budget `{spec['id']}` exhausted: {what} may not exceed {spec['limit']:g}"
            f" per {per.value}{span}")
        budgets.append(Budget(spec["id"], match, spec.get("sum"), float(spec["limit"]), per,
                              window, reason))
    return tuple(budgets), issues


def compile_untrusted(section: Mapping[str, Any]) -> tuple[tuple[CompiledMatch, ...],
                                                           list[Issue]]:
    out: list[CompiledMatch] = []
    issues: list[Issue] = []
    for i, spec in enumerate(section.get("untrusted", [])):
        match, bad = compile_match(spec, ("provenance", "untrusted", i))
        issues.extend(bad)
        if match is not None:
            out.append(match)
    return tuple(out), issues
