"""The gateway: everything the mitmproxy addon asks of the core, in plain data.

It owns the compiled policy (swapped whole on reload), the adjudicator and the
evidence sink. Every decision is recorded before the addon acts on it; a decision
that cannot be recorded is not acted on (denied).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from .action import Action, Kind
from .decision import Decision, Plane, Verdict
from .engine import Adjudicator
from .errors import AuditError, PolicyError
from .evidence import EvidenceSink, make_record
from .identity.config import credential_for, headers_to_strip, principal_for, token_from_headers
from .mcp_response import ResponseGovernor
from .policy import CompiledPolicy, compile_file
from .policy.rules import make_decision
from .principal import ANONYMOUS, Principal
from .replies import Reply, challenge, deny_reply
from .translate import Refusal, RequestView, translate_connect, translate_request

log = logging.getLogger("fiveplane")

# Verdicts whose realization lives in later work (approvals, narrowing): until a plane
# can realize them they are enforced as deny, and the reason says so.
_UNREALIZED = {
    Verdict.ESCALATE: "requires human approval, and no approval store is configured",
    Verdict.PAUSE: "asks for a pause, and no resume source is configured",
    Verdict.DEFER: "asks to defer, and no deferral queue is configured",
    Verdict.NARROW: "asks to narrow the call, and no narrowing directive is defined",
    Verdict.MODIFY: "asks to modify the call, and no modification directive is defined",
}


@dataclass(frozen=True, slots=True)
class RequestResult:
    action: Action | None
    decision_id: str
    decision: Decision
    reply: Reply | None          # None: forward the request
    strip: frozenset[str] = frozenset()      # header names that must not reach upstream
    inject: tuple[str, str] | None = None    # a brokered credential to add (allowed only)

    @property
    def forwarded(self) -> bool:
        return self.reply is None


class Gateway:
    def __init__(self, policy: CompiledPolicy, sink: EvidenceSink, *, instance: str = "local",
                 policy_path: str | Path | None = None) -> None:
        self._adjudicator = Adjudicator(policy)
        self._sink = sink
        self.instance = instance
        self.policy_path = Path(policy_path) if policy_path else None

    @property
    def policy(self) -> CompiledPolicy:
        return self._adjudicator.policy

    # --- policy lifecycle ---------------------------------------------------------------

    def swap(self, policy: CompiledPolicy) -> None:
        # One attribute store: readers see the old or the new policy, never a mix.
        self._adjudicator = Adjudicator(policy)

    def reload(self) -> PolicyError | None:
        """Recompile the policy file; keep the last good policy if it does not compile."""
        if self.policy_path is None:
            return None
        try:
            policy = compile_file(self.policy_path)
        except PolicyError as e:
            log.error("policy reload failed, keeping version %s:\n%s",
                      self.policy.short_version, e)
            return e
        if policy.version != self.policy.version:
            self.swap(policy)
            log.info("policy reloaded: %s version %s", policy.name, policy.short_version)
        return None

    # --- deciding -----------------------------------------------------------------------

    def adjudicate(self, action: Action, *, outcome: str | None = None) -> tuple[str, Decision]:
        start = time.perf_counter_ns()
        decision = self._adjudicator.decide(action)
        return self._recorded(action, decision, start, outcome)

    def refuse(self, action: Action | None, rule_id: str, reason: str,
               rpc_id: str | int | None = None) -> tuple[str, Decision]:
        start = time.perf_counter_ns()
        decision = make_decision(Verdict.DENY, (rule_id,), reason, self.policy.version,
                                 Plane.REASONING)
        return self._recorded(action, decision, start, "refused")

    def _recorded(self, action: Action | None, decision: Decision, start: int,
                  outcome: str | None) -> tuple[str, Decision]:
        adjudicated = time.perf_counter_ns()
        decision_id = uuid.uuid4().hex
        enforced = realize(decision)
        if outcome is None:
            outcome = "forwarded" if enforced.verdict.proceeds else "denied"
        record = make_record(
            decision_id, action, decision, outcome=outcome,
            adjudication_us=(adjudicated - start) / 1000,
            total_us=(time.perf_counter_ns() - start) / 1000, instance=self.instance,
            extra=None if enforced is decision else {"enforced": enforced.to_dict()},
        )
        try:
            self._sink.write(record)
        except AuditError as e:
            log.error("%s", e)
            return decision_id, make_decision(
                Verdict.DENY, ("audit.unavailable",),
                f"the decision could not be recorded, so it is not acted on: {e}",
                decision.policy_version, Plane.REASONING)
        return decision_id, enforced

    def may_call_tool(self, action: Action) -> bool:
        return self._adjudicator.may_call_tool(action)

    # --- stop points ----------------------------------------------------------------------

    def principal(self, headers: Iterable[tuple[str, str]],
                  connection_token: str | None = None) -> Principal:
        """Who is acting: the token of this request (token header or Proxy-Authorization),
        else the one its tunnel was opened with; anonymous without either."""
        config = self.policy.identity
        if config is None:
            return ANONYMOUS
        token = token_from_headers(headers, config)
        if token is None:
            token = connection_token
        return principal_for(token, config, time.time())

    def connect(self, host: str, port: int, headers: Iterable[tuple[str, str]] = ()
                ) -> tuple[str, Decision, Reply | None]:
        """Stop point 1. Returns the decision and, when refused, the reply for the
        CONNECT (407 with a challenge when only a token is missing)."""
        action = translate_connect(host, port, self.principal(headers))
        if isinstance(action, Refusal):
            decision_id, decision = self.refuse(None, f"mediation.{action.code}",
                                                action.message)
        else:
            decision_id, decision = self.adjudicate(action)
        if decision.verdict.proceeds:
            return decision_id, decision, None
        reply = deny_reply(decision, decision_id, mcp=False, rpc_id=None)
        if decision.rule_ids == ("identity.anonymous",):
            reply = challenge(reply)
        return decision_id, decision, reply

    def request(self, view: RequestView, addresses: tuple[str, ...] = (),
                connection_token: str | None = None) -> RequestResult:
        policy = self.policy
        view = replace(view, principal=self.principal(view.headers, connection_token))
        action = translate_request(view, policy)
        strip = headers_to_strip(None if isinstance(action, Refusal) else action,
                                 policy.identity)
        if isinstance(action, Refusal):
            decision_id, decision = self.refuse(None, f"mediation.{action.code}", action.message)
            mcp = action.rpc_id is not None
            reply = deny_reply(decision, decision_id, mcp=mcp, rpc_id=action.rpc_id)
            return RequestResult(None, decision_id, decision, reply, strip)
        if addresses:
            action = replace(action, addresses=addresses)
        decision_id, decision = self.adjudicate(action)
        if decision.verdict.proceeds:
            inject = credential_for(action, policy.identity)
            return RequestResult(action, decision_id, decision, None, strip, inject)
        reply = deny_reply(decision, decision_id, mcp=action.kind is Kind.MCP,
                           rpc_id=action.rpc_id)
        if decision.rule_ids == ("identity.anonymous",) and action.kind is Kind.HTTP:
            reply = challenge(reply)
        return RequestResult(action, decision_id, decision, reply, strip)

    def governor(self, action: Action) -> ResponseGovernor:
        return ResponseGovernor(action, self)

    def close(self) -> None:
        self._sink.close()


def realize(decision: Decision) -> Decision:
    """The decision this proxy can actually enforce: unrealized primitives deny."""
    why = _UNREALIZED.get(decision.verdict)
    if why is None:
        return decision
    return make_decision(
        Verdict.DENY, decision.rule_ids,
        f"{decision.reason}; rule {why}, so the call is denied (fail closed)",
        decision.policy_version, decision.plane, decision.errors,
    )
