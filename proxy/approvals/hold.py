"""Holding a call for approval: open (or find) the request bound to the call, then wait for
the decision without blocking anything else.

Gateway side (plain, synchronous)::

    request = request_for(approvals, action, decision, timeout=rule_timeout,
                          body=view.body, query=query)

Addon side (inside the async ``request`` hook)::

    result = await hold(approvals, request, check=lambda: gone(flow))
    if result.proceeds:   # approved, and the approval is now used (single-use)
        ...forward...
    else:                 # denied, expired, cancelled (kill switch), abandoned, replayed
        ...deny with result.reason...
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..action import Action
from ..decision import Decision, Verdict
from .model import (
    DEFAULT_TIMEOUT,
    ApprovalConflict,
    ApprovalRequest,
    Status,
    call_digest,
    describe_action,
    principal_digest,
)
from .store import ApprovalStore

CHECK_SECONDS = 0.25      # how often ``hold`` calls its ``check`` (client gone? killed?)


class Outcome(StrEnum):
    APPROVED = "approved"      # the call proceeds; the approval is used up
    DENIED = "denied"          # an approver said no
    EXPIRED = "expired"        # nobody decided before the request's deadline
    TIMEOUT = "timeout"        # the hold's own limit ended first (the request stays pending)
    CANCELLED = "cancelled"    # cancelled, e.g. the session was killed
    ABANDONED = "abandoned"    # ``check`` said stop (client gone): nothing is forwarded
    REPLAYED = "replayed"      # approved, but an identical call used the approval first


@dataclass(frozen=True, slots=True)
class HoldResult:
    outcome: Outcome
    request: ApprovalRequest
    reason: str

    @property
    def proceeds(self) -> bool:
        return self.outcome is Outcome.APPROVED

    def decision(self, held: Decision) -> Decision:
        """The decision to enforce and record after the hold: the held (escalate) decision's
        rules, allow or deny, with the approver and note in the reason."""
        verdict = Verdict.ALLOW if self.proceeds else Verdict.DENY
        return Decision(verdict, held.rule_ids, f"{held.reason}; {self.reason}",
                        held.policy_version, held.plane, errors=held.errors)

    def to_record(self) -> dict[str, Any]:
        """The ``approval`` entry of the evidence record (no arguments)."""
        return {"outcome": self.outcome.value, "reason": self.reason,
                **self.request.to_record()}


def request_for(store: ApprovalStore, action: Action, decision: Decision, *,
                timeout: float = DEFAULT_TIMEOUT, body: bytes | None = None,
                query: str = "", now: float | None = None) -> ApprovalRequest:
    """Open the approval request for this exact call, or find the identical call's pending
    or approved-and-unused one. ``action`` as decided (``Gateway.judge`` sets the session
    key); ``decision``: the escalate decision (rules, reason, policy version). For plain
    HTTP pass the body and raw query string (they are bound into the digest)."""
    return store.request(
        call_digest(action, decision.policy_version, body=body, query=query),
        rule_ids=decision.rule_ids, reason=decision.reason, principal=action.principal,
        action=describe_action(action, body=body), session=action.session,
        principal_digest=principal_digest(action.principal),
        policy_version=decision.policy_version, timeout=timeout, now=now)


async def hold(store: ApprovalStore, request: ApprovalRequest, *,
               timeout: float | None = None, check: Callable[[], str | None] | None = None,
               check_every: float = CHECK_SECONDS) -> HoldResult:
    """Wait for the decision on ``request`` (until its deadline, or ``timeout`` seconds if
    shorter), then use the approval if there is one.

    ``check``: called every ``check_every`` seconds; a non-empty string ends the hold as
    ``ABANDONED`` with that reason (the client disconnected, the session was killed
    elsewhere) and leaves the request as it is, so a retried identical call finds it.
    """
    loop = asyncio.get_running_loop()
    end = None if timeout is None else loop.time() + max(0.0, timeout)
    status = request.status
    while status is Status.PENDING:
        step = check_every if check is not None else None
        if end is not None:
            left = end - loop.time()
            if left <= 0:
                return HoldResult(Outcome.TIMEOUT, store.get(request.id) or request,
                                  f"no decision within {timeout:g} s")
            step = left if step is None else min(step, left)
        status = await store.wait(request.id, step)
        if status is Status.PENDING and check is not None:
            why = check()
            if why:
                return HoldResult(Outcome.ABANDONED, store.get(request.id) or request, why)
    current = store.get(request.id) or request
    if status is Status.APPROVED:
        try:
            used = store.consume(request.id, request.digest)
        except ApprovalConflict as e:
            return HoldResult(Outcome.REPLAYED, store.get(request.id) or current,
                              f"the approval cannot be used: {e}")
        return HoldResult(Outcome.APPROVED, used, _by("approved", used))
    if status is Status.DENIED:
        return HoldResult(Outcome.DENIED, current, _by("denied", current))
    if status is Status.CANCELLED:
        note = f": {current.note}" if current.note else ""
        return HoldResult(Outcome.CANCELLED, current, f"the approval request was cancelled{note}")
    return HoldResult(Outcome.EXPIRED, current,
                      f"no approver decided within {current.timeout:g} s")


def _by(what: str, request: ApprovalRequest) -> str:
    note = f": {request.note}" if request.note else ""
    return f"{what} by {request.approver}{note}"
