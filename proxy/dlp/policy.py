"""The ``data:`` section of a policy: what to detect, what to do per direction, which session
labels findings attach.

    data:
      detect: [secrets, pii.email, pii.credit_card, pii.iban]   # groups, names or globs
      custom:
        - {id: employee_id, regex: 'EMP-[0-9]{6}', label: read:hr_data}
      requests:  {secrets: deny, pii.credit_card: redact}
      responses: {secrets: redact, pii.*: redact}
      labels:    {pii.*: read:customer_pii, secrets: saw:secret}
      entropy: 3.0                 # optional: bits/char for secrets.generic

Selectors: a group (``secrets``, ``pii``, ``custom``), an exact detector name, or a glob
(``pii.*``, ``secrets.aws_*``). Per detector the most specific selector wins for actions
(exact name > glob with more literal characters > group); labels of every matching selector
add up. A detected detector without an action in a direction is ``allow`` there (detected
for evidence and labels only). A custom detector's ``label`` is a session label, like an
entry in ``labels``.

:func:`compile_data` returns ``(DataConfig | None, issues)``; each issue is
``(code, message, path)`` with ``path`` from the policy root (``("data", "custom", 0,
"regex")``) so the compiler can attach a line. Nothing is returned as config while there are
issues.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .detectors import (
    BUILTIN_DETECTORS,
    DEFAULT_ENTROPY,
    GROUPS,
    Finding,
    PatternError,
    Scanner,
    compile_detectors,
    expand_selectors,
)
from .redact import ACTIONS, ALLOW, DENY, REDACT

__all__ = ["DATA_SCHEMA", "DataConfig", "Issue", "compile_data"]

Issue = tuple[str, str, tuple[str | int, ...]]

_KEYS = ("detect", "custom", "requests", "responses", "labels", "entropy")
_LABEL = re.compile(r"[A-Za-z0-9_.:\-/]{1,128}\Z")
_SELECTOR = {"type": "string", "pattern": r"^(secrets|pii|custom)(\.[A-Za-z0-9_*]+)?$"}

#: JSON Schema (draft 2020-12) of the ``data`` section, to merge into the policy schema.
DATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Data plane: detectors for secrets, PII and custom patterns, and what to do "
                   "when they fire in requests and in responses.",
    "additionalProperties": False,
    "properties": {
        "detect": {
            "type": "array", "uniqueItems": True,
            "description": "Detectors to run: groups (secrets, pii), names (pii.iban) or globs "
                           "(pii.*). Custom detectors are always run.",
            "items": {"type": "string", "anyOf": [
                {"enum": sorted([*GROUPS, *BUILTIN_DETECTORS])},
                {"pattern": r"^(secrets|pii)\.[a-z0-9_]*\*[a-z0-9_*]*$"},
            ]},
        },
        "custom": {
            "type": "array",
            "items": {
                "type": "object", "additionalProperties": False, "required": ["id", "regex"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$",
                           "description": "Becomes detector custom.<id>."},
                    "regex": {"type": "string", "minLength": 1,
                              "description": "Python regex (re.ASCII). Must start with a "
                                             "bounded set of characters and match at most "
                                             "4096 characters."},
                    "label": {"type": "string",
                              "description": "Session label attached when it fires."},
                },
            },
        },
        "requests": {"$ref": "#/$defs/dataActions"},
        "responses": {"$ref": "#/$defs/dataActions"},
        "labels": {
            "type": "object", "propertyNames": _SELECTOR,
            "additionalProperties": {"anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]},
        },
        "entropy": {"type": "number", "minimum": 1, "maximum": 8,
                    "description": "Shannon entropy threshold (bits/char) of secrets.generic."},
    },
    "$defs": {
        "dataActions": {
            "type": "object", "propertyNames": _SELECTOR,
            "additionalProperties": {"enum": sorted(ACTIONS)},
        },
    },
}


@dataclass(frozen=True)
class DataConfig:
    """The compiled ``data`` section. ``requests``/``responses`` map *every* detector of the
    scanner to ``redact``, ``deny`` or ``allow``."""

    scanner: Scanner
    requests: Mapping[str, str]
    responses: Mapping[str, str]
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def actions(self, direction: str) -> Mapping[str, str]:
        """``"request"`` or ``"response"``."""
        if direction in ("request", "requests"):
            return self.requests
        if direction in ("response", "responses"):
            return self.responses
        raise ValueError(f"unknown direction {direction!r}")

    def session_labels(self, findings: Iterable[Finding]) -> frozenset[str]:
        """Labels to attach to the session for these findings."""
        out: set[str] = set()
        for f in findings:
            out.update(self.labels.get(f.detector, ()))
        return frozenset(out)

    @staticmethod
    def outcome(findings: Iterable[Finding]) -> str:
        """``deny`` if any finding denies, ``modify`` if any was redacted, else ``allow``."""
        actions = {f.action for f in findings}
        if DENY in actions:
            return DENY
        return "modify" if REDACT in actions else ALLOW


def _specificity(selector: str) -> tuple[int, int]:
    if selector in GROUPS or selector == "custom":
        return (0, 0)
    if "*" in selector:
        return (1, len(selector.replace("*", "")))
    return (2, len(selector))


def compile_data(section: Any, *, root: tuple[str | int, ...] = ("data",)
                 ) -> tuple[DataConfig | None, list[Issue]]:
    """Validate and compile a ``data`` section (``None`` or ``{}``: no data plane)."""
    issues: list[Issue] = []

    def issue(code: str, message: str, *path: str | int) -> None:
        issues.append((code, message, (*root, *path)))

    if section is None:
        return None, []
    if not isinstance(section, Mapping):
        issue("policy_schema_error", "`data` must be a mapping")
        return None, issues
    for key in section:
        if key not in _KEYS:
            near = difflib.get_close_matches(str(key), _KEYS, n=1)
            more = f" (did you mean `{near[0]}`?)" if near else ""
            issue("policy_unknown_key", f"unknown key `{key}` in `data`{more}", key)

    detect = section.get("detect", [])
    selectors: list[str] = []
    if not isinstance(detect, list):
        issue("policy_schema_error", "`data.detect` must be a list of detector names", "detect")
    else:
        for i, sel in enumerate(detect):
            if not isinstance(sel, str):
                issue("policy_schema_error", "a detector name must be a string", "detect", i)
            elif not expand_selectors(sel, BUILTIN_DETECTORS):
                known = [*GROUPS, *BUILTIN_DETECTORS]
                near = difflib.get_close_matches(sel, known, n=1)
                more = f" (did you mean `{near[0]}`?)" if near else ""
                issue("policy_reference_error", f"unknown detector `{sel}`{more}", "detect", i)
            else:
                selectors.append(sel)

    custom = section.get("custom", [])
    custom_specs: list[Mapping[str, Any]] = []
    if not isinstance(custom, list):
        issue("policy_schema_error", "`data.custom` must be a list of {id, regex, label}",
              "custom")
    else:
        ids: dict[str, int] = {}
        for i, spec in enumerate(custom):
            if not isinstance(spec, Mapping):
                issue("policy_schema_error", "a custom detector must be a mapping "
                      "{id, regex, label}", "custom", i)
                continue
            for key in spec:
                if key not in ("id", "regex", "label"):
                    issue("policy_unknown_key", f"unknown key `{key}` in a custom detector",
                          "custom", i, key)
            try:
                compile_detectors((), [spec])          # validate this one alone
            except PatternError as e:
                issue(e.code, e.message, "custom", i, *((e.field,) if e.field else ()))
                continue
            cid = spec["id"]
            if cid in ids:
                issue("policy_duplicate_id", f"custom detector id `{cid}` is already used by "
                      f"custom detector #{ids[cid] + 1}", "custom", i, "id")
                continue
            label = spec.get("label")
            if label is not None and not _LABEL.match(label):
                issue("policy_schema_error", f"bad session label {label!r}", "custom", i,
                      "label")
                continue
            ids[cid] = i
            custom_specs.append(spec)

    entropy = section.get("entropy", DEFAULT_ENTROPY)
    if isinstance(entropy, bool) or not isinstance(entropy, int | float) \
            or not math.isfinite(entropy) or not 1 <= entropy <= 8:
        issue("policy_schema_error", "`data.entropy` must be a number from 1 to 8", "entropy")
        entropy = DEFAULT_ENTROPY

    try:
        scanner = compile_detectors(selectors, custom_specs, entropy=float(entropy))
    except PatternError as e:                          # pragma: no cover - validated above
        issue(e.code, e.message)
        return None, issues
    names = scanner.detectors

    per_direction: dict[str, dict[str, str]] = {}
    for direction in ("requests", "responses"):
        table = section.get(direction, {})
        resolved: dict[str, tuple[tuple[int, int], str]] = {}
        if not isinstance(table, Mapping):
            issue("policy_schema_error", f"`data.{direction}` must map detectors to "
                  "redact, deny or allow", direction)
            table = {}
        for sel, action in table.items():
            if not isinstance(sel, str):
                issue("policy_schema_error", "a detector selector must be a string",
                      direction)
                continue
            if action not in ACTIONS:
                issue("policy_schema_error", f"`{sel}`: action must be one of redact, deny, "
                      f"allow (got {action!r})", direction, sel)
                continue
            hit = expand_selectors(sel, names)
            if not hit:
                issue("policy_reference_error", f"`{sel}` matches no detector in "
                      "`data.detect` or `data.custom`", direction, sel)
                continue
            spec = _specificity(sel)
            for name in hit:
                if name not in resolved or spec > resolved[name][0]:
                    resolved[name] = (spec, action)
        per_direction[direction] = {n: resolved[n][1] if n in resolved else ALLOW
                                    for n in names}

    labels: dict[str, set[str]] = {}
    table = section.get("labels", {})
    if not isinstance(table, Mapping):
        issue("policy_schema_error", "`data.labels` must map detectors to session labels",
              "labels")
        table = {}
    for sel, value in table.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(sel, str) or not isinstance(values, list) or not values \
                or not all(isinstance(v, str) and _LABEL.match(v) for v in values):
            issue("policy_schema_error", f"`{sel}`: a label is a string of letters, digits "
                  "and _.:-/ (or a list of them)", "labels", str(sel))
            continue
        hit = expand_selectors(sel, names)
        if not hit:
            issue("policy_reference_error", f"`{sel}` matches no detector in `data.detect` "
                  "or `data.custom`", "labels", sel)
            continue
        for name in hit:
            labels.setdefault(name, set()).update(values)
    for spec in custom_specs:
        if spec.get("label"):
            labels.setdefault(f"custom.{spec['id']}", set()).add(spec["label"])

    if issues:
        return None, issues
    if not names:
        return None, []
    return DataConfig(
        scanner=scanner,
        requests=MappingProxyType(per_direction["requests"]),
        responses=MappingProxyType(per_direction["responses"]),
        labels=MappingProxyType({k: tuple(sorted(v)) for k, v in labels.items()}),
    ), []
