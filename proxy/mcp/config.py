"""The policy's ``mcp`` section: what pinning, screening, shadowing and session binding do.

```yaml
mcp:
  pin_tools: true              # pin tool definitions; a change holds calls (mcp.pin_changed)
  shadowing: record            # record | deny   (a tool name offered by two servers)
  bind_sessions: true          # Mcp-Session-Id bound to its principal (mcp.session_hijack)
  screen:                      # `screen: false` turns screening off
    hidden_instructions: strip   # strip | deny | escalate | record
    invisible_unicode: strip
    sensitive_paths: strip
    malformed_schema: strip
    oversized: record
    max_description_bytes: 8192
```

Effects of a screening finding on the flagged tool:

* ``strip``: removed from the ``tools/list`` result the agent sees; calls to it are denied;
* ``deny``: the whole ``tools/list`` result is refused (JSON-RPC error naming the rule);
  calls to the tool are denied;
* ``escalate``: listed; calls to it are held for approval (escalate);
* ``record``: evidence only.

A policy without the section gets ``McpConfig()`` (the defaults above). The JSON Schema
fragment for ``policy.schema.json`` is ``schema_fragment.json`` next to this file
(``SCHEMA_FRAGMENT``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .screen import CATEGORIES, DEFAULT_MAX_BYTES

Issue = tuple[str, str, tuple[str | int, ...]]
_EFFECT_REF = {"$ref": "#/$defs/mcp_screen_effect"}
MCP_SECTION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "MCP-specific defences: tool pinning (rug pulls), description screening "
                   "(tool poisoning), shadowing, session binding.",
    "properties": {
        "pin_tools": {
            "type": "boolean", "default": True,
            "description": "Pin each server's tool definitions on first sight; a later change "
                           "holds calls to the server (rule mcp.pin_changed) until `fiveplane "
                           "pins approve`.",
        },
        "shadowing": {
            "enum": ["record", "deny"], "default": "record",
            "description": "A tool name offered by two servers in one session: record it in "
                           "evidence, or also deny calls to that name (rule mcp.shadowing).",
        },
        "bind_sessions": {
            "type": "boolean", "default": True,
            "description": "Bind an Mcp-Session-Id to the principal that created it; another "
                           "principal presenting it is denied (rule mcp.session_hijack).",
        },
        "screen": {
            "description": "What a finding in a tool's description or schema does to the tool "
                           "(rules mcp.screen.<code>); false turns screening off.",
            "oneOf": [
                {"const": False},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "hidden_instructions": _EFFECT_REF,
                        "invisible_unicode": _EFFECT_REF,
                        "sensitive_paths": _EFFECT_REF,
                        "malformed_schema": _EFFECT_REF,
                        "oversized": _EFFECT_REF,
                        "max_description_bytes": {
                            "type": "integer", "minimum": 1, "maximum": 67108864,
                            "default": 8192,
                            "description": "A string in a tool definition longer than this "
                                           "(UTF-8 bytes) is `oversized`.",
                        },
                    },
                },
            ],
        },
    },
}
SCREEN_EFFECT: dict[str, Any] = {
    "enum": ["strip", "deny", "escalate", "record"],
    "description": "strip: remove the tool from tools/list and deny calls to it; deny: refuse "
                   "the whole tools/list result and deny calls; escalate: keep it listed, hold "
                   "calls for approval; record: evidence only.",
}
# What goes into policy.schema.json (``schema_fragment.json`` holds the same; a test checks).
SCHEMA_FRAGMENT: dict[str, Any] = {
    "properties": {"mcp": MCP_SECTION},
    "$defs": {"mcp_screen_effect": SCREEN_EFFECT},
}


def merged(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a policy JSON Schema with the ``mcp`` section added."""
    out = copy.deepcopy(dict(schema))
    out.setdefault("properties", {})["mcp"] = copy.deepcopy(MCP_SECTION)
    out.setdefault("$defs", {})["mcp_screen_effect"] = copy.deepcopy(SCREEN_EFFECT)
    return out


class Effect(StrEnum):
    RECORD = "record"
    ESCALATE = "escalate"
    STRIP = "strip"
    DENY = "deny"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Effect.RECORD: 0, Effect.ESCALATE: 1, Effect.STRIP: 2, Effect.DENY: 3}
