"""fiveplane core: action model, decisions, policy compiler, adjudicator, planes.

Importable without mitmproxy; the addons in ``addons/`` are the only mitmproxy glue.
"""

from .action import Action, Kind, StopPoint
from .decision import Decision, Directive, Plane, Verdict
from .engine import Adjudicator
from .errors import AuditError, ConfigError, GovernanceError, PolicyError, PolicyIssue
from .policy import CompiledPolicy, compile_file, compile_text
from .principal import ANONYMOUS, Link, Principal, PrincipalKind

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
    "Action",
    "Adjudicator",
    "AuditError",
    "CompiledPolicy",
    "ConfigError",
    "Decision",
    "Directive",
    "GovernanceError",
    "Kind",
    "Link",
    "Plane",
    "PolicyError",
    "PolicyIssue",
    "Principal",
    "PrincipalKind",
    "StopPoint",
    "Verdict",
    "__version__",
    "compile_file",
    "compile_text",
]
