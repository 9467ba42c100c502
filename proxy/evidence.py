"""Where decisions go: the ``Evidence`` interface the gateway records every decision to
before acting on it.

The production implementation is ``proxy.audit.AuditLog`` (signed hash chain, durable
group commit). ``MemorySink`` keeps plain records in memory for tests and tools; it
never writes argument values, only their names and a digest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

from .action import Action
from .audit.writer import Commit
from .decision import Decision


class Evidence(Protocol):
    def record(self, action: Action | None, decision: Decision, *, outcome: str,
               decision_id: str, enforced: Decision | None = None, adjudicated: bool = True,
               adjudication_us: float = 0.0, total_us: float = 0.0,
               extra: Mapping[str, Any] | None = None,
               narrowed: Mapping[str, Any] | None = None,
               shadow: Mapping[str, Any] | None = None) -> Commit: ...

    def close(self) -> None: ...


def digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


class MemorySink:
    """Evidence as plain dicts in a list (tests, offline replay)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, action: Action | None, decision: Decision, *, outcome: str,
               decision_id: str, enforced: Decision | None = None, adjudicated: bool = True,
               adjudication_us: float = 0.0, total_us: float = 0.0,
               extra: Mapping[str, Any] | None = None,
               narrowed: Mapping[str, Any] | None = None,
               shadow: Mapping[str, Any] | None = None) -> Commit:
        record: dict[str, Any] = {
            "ts": time.time(),
            "decision_id": decision_id,
            "decision": decision.to_dict(),
            "outcome": outcome,
            "adjudicated": adjudicated,
            "timing_us": {"adjudication": round(adjudication_us, 1),
                          "total": round(total_us, 1)},
        }
        if enforced is not None:
            record["enforced"] = enforced.to_dict()
        if action is not None:
            summary = action.to_dict()
            args = summary.pop("arguments", None)
            if args is not None:
                summary["argument_names"] = sorted(args)
                summary["arguments_digest"] = digest(args)
            record["principal"] = summary.pop("principal")
            record["action"] = summary
        if narrowed is not None:
            after = dict(narrowed.get("arguments") or {})
            record["narrowed"] = {"rule_ids": list(narrowed.get("rule_ids", ())),
                                  "changed": list(narrowed.get("changed", ())),
                                  "argument_names": sorted(after),
                                  "arguments_digest": digest(after)}
        if shadow is not None:
            record["shadow"] = dict(shadow)
        if extra:
            record.update(extra)
        self.records.append(record)
        return Commit.durable()

    def close(self) -> None:
        pass
