"""The live activity feed behind the console's activity page: the most recent decisions
in a bounded ring buffer (in memory, this process only), and counts per rule.

Entries are what an operator may see: verdict, principal chain, target, tool, rule,
reason (key-like strings masked), session, decision id (the link to the evidence
record). Never argument values. Strings are cut to ``MAX_FIELD`` characters, the buffer
to ``capacity`` entries and the per-rule table to ``max_rules`` rules (the rest counted
under ``other``), so a flood of distinct tool names costs bounded memory.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .events import DecisionEvent
from .logs import Brief, decision_fields

CAPACITY = 2000
MAX_RULES = 512
OTHER = "other"
FILTERS = ("verdict", "rule", "principal", "session", "outcome")


class Entry:
    """One decision; its display fields are built on first read (the page polls a few
    entries a second, the proxy may decide thousands), then kept."""

    __slots__ = ("_event", "_fields", "at", "seq")

    def __init__(self, seq: int, at: float, brief: Brief) -> None:
        self.seq, self.at = seq, at
        self._event: Brief | None = brief      # never the action: no argument values kept
        self._fields: Mapping[str, Any] | None = None

    @property
    def fields(self) -> Mapping[str, Any]:
        if self._fields is None:
            assert self._event is not None
            self._fields = decision_fields(self._event)
            self._event = None
        return self._fields

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.at, **self.fields}

    def matches(self, want: Mapping[str, str]) -> bool:
        f = self.fields
        for key, value in want.items():
            if not value:
                continue
            if key == "verdict" and f["verdict"] != value:
                return False
            if key == "outcome" and f["outcome"] != value:
                return False
            if key == "rule" and value not in f["rule_ids"]:
                return False
            if key == "principal" and value not in f["principal"]:
                return False
            if key == "session" and f["session"] != value:
                return False
        return True


class ActivityFeed:
    """Observer: keeps the last ``capacity`` decisions; ``since(seq, filters)`` reads."""

    def __init__(self, capacity: int = CAPACITY, max_rules: int = MAX_RULES) -> None:
        self._entries: deque[Entry] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._seq = 0
        self.max_rules = max_rules
        self.by_rule: dict[str, dict[str, int]] = {}
        self.total = 0

    def decided(self, event: DecisionEvent) -> None:
        verdict = event.enforced.verdict.value
        brief = Brief.of(event)
        with self._lock:
            self._seq += 1
            self.total += 1
            self._entries.append(Entry(self._seq, event.at, brief))
            for rule in event.enforced.rule_ids or ("none",):
                counts = self.by_rule.get(rule)
                if counts is None:
                    if len(self.by_rule) >= self.max_rules:
                        rule = OTHER
                    counts = self.by_rule.setdefault(rule, {})
                counts[verdict] = counts.get(verdict, 0) + 1

    @property
    def last(self) -> int:
        return self._seq

    def since(self, seq: int = 0, filters: Mapping[str, str] | None = None,
              limit: int = 200) -> list[dict[str, Any]]:
        """Entries newer than ``seq`` that match every given filter, newest first."""
        want = {k: v for k, v in (filters or {}).items() if k in FILTERS and v}
        with self._lock:
            entries = list(self._entries)
            out: list[dict[str, Any]] = []
            for entry in reversed(entries):   # under the lock: fields are built once
                if entry.seq <= seq:
                    break
                if entry.matches(want):
                    out.append(entry.to_dict())
                    if len(out) >= limit:
                        break
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {rule: dict(counts) for rule, counts in self.by_rule.items()}

    def __len__(self) -> int:
        return len(self._entries)


class EvidenceFinder:
    """Find one decision's record in this process's evidence log by decision id (the
    activity page's link). Reads the log file in chunks looking for the id; returns the
    record without its sealed envelope (argument values never leave the log)."""

    CHUNK = 1 << 20

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __call__(self, decision_id: str) -> dict[str, Any] | None:
        if _DECISION_ID.fullmatch(decision_id) is None:
            raise ValueError("a decision id is 32 lower-case hex characters")
        needle = b'"id":"' + decision_id.encode() + b'"'
        carry = b""
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(self.CHUNK)
                if not chunk and not carry:
                    return None
                data = carry + chunk
                lines = data.split(b"\n")
                carry = lines.pop() if chunk else b""
                for line in lines:
                    if needle in line:
                        found = _public(line)
                        if found["body"].get("id") == decision_id:
                            return found
                if not chunk:
                    return None


def _public(line: bytes) -> dict[str, Any]:
    doc = json.loads(line)
    body = dict(doc.get("body") or {})
    body.pop("sealed", None)
    return {"seq": doc.get("seq"), "chain": doc.get("chain"), "hash": doc.get("hash"),
            "body": body}


_DECISION_ID = re.compile(r"[0-9a-f]{32}")
