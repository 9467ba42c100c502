"""The adjudicator: one decision per action, combining every plane's rules.

Combination is order-free: the strictest verdict among matched rules wins (deny
overrides); no match means the policy default (deny unless the policy says
otherwise); any exception denies. ``decide`` parses nothing and allocates nothing
when a single precompiled rule decides.
"""

from __future__ import annotations

from collections.abc import Sequence

from .action import Action, Kind
from .decision import Decision, Plane, Verdict
from .planes import RuleSet
from .planes.endpoint import EndpointPlane
from .policy.compiled import CompiledPolicy
from .policy.rules import Rule, make_decision

_GATES = (Plane.NETWORK, Plane.IDENTITY)


class Adjudicator:
    def __init__(self, policy: CompiledPolicy, extra_planes: Sequence[RuleSet] = ()) -> None:
        self.policy = policy
        self.version = policy.version
        identity: tuple[RuleSet, ...] = (
            (policy.identity_plane,) if policy.identity_plane is not None else ())
        self._planes: tuple[RuleSet, ...] = (
            policy.network, *identity, *extra_planes, policy.endpoint)
        self._endpoint: EndpointPlane = policy.endpoint
        self._identity = policy.identity_plane
        self._default = policy.default_decision
        self._shadow = policy.shadow
        self.shadowing = policy.shadow is not None

    def decide(self, action: Action) -> Decision:
        try:
            hits: list[Rule] = []
            errors: list[str] = []
            for plane in self._planes:
                plane.hits(action, hits, errors)
                if hits and hits[-1].refusing and hits[-1].plane in _GATES:
                    break  # nothing can override a refused destination or identity
            if not errors:
                if len(hits) == 1:
                    return hits[0].decision
                if not hits:
                    return self._default
            return self._combine(hits, errors)
        except Exception as e:
            return self.failure(e)

    def _combine(self, hits: list[Rule], errors: list[str]) -> Decision:
        errors = sorted(set(errors))  # order-free: the same decision whatever the rule order
        if not hits:
            verdict = self._default.verdict
            if verdict.proceeds:
                verdict = Verdict.DENY  # an argument that could not be tested never allows
            return make_decision(
                verdict, ("defaults.effect",),
                "no rule matched and an argument could not be tested: " + "; ".join(errors),
                self.version, Plane.REASONING, tuple(errors),
            )
        top = max(hits, key=lambda r: r.verdict.precedence).verdict
        winners = sorted({r.id: r for r in hits if r.verdict is top}.values(), key=lambda r: r.id)
        first = winners[0]
        reason = first.reason
        if errors and not top.proceeds:
            reason = f"{reason} (fail closed: {'; '.join(errors)})"
        # Session effects (labels) of every matched rule apply when the action proceeds.
        directives = tuple(d for r in hits for d in r.decision.directives)
        return make_decision(
            top, tuple(r.id for r in winners), reason, self.version, first.plane, tuple(errors),
            directives,
        )

    def shadow(self, action: Action) -> tuple[Decision, tuple[str, ...]] | None:
        """What the policy would decide with its `mode: shadow` rules enforced, and the
        shadow rules that matched; None when no shadow rule speaks to ``action``. Only
        called when ``shadowing``."""
        assert self._shadow is not None
        try:
            extra: list[Rule] = []
            errors: list[str] = []
            self._shadow.hits(action, extra, errors)
            if not extra and not errors:
                return None
            matched = tuple(sorted({r.id for r in extra}))
            hits: list[Rule] = []
            for plane in self._planes:
                plane.hits(action, hits, errors)
                if hits and hits[-1].refusing and hits[-1].plane in _GATES:
                    return self._combine(hits, errors), matched  # shadows change nothing
            return self._combine(hits + extra, errors), matched
        except Exception as e:
            return self.failure(e), ()

    def failure(self, error: BaseException) -> Decision:
        reason = f"internal error while deciding, denied (fail closed): {error!r}"
        return make_decision(
            Verdict.DENY, ("adjudicator.error",), reason, self.version, Plane.REASONING,
            (repr(error),),
        )

    def may_call_tool(self, action: Action) -> bool:
        """Whether ``tools/list`` should show this tool to the principal (``action`` is a
        ``tools/call`` of it without arguments)."""
        try:
            if action.kind is not Kind.MCP:
                return False
            if self._identity is not None and not self._identity.may_call(action):
                return False
            said = self._endpoint.may_call(action)
            if said is None:
                return self._default.verdict.proceeds
            return said
        except Exception:
            return False
