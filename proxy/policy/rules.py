"""Compiled rules: immutable objects with precomputed decisions and trivial match calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..action import Action
from ..decision import Decision, Directive, Plane, Verdict
from .matchers import MISSING, ArgTest, PredicateError
from .until import Until

ActionTest = Callable[[Action], bool]

NO = 0
YES = 1


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """A rule ready for the hot path.

    ``decision`` is built at compile time: when this rule alone decides, the
    adjudicator returns it as is, so a common decision allocates nothing.
    """

    id: str
    verdict: Verdict
    plane: Plane
    reason: str
    decision: Decision
    tests: tuple[ActionTest, ...]
    arg_tests: tuple[tuple[str, ArgTest], ...]
    file: str
    line: int
    tainted_args: frozenset[str] = frozenset()
    until: Until | None = None       # defer / pause: the precondition that resumes the call
    timeout: float | None = None     # defer / pause: seconds a parked call may wait

    @property
    def refusing(self) -> bool:
        return not self.verdict.proceeds

    def evaluate(self, action: Action) -> int | str:
        """YES, NO, or an error message (the argument could not be tested)."""
        for test in self.tests:
            if not test(action):
                return NO
        if self.arg_tests:
            args = action.arguments
            try:
                for name, test_arg in self.arg_tests:
                    if not test_arg(args.get(name, MISSING)):
                        return NO
            except PredicateError as e:
                return str(e)
        return YES


def make_decision(
    verdict: Verdict, rule_ids: tuple[str, ...], reason: str, version: str, plane: Plane,
    errors: tuple[str, ...] = (), directives: tuple[Directive, ...] = (),
) -> Decision:
    return Decision(
        verdict=verdict, rule_ids=rule_ids, reason=reason, policy_version=version,
        plane=plane, errors=errors, directives=directives,
    )


def default_reason(rule_id: str, verdict: Verdict) -> str:
    words = {
        Verdict.ALLOW: "allowed",
        Verdict.DENY: "denied",
        Verdict.ESCALATE: "requires approval",
        Verdict.PAUSE: "paused",
        Verdict.DEFER: "deferred",
        Verdict.NARROW: "narrowed",
        Verdict.MODIFY: "modified",
        Verdict.ROLLBACK: "denied and rolled back",
    }
    return f"{words[verdict]} by rule `{rule_id}`"


