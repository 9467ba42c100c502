"""MCP in depth: tool pinning (rug pulls), description screening (tool poisoning),
shadowing, session binding, and governed stdio servers (``fiveplane wrap``).

Importable without mitmproxy. The pieces:

* ``pins``    — ``PinBook``: canonical tool definitions, digests, first-sight pins in the
  state store, ``PinCheck`` / ``ToolDiff`` when a later ``tools/list`` differs;
* ``screen``  — ``screen_tools``: ``Finding``s with stable codes (hidden instructions,
  invisible Unicode, sensitive paths, oversized text, malformed schemas);
* ``shadow``  — ``ShadowBook``: one tool name offered by several servers in a session;
* ``binding`` — ``SessionBinding``: ``Mcp-Session-Id`` bound to the principal that made it;
* ``config``  — the policy's ``mcp`` section (``compile_mcp``, ``SCHEMA_FRAGMENT``);
* ``guard``   — ``McpGuard``: the hooks the response governor and gateway call;
* ``stdio`` / ``wrap_cli`` — the stdio relay and ``fiveplane wrap``;
* ``pins_cli`` — ``fiveplane pins list|diff|approve|forget``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve lazily (PEP 562): the policy compiler imports ``proxy.mcp.config`` and must
# not pull in the guard (which imports the policy package) while it is being imported.
_EXPORTS = {
    "Hold": "base", "Note": "base", "server_identity": "base", "stdio_identity": "base",
    "HIJACK_RULE": "binding", "SessionBinding": "binding",
    "Effect": "config", "McpConfig": "config", "ScreenConfig": "config",
    "compile_mcp": "config",
    "ListReport": "guard", "McpGuard": "guard", "hold_decision": "guard",
    "record_note": "guard",
    "PIN_RULE": "pins", "RELIST_RULE": "pins", "PinBook": "pins", "PinCheck": "pins",
    "PinRecord": "pins", "ToolDiff": "pins",
    "Finding": "screen", "screen_tools": "screen",
    "SHADOW_RULE": "shadow", "ShadowBook": "shadow", "ShadowFinding": "shadow",
    "shadow_scope": "shadow",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
