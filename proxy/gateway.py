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
from types import MappingProxyType
from typing import Any

from .action import Action, Kind
from .decision import Decision, Plane, Verdict
from .engine import Adjudicator
from .errors import AuditError, PolicyError
from .evidence import EvidenceSink, make_record
from .identity.config import credential_for, headers_to_strip, principal_for, token_from_headers
from .mcp_response import ResponseGovernor
from .policy import CompiledPolicy, compile_file
from .policy.rules import make_decision
from .policy.sessions import Budget
from .principal import ANONYMOUS, Principal
from .replies import Reply, challenge, deny_reply
from .state import (
    ANONYMOUS_DIGEST,
    SESSION_HEADER,
    BudgetKey,
    MemoryStore,
    Scope,
    StateError,
    StateStore,
    extract_values,
    principal_session,
    session_key,
)
from .translate import Refusal, RequestView, translate_connect, translate_request

log = logging.getLogger("fiveplane")

UNTRUSTED_LABEL = "untrusted_content"
_SESSION_KINDS = frozenset({Kind.HTTP, Kind.MCP, Kind.MCP_SERVER})

# Verdicts whose realization lives in later work (approvals, narrowing): until a plane
# can realize them they are enforced as deny, and the reason says so.
_UNREALIZED = {
    Verdict.ESCALATE: "requires human approval, and no approval store is configured",
    Verdict.PAUSE: "asks for a pause, and no resume source is configured",
    Verdict.DEFER: "asks to defer, and no deferral queue is configured",
    Verdict.NARROW: "asks to narrow the call, and no narrowing directive is defined",
    Verdict.MODIFY: "asks to modify the call, and no modification directive is defined",
}


