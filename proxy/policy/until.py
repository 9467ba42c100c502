"""``until`` preconditions of ``defer`` and ``pause`` rules: what must hold before a parked
call is decided again.

A rule with ``until`` matches only while its precondition does NOT hold, so re-adjudicating
the parked call with fresh session state is just deciding it again: once the precondition
holds, the rule falls away and the other rules decide (deny overrides; the default
applies when nothing else matches). Every condition is a pure test of the action's
session context (``Action.marks``, ``Action.at``), so a recorded decision re-decides the
same way (``audit explain``).

Conditions (all given ones must hold):

* ``completed: MATCH`` — an action the match admits completed successfully in the same
  session (an MCP result without ``isError``; a plain HTTP response below 400). The
  gateway marks the session with ``completion_label(rule_id)`` when that happens;
* ``approved: RULE_ID | [RULE_ID, ...]`` — a person approved a call held by each named
  rule in the same session (label ``approval_label(rule_id)``);
* ``window: {from: "HH:MM", to: "HH:MM", tz: "UTC" | "+02:00" | "Europe/Berlin",
  days: [mon, ...]}`` (also HH:MM:SS) — the decision time falls inside the window (``to`` before
  ``from`` wraps midnight; ``days`` name the day the window opens).

Labels under ``@`` cannot be written in a policy (the label pattern forbids them), so a
policy cannot forge a completion or an approval.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..action import Action
from .match import CompiledMatch, Issue, Path, compile_match

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d)?|24:00(?::00)?")
DAY = 24 * 3600
_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")


def completion_label(rule_id: str) -> str:
    return f"@completed:{rule_id}"


def approval_label(rule_id: str) -> str:
    return f"@approved:{rule_id}"


@dataclass(frozen=True, slots=True)
class Window:
    """Seconds since local midnight ``[start, end)`` on ``days`` (0 = Monday)."""

    start: int
    end: int
    days: frozenset[int]
    zone: dt.tzinfo
    text: str

    def contains(self, at: float) -> bool:
        local = dt.datetime.fromtimestamp(at, self.zone)
        second = local.hour * 3600 + local.minute * 60 + local.second
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= second < self.end
        # wraps midnight: the evening part belongs to today, the morning part to yesterday
        return ((second >= self.start and day in self.days)
                or (second < self.end and (day - 1) % 7 in self.days))

    def opens_after(self, at: float) -> float | None:
        """The first opening strictly after ``at`` (None: never, e.g. no days)."""
        local = dt.datetime.fromtimestamp(at, self.zone)
        for ahead in range(9):
            day = local.date() + dt.timedelta(days=ahead)
            if day.weekday() not in self.days:
                continue
            clock = dt.time(self.start // 3600, self.start // 60 % 60, self.start % 60)
            start = dt.datetime.combine(day, clock, self.zone).timestamp()
            if start > at:
                return start
        return None


@dataclass(frozen=True, slots=True, eq=False)
class Until:
    """A compiled precondition; ``holds`` is what the rule's test negates."""

    labels: frozenset[str]              # completion / approval labels that must be marked
    windows: tuple[Window, ...]
    text: str                           # for reasons: "create_ticket completed, 09:00-17:00"

    def holds(self, action: Action) -> bool:
        marks = action.marks
        for label in self.labels:
            if label not in marks:
                return False
        return all(w.contains(action.at) for w in self.windows)

    def next_change(self, at: float) -> float | None:
        """When time alone may make the precondition hold (a window opening)."""
        times = [t for w in self.windows if (t := w.opens_after(at)) is not None]
        return max(times) if times and len(times) == len(self.windows) else None


@dataclass(frozen=True, slots=True, eq=False)
class Completion:
    """"When an action this match admits completes, mark the session with ``label``"."""

    label: str
    match: CompiledMatch