MAX_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ScreenConfig:
    hidden_instructions: Effect = Effect.STRIP
    invisible_unicode: Effect = Effect.STRIP
    sensitive_paths: Effect = Effect.STRIP
    malformed_schema: Effect = Effect.STRIP
    oversized: Effect = Effect.RECORD
    max_description_bytes: int = DEFAULT_MAX_BYTES

    def effect(self, category: str) -> Effect:
        return getattr(self, category)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class McpConfig:
    screen: ScreenConfig | None = field(default_factory=ScreenConfig)   # None: off
    pin_tools: bool = True
    shadowing: str = "record"          # "record" | "deny"
    bind_sessions: bool = True

    def to_dict(self) -> dict[str, Any]:
        screen: Any = False
        if self.screen is not None:
            screen = {c: self.screen.effect(c).value for c in CATEGORIES}
            screen["max_description_bytes"] = self.screen.max_description_bytes
        return {"pin_tools": self.pin_tools, "shadowing": self.shadowing,
                "bind_sessions": self.bind_sessions, "screen": screen}


def compile_mcp(section: Any, path: tuple[str | int, ...] = ("mcp",)
                ) -> tuple[McpConfig, list[Issue]]:
    """Compile the ``mcp`` section (``None``: absent → defaults). Issues are
    ``(code, message, path)`` like the other sections' (``policy_schema_error``)."""
    issues: list[Issue] = []
    if section is None:
        return McpConfig(), issues
    if not isinstance(section, Mapping):
        issues.append(("policy_schema_error", "`mcp` must be a mapping", path))
        return McpConfig(), issues
    known = {"pin_tools", "shadowing", "bind_sessions", "screen"}
    for key in section:
        if key not in known:
            issues.append(("policy_schema_error", f"unknown key `{key}` in mcp "
                           f"(expected one of {', '.join(sorted(known))})", (*path, key)))
    pin_tools = _bool(section, "pin_tools", True, path, issues)
    bind = _bool(section, "bind_sessions", True, path, issues)
    shadowing = section.get("shadowing", "record")
    if shadowing not in ("record", "deny"):
        issues.append(("policy_schema_error", "mcp.shadowing must be `record` or `deny`",
                       (*path, "shadowing")))
        shadowing = "record"
    screen: ScreenConfig | None = ScreenConfig()
    spec = section.get("screen", True)
    if spec is False:
        screen = None
    elif spec is True or spec is None:
        screen = ScreenConfig()
    elif isinstance(spec, Mapping):
        screen = _screen(spec, (*path, "screen"), issues)
    else:
        issues.append(("policy_schema_error", "mcp.screen must be a mapping or false",
                       (*path, "screen")))
    return McpConfig(screen, pin_tools, shadowing, bind), issues


def _bool(section: Mapping[str, Any], key: str, default: bool,
          path: tuple[str | int, ...], issues: list[Issue]) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        issues.append(("policy_schema_error", f"mcp.{key} must be true or false",
                       (*path, key)))
        return default
    return value


def _screen(spec: Mapping[str, Any], path: tuple[str | int, ...],
            issues: list[Issue]) -> ScreenConfig:
    defaults = ScreenConfig()
    values: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "max_description_bytes":
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not 1 <= value <= MAX_LIMIT:
                issues.append(("policy_schema_error",
                               f"mcp.screen.max_description_bytes must be an integer from 1 "
                               f"to {MAX_LIMIT}", (*path, key)))
                continue
            values[key] = value
        elif key in CATEGORIES:
            try:
                values[key] = Effect(value)
            except ValueError:
                issues.append(("policy_schema_error",
                               f"mcp.screen.{key} must be one of strip, deny, escalate, record",
                               (*path, key)))
        else:
            issues.append(("policy_schema_error",
                           f"unknown key `{key}` in mcp.screen (expected one of "
                           f"{', '.join((*CATEGORIES, 'max_description_bytes'))})",
                           (*path, key)))
    return ScreenConfig(**{**{c: defaults.effect(c) for c in CATEGORIES},
                           "max_description_bytes": defaults.max_description_bytes, **values})
