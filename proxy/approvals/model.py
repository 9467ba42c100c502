"""Approval requests as data: the status, the request record, the errors, and the call
digest that binds an approval to one exact call.

Errors::

    GovernanceError
    └── ApprovalError          (base; also raised for "too many pending requests")
        ├── ApprovalNotFound   no request with that id
        ├── ApprovalConflict   not in a state that allows it (decided, expired, consumed,
        │                      another call's digest)
        └── SelfApproval       the approver is a principal of the call's own chain

Backend failures raise ``proxy.state.StateError`` (the gateway denies on it); bad
arguments raise ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from ..action import Action, Kind
from ..errors import GovernanceError
from ..principal import Link, Principal, PrincipalKind
from .redact import redact

DIGEST_VERSION = "fiveplane-approval-v1"
DEFAULT_TIMEOUT = 300.0          # seconds a request waits for a decision (policy may set)
MAX_NOTE_CHARS = 2_000
MAX_NAME_CHARS = 256


class ApprovalError(GovernanceError):
    """An approval operation was refused; the message says why."""


class ApprovalNotFound(ApprovalError):
    pass


class ApprovalConflict(ApprovalError):
    pass


class SelfApproval(ApprovalError):
    pass


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One call waiting for (or given) a human decision.

    ``expires_at``: while pending, the deadline for the decision; once approved, the
    deadline for using the approval (``decided_at`` + the request's timeout), so a call
    retried after a proxy restart still finds it. An approval is single-use:
    ``consumed_at`` is set when the held (or retried) call proceeds.
    """

    id: str
    digest: str
    rule_ids: tuple[str, ...]
    reason: str
    principal: Principal
    action: Mapping[str, Any]          # display summary; arguments already redacted
    created_at: float
    expires_at: float
    status: Status = Status.PENDING
    session: str = ""                  # the session key, for the kill switch
    principal_digest: str | None = None
    policy_version: str = ""
    approver: str | None = None
    decided_at: float | None = None
    note: str = ""
    consumed_at: float | None = None
    timeout: float = DEFAULT_TIMEOUT   # seconds given to decide, and then to use the approval

    def time_left(self, now: float) -> float:
        return max(0.0, self.expires_at - now)

    def live(self, now: float) -> bool:
        """Pending and not past its deadline."""
        return self.status is Status.PENDING and now < self.expires_at

    def usable(self, now: float) -> bool:
        """Approved, not yet used, and not past its deadline."""
        return (self.status is Status.APPROVED and self.consumed_at is None
                and now < self.expires_at)

    def findable(self, now: float) -> bool:
        """What an identical call finds instead of opening a new request."""
        return self.live(now) or self.usable(now)

    def ended_at(self) -> float | None:
        """When the request stopped mattering (``None``: pending, or approved and still
        usable): used, denied, cancelled, or expired (pending or unused)."""
        if self.status is Status.PENDING:
            return None
        if self.status is Status.APPROVED:
            return self.consumed_at if self.consumed_at is not None else self.expires_at
        if self.status is Status.EXPIRED:
            return self.expires_at
        return self.decided_at if self.decided_at is not None else self.expires_at

    @property
    def tool(self) -> str:
        a = self.action
        return str(a.get("name") or a.get("mcp_method") or a.get("summary") or "")

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "digest": self.digest,
            "status": self.status.value,
            "rule_ids": list(self.rule_ids),
            "reason": self.reason,
            "principal": self.principal.to_dict(),
            "principal_digest": self.principal_digest,
            "session": self.session,
            "action": _plain(self.action),
            "policy_version": self.policy_version,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "approver": self.approver,
            "decided_at": self.decided_at,
            "note": self.note,
            "consumed_at": self.consumed_at,
            "timeout": self.timeout,
        }
        if now is not None:
            d["time_left"] = round(self.time_left(now), 3) if self.findable(now) else 0.0
        return d

    def to_record(self) -> dict[str, Any]:
        """What the evidence log keeps of the request (no arguments, not even redacted)."""
        return {"id": self.id, "digest": self.digest, "status": self.status.value,
                "rule_ids": list(self.rule_ids), "approver": self.approver,
                "decided_at": self.decided_at, "note": self.note,
                "created_at": self.created_at, "expires_at": self.expires_at,
                "consumed_at": self.consumed_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ApprovalRequest:
        return cls(
            id=str(d["id"]), digest=str(d["digest"]), rule_ids=tuple(d.get("rule_ids", ())),
            reason=str(d.get("reason", "")), principal=principal_from(d.get("principal", [])),
            action=MappingProxyType(dict(d.get("action", {}))),
            created_at=float(d["created_at"]), expires_at=float(d["expires_at"]),
            status=Status(d.get("status", "pending")), session=str(d.get("session", "")),
            principal_digest=d.get("principal_digest"),
            policy_version=str(d.get("policy_version", "")), approver=d.get("approver"),
            decided_at=d.get("decided_at"), note=str(d.get("note") or ""),
            consumed_at=d.get("consumed_at"),
            timeout=float(d.get("timeout") or DEFAULT_TIMEOUT),
        )

    def evolve(self, **changes: Any) -> ApprovalRequest:
        return replace(self, **changes)


def principal_from(links: Any) -> Principal:
    chain = []
    for link in links or ():
        try:
            kind = PrincipalKind(link["kind"])
        except ValueError:
            kind = PrincipalKind.AGENT
        chain.append(Link(str(link["id"]), kind))
    if not chain:
        chain.append(Link("anonymous", PrincipalKind.ANONYMOUS))
    return Principal(tuple(chain))


def principal_digest(principal: Principal) -> str | None:
    """The token digest of a verified principal (``ChainPrincipal.verified.digest``)."""
    verified = getattr(principal, "verified", None)
    return getattr(verified, "digest", None) if verified is not None else None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 text: equal values give equal text. ``ValueError`` for
    values JSON cannot carry."""
    try:
        return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"arguments cannot be encoded canonically: {e}") from e


def call_digest(action: Action, policy_version: str, *, body: bytes | None = None,
                query: str = "") -> str:
    """SHA-256 over the canonical encoding of the exact call (``"sha256:<hex>"``).

    Bound: the principal chain (ids and kinds, root first) and the token digest; the
    target (scheme, host, port, path, MCP server); the HTTP method and the MCP method
    and name; the canonical JSON of the arguments; the policy version. For a plain HTTP
    call (not MCP) also the raw query string and the SHA-256 of the request body — pass
    them, or two POSTs with different bodies share one approval. For MCP the body is
    not bound (it carries the JSON-RPC id, which changes on every retry); the arguments
    are. The session is not bound: a retry after a restart comes in a new session.
    """
    mcp = action.kind in (Kind.MCP, Kind.MCP_SERVER)
    doc = {
        "v": DIGEST_VERSION,
        "principal": {
            "chain": [[link.id, link.kind.value] for link in action.principal.chain],
            "token": principal_digest(action.principal),
        },
        "target": {"scheme": action.scheme, "host": action.host, "port": action.port,
                   "path": action.path, "server": action.server},
        "call": {"kind": action.kind.value, "method": action.method,
                 "mcp_method": action.mcp_method, "name": action.name},
        "arguments": dict(action.arguments),
        "query": "" if mcp else query,
        "body": None if mcp or body is None else hashlib.sha256(body).hexdigest(),
        "policy": policy_version,
    }
    text = canonical_json(doc)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def describe_action(action: Action, *, body: bytes | None = None) -> dict[str, Any]:
    """The display summary an approver sees: what, where, and the arguments redacted."""
    d: dict[str, Any] = {"kind": action.kind.value, "summary": action.summary(),
                         "target": action.target}
    if action.method:
        d["method"] = action.method
    for key in ("server", "mcp_method", "name"):
        value = getattr(action, key)
        if value:
            d[key] = value
    if action.arguments:
        d["arguments"] = redact(dict(action.arguments))
    elif body and action.kind is Kind.HTTP:
        try:
            d["body"] = redact(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            d["body"] = f"<{len(body)} bytes>"
    return d


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    value = value.strip()
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"{what} is longer than {MAX_NAME_CHARS} characters")
    return value


def check_note(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("a note must be a string")
    return value.strip()[:MAX_NOTE_CHARS]


def is_self_approval(request: ApprovalRequest, approver: str) -> bool:
    """True when ``approver`` names any principal of the call's chain (case and
    surrounding blanks ignored): agents cannot approve their own calls."""
    who = approver.strip().casefold()
    return any(link.id.strip().casefold() == who for link in request.principal.chain)
