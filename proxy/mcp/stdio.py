"""Govern a stdio MCP server: a relay between the agent (our stdin/stdout) and the server
(a child process), newline-delimited JSON-RPC both ways, every message judged by the same
``Gateway`` (policy, adjudicator, session state, evidence) as the HTTP proxy.

* client → server: each line becomes an ``Action`` exactly as an HTTP POST body does
  (``proxy.translate._jsonrpc``: same refusals for batches, duplicate keys, bad names...);
  scheme ``stdio``, host = the server id, server = the policy's name for it (or
  ``stdio:<id>``). A refused or denied request is answered by the relay with the JSON-RPC
  error the proxy sends (``proxy.replies.jsonrpc_error``); a refused notification is dropped.
* server → client: a response goes through ``Gateway.governor(request)`` (``tools/list``
  filtering, ``input_required`` requests, provenance) like an HTTP response body; a server
  request or notification (sampling, elicitation, roots, logs, list_changed) is adjudicated
  as ``transport/stream`` traffic; a denied server *request* is answered to the server with
  the JSON-RPC error, a denied notification is withheld.
* ``McpGuard`` (pins, screening, shadowing) is applied to ``tools/list`` results and
  ``tools/call`` requests when given.
* lines are bounded (``MAX_LINE``, 16 MiB; longer ones are refused and skipped), the relay
  never writes anything but JSON-RPC lines to the client, and stderr is the child's own.

The relay's governing steps are plain methods (``from_client`` / ``from_server``: a line in,
lines out for each side), so they are tested without processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any

from .. import translate as _translate
from ..action import Action, Kind, StopPoint
from ..codec import BodyError, loads_strict
from ..decision import Decision, Plane
from ..errors import AuditError
from ..gateway import AUDIT_SYNC_TIMEOUT, Gateway
from ..mcp_response import ResponseGovernor
from ..policy.compiled import CompiledPolicy
from ..principal import Principal
from ..replies import jsonrpc_error
from ..translate import MAX_JSON_DEPTH, Refusal
from .base import STDIO_SCHEME, stdio_identity
from .guard import McpGuard, hold_decision, record_note
from .shadow import shadow_scope

log = logging.getLogger("fiveplane.wrap")
# One JSON-RPC message → Action, exactly as an HTTP body (the public name once translate
# exports it, else the module's own helper).
_jsonrpc = _translate.translate_jsonrpc

MAX_LINE = 16 * 1024 * 1024
TOKEN_ENV = "FIVEPLANE_TOKEN"
SESSION_ENV = "FIVEPLANE_SESSION"
SERVER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TOO_LONG: Any = object()


def read_line(stream: IO[bytes], limit: int = MAX_LINE) -> bytes | Any | None:
    """One line (with its newline, if any) of at most ``limit`` bytes before the newline;
    ``None`` at EOF; ``_TOO_LONG`` (the rest of the line was read and dropped) when longer."""
    line = stream.readline(limit + 1)
    if not line:
        return None
    if line.endswith(b"\n") or len(line) <= limit:
        return line
    while True:  # drain the oversized line without keeping it
        chunk = stream.readline(1 << 20)
        if not chunk or chunk.endswith(b"\n"):
            return _TOO_LONG


def check_server_id(server_id: str) -> str:
    if not SERVER_ID.fullmatch(server_id or ""):
        raise ValueError(f"--server-id must match {SERVER_ID.pattern} (a stable name for the "
                         f"server, not its command line); got {server_id!r}")
    return server_id


def server_name_for(policy: CompiledPolicy, server_id: str) -> str:
    """The name policy rules use for the wrapped server: a stdio server the policy declares
    (``CompiledPolicy.stdio_servers``: server id → name, once the compiler has it), or a
    declared server of the same name, else ``stdio:<server-id>``."""
    declared = getattr(policy, "stdio_servers", None)
    if isinstance(declared, Mapping) and server_id in declared:
        return str(declared[server_id])
    if server_id in {ref.name for ref in policy.servers.values()}:
        return server_id
    return stdio_identity(server_id)


class StdioNetwork:
    """A network plane for stdio traffic: there is no network hop, so no destination rule
    applies (HTTP actions still go to the policy's own network plane)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.plane = Plane.NETWORK

    def hits(self, action: Action, out: list[Any], errors: list[str]) -> None:
        if action.scheme != STDIO_SCHEME:
            self._inner.hits(action, out, errors)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def for_stdio(policy: CompiledPolicy) -> CompiledPolicy:
    """``policy`` with a network plane that lets stdio actions through (see StdioNetwork)."""
    if isinstance(policy.network, StdioNetwork):
        return policy
    return replace(policy, network=StdioNetwork(policy.network))  # type: ignore[arg-type]


class _StdioGovernor(ResponseGovernor):
    def server_message(self, method: Any, params: Any,
                       rpc_id: Any) -> tuple[str, Decision] | None:
        return self._server_message(method, params, rpc_id)


@dataclass(frozen=True, slots=True)
class _Pending:
    action: Action
    cursor: bool          # the tools/list request asked for a page


class StdioRelay:
    def __init__(self, gateway: Gateway, server_id: str, *, guard: McpGuard | None = None,
                 token: str | None = None, session: str | None = None,
                 max_line: int = MAX_LINE) -> None:
        self.gateway = gateway
        self.server_id = check_server_id(server_id)
        self.host = server_id.lower()
        self.identity = stdio_identity(server_id)
        self.server_name = server_name_for(gateway.policy, server_id)
        self.guard = guard
        self._token = token
        self.session = session or f"stdio-{uuid.uuid4().hex}"
        self.max_line = max_line
        self._pending: dict[str | int, _Pending] = {}
        self._lock = threading.Lock()
        self.refused = 0

    # --- who and where ----------------------------------------------------------------------

    def principal(self) -> Principal:
        config = self.gateway.policy.identity
        if config is None or not self._token:
            return self.gateway.principal(())
        return self.gateway.principal(((config.token_header_lower, self._token),))

    def base(self, principal: Principal) -> Action:
        return Action(Kind.HTTP, StopPoint.REQUEST_BODY, STDIO_SCHEME, self.host, 0,
                      method="POST", path="", principal=principal, session=self.session)

    def stream_action(self) -> Action:
        """The "connection" server-initiated messages belong to (HTTP: the GET stream)."""
        return replace(self.base(self.principal()), kind=Kind.MCP, server=self.server_name,
                       mcp_method="transport/stream")

    # --- client → server ----------------------------------------------------------------------

    def from_client(self, line: bytes) -> tuple[list[bytes], list[bytes]]:
        """One line from the agent: (lines for the server, lines for the agent)."""
        text = line.strip()
        if not text:
            return [], []
        gateway = self.gateway
        principal = self.principal()
        limit = gateway.policy.max_body_bytes
        if len(text) > limit:
            result: Action | Refusal = Refusal(
                "body_too_large", f"MCP message of {len(text)} bytes exceeds the {limit}-byte "
                "limit", _sniff_id(text))
        else:
            result = _jsonrpc(self.base(principal), self.server_name, text, {})
        if isinstance(result, Refusal):
            decision_id, decision = gateway.refuse(None, f"mediation.{result.code}",
                                                   result.message)
            rpc_id = result.rpc_id if result.rpc_id is not None else _sniff_id(text)
            return [], self._error(rpc_id, decision, decision_id)
        action = result
        if action.mcp_method == "tools/call" and self.guard is not None:
            hold = self.guard.call_hold(self.identity, action.name,
                                        scope=shadow_scope(action))
            if hold is not None:
                decision_id, decision = hold_decision(gateway, action, hold)
                return [], self._error(action.rpc_id, decision, decision_id)
        judged = gateway.judge(action)
        action, decision_id, decision = judged.action, judged.decision_id, judged.decision
        if decision.verdict.proceeds:
            try:  # nothing goes through before its record is durable
                judged.commit.wait_sync(AUDIT_SYNC_TIMEOUT)
            except AuditError as e:
                decision = gateway.cancel(judged, e)
        if not decision.verdict.proceeds:
            return [], self._error(action.rpc_id, decision, decision_id)
        if action.rpc_id is not None and action.mcp_method != "client/response":
            with self._lock:
                self._pending[action.rpc_id] = _Pending(
                    action, action.mcp_method == "tools/list" and b'"cursor"' in text)
        return [text + b"\n"], []

    def _error(self, rpc_id: str | int | None, decision: Decision,
               decision_id: str) -> list[bytes]:
        self.refused += 1
        log.warning("refused: %s (%s)", decision.reason, decision_id)
        if rpc_id is None:
            return []
        return [_line(jsonrpc_error(rpc_id, decision, decision_id))]

    # --- server → client -------------------------------------------------------------------------

    def from_server(self, line: bytes) -> tuple[list[bytes], list[bytes]]:
        """One line from the server: (lines for the agent, lines for the server)."""
        text = line.strip()
        if not text:
            return [], []
        gateway = self.gateway
        try:
            msg = loads_strict(text, max_depth=MAX_JSON_DEPTH)
        except BodyError as e:
            self._refuse_server("mediation.unparseable_response",
                                f"unparseable message from the MCP server: {e}")
            return [], []
        if isinstance(msg, list):
            self._refuse_server("mediation.jsonrpc_batch", "the server sent a JSON-RPC batch")
            return [], []
        if not isinstance(msg, dict):
            self._refuse_server("mediation.jsonrpc_invalid", "the server sent a non-object")
            return [], []
        if "method" in msg:
            return self._server_initiated(text, msg)
        rpc_id = msg.get("id")
        pending = None
        if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool):
            with self._lock:
                pending = self._pending.pop(rpc_id, None)
        if pending is None:
            self._refuse_server("mediation.unsolicited_response",
                                f"the server answered a request the client never sent "
                                f"(id {rpc_id!r})")
            return [], []
        try:
            return self._response(text, msg, pending)
        except Exception as e:   # fail closed, and the client still gets an answer
            log.error("internal error governing the response to %r: %r", rpc_id, e)
            decision_id, decision = gateway.refuse(
                pending.action, "wrap.error", f"internal error while governing the "
                f"response, withheld (fail closed): {e!r}")
            return self._error(pending.action.rpc_id, decision, decision_id), []

    def _response(self, text: bytes, msg: dict[str, Any],
                  pending: _Pending) -> tuple[list[bytes], list[bytes]]:
        gateway = self.gateway
        request = pending.action
        report = None
        result = msg.get("result")
        if (request.mcp_method == "tools/list" and self.guard is not None
                and isinstance(result, dict) and isinstance(result.get("tools"), list)):
            complete = not pending.cursor and "nextCursor" not in result
            report = self.guard.tools_listed(self.identity, result["tools"],
                                             scope=shadow_scope(request), complete=complete)
            for note in report.notes:
                record_note(gateway, request, note)
            if report.refuse is not None:
                decision_id, decision = hold_decision(gateway, request, report.refuse)
                return self._error(request.rpc_id, decision, decision_id), []
        governor = gateway.governor(request)
        out = governor.json_body(text)
        if report is not None and report.strip and governor.cut is None:
            new = json.loads(out)
            if isinstance(new.get("result"), dict):
                new["result"] = report.apply(new["result"])
                out = json.dumps(new).encode()
        if governor.removed_tools or (report is not None and report.strip):
            log.info("tools/list of %s: removed %s", self.identity,
                     sorted({*governor.removed_tools, *(report.strip if report else ())}))
        return [out + b"\n"], []

    def _server_initiated(self, text: bytes, msg: dict[str, Any]) -> tuple[list[bytes],
                                                                             list[bytes]]:
        method = msg.get("method")
        stream = self.stream_action()
        if method == "notifications/tools/list_changed" and self.guard is not None:
            note = self.guard.list_changed(self.identity)
            if note is not None:
                record_note(self.gateway, stream, note)
        governor = _StdioGovernor(stream, self.gateway)
        refused = governor.server_message(method, msg.get("params"), msg.get("id"))
        if refused is None:
            return [text + b"\n"], []
        decision_id, decision = refused
        self.refused += 1
        log.warning("withheld %s from the server: %s (%s)", method, decision.reason,
                    decision_id)
        rpc_id = msg.get("id")
        if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool):
            # a server request: answer it, so the server does not wait forever
            return [], [_line(jsonrpc_error(rpc_id, decision, decision_id))]
        return [], []

    def _refuse_server(self, rule_id: str, reason: str) -> None:
        action = replace(self.stream_action(), kind=Kind.RESPONSE,
                         stop=StopPoint.RESPONSE_BODY)
        decision_id, _ = self.gateway.refuse(action, rule_id, reason)
        self.refused += 1
        log.warning("dropped a message from the server: %s (%s)", reason, decision_id)

    def too_long(self, side: str) -> None:
        reason = (f"a line from the {side} is longer than {self.max_line} bytes; it was "
                  "dropped")
        self.gateway.refuse(None, "mediation.line_too_long", reason)
        self.refused += 1
        log.warning("%s", reason)

    def fail(self, side: str, line: bytes, error: BaseException) -> list[bytes]:
        """An internal error while governing ``line``: it is dropped (fail closed), and the
        client gets an error for the request concerned, if there is one (a request from the
        client, or the response to one), so it does not wait forever."""
        log.error("internal error on a line from the %s: %r", side, error)
        try:
            decision_id, decision = self.gateway.refuse(
                None, "wrap.error", f"internal error while governing a message from the "
                f"{side}, dropped (fail closed): {error!r}")
        except Exception:
            return []
        rpc_id = _sniff_id(line) if side == "client" else _response_id(line)
        if rpc_id is not None and side == "server":
            with self._lock:
                if self._pending.pop(rpc_id, None) is None:
                    rpc_id = None
        return self._error(rpc_id, decision, decision_id)

    # --- running -----------------------------------------------------------------------------

    def run(self, argv: Sequence[str], client_in: IO[bytes], client_out: IO[bytes], *,
            env: Mapping[str, str] | None = None,
            started: threading.Event | None = None) -> int:
        """Run the server, relay until it exits; returns its wait status (negative: killed
        by that signal)."""
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
            env=dict(env) if env is not None else None, bufsize=0)
        if started is not None:
            started.set()
        out_lock = threading.Lock()
        in_lock = threading.Lock()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        child_in, child_out = self.proc.stdin, self.proc.stdout

        def to_client(lines: list[bytes]) -> None:
            if lines:
                with out_lock:
                    try:
                        client_out.write(b"".join(lines))
                        client_out.flush()
                    except (BrokenPipeError, ValueError, OSError):
                        _close(child_in, in_lock)  # nobody listens: let the server end

        def to_server(lines: list[bytes]) -> None:
            if lines:
                with in_lock:
                    try:
                        child_in.write(b"".join(lines))
                        child_in.flush()
                    except (BrokenPipeError, ValueError, OSError):
                        pass

        def pump_client() -> None:
            try:
                while True:
                    line = read_line(client_in, self.max_line)
                    if line is None:
                        break
                    if line is _TOO_LONG:
                        self.too_long("client")
                        continue
                    try:
                        for_server, for_client = self.from_client(line)
                    except Exception as e:
                        for_server, for_client = [], self.fail("client", line, e)
                    to_client(for_client)
                    to_server(for_server)
            except (OSError, ValueError):
                pass
            finally:
                _close(child_in, in_lock)   # EOF from the agent: EOF to the server

        def pump_server() -> None:
            try:
                while True:
                    line = read_line(child_out, self.max_line)
                    if line is None:
                        break
                    if line is _TOO_LONG:
                        self.too_long("server")
                        continue
                    try:
                        for_client, for_server = self.from_server(line)
                    except Exception as e:
                        for_client, for_server = self.fail("server", line, e), []
                    to_server(for_server)
                    to_client(for_client)
            except (OSError, ValueError):
                pass

        reader = threading.Thread(target=pump_client, name="wrap-client", daemon=True)
        writer = threading.Thread(target=pump_server, name="wrap-server", daemon=True)
        reader.start()
        writer.start()
        status = self.proc.wait()
        writer.join(timeout=5)   # what the server wrote before exiting still goes out
        with out_lock, contextlib.suppress(OSError, ValueError):
            client_out.flush()
        return status


def _close(stream: IO[bytes], lock: threading.Lock) -> None:
    with lock, contextlib.suppress(OSError):
        stream.close()


def _line(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _sniff_id(text: bytes) -> str | int | None:
    """The id to answer a refused message with (over stdio an unanswered request hangs the
    client). Lenient on purpose: the message is refused either way, this only addresses the
    error; a batch or a non-object gets no answer."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return None
    rpc_id = msg.get("id") if isinstance(msg, dict) and "method" in msg else None
    return rpc_id if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool) else None


def _response_id(text: bytes) -> str | int | None:
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return None
    rpc_id = msg.get("id") if isinstance(msg, dict) and "method" not in msg else None
    return rpc_id if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool) else None


def child_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ours, without the agent's fiveplane token (the server must
    never see the credential the agent uses with the proxy)."""
    env = dict(os.environ if environ is None else environ)
    env.pop(TOKEN_ENV, None)
    return env

