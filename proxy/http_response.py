"""The data plane on plain HTTP responses (MCP responses go through ``mcp_response``):
a buffered body is scanned whole, a stream chunk by chunk with an overlap window, and
a deny finding cuts the stream with a final error event."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .action import Action
from .codec import BodyError, sse_encode
from .decision import Decision
from .dlp import StreamScanner, redact_json_body, redact_text_body
from .replies import Reply, deny_reply

if TYPE_CHECKING:
    from .gateway import Gateway


def is_text(ctype: str) -> bool:
    return ctype.startswith("text/") or ctype in ("application/json", "application/xml") \
        or ctype.endswith(("+json", "+xml"))


class StreamGovernor:
    """A synchronous stream filter: ``__call__(chunk) -> list[bytes]`` (``b""`` = end).
    Never returns ``b""``; after a cut it returns nothing more."""

    def __init__(self, gateway: Gateway, action: Action, *, sse: bool) -> None:
        data = gateway.policy.data
        assert data is not None
        self._gateway = gateway
        self._action = action
        self._sse = sse
        self._scanner = StreamScanner(data.scanner, data.responses, sse=sse)
        self.cut: tuple[str, Decision] | None = None

    def __call__(self, chunk: bytes) -> list[bytes]:
        if self.cut is not None:
            return []
        try:
            result = self._scanner.finish() if chunk == b"" else self._scanner.feed(chunk)
        except BodyError as e:
            return self._cut("mediation.unparseable_response",
                             f"the response stream cannot be scanned: {e}")
        if result.findings:
            data = self._gateway.policy.data
            assert data is not None
            self._gateway.mark(self._action, data.session_labels(result.findings))
            self._gateway.record_redaction(self._action, result.findings, "response stream")
        if result.cut is not None:
            finding = result.cut
            return [*result.emit, *self._cut(
                f"data.{finding.detector}",
                f"the response carries {finding.label} ({finding.preview}); it is cut here")]
        return [b for b in result.emit if b]

    def _cut(self, rule_id: str, reason: str) -> list[bytes]:
        self.cut = self._gateway.refuse(self._action, rule_id, reason)
        decision_id, decision = self.cut
        error = {"error": f"fiveplane deny (`{rule_id}`): {reason}",
                 "rule_ids": list(decision.rule_ids), "decision_id": decision_id}
        if self._sse:
            return [sse_encode(json.dumps(error), event="error")]
        return []  # a raw body just ends; the upstream is closed by the caller


def govern_body(gateway: Gateway, action: Action, body: bytes, ctype: str
                ) -> tuple[bytes | None, Reply | None]:
    """A buffered response: ``(new body, None)``, ``(None, refusal)`` or ``(None, None)``
    when nothing changes."""
    data = gateway.policy.data
    if data is None or not body or not is_text(ctype):
        return None, None
    try:
        if ctype == "application/json" or ctype.endswith("+json"):
            scanned = redact_json_body(body, data.scanner, data.responses)
        else:
            scanned = redact_text_body(body, data.scanner, data.responses)
    except BodyError as e:
        decision_id, decision = gateway.refuse(
            action, "mediation.unparseable_response",
            f"a response claiming {ctype} does not parse: {e}")
        return None, deny_reply(decision, decision_id, mcp=False, rpc_id=None)
    if not scanned.findings:
        return None, None
    gateway.mark(action, data.session_labels(scanned.findings))
    if scanned.denied:
        first = scanned.denied[0]
        decision_id, decision = gateway.refuse(
            action, f"data.{first.detector}",
            f"the response carries {first.label} ({first.preview}), withheld")
        return None, deny_reply(decision, decision_id, mcp=False, rpc_id=None)
    gateway.record_redaction(action, scanned.findings, "response")
    return (scanned.value if scanned.changed else None), None
