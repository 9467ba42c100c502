"""``--expect FILE``: what a replay must decide, checked while the rows stream by.

The file is a YAML list; each item says which actions it is about and what their
decision must be::

    - flow: 3                 # the 3rd flow of the capture (the `#` column); its request
      verdict: deny
      rule: crm-no-bulk       # one of the decision's rule ids (a list: exactly these)
    - flow: 7
      action: 1               # the flow's first response-time decision (0 = the request)
      verdict: deny
    - name: refunds stay allowed
      match: {tool: refund, host: crm.example.com}   # every matching action
      verdict: allow
      count: 2                # optional: exactly this many actions match

``match`` keys (glob patterns, case-insensitive for ``method`` and ``host``): ``method``,
``host``, ``path``, ``server``, ``tool`` (a ``tools/call`` of that tool), ``mcp_method``,
``name``, ``kind``, ``target``, ``principal``. An expectation that matches no action
fails: a typo cannot pass silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..decision import Verdict
from ..policy.loader import LocDict, LocList, parse_text
from .engine import Row

__all__ = ["Expectation", "ExpectationError", "check_rows", "load_expectations"]

_KEYS = {"name", "flow", "action", "match", "verdict", "rule", "count"}
_MATCH_KEYS = {"method", "host", "path", "server", "tool", "mcp_method", "name", "kind",
               "target", "principal"}
_VERDICTS = {v.value for v in Verdict}
MAX_SHOWN = 5


class ExpectationError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(slots=True)
class Expectation:
    file: str
    line: int
    name: str
    flow: int | None = None
    action: int | None = None
    match: dict[str, str] = field(default_factory=dict)
    verdict: str | None = None
    rules: tuple[str, ...] | None = None
    exact_rules: bool = False
    count: int | None = None
    matched: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def applies(self, row: Row) -> bool:
        if self.flow is not None and (row.flow != self.flow
                                      or row.ordinal != (self.action or 0)):
            return False
        return all(_field_matches(row, k, v) for k, v in self.match.items())

    def check(self, row: Row) -> None:
        self.matched += 1
        problems = []
        if self.verdict is not None and row.verdict != self.verdict:
            problems.append(f"verdict {row.verdict}, expected {self.verdict}")
        if self.rules is not None:
            got = set(row.rule_ids)
            ok = got == set(self.rules) if self.exact_rules else self.rules[0] in got
            if not ok:
                want = (", ".join(self.rules) if self.exact_rules else self.rules[0])
                problems.append(f"rules {', '.join(row.rule_ids) or '-'}, expected {want}")
        if problems:
            self.failed += 1
            if len(self.failures) < MAX_SHOWN:
                self.failures.append(
                    f"flow {row.flow} action {row.ordinal} ({row.what} on {row.target}): "
                    + "; ".join(problems) + f" — {row.reason}")

    @property
    def ok(self) -> bool:
        if self.failed or self.matched == 0:
            return False
        return self.count is None or self.matched == self.count

    def summary(self) -> str:
        if self.matched == 0:
            return "matched no action"
        if self.failed:
            more = self.failed - len(self.failures)
            text = "; ".join(self.failures) + (f"; and {more} more" if more > 0 else "")
            return f"{self.failed} of {self.matched} actions differ: {text}"
        if self.count is not None and self.matched != self.count:
            return f"matched {self.matched} actions, expected {self.count}"
        return f"{self.matched} action{'s' if self.matched != 1 else ''} as expected"

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "name": self.name, "ok": self.ok,
                "matched": self.matched, "failed": self.failed, "detail": self.summary()}


def _row_value(row: Row, key: str) -> str:
    if key == "tool":
        return row.name if row.mcp_method == "tools/call" else "\0"
    return str(getattr(row, key))


def _field_matches(row: Row, key: str, pattern: str) -> bool:
    value = _row_value(row, key)
    if key in ("method", "host"):
        return fnmatchcase(value.lower(), pattern.lower())
    return fnmatchcase(value, pattern)


def load_expectations(path: str | Path) -> list[Expectation]:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExpectationError([f"{name}: cannot read expectations: {e}"]) from e
    data, issues = parse_text(text, name)
    problems = [str(i) for i in issues]
    if data is None and not problems:
        data = LocList()
    if not problems and not isinstance(data, list):
        problems.append(f"{name}:1: expectations must be a YAML list")
    out: list[Expectation] = []
    if problems:
        raise ExpectationError(problems)
    assert isinstance(data, LocList)
    for i, item in enumerate(data):
        line = data.item_lines[i]
        exp = _expectation(name, line, item, problems)
        if exp is not None:
            out.append(exp)
    if problems:
        raise ExpectationError(problems)
    return out


def _expectation(file: str, line: int, item: Any, problems: list[str]) -> Expectation | None:
    def bad(msg: str, key: str | None = None) -> None:
        at = item.key_lines.get(key, line) if isinstance(item, LocDict) and key else line
        problems.append(f"{file}:{at}: {msg}")

    if not isinstance(item, dict):
        bad("an expectation must be a mapping")
        return None
    for key in item:
        if key not in _KEYS:
            bad(f"unknown key `{key}` (known: {', '.join(sorted(_KEYS))})", key)
    start = len(problems)
    exp = Expectation(file, line, str(item.get("name") or ""))
    flow, action = item.get("flow"), item.get("action")
    if flow is not None:
        if not isinstance(flow, int) or isinstance(flow, bool) or flow < 1:
            bad("`flow` must be a flow number (1 = the first flow of the capture)", "flow")
        exp.flow = flow
    if action is not None:
        if flow is None:
            bad("`action` needs `flow`", "action")
        elif not isinstance(action, int) or isinstance(action, bool) or action < 0:
            bad("`action` must be 0 (the request) or the n-th response-time decision",
                "action")
        exp.action = action
    match = item.get("match")
    if match is not None:
        if not isinstance(match, dict) or not match:
            bad("`match` must be a non-empty mapping", "match")
        else:
            for key, value in match.items():
                if key not in _MATCH_KEYS:
                    bad(f"unknown match key `{key}` (known: {', '.join(sorted(_MATCH_KEYS))})",
                        "match")
                elif not isinstance(value, str | int) or isinstance(value, bool):
                    bad(f"match `{key}` must be a string", "match")
                else:
                    exp.match[key] = str(value)
    if flow is None and match is None:
        bad("an expectation needs `flow` or `match`")
    verdict = item.get("verdict")
    if verdict is not None:
        if verdict not in _VERDICTS:
            bad(f"unknown verdict `{verdict}` (one of {', '.join(sorted(_VERDICTS))})",
                "verdict")
        exp.verdict = verdict
    rule = item.get("rule")
    if isinstance(rule, str) and rule:
        exp.rules = (rule,)
    elif isinstance(rule, list) and rule and all(isinstance(r, str) for r in rule):
        exp.rules, exp.exact_rules = tuple(rule), True
    elif rule is not None:
        bad("`rule` must be a rule id or a list of rule ids", "rule")
    if verdict is None and rule is None:
        bad("an expectation needs `verdict` and/or `rule`")
    count = item.get("count")
    if count is not None:
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            bad("`count` must be a number", "count")
        exp.count = count
    if not exp.name:
        what = f"flow {flow}" if flow is not None else ", ".join(
            f"{k}={v}" for k, v in exp.match.items())
        exp.name = what
    return exp if len(problems) == start else None


def check_rows(expectations: list[Expectation], row: Row) -> None:
    for exp in expectations:
        if exp.applies(row):
            exp.check(row)
