"""The gateway: everything the mitmproxy addon asks of the core, in plain data.

It owns the compiled policy (swapped whole on reload), the adjudicator and the
evidence sink. Every decision is recorded before the addon acts on it; a decision
that cannot be recorded is not acted on (denied).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .action import Action, Kind
from .approvals import ApprovalError, ApprovalRequest, ApprovalStore, hold, request_for
from .audit.policy_store import PolicyStore
from .audit.writer import Commit
from .codec import BodyError, decode_body
from .decision import Decision, Directive, Plane, Verdict
from .defer import Parked, Parking
from .dlp import REDACT, DataConfig, Finding, redact_json_body, redact_text_body
from .engine import Adjudicator
from .errors import AuditError, PolicyError
from .evidence import Evidence
from .identity.config import credential_for, headers_to_strip, principal_for, token_from_headers
from .mcp.base import server_identity
from .mcp.guard import Hold, McpGuard, Note
from .mcp.shadow import shadow_scope
from .mcp_response import ResponseGovernor
from .narrow import NO_BODY, Fields, Narrowed, narrow, narrow_rule_ids
from .observe.events import DecisionEvent, DecisionObserver, Observers
from .observe.trace import trace_from_headers
from .policy import CompiledPolicy, compile_file
from .policy.rules import make_decision
from .policy.sessions import Budget
from .principal import ANONYMOUS, Principal
from .replies import Reply, challenge, deny_reply
from .rollback import EXTRA_KEY as ROLLBACK_KEY
from .rollback import Rollback
from .state import (
    ANONYMOUS_DIGEST,
    MCP_SESSION_HEADER,
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
    Verdict.PAUSE: "asks for a pause, and this message cannot be held here (no approval "
                   "store, or a server message inside a response)",
    Verdict.DEFER: "asks to defer, and this message cannot be parked here (no approval "
                   "store, or a server message inside a response)",
    Verdict.NARROW: "asks to narrow the call, and this stop point cannot rewrite it",
    Verdict.MODIFY: "asks to modify the call, and no modification directive is defined",
}


AUDIT_SYNC_TIMEOUT = 5.0
Charge = tuple[BudgetKey, float, float | None]


@dataclass(frozen=True, slots=True)
class Judged:
    action: Action               # as decided: with its session context
    decision_id: str
    decision: Decision           # the enforced decision
    commit: Commit               # durability of its record
    charged: tuple[Charge, ...] = ()
    narrowed: Narrowed | None = None   # a narrow decision: both forms (action is the new one)


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
    judged: Judged | None = None
    commit: Commit | None = None             # durability of the decision's record
    body: bytes | None = None                # the body to forward instead (redacted)
    hold: ApprovalRequest | None = None      # held for a human: resolve_hold() decides
    rollback: str | None = None              # refused by a rollback rule: roll this session back
    parked: Parked | None = None             # parked by defer / pause: resolve_hold() waits

    @property
    def forwarded(self) -> bool:
        return self.reply is None and self.hold is None and self.parked is None

    @property
    def waits(self) -> bool:
        """Held for a person or parked until a precondition: ``resolve_hold`` decides."""
        return self.hold is not None or self.parked is not None


class Gateway:
    def __init__(self, policy: CompiledPolicy, evidence: Evidence, *, instance: str = "local",
                 policy_path: str | Path | None = None, store: StateStore | None = None,
                 policies: PolicyStore | None = None,
                 clock: Callable[[], float] = time.time,
                 approvals: ApprovalStore | None = None,
                 observers: Iterable[DecisionObserver] = ()) -> None:
        self._clock = clock  # replay passes the capture's clock
        self.observers = Observers(observers)  # metrics, decision logs, activity feed
        self.approvals = approvals
        self._policies = policies
        if policies is not None:
            policies.put(policy.source)  # every enforced version stays re-decidable
        self._adjudicator = Adjudicator(policy)
        self.store: StateStore = store if store is not None else MemoryStore()
        self._evidence = evidence
        self.mcp = McpGuard(policy.mcp, self.store, clock=clock)
        self.instance = instance
        self.policy_path = Path(policy_path) if policy_path else None
        self.rollback = Rollback(self, clock)
        # Calls are parked (defer, pause) only where they can also be held for a person.
        self.parking = Parking(self) if approvals is not None else None

    @property
    def policy(self) -> CompiledPolicy:
        return self._adjudicator.policy

    # --- policy lifecycle ---------------------------------------------------------------

    def swap(self, policy: CompiledPolicy) -> None:
        if self._policies is not None:
            self._policies.put(policy.source)  # stored before it is enforced
        # One attribute store: readers see the old or the new policy, never a mix.
        self._adjudicator = Adjudicator(policy)
        self.mcp.config = policy.mcp

    def reload(self) -> PolicyError | None:
        """Recompile the policy file; keep the last good policy if it does not compile."""
        if self.policy_path is None:
            return None
        try:
            policy = compile_file(self.policy_path)
        except PolicyError as e:
            log.error("policy reload failed, keeping version %s:\n%s",
                      self.policy.short_version, e)
            self.observers.reloaded(False, self.policy.version, self.policy.name, str(e))
            return e
        if policy.version != self.policy.version:
            try:
                self.swap(policy)
            except AuditError as e:
                log.error("policy reload failed: cannot store the new version: %s", e)
                self.observers.reloaded(False, self.policy.version, self.policy.name, str(e))
                return None
            log.info("policy reloaded: %s version %s", policy.name, policy.short_version)
            self.observers.reloaded(True, policy.version, policy.name)
        return None

    # --- deciding -----------------------------------------------------------------------

    def adjudicate(self, action: Action, *, outcome: str | None = None) -> tuple[str, Decision]:
        """Decide synchronously (server → client messages inside a response): a decision
        that lets something through waits for its record to be durable first."""
        judged = self.judge(action, outcome=outcome)
        if judged.decision.verdict.proceeds:
            try:
                judged.commit.wait_sync(AUDIT_SYNC_TIMEOUT)
            except AuditError as e:
                return judged.decision_id, self.cancel(judged, e)
        return judged.decision_id, judged.decision

    def judge(self, action: Action, *, outcome: str | None = None,
              extra: Mapping[str, Any] | None = None, compensating: bool = False,
              fields: Fields = None) -> Judged:
        """Put the session context on the action, decide, narrow, charge budgets, record,
        then apply the decision's session effects (labels). The caller waits for
        ``Judged.commit`` before letting the action through. ``fields``: the top-level
        fields of an HTTP request's JSON body, which a narrow decision rewrites (or a
        function reading them, called only for a narrow decision). ``compensating``: the
        proxy's own compensating call (rollback), which a kill of the session does not
        stop."""
        start = time.perf_counter_ns()
        charged: list[Charge] = []
        enforced: Decision | None = None   # what happens when it is not what was decided
        narrowed: Narrowed | None = None
        shadow: dict[str, Any] | None = None
        adjudicated = True
        try:
            action = self._with_session(action, check_kill=not compensating)
            decision = self._adjudicator.decide(action)
            if self._adjudicator.shadowing:
                shadow = self._shadow(action)
            subject = action
            if decision.verdict is Verdict.NARROW:
                narrowed = narrow(action, decision, self.policy.narrowings,
                                  self._adjudicator.decide, fields)
                subject, enforced = narrowed.action, self._enforceable(narrowed.enforced)
            if (enforced or realize(decision)).verdict.proceeds:
                # budgets charge what goes on: the narrowed amount
                refusal = self._charge(subject, decision, charged)
                if refusal is not None:
                    enforced = refusal
        except SessionKilled as e:
            adjudicated = False
            enforced = narrowed = None
            decision = make_decision(
                Verdict.DENY, ("session.killed",),
                f"the session was killed by an operator: {e}", self.policy.version,
                Plane.REASONING)
        except (StateError, ValueError) as e:
            self._release(charged, action.at)
            adjudicated = False
            enforced = narrowed = None
            self.observers.state_error("judge", e)
            decision = make_decision(
                Verdict.DENY, ("state.unavailable",),
                f"session state could not be read or updated, so the action is denied: {e}",
                self.policy.version, Plane.REASONING)
        decision_id, final, commit = self._recorded(
            action, decision, start, outcome, adjudicated=adjudicated, enforced=enforced,
            extra=extra,
            narrowed=narrowed.to_record() if narrowed is not None and not narrowed.failed
            else None, shadow=shadow)
        after = narrowed.action if narrowed is not None else action
        if not final.verdict.proceeds:
            self._release(charged, action.at)
            return Judged(after, decision_id, final, commit, narrowed=narrowed)
        try:
            self._apply(action, final, narrowed)
        except StateError as e:
            log.error("could not record session labels for %s: %s", decision_id, e)
            self.observers.state_error("labels", e)
        return Judged(after, decision_id, final, commit, tuple(charged), narrowed)

    def _enforceable(self, decision: Decision) -> Decision:
        """What the gateway can enforce of a decision on a narrowed call."""
        if decision.verdict is Verdict.NARROW or self._holds(decision):
            return decision
        return realize(decision)

    def _shadow(self, action: Action) -> dict[str, Any] | None:
        got = self._adjudicator.shadow(action)
        if got is None:
            return None
        would, matched = got
        return {"verdict": would.verdict.value, "rule_ids": list(would.rule_ids),
                "reason": would.reason, "matched": list(matched)}

    def cancel(self, judged: Judged, error: AuditError) -> Decision:
        """The record of an allowing decision could not be made durable: give back what
        it charged, and deny instead."""
        self._release(list(judged.charged), judged.action.at)
        log.error("evidence for decision %s is not durable, denying: %s",
                  judged.decision_id, error)
        return make_decision(
            Verdict.DENY, ("audit.unavailable",),
            f"the decision could not be recorded, so it is not acted on: {error}",
            judged.decision.policy_version, Plane.REASONING)

    # --- session context --------------------------------------------------------------------

    def _with_session(self, action: Action, *, check_kill: bool = True) -> Action:
        now = action.at or self._clock()
        if action.kind not in _SESSION_KINDS:
            return replace(action, at=now)  # the decision time makes it re-decidable
        store = self.store
        digest = principal_digest(action.principal)
        # An action derived from one already in context (a server message answering a
        # request) keeps its session key; a new one names its session by raw id.
        session = (action.session if action.at
                   else session_key(digest, action.session or None))
        whole = principal_session(digest)
        store.touch(session, digest or ANONYMOUS_DIGEST, now)
        killed = store.killed(session, digest) if check_kill else None
        if killed is not None:
            raise SessionKilled(killed)
        shared, own = store.marks(whole), store.marks(session)
        marks: Mapping[str, float]
        if not own or session == whole:
            marks = shared
        elif not shared:
            marks = own
        else:
            merged = dict(shared)
            for label, when in own.items():
                if when > merged.get(label, -1.0):
                    merged[label] = when
            marks = MappingProxyType(merged)
        tainted: frozenset[str] = frozenset()
        names = self.policy.tainted_args.intersection(action.arguments)
        if names:
            tainted = frozenset(
                name for name in names
                if store.seen(session, extract_values(action.arguments[name]), now)
                or store.seen(whole, extract_values(action.arguments[name]), now))
        return replace(action, session=session, at=now, marks=marks, tainted=tainted)

    def _charge(self, action: Action, decision: Decision,
                charged: list[Charge]) -> Decision | None:
        """Consume every budget the action falls under, atomically each; the first that
        does not fit refuses the action (and what was taken is given back). Returns the
        refusal, or None when every budget had room."""
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
        return None

    def _release(self, charged: list[Charge], now: float) -> None:
        for key, amount, window in charged:
            try:
                self.store.release(key, amount, window, now)
            except StateError as e:
                log.error("could not release budget %s: %s", key, e)
                self.observers.state_error("release", e)
        charged.clear()

    def _apply(self, action: Action, decision: Decision,
               narrowed: Narrowed | None = None) -> None:
        labels = [label for d in decision.directives if d.kind == "mark"
                  for label in d.params["labels"]]
        # A narrowing that goes through attenuates the session (read-only from now on).
        ids = narrowed.rule_ids if narrowed is not None else (
            narrow_rule_ids(decision) if decision.verdict is Verdict.NARROW else ())
        for rid in ids:
            n = self.policy.narrowings.get(rid)
            if n is not None and n.label is not None:
                labels.append(n.label)
        if labels and action.kind in _SESSION_KINDS:
            digest = principal_digest(action.principal)
            self.store.mark(action.session, labels, action.at)
            self.store.mark(principal_session(digest), labels, action.at)

    def observe(self, request: Action, result: Any) -> None:
        """A result came back for ``request``: when the policy calls that output
        untrusted, label the session and remember its values (provenance). A call that
        needs a compensation journals it from the result."""
        if ROLLBACK_KEY in request.extra:
            self.rollback.journal(request, result)
        self.completed(request, isinstance(result, Mapping) and not result.get("isError")
                       and result.get("resultType", "complete") == "complete")
        if not self.policy.untrusted_output(request) or request.kind not in _SESSION_KINDS:
            return
        digest = principal_digest(request.principal)
        now = self._clock()
        source = f"mcp:{request.server}/{request.name or request.mcp_method}"
        values = extract_values(result)
        ttl = self.policy.provenance_ttl
        for session in (request.session, principal_session(digest)):
            self.store.mark(session, [UNTRUSTED_LABEL], now)
            if values:
                self.store.remember(session, values, source, now, ttl)

    def completed(self, request: Action, ok: bool) -> None:
        """A call came back (``ok``: successfully): calls parked until it completes may
        go on (``until.completed``)."""
        if self.parking is not None and ok and request.kind in _SESSION_KINDS:
            try:
                self.parking.completed(request)
            except (StateError, ValueError) as e:
                log.error("could not record the completion of %s: %s", request.summary(), e)

    def refuse(self, action: Action | None, rule_id: str, reason: str,
               rpc_id: str | int | None = None, *, outcome: str = "refused",
               rule_ids: tuple[str, ...] | None = None,
               extra: Mapping[str, Any] | None = None) -> tuple[str, Decision]:
        """Record a refusal the proxy makes without adjudicating (unparseable input,
        internal errors, a stream cut by the kill switch: ``outcome="cut"``, a parked
        call that timed out: ``rule_ids`` of the parking rules)."""
        decision_id, decision, _ = self._refusal(action, rule_id, reason, outcome=outcome,
                                                 rule_ids=rule_ids, extra=extra)
        return decision_id, decision

    def now(self) -> float:
        return self._clock()

    def redecide(self, action: Action) -> Decision:
        """The decision ``action`` would get now, with the session state of now; nothing
        is recorded or charged (a parked call asks whether waiting changed anything)."""
        return self._adjudicator.decide(self._with_session(replace(action, at=self._clock())))

    def _refusal(self, action: Action | None, rule_id: str, reason: str, *,
                 outcome: str = "refused", rule_ids: tuple[str, ...] | None = None,
                 extra: Mapping[str, Any] | None = None) -> tuple[str, Decision, Commit]:
        start = time.perf_counter_ns()
        decision = make_decision(Verdict.DENY, rule_ids or (rule_id,), reason,
                                 self.policy.version, Plane.REASONING)
        return self._recorded(action, decision, start, outcome, adjudicated=False,
                              extra=extra)

    def _recorded(self, action: Action | None, decision: Decision, start: int,
                  outcome: str | None, *, adjudicated: bool = True,
                  enforced: Decision | None = None,
                  approval: Mapping[str, Any] | None = None,
                  extra: Mapping[str, Any] | None = None,
                  narrowed: Mapping[str, Any] | None = None,
                  shadow: Mapping[str, Any] | None = None) -> tuple[str, Decision, Commit]:
        """Record ``decision`` (what the adjudicator decided, re-decidable from the
        record) and ``enforced`` (what the proxy does, when different: a budget refusal,
        an unrealized primitive)."""
        adjudicated_ns = time.perf_counter_ns()
        decision_id = uuid.uuid4().hex
        if enforced is None:
            enforced = decision if self._holds(decision, action) else realize(decision)
        if outcome is None:
            outcome = ("held" if self._holds(enforced, action) else
                       "forwarded" if enforced.verdict.proceeds else "denied")
        extra = dict(extra or {})
        if approval:
            extra["approval"] = dict(approval)
        trace = action.extra.get("trace") if action is not None else None
        if trace:
            extra["trace"] = trace
        # only when present: evidence sinks that predate them keep working
        more: dict[str, Any] = {}
        if narrowed is not None:
            more["narrowed"] = narrowed
        if shadow is not None:
            more["shadow"] = shadow
        total_us = (time.perf_counter_ns() - start) / 1000
        commit = self._evidence.record(
            action, decision, outcome=outcome, decision_id=decision_id,
            enforced=None if enforced is decision else enforced, adjudicated=adjudicated,
            adjudication_us=(adjudicated_ns - start) / 1000, total_us=total_us,
            extra=extra or None, **more)
        if commit.error is not None:
            log.error("%s", commit.error)
            enforced = make_decision(
                Verdict.DENY, ("audit.unavailable",),
                f"the decision could not be recorded, so it is not acted on: {commit.error}",
                decision.policy_version, Plane.REASONING)
        if self.observers:
            self.observers.decided(DecisionEvent(
                decision_id, action, decision, enforced, outcome,
                (adjudicated_ns - start) / 1000, total_us, self._clock(),
                commit.error is None, approval, trace))
        return decision_id, enforced, commit

    def record_outcome(self, action: Action | None, decision: Decision, outcome: str, *,
                       extra: Mapping[str, Any], adjudicated: bool) -> str | None:
        """Evidence of what came of an action the proxy took itself (a compensation)."""
        decision_id = uuid.uuid4().hex
        commit = self._evidence.record(action, decision, outcome=outcome,
                                       decision_id=decision_id, adjudicated=adjudicated,
                                       extra=extra)
        if commit.error is not None:
            log.error("%s", commit.error)
            return None
        return decision_id

    def _holds(self, decision: Decision, action: Action | None = None) -> bool:
        """Escalations wait for a person when there is an approval store to ask; defer
        and pause park a request (not a server message inside a response) the same way."""
        if self.approvals is None:
            return False
        if decision.verdict is Verdict.ESCALATE:
            return True
        return (decision.verdict in (Verdict.DEFER, Verdict.PAUSE) and action is not None
                and action.kind in (Kind.HTTP, Kind.MCP))

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
        return principal_for(token, config, self._clock())

    def connect(self, host: str, port: int,
                headers: Iterable[tuple[str, str]] = ()) -> RequestResult:
        """Stop point 1. A refused CONNECT gets a reply (407 with a challenge when only
        a token is missing)."""
        action = translate_connect(host, port, self.principal(headers))
        if isinstance(action, Refusal):
            decision_id, decision, commit = self._refusal(None, f"mediation.{action.code}",
                                                          action.message)
            return RequestResult(None, decision_id, decision,
                                 deny_reply(decision, decision_id, mcp=False, rpc_id=None),
                                 commit=commit)
        judged = self.judge(action)
        decision_id, decision = judged.decision_id, judged.decision
        if decision.verdict.proceeds:
            return RequestResult(judged.action, decision_id, decision, None, judged=judged)
        reply = deny_reply(decision, decision_id, mcp=False, rpc_id=None)
        if decision.rule_ids == ("identity.anonymous",):
            reply = challenge(reply)
        return RequestResult(judged.action, decision_id, decision, reply, judged=judged)

    async def settle(self, result: RequestResult) -> RequestResult:
        """Before a request goes through, its record must be durable; if it cannot be
        made durable the request is denied instead."""
        commit = result.judged.commit if result.judged is not None else result.commit
        if commit is None:
            return result
        try:
            await commit.wait()
        except AuditError as e:
            if result.reply is not None or result.judged is None:
                return result  # a refusal stays a refusal, recorded or not
            decision = self.cancel(result.judged, e)
            action = result.action
            mcp = action is not None and action.kind is Kind.MCP
            reply = deny_reply(decision, result.decision_id, mcp=mcp,
                               rpc_id=action.rpc_id if action is not None else None)
            return replace(result, decision=decision, reply=reply, inject=None)
        return result

    def request(self, view: RequestView, addresses: tuple[str, ...] = (),
                connection_token: str | None = None) -> RequestResult:
        policy = self.policy
        view = replace(view, principal=self.principal(view.headers, connection_token))
        action = translate_request(view, policy)
        if not isinstance(action, Refusal):
            trace = trace_from_headers(view.headers)
            if trace is not None:  # telemetry only: recorded, never judged
                action = replace(action, extra={**action.extra, "trace": trace.to_record()})
        strip = headers_to_strip(None if isinstance(action, Refusal) else action,
                                 policy.identity) | {SESSION_HEADER}
        if isinstance(action, Refusal):
            decision_id, decision, commit = self._refusal(None, f"mediation.{action.code}",
                                                          action.message)
            mcp = action.rpc_id is not None
            reply = deny_reply(decision, decision_id, mcp=mcp, rpc_id=action.rpc_id)
            return RequestResult(None, decision_id, decision, reply, strip, commit=commit)
        if addresses:
            action = replace(action, addresses=addresses)
        if action.kind is Kind.MCP:
            held = self._mcp_hold(action, dict(view.headers).get(MCP_SESSION_HEADER))
            if held is not None:
                decision_id, decision = held
                reply = deny_reply(decision, decision_id, mcp=True, rpc_id=action.rpc_id)
                return RequestResult(action, decision_id, decision, reply, strip)
        body: bytes | None = None
        if policy.data is not None:
            scanned = self._scan_request(action, view, policy.data)
            if isinstance(scanned, RequestResult):
                return replace(scanned, strip=strip)
            action, body = scanned
        sent = body
        judged = self.judge(action, fields=lambda: _json_fields(view, policy.max_body_bytes,
                                                                sent))
        return self.realize_request(judged, strip, body,
                                    Parked(view.body, view.path.partition("?")[2], view.headers))

    def realize_request(self, judged: Judged, strip: frozenset[str], body: bytes | None,
                        parked: Parked) -> RequestResult:
        """What a judged request becomes: narrowed, held for a person, parked, forwarded
        (with a brokered credential) or denied. ``parked``: what a later hold binds (raw
        body and query), kept on a parked result."""
        policy = self.policy
        action, decision_id, decision = judged.action, judged.decision_id, judged.decision
        if judged.narrowed is not None and judged.narrowed.changed and (
                decision.verdict.proceeds or self._holds(decision, action)):
            try:
                source = body if body is not None else decode_body(
                    parked.body or b"", dict(parked.headers).get("content-encoding"),
                    limit=policy.max_body_bytes)
                body = narrowed_request_body(source, action.kind, judged.narrowed)
            except (BodyError, ValueError, TypeError, AttributeError, KeyError) as e:
                self._release(list(judged.charged), action.at)
                return self._refused(
                    action, "narrow.rewrite",
                    f"the narrowed call could not be written into the request: {e!r}", strip)
            parked = replace(parked, body=body)  # an approval binds the narrowed form
        if (decision.verdict.proceeds or (self._holds(decision, action)
                                          and decision.verdict is not Verdict.DEFER)) \
                and action.kind in _SESSION_KINDS and ROLLBACK_KEY not in action.extra:
            # journaled before it is forwarded (or held): fail closed. A deferred call is
            # journaled when its re-decision lets it through.
            action, why = self.rollback.reserve(action, decision_id, dict(parked.headers))
            if why is not None:
                self._release(list(judged.charged), action.at)
                return self._refused(action, "rollback.journal", why, strip)
        if self._holds(decision, action):
            if decision.verdict is Verdict.DEFER:
                return RequestResult(action, decision_id, decision, None, strip, judged=judged,
                                     body=body, parked=parked)
            assert self.approvals is not None
            try:
                request = request_for(self.approvals, action, decision,
                                      timeout=self.parking.timeout(decision)
                                      if self.parking is not None else policy.approval_timeout,
                                      body=parked.body, query=parked.query, now=self._clock())
            except (ApprovalError, StateError, ValueError) as e:
                return self._refused(
                    action, "approvals.unavailable",
                    f"{decision.reason}; the approval request could not be created: {e}", strip)
            return RequestResult(action, decision_id, decision, None, strip, judged=judged,
                                 body=body, hold=request,
                                 parked=parked if decision.verdict is Verdict.PAUSE else None)
        if decision.verdict.proceeds:
            inject = credential_for(action, policy.identity)
            return RequestResult(action, decision_id, decision, None, strip, inject, judged,
                                 body=body)
        reply = deny_reply(decision, decision_id, mcp=action.kind is Kind.MCP,
                           rpc_id=action.rpc_id)
        if decision.rule_ids == ("identity.anonymous",) and action.kind is Kind.HTTP:
            reply = challenge(reply)
        rollback = (action.session if action.kind in _SESSION_KINDS
                    and policy.rolls_back(decision) else None)
        return RequestResult(action, decision_id, decision, reply, strip, judged=judged,
                             rollback=rollback)

    def _refused(self, action: Action, rule_id: str, reason: str,
                 strip: frozenset[str]) -> RequestResult:
        """A judged request the proxy refuses itself (its realization failed): recorded
        and answered."""
        decision_id, decision, commit = self._refusal(action, rule_id, reason)
        reply = deny_reply(decision, decision_id, mcp=action.kind is Kind.MCP,
                           rpc_id=action.rpc_id)
        return RequestResult(action, decision_id, decision, reply, strip, commit=commit)

    async def resolve_hold(self, result: RequestResult,
                           check: Callable[[], str | None] | None = None) -> RequestResult:
        """Wait for a person to decide a held call (other flows keep moving), then let it
        through or deny it. ``check`` ends the hold early (client gone, session killed);
        then nothing is forwarded and the approval, if any, stays unused. A parked call
        (defer, pause) waits for its precondition too (``proxy.defer``)."""
        if result.parked is not None and self.parking is not None:
            return await self.parking.wait(result, check)
        assert result.hold is not None and result.action is not None
        assert self.approvals is not None
        action = result.action

        def stop() -> str | None:
            reason = check() if check is not None else None
            if reason:
                return reason
            return self.store.killed(action.session, principal_digest(action.principal))

        try:
            outcome = await hold(self.approvals, result.hold, check=stop)
        except (ApprovalError, StateError) as e:
            decision_id, decision = self.refuse(action, "approvals.unavailable",
                                                f"the approval could not be read: {e}")
            return replace(result, hold=None, decision_id=decision_id, decision=decision,
                           reply=deny_reply(decision, decision_id,
                                            mcp=action.kind is Kind.MCP, rpc_id=action.rpc_id))
        decision = outcome.decision(result.decision)
        enforced: Decision | None = None
        charged: list[Charge] = []
        if decision.verdict.proceeds:
            enforced = self._charge(action, decision, charged)
        start = time.perf_counter_ns()
        decision_id, final, commit = self._recorded(
            action, decision, start, None, adjudicated=False, enforced=enforced,
            approval=outcome.to_record())
        if final.verdict.proceeds:
            try:
                await commit.wait()
            except AuditError as e:
                self._release(charged, action.at)
                final = self.cancel(Judged(action, decision_id, final, commit), e)
        if not final.verdict.proceeds:
            self._release(charged, action.at)
            reply = deny_reply(final, decision_id, mcp=action.kind is Kind.MCP,
                               rpc_id=action.rpc_id)
            return replace(result, hold=None, decision_id=decision_id, decision=final,
                           reply=reply)
        self._apply(action, result.decision,
                    result.judged.narrowed if result.judged is not None else None)
        if self.parking is not None:
            self.parking.approved(action, result.decision)
        return replace(result, hold=None, decision_id=decision_id, decision=final, reply=None,
                       inject=credential_for(action, self.policy.identity))

    # --- MCP: pins, screening, shadowing, session binding -------------------------------------

    def _mcp_hold(self, action: Action, session_id: str | None) -> tuple[str, Decision] | None:
        server = server_identity(action)
        try:
            hold = self.mcp.session_hold(server, session_id,
                                         principal_digest(action.principal))
            if hold is None and action.mcp_method == "tools/call":
                hold = self.mcp.call_hold(server, action.name, scope=shadow_scope(action))
        except StateError as e:  # pins, bindings, offers unreadable (Redis down): deny
            return self.refuse(action, "state.unavailable",
                               "MCP guard state (tool pins, session bindings) could not be "
                               f"read, so the call is denied: {e}")
        if hold is None:
            return None
        return self.hold(action, hold)

    def session_created(self, action: Action, session_id: str | None) -> Reply | None:
        """An MCP response hands out ``Mcp-Session-Id``: bind it to the principal that
        asked, so another principal presenting it is refused (``mcp.session_hijack``)."""
        hold = self.mcp.session_created(server_identity(action), session_id,
                                        principal_digest(action.principal))
        if hold is None:
            return None
        decision_id, decision = self.hold(action, hold)
        return deny_reply(decision, decision_id, mcp=True, rpc_id=action.rpc_id)

    def hold(self, action: Action | None, hold: Hold) -> tuple[str, Decision]:
        """A refusal the MCP guard asks for (a changed pin awaiting review, a poisoned
        tool, a hijacked session id). Pin reviews are approved with ``fiveplane pins``."""
        reason = hold.reason
        if hold.verdict is Verdict.ESCALATE:
            reason = f"{reason} (held for review: escalate, enforced as deny until approved)"
        return self.refuse(action, hold.rule_id, reason)

    def note(self, action: Action | None, note: Note) -> str | None:
        """Evidence of what the MCP guard saw (first pins, screening findings, shadowing)."""
        decision = make_decision(note.verdict, note.rule_ids, note.reason,
                                 self.policy.version, Plane.REASONING)
        decision_id = uuid.uuid4().hex
        commit = self._evidence.record(
            action, decision, outcome=note.outcome, decision_id=decision_id,
            adjudicated=False, extra={"mcp": json.loads(json.dumps(note.detail, default=str))})
        if self.observers:
            self.observers.decided(DecisionEvent(
                decision_id, action, decision, decision, note.outcome, 0.0, 0.0,
                self._clock(), commit.error is None))
        return None if commit.error is not None else decision_id

    # --- data plane -------------------------------------------------------------------------

    def _scan_request(self, action: Action, view: RequestView, data: DataConfig
                      ) -> tuple[Action, bytes | None] | RequestResult:
        """Detectors over what the agent sends: a deny finding refuses the request, redact
        findings rewrite the forwarded body (and the arguments the policy judges)."""
        raw = decoded_body(view, self.policy.max_body_bytes)
        if not raw:
            return action, None
        if action.kind is Kind.MCP or _json_type(view.headers):
            try:
                scanned = redact_json_body(raw, data.scanner, data.requests)
            except BodyError:
                return action, None  # translation already refused what must be JSON
        else:
            scanned = redact_text_body(raw, data.scanner, data.requests)
        if not scanned.findings:
            return action, None
        self.mark(action, data.session_labels(scanned.findings))
        if scanned.denied:
            first = scanned.denied[0]
            decision_id, decision, commit = self._refusal(
                action, f"data.{first.detector}",
                f"the request carries {first.label} ({first.preview}), which this policy "
                "does not let leave")
            reply = deny_reply(decision, decision_id, mcp=action.kind is Kind.MCP,
                               rpc_id=action.rpc_id)
            return RequestResult(action, decision_id, decision, reply, commit=commit)
        if not scanned.changed:
            return action, None
        body = scanned.value
        if action.kind is Kind.MCP:
            message = json.loads(body)
            arguments = (message.get("params") or {}).get("arguments")
            if isinstance(arguments, dict):
                action = replace(action, arguments=arguments)
        self.record_redaction(action, scanned.findings, "request")
        return action, body

    def record_redaction(self, action: Action | None, findings: Iterable[Finding],
                         where: str) -> None:
        """Evidence of a rewrite: which detectors fired (masked previews only)."""
        findings = [f for f in findings if f.action == REDACT]
        if not findings:
            return
        rule_ids = tuple(sorted({f"data.{f.detector}" for f in findings}))
        directive = Directive(Plane.DATA, "redact", MappingProxyType(
            {"where": where, "findings": tuple(f.to_dict() for f in findings)}))
        decision = make_decision(
            Verdict.MODIFY, rule_ids,
            f"{len(findings)} value(s) redacted in the {where}: "
            + ", ".join(sorted({f.label for f in findings})),
            self.policy.version, Plane.DATA, directives=(directive,))
        self._recorded(action, decision, time.perf_counter_ns(), "redacted",
                       adjudicated=False, enforced=decision)

    def mark(self, action: Action, labels: Iterable[str]) -> None:
        """Attach labels to the action's session and its principal's."""
        labels = sorted(labels)
        if not labels or action.kind not in _SESSION_KINDS:
            return
        now = self._clock()
        session = action.session if action.at else session_key(
            principal_digest(action.principal), action.session or None)
        self.store.mark(session, labels, now)
        self.store.mark(principal_session(principal_digest(action.principal)), labels, now)

    def governor(self, action: Action) -> ResponseGovernor:
        return ResponseGovernor(action, self)

    def close(self) -> None:
        self._evidence.close()
        self.store.close()


def decoded_body(view: RequestView, limit: int) -> bytes:
    # translate_request has already refused bodies that do not decode within the limit
    return decode_body(view.body, dict(view.headers).get("content-encoding"), limit=limit)


def _json_type(headers: Iterable[tuple[str, str]]) -> bool:
    ctype = dict(headers).get("content-type", "").split(";", 1)[0].strip().lower()
    return ctype == "application/json" or ctype.endswith("+json")


def _json_fields(view: RequestView, limit: int, body: bytes | None) -> Mapping[str, Any] | None:
    """The top-level fields of a JSON object body (what narrowing rewrites on HTTP);
    ``NO_BODY`` without a body, None for a body that is not a JSON object."""
    try:
        raw = body if body is not None else decoded_body(view, limit)
        if not raw.strip():
            return NO_BODY
        if not _json_type(view.headers):
            return None
        value = json.loads(raw)
    except (BodyError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def narrowed_request_body(raw: bytes, kind: Kind, narrowed: Narrowed) -> bytes:
    """The request body carrying the narrowed form: MCP ``params.arguments`` replaced,
    or the changed top-level fields of an HTTP JSON body."""
    message = json.loads(raw)
    if kind is Kind.MCP:
        message["params"]["arguments"] = dict(narrowed.after)
    else:
        for name in narrowed.changed:
            if name in narrowed.after:
                message[name] = narrowed.after[name]
            else:
                message.pop(name, None)
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


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
