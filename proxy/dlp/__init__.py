"""Data plane: detectors for secrets, PII and custom patterns; redaction of text, JSON and
streams. See ``proxy/dlp/README.md`` for the policy syntax and the design.

    from proxy.dlp import compile_data, redact_json, StreamScanner

    cfg, issues = compile_data(policy_doc.get("data"))
    r = redact_json(message, cfg.scanner, cfg.responses)
    if r.denied: ...            # refuse
    elif r.changed: message = r.value
"""

from .detectors import (
    BUILTIN_DETECTORS,
    GROUPS,
    Finding,
    PatternError,
    Scanner,
    compile_detectors,
    expand_selectors,
)
from .policy import DATA_SCHEMA, DataConfig, Issue, compile_data
from .redact import (
    ACTIONS,
    ALLOW,
    DENY,
    REDACT,
    Redacted,
    annotate,
    apply_findings,
    marker,
    process_text,
    redact_json,
    redact_json_body,
    redact_text,
    redact_text_body,
)
from .stream import StreamResult, StreamScanner

__all__ = [
    "ACTIONS",
    "ALLOW",
    "BUILTIN_DETECTORS",
    "DATA_SCHEMA",
    "DENY",
    "GROUPS",
    "REDACT",
    "DataConfig",
    "Finding",
    "Issue",
    "PatternError",
    "Redacted",
    "Scanner",
    "StreamResult",
    "StreamScanner",
    "annotate",
    "apply_findings",
    "compile_data",
    "compile_detectors",
    "expand_selectors",
    "marker",
    "process_text",
    "redact_json",
    "redact_json_body",
    "redact_text",
    "redact_text_body",
]
