"""The identity plane (a ``RuleSet``) and chain predicates for policy rules.

Per action the plane only ever *refuses*; allowing stays with the policy, so the
effective authority is chain ∩ policy:

* ``identity.invalid``      the action presented a token that did not verify;
* ``identity.anonymous``    no token, and the policy says ``anonymous: deny``;
* ``identity.expired``      a block of the chain is outside its validity window now
                            (also ``not_yet_valid``; the reason says which);
* ``identity.attenuation``  the chain does not admit the action (the reason names the
                            first block that refuses).

What is checked per action kind: CONNECT carries no operation, so only validity and
anonymity are checked there (every request inside the tunnel is checked in full); HTTP
and MCP requests are checked against the chain; MCP protocol plumbing (``initialize``,
``tools/list``, ``ping`` … the endpoint plane's ``LIFECYCLE`` set) is admitted when
every block grants *something* on that server; server → client messages, responses and
session ends are not the chain's to authorize.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..action import Action, Kind
from ..decision import Plane, Verdict
from ..planes.endpoint import LIFECYCLE
from ..policy.matchers import PredicateError, compile_predicate, glob_test
from ..policy.rules import Rule, make_decision
from ..principal import Link, Principal, PrincipalKind
from .capabilities import Issue
from .config import IdentityConfig
from .token import KINDS
from .verify import ChainPrincipal, RejectedPrincipal

RULE_INVALID = "identity.invalid"
RULE_ANONYMOUS = "identity.anonymous"
RULE_EXPIRED = "identity.expired"
RULE_ATTENUATION = "identity.attenuation"
RULE_IDS = (RULE_INVALID, RULE_ANONYMOUS, RULE_EXPIRED, RULE_ATTENUATION)

_CHECKED = frozenset({Kind.CONNECT, Kind.HTTP, Kind.MCP})
_DYNAMIC_LIMIT = 4096


class IdentityPlane:
    """``hits`` appends identity deny rules. ``clock`` gives unix seconds (inject a fixed
    one to re-adjudicate recorded actions)."""

    plane = Plane.IDENTITY

    def __init__(self, config: IdentityConfig, version: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.version = version
        self._clock = clock
        self._deny_anonymous = config.deny_anonymous
        self._anonymous = self._rule(
            RULE_ANONYMOUS,
            "no delegation token was presented and this policy denies anonymous agents")
        self._dynamic: dict[tuple[str, str], Rule] = {}

    def _rule(self, rule_id: str, reason: str) -> Rule:
        return Rule(
            id=rule_id, verdict=Verdict.DENY, plane=Plane.IDENTITY, reason=reason,
            decision=make_decision(Verdict.DENY, (rule_id,), reason, self.version,
                                   Plane.IDENTITY),
            tests=(), arg_tests=(), file=self.config.file, line=self.config.line,
        )

    def _deny(self, rule_id: str, reason: str) -> Rule:
        key = (rule_id, reason)
        rule = self._dynamic.get(key)
        if rule is None:
            if len(self._dynamic) >= _DYNAMIC_LIMIT:
                self._dynamic.clear()
            rule = self._dynamic[key] = self._rule(rule_id, reason)
        return rule

    def hits(self, action: Action, out: list[Rule], errors: list[str]) -> None:
        kind = action.kind
        if kind not in _CHECKED:
            return
        principal = action.principal
        if type(principal) is not ChainPrincipal:
            if type(principal) is RejectedPrincipal:
                error = principal.error
                rule_id = RULE_EXPIRED if error.code in ("expired", "not_yet_valid") \
                    else RULE_INVALID
                out.append(self._deny(rule_id, f"delegation token refused: {error}"))
            elif self._deny_anonymous:
                out.append(self._anonymous)
            return
        chain = principal.verified
        now = action.at or self._clock()
        if not chain.not_before <= now < chain.not_after:
            error = chain.validity(now)
            assert error is not None
            out.append(self._deny(RULE_EXPIRED, f"delegation token refused: {error.message}"
                                  f" [{error.code}]"))
            return
        if kind is Kind.CONNECT:
            return
        if kind is Kind.MCP and action.mcp_method in LIFECYCLE:
            if chain.reaches(action):
                return
            reason = (f"the delegation chain {principal} grants nothing on MCP server "
                      f"`{action.server}`")
            out.append(self._deny(RULE_ATTENUATION, reason))
            return
        result = chain.admits(action)
        if result is not True:
            out.append(self._deny(RULE_ATTENUATION,
                                  f"{action.summary()} is {result} in the delegation chain "
                                  f"{principal}"))

    def may_call(self, action: Action) -> bool:
        """For ``tools/list`` filtering: may this principal call the tool at all (some
        arguments)? Anonymous: only when the policy decides for anonymous agents."""
        principal = action.principal
        if type(principal) is ChainPrincipal:
            chain = principal.verified
            return chain.valid_at(self._clock()) and chain.may_call(action)
        if type(principal) is RejectedPrincipal:
            return False
        return not self._deny_anonymous


# --- chain predicates: `principal:` in a rule's match ---------------------------------------

PRINCIPAL_KEYS = ("root", "id", "acting", "kind", "depth", "anonymous")
_DEPTH_OPS = frozenset({"eq", "ne", "in", "not_in", "gt", "ge", "lt", "le"})


def _links(principal: Principal) -> tuple[Link, ...]:
    """The proven chain: empty for anonymous and for a refused token."""
    if type(principal) is RejectedPrincipal:
        return ()
    chain = principal.chain
    if all(link.kind is PrincipalKind.ANONYMOUS for link in chain):
        return ()
    return chain


def _strings(value: Any) -> list[str] | None:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        return None
    return items


def compile_principal_match(spec: Any, path: tuple[str | int, ...] = ()) -> tuple[
        Callable[[Action], bool] | None, list[Issue]]:
    """Compile ``match.principal`` into a test on the action's principal.

    Keys (all must hold): ``root`` — id (glob) of block 0's principal; ``id`` — some link
    of the chain has this id (glob); ``acting`` — the last link's id (glob); ``kind`` —
    some link has this kind (human, agent, tool; a list: any of them); ``depth`` — a
    numeric predicate on the number of links (0 for anonymous); ``anonymous`` — true:
    no proven chain, false: a proven chain. Anonymous principals have no root, ids or
    kinds, so ``root``/``id``/``acting``/``kind`` never match them."""
    issues: list[Issue] = []
    if not isinstance(spec, Mapping) or not spec:
        return None, [("policy_schema_error", "`principal` is a non-empty mapping", path)]
    tests: list[Callable[[tuple[Link, ...]], bool]] = []
    for key, value in spec.items():
        where = (*path, key)
        if key not in PRINCIPAL_KEYS:
            issues.append(("policy_unknown_key", f"unknown key `{key}` (use one of "
                           f"{', '.join(PRINCIPAL_KEYS)})", where))
            continue
        if key in ("root", "id", "acting"):
            patterns = _strings(value)
            if patterns is None:
                issues.append(("policy_schema_error",
                               f"`{key}` is a principal id or a list of them", where))
                continue
            test = glob_test(patterns)
            if key == "root":
                tests.append(lambda links, t=test: bool(links) and t(links[0].id))
            elif key == "acting":
                tests.append(lambda links, t=test: bool(links) and t(links[-1].id))
            else:
                tests.append(lambda links, t=test: any(t(link.id) for link in links))
        elif key == "kind":
            kinds = _strings(value)
            if kinds is None or any(k not in KINDS for k in kinds):
                issues.append(("policy_schema_error",
                               f"`kind` is one of {', '.join(KINDS)} or a list of them", where))
                continue
            wanted = frozenset(PrincipalKind(k) for k in kinds)
            tests.append(lambda links, w=wanted: any(link.kind in w for link in links))
        elif key == "depth":
            if not isinstance(value, Mapping) or not value or set(value) - _DEPTH_OPS:
                issues.append(("policy_schema_error",
                               "`depth` is a predicate: eq, ne, in, not_in, gt, ge, lt, le",
                               where))
                continue
            try:
                pred = compile_predicate("principal.depth", value)
            except (ValueError, TypeError, re.error) as e:
                issues.append(("policy_predicate_error", f"`depth`: {e}", where))
                continue

            def depth_test(links: tuple[Link, ...], p: Any = pred) -> bool:
                try:
                    return bool(p(len(links)))
                except PredicateError:
                    return False
            tests.append(depth_test)
        else:  # anonymous
            if not isinstance(value, bool):
                issues.append(("policy_schema_error", "`anonymous` is true or false", where))
                continue
            tests.append(lambda links, want=value: (not links) is want)
    if issues:
        return None, issues
    frozen = tuple(tests)

    def principal_test(action: Action) -> bool:
        links = _links(action.principal)
        for test in frozen:  # noqa: SIM110 -- hot path
            if not test(links):
                return False
        return True
    return principal_test, []
