"""Structured logs: one line per notable event, JSON for a log pipeline or text for a
terminal.

Notable: a decision other than a plain allow (deny, hold, redaction, refusal, cut), an
approval resolved, a policy reload (ok or failed), state and audit errors. Each decision
line carries the ``decision_id`` that finds its evidence record (``fiveplane audit show``)
and, when the agent sent one, the W3C ``trace_id``. Never argument values: the line says
which rule, why, who (the principal chain) and where (target, tool).

``configure_logging`` installs the chosen format on the root logger, so the proxy's other
log lines (errors, warnings) come out in the same format.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from ..approvals.redact import redact_text
from ..decision import Decision
from ..principal import Principal
from .events import DecisionEvent

DECISIONS = logging.getLogger("fiveplane.decision")
EVENTS = logging.getLogger("fiveplane.event")
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
MAX_FIELD = 2000
# LogRecord attributes that are not event fields
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}   # uvicorn's ANSI-coloured copy


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339 UTC), ``level``, ``logger``,
    ``message``, then the event's fields (``event``, ``decision_id``, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value ...`` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        head = (f"{_rfc3339(record.created)} {record.levelname:<7} {record.name}: "
                f"{record.getMessage()}")
        fields = [f"{k}={_text(v)}" for k, v in record.__dict__.items()
                  if k not in _STANDARD and not k.startswith("_") and k != "event"
                  and k not in ("reason",)]
        line = head + (" " + " ".join(fields) if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", fmt: str = "text",
                      stream: TextIO | None = None) -> None:
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class DecisionLog:
    """The observer that logs notable decisions and events."""

    def decided(self, event: DecisionEvent) -> None:
        enforced = event.enforced
        verdict = enforced.verdict
        if event.outcome == "forwarded" and event.approval is None and \
                verdict.value == "allow":
            return                      # plain allows are counted, not logged
        if not DECISIONS.isEnabledFor(logging.INFO):
            return
        level = logging.WARNING if verdict.refuses or not event.recorded else logging.INFO
        fields = decision_fields(event)
        if event.approval is not None:
            fields["event"] = "approval"
            fields["approval"] = {k: event.approval.get(k) for k in (
                "id", "outcome", "approver", "created_at", "decided_at")}
        DECISIONS.log(level, "%s %s: %s", verdict.value, fields["target"] or "-",
                      fields["reason"], extra=fields)

    def reloaded(self, ok: bool, version: str, name: str, error: str | None = None) -> None:
        fields = {"event": "policy_reload", "ok": ok, "policy": name,
                  "policy_version": version}
        if ok:
            EVENTS.info("policy %s reloaded (version %s)", name, version[:19], extra=fields)
        else:
            fields["error"] = _cut(error or "")
            EVENTS.error("policy reload failed, keeping version %s", version[:19],
                         extra=fields)

    def state_error(self, where: str, error: BaseException) -> None:
        EVENTS.error("session state error (%s): %s", where, error,
                     extra={"event": "state_error", "where": where})


@dataclass(frozen=True, slots=True)
class Brief:
    """What is kept of a decision for display: no argument values, strings cut."""

    decision_id: str
    decision: Decision
    enforced: Decision
    outcome: str
    target: str
    tool: str
    principal: Principal | None
    session: str
    recorded: bool
    trace: Mapping[str, Any] | None

    @classmethod
    def of(cls, event: DecisionEvent) -> Brief:
        action = event.action
        if action is None:
            return cls(event.decision_id, event.decision, event.enforced, event.outcome, "",
                       "", None, "", event.recorded, event.trace)
        return cls(event.decision_id, event.decision, event.enforced, event.outcome,
                   _cut(action.server or action.target),
                   _cut(action.name or action.mcp_method or action.method),
                   action.principal, action.session, event.recorded, event.trace)


def decision_fields(event: DecisionEvent | Brief) -> dict[str, Any]:
    """What a log line or the activity page shows of a decision (no argument values;
    reasons with anything key-like masked)."""
    brief = event if isinstance(event, Brief) else Brief.of(event)
    enforced = brief.enforced
    fields: dict[str, Any] = {
        "event": "decision",
        "decision_id": brief.decision_id,
        "verdict": enforced.verdict.value,
        "outcome": brief.outcome,
        "rule_ids": list(enforced.rule_ids),
        "plane": enforced.plane.value,
        "reason": _masked(enforced.reason),
        "target": brief.target,
        "tool": brief.tool,
        "principal": ([link.id for link in brief.principal.chain]
                      if brief.principal is not None else []),
        "session": brief.session,
    }
    if enforced is not brief.decision and enforced != brief.decision:
        fields["decided"] = brief.decision.verdict.value
    if not brief.recorded:
        fields["recorded"] = False
    trace = brief.trace
    if trace:
        if "trace_id" in trace:
            fields["trace_id"] = trace["trace_id"]
        else:
            fields["trace_invalid"] = trace.get("invalid", "")
    return fields


@functools.lru_cache(maxsize=4096)
def _masked(reason: str) -> str:
    """Reasons repeat (one per rule): mask each distinct one once."""
    return _cut(redact_text(reason))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD] + "…"


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, default=str, separators=(",", ":"))
    text = str(value)
    return json.dumps(text) if (not text or " " in text) else text


def _rfc3339(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created % 1 * 1000):03d}Z"
