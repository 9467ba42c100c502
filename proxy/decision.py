"""The one ``Decision`` type that flows from every stop point to the evidence log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Verdict(StrEnum):
    """The paper's taxonomy: allow/deny plus six interruption primitives."""

    ALLOW = "allow"
    MODIFY = "modify"          # rewrite then continue (redact, drop fields)
    NARROW = "narrow"          # continue with less authority (clamp arguments)
    DEFER = "defer"            # park until a precondition holds, then re-adjudicate
    PAUSE = "pause"            # hold; resume on a named event or time out to deny
    ESCALATE = "escalate"      # pause + a human approval bound to the exact call
    DENY = "deny"
    ROLLBACK = "rollback"      # deny, then run declared compensations

    @property
    def precedence(self) -> int:
        return _PRECEDENCE[self]

    @property
    def proceeds(self) -> bool:
        """True when the action continues (possibly changed) without waiting."""
        return self in (Verdict.ALLOW, Verdict.MODIFY, Verdict.NARROW)

    @property
    def refuses(self) -> bool:
        return self in (Verdict.DENY, Verdict.ROLLBACK)


# Deny overrides: the strictest verdict of all matched rules wins.
_PRECEDENCE = {v: i for i, v in enumerate(Verdict)}


class Plane(StrEnum):
    REASONING = "reasoning"
    NETWORK = "network"
    IDENTITY = "identity"
    ENDPOINT = "endpoint"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class Directive:
    """What one plane must do on the live flow (e.g. data: redact these fields)."""

    plane: Plane
    kind: str
    params: Mapping[str, Any] = MappingProxyType({})

    def to_dict(self) -> dict[str, Any]:
        return {"plane": self.plane.value, "kind": self.kind, "params": dict(self.params)}


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    rule_ids: tuple[str, ...]
    reason: str
    policy_version: str
    plane: Plane = Plane.ENDPOINT
    directives: tuple[Directive, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.verdict.proceeds

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "verdict": self.verdict.value,
            "rule_ids": list(self.rule_ids),
            "reason": self.reason,
            "policy_version": self.policy_version,
            "plane": self.plane.value,
        }
        if self.directives:
            d["directives"] = [x.to_dict() for x in self.directives]
        if self.errors:
            d["errors"] = list(self.errors)
        return d
