"""Governing what an MCP server sends back: one JSON body or an SSE stream.

Server → client requests (sampling, elicitation, roots, also inside a 2026-era
``input_required`` result) are adjudicated like calls. A denied request in an event stream
(the call's own or the standalone GET stream) is withheld from the client and queued in
``answers``: the proxy answers it with the JSON-RPC error in the client's stead
(``proxy.mcp.answer``), so the server's tool fails at once instead of waiting for a reply
that never comes, and its result (or error) still reaches the client. A denied request
that cannot be answered (no valid id, or inside a JSON body) cuts the response.
Server notifications in an event stream are adjudicated too, and a denied one is
withheld from the client (the rest of the stream, e.g. the result of the client's own
call, still goes through). ``tools/list`` results are filtered to what the principal
may call; anything that cannot be parsed on a governed route cuts the response with a
JSON-RPC error for the request id.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Protocol

from .action import NAMED_METHODS, Action, Kind, StopPoint
from .codec import BodyError, SseParser, loads_strict, sse_encode
from .decision import Decision
from .dlp import redact_json
from .mcp.base import Hold, server_identity
from .mcp.shadow import shadow_scope
from .replies import jsonrpc_error, sse_error_event
from .state.errors import StateError

_DROP: Any = object()  # a denied server notification: withhold this one event


class Judge(Protocol):
    """What the governor needs from the gateway."""

    def adjudicate(self, action: Action) -> tuple[str, Decision]: ...

    def refuse(self, action: Action, rule_id: str, reason: str) -> tuple[str, Decision]: ...

    def may_call_tool(self, action: Action) -> bool: ...

    def observe(self, request: Action, result: Any) -> None: ...

    def mark(self, action: Action, labels: Any) -> None: ...

    def record_redaction(self, action: Action | None, findings: Any, where: str) -> None: ...

    @property
    def policy(self) -> Any: ...

    @property
    def mcp(self) -> Any: ...

    def note(self, action: Action | None, note: Any) -> str | None: ...

    def hold(self, action: Action | None, hold: Any) -> tuple[str, Decision]: ...


class ResponseGovernor:
    def __init__(self, request: Action, judge: Judge) -> None:
        self.request = request
        self._judge = judge
        self._parser: SseParser | None = None
        self.cut: tuple[str, Decision] | None = None
        self.removed_tools: list[str] = []
        self.redacted = 0
        # withheld server requests to answer: (request id, decision id, decision)
        self.answers: list[tuple[str | int, str, Decision]] = []

    # --- one JSON document ---------------------------------------------------------

    def json_body(self, body: bytes) -> bytes:
        try:
            msg = loads_strict(body)
        except BodyError as e:
            return self._cut_json(f"unparseable MCP response: {e}")
        new = self._govern(msg)
        if self.cut is not None:
            decision_id, decision = self.cut
            return json.dumps(jsonrpc_error(self.request.rpc_id, decision, decision_id)).encode()
        return body if new is msg else json.dumps(new).encode()

    def _cut_json(self, reason: str) -> bytes:
        self._refuse("mediation.unparseable_response", reason)
        assert self.cut is not None
        decision_id, decision = self.cut
        return json.dumps(jsonrpc_error(self.request.rpc_id, decision, decision_id)).encode()

    # --- an SSE stream: called by the proxy per chunk, b"" at the end ----------------

    def sse(self, chunk: bytes) -> list[bytes]:
        if self.cut is not None:
            return []
        if self._parser is None:
            self._parser = SseParser()
        if chunk == b"":
            self._parser.flush()  # an incomplete final event is dropped, as clients do
            return []
        try:
            events = self._parser.feed(chunk)
        except BodyError as e:
            return [self._cut_event(f"unparseable event stream: {e}")]
        out: list[bytes] = []
        for event in events:
            if not event.data:
                out.append(event.raw)  # comments and keep-alives carry nothing to judge
                continue
            try:
                msg = loads_strict(event.data)
            except BodyError as e:
                out.append(self._cut_event(f"unparseable MCP event: {e}"))
                return out
            new = self._govern(msg, may_drop=True)
            if new is _DROP:
                continue
            if self.cut is not None:
                decision_id, decision = self.cut
                out.append(sse_error_event(self.request.rpc_id, decision, decision_id))
                return out
            if new is msg:
                out.append(event.raw)
            else:
                out.append(_reencode(event.id, json.dumps(new)))
        return out

    def _cut_event(self, reason: str) -> bytes:
        self._refuse("mediation.unparseable_response", reason)
        assert self.cut is not None
        decision_id, decision = self.cut
        return sse_error_event(self.request.rpc_id, decision, decision_id)

    # --- one message ------------------------------------------------------------------

    def _refuse(self, rule_id: str, reason: str) -> None:
        action = replace(self.request, kind=Kind.RESPONSE, stop=StopPoint.RESPONSE_BODY)
        self.cut = self._judge.refuse(action, rule_id, reason)

    def _govern(self, msg: Any, *, may_drop: bool = False) -> Any:
        data = self._judge.policy.data
        if data is not None and isinstance(msg, dict | list):
            msg = self._scan(msg, data)
            if self.cut is not None:
                return msg
        if isinstance(msg, list):
            self._refuse("mediation.jsonrpc_batch", "the server sent a JSON-RPC batch")
            return msg
        if not isinstance(msg, dict):
            self._refuse("mediation.jsonrpc_invalid", "the server sent a non-object message")
            return msg
        method = msg.get("method")
        if method is not None:
            refused = self._server_message(method, msg.get("params"), msg.get("id"))
            if refused is not None:
                if may_drop and "id" not in msg and self.cut is None:
                    # A notification asks nothing of the client: withholding it is enough,
                    # and the response to the client's own request still goes through.
                    return _DROP
                rpc_id = msg.get("id")
                if may_drop and isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool):
                    # Withheld, and answered with the denial in the client's stead: the
                    # server's tool sees the error and ends the client's call itself.
                    self.answers.append((rpc_id, *refused))
                    if self.cut is None:
                        return _DROP
                self.cut = refused
            return msg
        result = msg.get("result")
        if not isinstance(result, dict) or msg.get("id") != self.request.rpc_id:
            return msg
        self._judge.observe(self.request, result)
        if result.get("resultType") == "input_required":
            requests = result.get("inputRequests")
            if not isinstance(requests, dict):
                self._refuse("mediation.jsonrpc_invalid", "input_required without inputRequests")
                return msg
            for item in requests.values():
                if not isinstance(item, dict):
                    self._refuse("mediation.jsonrpc_invalid", "malformed input request")
                    return msg
                refused = self._server_message(item.get("method"), item.get("params"), None)
                if refused is not None:
                    self.cut = refused
                    return msg
        if self.request.mcp_method == "tools/list" and isinstance(result.get("tools"), list):
            return self._filter_tools(msg, result)
        return msg

    def _scan(self, msg: Any, data: Any) -> Any:
        """The data plane on one message: deny findings cut the response, redact findings
        rewrite it (the document stays valid JSON; the JSON-RPC id is never touched)."""
        scanned = redact_json(msg, data.scanner, data.responses)
        if not scanned.findings:
            return msg
        self._judge.mark(self.request, data.session_labels(scanned.findings))
        if scanned.denied:
            first = scanned.denied[0]
            self._refuse(f"data.{first.detector}",
                         f"the response carries {first.label} ({first.preview}); "
                         "it is cut here")
            return msg
        self.redacted += len(scanned.redacted)
        self._judge.record_redaction(self.request, scanned.findings, "response")
        return scanned.value

    def _server_message(self, method: Any, params: Any,
                        rpc_id: Any) -> tuple[str, Decision] | None:
        """Adjudicate a server → client message: the refusal, or None if it may pass."""
        if not isinstance(method, str):
            self._refuse("mediation.jsonrpc_invalid", "server message with a non-string method")
            return self.cut
        if method == "notifications/tools/list_changed":
            note = self._judge.mcp.list_changed(server_identity(self.request))
            if note is not None:
                self._judge.note(self.request, note)
        name = ""
        if isinstance(params, dict):
            key = NAMED_METHODS.get(method)
            value = params.get(key) if key else None
            name = value if isinstance(value, str) else ""
        action = replace(
            self.request, kind=Kind.MCP_SERVER, stop=StopPoint.SERVER_TO_CLIENT,
            mcp_method=method, name=name, arguments={}, rpc_id=rpc_id,
        )
        decision_id, decision = self._judge.adjudicate(action)
        if decision.verdict.proceeds:
            return None
        return decision_id, decision

    def _filter_tools(self, msg: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        guard = self._judge.mcp
        try:
            report = guard.tools_listed(
                server_identity(self.request), result["tools"],
                scope=shadow_scope(self.request),
                complete="nextCursor" not in result and not self.request.extra.get("cursor"))
        except StateError as e:  # pins unreadable (Redis down): the list is refused
            response = replace(self.request, kind=Kind.RESPONSE, stop=StopPoint.RESPONSE_BODY)
            self.cut = self._judge.hold(response, Hold(
                "state.unavailable", "MCP guard state (tool pins) could not be read, so the "
                f"tool list is withheld: {e}"))
            return msg
        for note in report.notes:
            self._judge.note(self.request, note)
        if report.refuse is not None:
            response = replace(self.request, kind=Kind.RESPONSE, stop=StopPoint.RESPONSE_BODY)
            self.cut = self._judge.hold(response, report.refuse)
            return msg
        if report.strip:
            result = report.apply(result)
            self.removed_tools.extend(sorted(report.strip))
            msg = {**msg, "result": result}
        kept = []
        for tool in result["tools"]:
            name = tool.get("name") if isinstance(tool, dict) else None
            probe = replace(self.request, mcp_method="tools/call", name=name or "",
                            arguments={})
            if isinstance(name, str) and self._judge.may_call_tool(probe):
                kept.append(tool)
            else:
                self.removed_tools.append(str(name))
        if len(kept) == len(result["tools"]):
            return msg
        return {**msg, "result": {**result, "tools": kept}}


def _reencode(event_id: str | None, data: str) -> bytes:
    return sse_encode(data, event="message", id=event_id)
