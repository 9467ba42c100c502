"""Evidence v0: one JSON line per decision, behind one small interface.

Arguments are never written raw: the record keeps their names and a SHA-256 digest
of their canonical JSON, enough to tell whether two calls carried the same arguments.
The audit issue replaces this writer with a signed hash chain; callers only see
``EvidenceSink``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from .action import Action
from .decision import Decision
from .errors import AuditError

SCHEMA = 0


class EvidenceSink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def make_record(
    decision_id: str, action: Action | None, decision: Decision, *, outcome: str,
    adjudication_us: float, total_us: float, instance: str, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "ts": time.time(),
        "instance": instance,
        "decision_id": decision_id,
        "decision": decision.to_dict(),
        "outcome": outcome,
        "timing_us": {"adjudication": round(adjudication_us, 1), "total": round(total_us, 1)},
    }
    if action is not None:
        summary = action.to_dict()
        args = summary.pop("arguments", None)
        if args is not None:
            summary["argument_names"] = sorted(args)
            summary["arguments_digest"] = digest(args)
        record["action"] = summary
        record["principal"] = summary.pop("principal")
    if extra:
        record.update(extra)
    return record


class JsonlSink:
    """Appends one line per record; a failed write raises ``AuditError`` (the caller
    denies: an unrecorded decision is not acted on)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise AuditError(f"cannot open evidence log {self.path}: {e}") from e

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            try:
                os.write(self._fd, line)
            except OSError as e:
                raise AuditError(f"cannot write evidence log {self.path}: {e}") from e

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


class MemorySink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass
