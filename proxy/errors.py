"""The exception tree of fiveplane, and the policy issue type.

    GovernanceError
    ├── PolicyError   a policy failed to load or compile; ``.issues`` lists every problem found
    ├── ConfigError   bad runtime settings (CLI flags, environment)
    └── AuditError    the evidence sink could not record a decision

Evaluation problems never raise on the hot path: they end up in ``Decision.errors`` and
the decision denies (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy document, with a stable ``code`` and a location."""

    code: str
    message: str
    file: str = "<policy>"
    line: int = 0
    rule_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        rule = f" rule `{self.rule_id}`:" if self.rule_id else ""
        return f"{where}:{rule} {self.message} [{self.code}]"

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "rule_id": self.rule_id,
        }


class GovernanceError(Exception):
    """Base class of every error fiveplane raises on purpose."""


class PolicyError(GovernanceError):
    def __init__(self, issues: tuple[PolicyIssue, ...] | list[PolicyIssue]) -> None:
        self.issues = tuple(issues)
        if not self.issues:
            raise ValueError("PolicyError needs at least one issue")
        super().__init__("\n".join(str(i) for i in self.issues))


class ConfigError(GovernanceError):
    pass


class AuditError(GovernanceError):
    pass