def compile_until(rule_id: str, spec: Mapping[str, Any], path: Path, rule_ids: set[str]
                  ) -> tuple[Until | None, tuple[Completion, ...], list[Issue]]:
    """The precondition of rule ``rule_id``, the completions it waits for, and issues.
    ``rule_ids``: every rule id of the policy (``approved`` must name one)."""
    issues: list[Issue] = []
    labels: set[str] = set()
    completions: list[Completion] = []
    parts: list[str] = []
    if "completed" in spec:
        match, bad = compile_match(spec["completed"], (*path, "completed"))
        issues.extend(bad)
        if match is not None:
            label = completion_label(rule_id)
            labels.add(label)
            completions.append(Completion(label, match))
            parts.append(f"{_describe(spec['completed'])} completed in this session")
    if "approved" in spec:
        names = spec["approved"] if isinstance(spec["approved"], list) else [spec["approved"]]
        for name in names:
            if name not in rule_ids:
                issues.append(("policy_reference_error",
                               f"`approved` names rule `{name}`, which this policy does not "
                               "have", (*path, "approved")))
                continue
            labels.add(approval_label(name))
            parts.append(f"a call held by `{name}` was approved in this session")
    windows: list[Window] = []
    if "window" in spec:
        window, bad = _window(spec["window"], (*path, "window"))
        issues.extend(bad)
        if window is not None:
            windows.append(window)
            parts.append(f"the time is within {window.text}")
    if issues:
        return None, (), issues
    return Until(frozenset(labels), tuple(windows), " and ".join(parts)), tuple(completions), []


def _describe(match: Mapping[str, Any]) -> str:
    keys = ("server", "tool", "resource", "prompt", "mcp_method", "method", "host", "path")
    words = [f"{k} {v}" for k in keys if (v := match.get(k)) is not None]
    return "a call (" + ", ".join(words) + ")" if words else "a matching call"


def _window(spec: Mapping[str, Any], path: Path) -> tuple[Window | None, list[Issue]]:
    issues: list[Issue] = []
    start = _minutes(spec.get("from"), "from", path, issues)
    end = _minutes(spec.get("to"), "to", path, issues)
    tz_text = str(spec.get("tz", "UTC"))
    zone = _zone(tz_text)
    if zone is None:
        issues.append(("policy_until_error", f"unknown time zone `{tz_text}`: use an IANA "
                       "name (Europe/Berlin), UTC, or an offset like +02:00", (*path, "tz")))
    days_spec = spec.get("days", list(DAYS))
    days: set[int] = set()
    for day in days_spec if isinstance(days_spec, list) else [days_spec]:
        if isinstance(day, str) and day in DAYS:   # anything else: the schema reports it
            days.add(DAYS.index(day))
    if start == DAY:
        issues.append(("policy_until_error", "a window cannot open at 24:00; use 00:00",
                       (*path, "from")))
    if start is not None and end is not None and start == end:
        issues.append(("policy_until_error", "the window opens and closes at the same time",
                       (*path, "to")))
    if issues or start is None or end is None or zone is None:
        return None, issues
    names = ",".join(DAYS[d] for d in sorted(days)) if len(days) < 7 else "every day"
    text = f"{spec['from']}-{spec['to']} {tz_text} ({names})"
    return Window(start, end, frozenset(days), zone, text), []


def _minutes(value: Any, key: str, path: Path, issues: list[Issue]) -> int | None:
    if not isinstance(value, str) or not _CLOCK.fullmatch(value):
        issues.append(("policy_until_error", f"`{key}` must be a time HH:MM or HH:MM:SS "
                       f"(00:00-24:00), got {value!r}", (*path, key)))
        return None
    parts = [int(p) for p in value.split(":")]
    return parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) > 2 else 0)


def _zone(text: str) -> dt.tzinfo | None:
    if text.upper() in ("UTC", "Z"):
        return dt.UTC
    m = _OFFSET.fullmatch(text)
    if m:
        sign = 1 if m.group(1) == "+" else -1
        hours, minutes = int(m.group(2)), int(m.group(3))
        if hours > 14 or minutes > 59:
            return None
        return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None