class SessionKilled(Exception):
    """The session (or its principal) was killed; carries the operator's reason."""


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
                 policy_path: str | Path | None = None, store: StateStore | None = None) -> None:
        self._adjudicator = Adjudicator(policy)
        self.store: StateStore = store if store is not None else MemoryStore()
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
        _, decision_id, decision = self.judge(action, outcome=outcome)
        return decision_id, decision

    def judge(self, action: Action, *, outcome: str | None = None
              ) -> tuple[Action, str, Decision]:
        """Put the session context on the action, decide, charge budgets, record, then
        apply the decision's session effects (labels). Returns the action as decided."""
        start = time.perf_counter_ns()
        charged: list[tuple[BudgetKey, float, float | None]] = []
        try:
            action = self._with_session(action)
            decision = self._adjudicator.decide(action)
            if realize(decision).verdict.proceeds:
                decision = self._charge(action, decision, charged)
        except SessionKilled as e:
            decision = make_decision(
                Verdict.DENY, ("session.killed",),
                f"the session was killed by an operator: {e}", self.policy.version,
                Plane.REASONING)
            return (action, *self._recorded(action, decision, start, outcome))
        except (StateError, ValueError) as e:
            self._release(charged, action.at)
            decision = make_decision(
                Verdict.DENY, ("state.unavailable",),
                f"session state could not be read or updated, so the action is denied: {e}",
                self.policy.version, Plane.REASONING)
            return (action, *self._recorded(action, decision, start, outcome))
        decision_id, enforced = self._recorded(action, decision, start, outcome)
        if not enforced.verdict.proceeds:
            self._release(charged, action.at)
            return action, decision_id, enforced
        try:
            self._apply(action, enforced)
        except StateError as e:
            log.error("could not record session labels for %s: %s", decision_id, e)
        return action, decision_id, enforced

    # --- session context --------------------------------------------------------------------

    def _with_session(self, action: Action) -> Action:
        if action.kind not in _SESSION_KINDS:
            return action
        store, now = self.store, time.time()
        digest = principal_digest(action.principal)
        # An action derived from one already in context (a server message answering a
        # request) keeps its session key; a new one names its session by raw id.
        session = (action.session if action.at
                   else session_key(digest, action.session or None))
        whole = principal_session(digest)
        store.touch(session, digest or ANONYMOUS_DIGEST, now)
        killed = store.killed(session, digest)
        if killed is not None:
            raise SessionKilled(killed)
        marks = dict(store.marks(whole))
        for label, when in store.marks(session).items():
            if when > marks.get(label, -1.0):
                marks[label] = when
        tainted: frozenset[str] = frozenset()
        names = self.policy.tainted_args.intersection(action.arguments)
        if names:
            tainted = frozenset(
                name for name in names
                if store.seen(session, extract_values(action.arguments[name]), now)
                or store.seen(whole, extract_values(action.arguments[name]), now))
        return replace(action, session=session, at=now, marks=MappingProxyType(marks),
                       tainted=tainted)

    def _charge(self, action: Action, decision: Decision,
                charged: list[tuple[BudgetKey, float, float | None]]) -> Decision:
        """Consume every budget the action falls under, atomically each; the first that
        does not fit refuses the action (and what was taken is given back)."""
        for budget in self.policy.budgets:
            if not budget.match.admits(action):
                continue
            amount = budget.amount(action)
            key = _budget_key(budget, action)
            try:
                result = self.store.consume(key, amount, budget.limit, budget.window, action.at)
            except ValueError as e:
                self._release(charged, action.at)
                return make_decision(
                    Verdict.DENY, (budget.id,),
                    f"budget `{budget.id}` cannot charge this call: {e}",
                    decision.policy_version, Plane.REASONING)
            if not result.ok:
                self._release(charged, action.at)
                return make_decision(
                    Verdict.DENY, (budget.id,),
                    f"{budget.reason} (used {result.used_before:g} of {result.limit:g})",
                    decision.policy_version, Plane.REASONING)
            charged.append((key, float(amount), budget.window))
        return decision

    def _release(self, charged: list[tuple[BudgetKey, float, float | None]], now: float) -> None:
        for key, amount, window in charged:
            try:
                self.store.release(key, amount, window, now)
            except StateError as e:
                log.error("could not release budget %s: %s", key, e)
        charged.clear()

    def _apply(self, action: Action, decision: Decision) -> None:
        labels = [label for d in decision.directives if d.kind == "mark"
                  for label in d.params["labels"]]
        if labels and action.kind in _SESSION_KINDS:
            digest = principal_digest(action.principal)
            self.store.mark(action.session, labels, action.at)
            self.store.mark(principal_session(digest), labels, action.at)

    def observe(self, request: Action, result: Any) -> None:
        """A result came back for ``request``: when the policy calls that output
        untrusted, label the session and remember its values (provenance)."""
        if not self.policy.untrusted_output(request) or request.kind not in _SESSION_KINDS:
            return
        digest = principal_digest(request.principal)
        now = time.time()
        source = f"mcp:{request.server}/{request.name or request.mcp_method}"
        values = extract_values(result)
        ttl = self.policy.provenance_ttl
        for session in (request.session, principal_session(digest)):
            self.store.mark(session, [UNTRUSTED_LABEL], now)
            if values:
                self.store.remember(session, values, source, now, ttl)

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
                                 policy.identity) | {SESSION_HEADER}
        if isinstance(action, Refusal):
            decision_id, decision = self.refuse(None, f"mediation.{action.code}", action.message)
            mcp = action.rpc_id is not None
            reply = deny_reply(decision, decision_id, mcp=mcp, rpc_id=action.rpc_id)
            return RequestResult(None, decision_id, decision, reply, strip)
        if addresses:
            action = replace(action, addresses=addresses)
        action, decision_id, decision = self.judge(action)
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
        self.store.close()


def principal_digest(principal: Principal) -> str | None:
    verified = getattr(principal, "verified", None)
    return verified.digest if verified is not None else None


def _budget_key(budget: Budget, action: Action) -> BudgetKey:
    if budget.per is Scope.SESSION:
        return BudgetKey.session(budget.id, action.session)
    if budget.per is Scope.PRINCIPAL:
        return BudgetKey.principal(budget.id, principal_digest(action.principal)
                                   or ANONYMOUS_DIGEST)
    return BudgetKey.global_(budget.id)


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
