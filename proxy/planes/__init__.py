"""The enforcement planes as pluggable rule sets.

Each plane compiles its part of the policy and, per action, appends the rules that
matched to ``hits`` (and evaluation errors to ``errors``). The adjudicator combines the
hits of all planes: deny overrides, default deny.
"""

from __future__ import annotations

from typing import Protocol

from ..action import Action
from ..decision import Plane
from ..policy.rules import Rule


class RuleSet(Protocol):
    plane: Plane

    def hits(self, action: Action, out: list[Rule], errors: list[str]) -> None: ...
