"""The immutable result of compiling a policy: what the adjudicator runs on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..action import Action
from ..decision import Decision, Verdict
from ..dlp.policy import DataConfig
from ..identity.config import IdentityConfig
from ..identity.plane import IdentityPlane
from ..mcp.config import McpConfig
from ..planes.endpoint import EndpointPlane
from ..planes.network import NetworkPlane
from .compensations import Compensations
from .match import CompiledMatch
from .narrowing import Narrowing
from .rules import Rule
from .sessions import Budget
from .until import Completion


@dataclass(frozen=True, slots=True)
class ServerRef:
    name: str
    scheme: str
    host: str
    port: int
    path: str


@dataclass(frozen=True, slots=True, eq=False)
class CompiledPolicy:
    name: str
    version: str                 # "sha256:<hex>" of the source text
    source: str                  # the YAML text, kept for the evidence policy store
    file: str
    default_decision: Decision
    max_body_bytes: int
    network: NetworkPlane
    endpoint: EndpointPlane
    rules: tuple[Rule, ...]
    servers: Mapping[tuple[str, str, int, str], ServerRef]   # (scheme, host, port, path) → server
    identity: IdentityConfig | None = None
    identity_plane: IdentityPlane | None = None
    budgets: tuple[Budget, ...] = ()
    untrusted: tuple[CompiledMatch, ...] = ()      # tool outputs that are untrusted content
    untrusted_servers: frozenset[str] = frozenset()
    tainted_args: frozenset[str] = frozenset()     # arguments some rule checks for taint
    provenance_ttl: float | None = None
    data: DataConfig | None = None                 # detectors and what to do when they fire
    approval_timeout: float = 300.0                # seconds a held call waits for a person
    mcp: McpConfig = field(default_factory=McpConfig)  # pinning, screening, shadowing, binding
    compensations: Compensations = field(default_factory=Compensations)
    rollback_rules: frozenset[str] = frozenset()   # rules whose refusal rolls the session back
    completions: tuple[Completion, ...] = ()       # completed calls some `until` waits for
    awaited_approvals: frozenset[str] = frozenset()  # rules whose approvals some `until` names
    rules_by_id: Mapping[str, Rule] = field(default_factory=dict)
    # `effect: narrow` rules by id, and `mode: shadow` rules (a plane of their own, None
    # when the policy has none: then shadow mode costs nothing)
    narrowings: Mapping[str, Narrowing] = field(default_factory=lambda: MappingProxyType({}))
    shadow: EndpointPlane | None = None
    shadow_rules: frozenset[str] = frozenset()

    def rolls_back(self, decision: Decision) -> bool:
        """Whether enforcing ``decision`` rolls its session back."""
        if decision.verdict.proceeds:
            return False
        return decision.verdict is Verdict.ROLLBACK or not self.rollback_rules.isdisjoint(
            decision.rule_ids)

    def untrusted_output(self, action: Action) -> bool:
        """Whether the result of ``action`` is untrusted content."""
        if action.server in self.untrusted_servers:
            return True
        return any(m.admits(action) for m in self.untrusted)

    @property
    def short_version(self) -> str:
        return self.version.split(":", 1)[1][:12]

    def server_at(self, scheme: str, host: str, port: int, path: str) -> ServerRef | None:
        return self.servers.get((scheme, host, port, path.rstrip("/") or "/"))
