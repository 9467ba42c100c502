"""Rollback: journal compensations for side-effecting MCP calls, and run them when the
session is rolled back.

Lifecycle of one journal entry (``StateStore.journal_*``, per session):

1. ``reserve`` — an allowed ``tools/call`` that a policy ``compensations`` item matches
   gets a *pending* entry before it is forwarded. If the journal cannot be written the
   call is denied (fail closed: the proxy never lets through a call it was told it must
   be able to undo, without the means to undo it).
2. ``journal`` — when the call's result comes back (``Gateway.observe``) the undo
   arguments are resolved from the call and its result and the entry becomes *ready*;
   a result without the needed value makes it *uncompensable* (and says so in the
   evidence log); an error result voids it (nothing happened to undo).
3. ``run`` — a refusal by a rule with ``effect: rollback`` / ``rollback: true``, or a kill
   of the session (``run_killed``, polled by the addon, so a kill from another process or
   replica is seen too), takes the session's entries (exactly once: ``journal_take`` is
   atomic) and issues each undo call itself, newest first. Each is adjudicated under the
   same policy as any call of the session's principal (a kill does not stop the proxy's
   own cleanup; a refusing rule or budget does: the call is then not sent), passes the
   network plane, goes to the server with the session's ``Mcp-Session-Id`` (2025-era
   sessions) or as a stateless 2026-era request, and its outcome is recorded:
   ``compensated`` or ``compensation_failed`` (with why).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from .action import Action, Kind, StopPoint
from .audit.schema import principal_from_data, principal_to_data
from .codec import BodyError, SseParser, loads_strict
from .decision import Decision, Plane, Verdict
from .errors import AuditError
from .netaddr import HostError, normalize_host, parse_ip
from .paths import normalize_path
from .policy.compensations import Compensation, HttpResult, Unresolvable
from .policy.rules import make_decision
from .state import StateError
from .state.store import Event

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("fiveplane.rollback")

EXTRA_KEY = "rollback"            # Action.extra: the journal entries a forwarded call holds
ENTRY_VERSION = 1
PENDING, READY, UNCOMPENSABLE, VOID = "pending", "ready", "uncompensable", "void"
COMPENSATED, FAILED, UNCOMPENSABLE_OUTCOME = "compensated", "compensation_failed", "uncompensable"
MODERN_VERSION = "2026-07-28"     # the stateless era: no session, per-request _meta
LEGACY_VERSION = "2025-11-25"     # the last handshake-era version
CALL_TIMEOUT = 10.0
DNS_TIMEOUT = 5.0
MAX_RESPONSE = 1024 * 1024
CLIENT_INFO = {"name": "fiveplane-rollback", "version": "1"}


class Rollback:
    """The gateway's compensation journal and executor (one per gateway)."""

    def __init__(self, gateway: Gateway, clock: Callable[[], float], *,
                 verify: ssl.SSLContext | bool = True, timeout: float = CALL_TIMEOUT) -> None:
        self._gateway = gateway
        self._clock = clock
        self.verify = verify          # the upstream trust the proxy forwards with
        self.timeout = timeout
        self._running: set[str] = set()
        # session -> principal digest of its journal, so the kill poll reads no entries of
        # sessions journaled here (a session journaled by another process is read once)
        self._principals: dict[str, str | None] = {}

    def trust(self, ca_file: str | None = None, *, insecure: bool = False) -> None:
        """Trust what the proxy trusts upstream (mitmproxy's ``ssl_verify_upstream_trusted_ca``
        / ``ssl_insecure``)."""
        if insecure:
            self.verify = False
        elif ca_file:
            self.verify = ssl.create_default_context(cafile=ca_file)
        else:
            self.verify = True

    # --- 1. before forwarding -------------------------------------------------------------

    def reserve(self, action: Action, decision_id: str,
                headers: Mapping[str, str]) -> tuple[Action, str | None]:
        """Journal a pending entry for every compensation ``action`` needs. Returns the
        action to forward (carrying the entries in ``extra``) and ``None``, or the action
        and why it must be denied."""
        gateway = self._gateway
        items = gateway.policy.compensations.for_action(action)
        if not items:
            return action, None
        digest = _digest(action)
        held: list[list[Any]] = []
        try:
            for item in items:
                entry = {
                    "v": ENTRY_VERSION, "state": PENDING, "compensation": item.id,
                    "call": {"decision_id": decision_id, "server": action.server,
                             "tool": action.name, "method": action.method},
                    "target": None if item.http else _target(gateway, action, item),
                    "tool": item.tool,
                    "principal": principal_to_data(action.principal),
                    "principal_digest": digest,
                    "mcp": {"session_id": headers.get("mcp-session-id"),
                            "protocol_version": headers.get("mcp-protocol-version")},
                }
                held.append([gateway.store.journal_add(action.session, entry, action.at),
                             item.id])
                self._principals[action.session] = digest
        except (StateError, ValueError) as e:
            for seq, _ in held:  # what was journaled for a call that is not sent
                self._void(action.session, seq)
            return action, (f"the call needs a compensation ({items[0].id}) and it cannot "
                            f"be journaled, so it is not sent: {e}")
        return replace(action, extra={**action.extra, EXTRA_KEY: held}), None

    def cancel(self, action: Action) -> None:
        """The call that reserved entries was not forwarded after all (its decision could
        not be made durable): nothing to undo."""
        for seq, _ in action.extra.get(EXTRA_KEY, ()):
            self._void(action.session, seq)

    # --- 2. the result came back ------------------------------------------------------------

    def journal(self, request: Action, result: Any) -> None:
        """Resolve the pending entries of ``request`` from its ``result``."""
        gateway = self._gateway
        for seq, compensation_id in request.extra.get(EXTRA_KEY, ()):
            try:
                entries = {e.seq: e for e in gateway.store.journal(request.session)}
                entry = entries.get(seq)
                if entry is None:
                    self._note(request, compensation_id, FAILED,
                               "the session was rolled back while this call was in flight: "
                               "its effect was not compensated")
                    continue
                data = dict(entry.data)
                if _failed(result):  # nothing happened upstream: nothing to undo
                    gateway.store.journal_update(request.session, seq,
                                                 {**data, "state": VOID})
                    continue
                item = gateway.policy.compensations.get(compensation_id)
                if item is None:
                    raise Unresolvable(f"compensation `{compensation_id}` is no longer in "
                                       "the policy")
                try:
                    data.update(state=READY, arguments=item.resolve(request, result))
                    if item.http:
                        data.update(method=item.method, url=item.url_for(result),
                                    target=_http_target(item.url_for(result)))
                except Unresolvable as e:
                    data.update(state=UNCOMPENSABLE, why=str(e))
                    self._note(request, compensation_id, UNCOMPENSABLE_OUTCOME,
                               f"{request.name or request.summary()} cannot be compensated "
                               f"by {item.undo_summary}: {e}")
                if not gateway.store.journal_update(request.session, seq, data):
                    self._note(request, compensation_id, FAILED,
                               "the session was rolled back while this call was in flight: "
                               "its effect was not compensated")
            except (StateError, ValueError, Unresolvable) as e:
                self._note(request, compensation_id, UNCOMPENSABLE_OUTCOME,
                           f"the compensation of {request.name} could not be journaled: {e}")

    # --- 3. rolling back ----------------------------------------------------------------------

    async def run(self, session: str, trigger: Mapping[str, Any]) -> list[str]:
        """Take the session's journal and compensate it, newest first. Returns the outcome
        of each step (``compensated`` / ``compensation_failed``)."""
        try:
            entries = self._gateway.store.journal_take(session)
        except StateError as e:
            log.error("rollback of %s: the journal cannot be read: %s", session, e)
            self._note(None, "journal", FAILED,
                       f"the session could not be rolled back: its journal cannot be read: {e}",
                       trigger=trigger)
            return []
        live = [e for e in entries if e.data.get("state") != VOID]
        outcomes = []
        for step, entry in enumerate(reversed(live), 1):
            context = {"trigger": dict(trigger), "compensation": entry.data.get("compensation"),
                       "compensates": (entry.data.get("call") or {}).get("decision_id"),
                       "journal_seq": entry.seq, "step": step, "steps": len(live)}
            try:
                outcome = await asyncio.wait_for(self._step(session, entry, context),
                                                 self.timeout + DNS_TIMEOUT + 5.0)
            except Exception as e:  # fail closed: the step is recorded as failed
                outcome = FAILED
                self._note(None, str(context["compensation"]), FAILED,
                           f"the compensation failed: {e!r}", context=context, session=session)
            outcomes.append(outcome)
        return outcomes

    async def run_killed(self) -> int:
        """Roll back every killed session that still holds a journal (the poll behind a
        kill made by another process). Returns how many sessions were rolled back."""
        store = self._gateway.store
        done = 0
        sessions = store.journal_sessions()
        for gone in set(self._principals).difference(sessions):
            del self._principals[gone]
        for session in sessions:
            if session in self._running:
                continue
            if session not in self._principals:
                entries = store.journal(session)
                self._principals[session] = (entries[0].data.get("principal_digest")
                                             if entries else None)
            reason = store.killed(session, self._principals[session])
            if reason is None:
                continue
            self._running.add(session)
            try:
                await self.run(session, {"kind": "session.killed", "reason": reason})
            finally:
                self._running.discard(session)
            done += 1
        return done

    async def _step(self, session: str, entry: Event, context: dict[str, Any]) -> str:
        gateway = self._gateway
        data = entry.data
        cid = str(data.get("compensation"))
        state = data.get("state")
        if state != READY:
            why = (data.get("why") or "the call's result was never seen (it may have failed "
                   "or not been sent)") if state in (UNCOMPENSABLE, PENDING) else (
                f"unknown journal entry state {state!r}")
            self._note(None, cid, FAILED, f"not compensated: {why}", context=context,
                       session=session)
            return FAILED
        action = await self._action(session, data)
        judged = gateway.judge(action, compensating=True)
        decision = judged.decision
        if decision.verdict.proceeds:
            try:
                await judged.commit.wait()
            except AuditError as e:
                decision = gateway.cancel(judged, e)
        if not decision.verdict.proceeds:
            self._record(judged.action, decision, FAILED, context,
                         f"the policy refuses the compensating call, so it is not sent: "
                         f"{decision.reason}", adjudicated=False, decided=judged.decision_id)
            return FAILED
        try:
            detail = await self._send(action, data)
        except CompensationError as e:
            self._record(judged.action, decision, FAILED, context, str(e),
                         decided=judged.decision_id)
            return FAILED
        self._record(judged.action, decision, COMPENSATED, context, detail,
                     decided=judged.decision_id)
        return COMPENSATED

    async def _action(self, session: str, data: Mapping[str, Any]) -> Action:
        target = data["target"]
        host = str(target["host"])
        if data.get("url"):
            return Action(
                Kind.HTTP, StopPoint.REQUEST_BODY, str(target["scheme"]), host,
                int(target["port"]), method=str(data["method"]), path=str(target["path"]),
                arguments=dict(data.get("arguments") or {}),
                addresses=await _addresses(host, int(target["port"])),
                principal=principal_from_data(data["principal"]), session=session,
                at=self._clock())
        return Action(
            Kind.MCP, StopPoint.REQUEST_BODY, str(target["scheme"]), host, int(target["port"]),
            method="POST", path=str(target["path"]), server=str(target["server"]),
            mcp_method="tools/call", name=str(data["tool"]),
            arguments=dict(data.get("arguments") or {}),
            rpc_id=f"fiveplane-rollback-{data.get('compensation')}",
            addresses=await _addresses(host, int(target["port"])),
            principal=principal_from_data(data["principal"]), session=session,
            at=self._clock())

    async def _send(self, action: Action, data: Mapping[str, Any]) -> str:
        """POST the ``tools/call`` (or send the HTTP undo request); returns what the server
        said, or raises ``CompensationError``."""
        if data.get("url"):
            return await self._send_http(action, data)
        mcp = data.get("mcp") or {}
        session_id, version = mcp.get("session_id"), mcp.get("protocol_version")
        params: dict[str, Any] = {"name": action.name, "arguments": dict(action.arguments)}
        headers = {"content-type": "application/json",
                   "accept": "application/json, text/event-stream"}
        if session_id:
            headers["mcp-session-id"] = str(session_id)
            if version:
                headers["mcp-protocol-version"] = str(version)
        else:
            version = version or MODERN_VERSION
            headers.update({"mcp-protocol-version": str(version), "mcp-method": "tools/call",
                            "mcp-name": action.name})
            params["_meta"] = {"io.modelcontextprotocol/protocolVersion": version,
                               "io.modelcontextprotocol/clientCapabilities": {},
                               "io.modelcontextprotocol/clientInfo": CLIENT_INFO}
        body = {"jsonrpc": "2.0", "id": action.rpc_id, "method": "tools/call", "params": params}
        url = _url(action)
        where = ""
        try:
            async with httpx.AsyncClient(verify=self.verify, trust_env=False,
                                         timeout=self.timeout) as client:
                resp = await client.post(url, json=body, headers=headers)
                if resp.status_code == 404 and session_id:
                    # The agent's session has ended (404 is the spec's answer to a
                    # terminated session id): the proxy opens one of its own for the call.
                    headers.update(await _handshake(client, url, version or LEGACY_VERSION))
                    resp = await client.post(url, json=body, headers=headers)
                    where = " (in a session of the proxy's own: the agent's had ended)"
                    with contextlib.suppress(httpx.HTTPError):
                        await client.delete(url, headers=headers)
        except httpx.HTTPError as e:
            raise CompensationError(f"the server could not be reached: {e!r}") from None
        if resp.status_code != 200:
            raise CompensationError(f"the server answered HTTP {resp.status_code}{where}")
        message = _response_message(resp, action.rpc_id)
        if "error" in message:
            error = message["error"] if isinstance(message["error"], Mapping) else {}
            raise CompensationError(f"the server refused the call: JSON-RPC error "
                                    f"{error.get('code')}: {error.get('message')}")
        result = message.get("result")
        if not isinstance(result, Mapping):
            raise CompensationError("the server's answer carries no result")
        if result.get("isError") is True:
            raise CompensationError(f"the tool reported an error: {_text(result)}")
        return f"{action.name} succeeded on {action.server}{where}"

    async def _send_http(self, action: Action, data: Mapping[str, Any]) -> str:
        body = dict(action.arguments)
        try:
            async with httpx.AsyncClient(verify=self.verify, trust_env=False,
                                         timeout=self.timeout) as client:
                resp = await client.request(action.method, str(data["url"]),
                                            json=body if body else None)
        except httpx.HTTPError as e:
            raise CompensationError(f"the server could not be reached: {e!r}") from None
        if not 200 <= resp.status_code < 300:
            raise CompensationError(f"the server answered HTTP {resp.status_code}")
        return f"{action.method} {action.target} answered HTTP {resp.status_code}"

    # --- evidence -------------------------------------------------------------------------

    def _record(self, action: Action, decision: Decision, outcome: str,
                context: Mapping[str, Any], detail: str, *, adjudicated: bool = True,
                decided: str | None = None) -> None:
        extra = {EXTRA_KEY: {**context, "detail": detail, "decision": decided}}
        self._gateway.record_outcome(action, decision, outcome, extra=extra,
                                     adjudicated=adjudicated)
        log.info("rollback step %s/%s (%s): %s — %s", context.get("step"),
                 context.get("steps"), context.get("compensation"), outcome, detail)

    def _note(self, action: Action | None, compensation_id: str, outcome: str, why: str, *,
              context: Mapping[str, Any] | None = None, session: str | None = None,
              trigger: Mapping[str, Any] | None = None) -> None:
        gateway = self._gateway
        if action is not None:
            action = replace(action, kind=Kind.RESPONSE, stop=StopPoint.RESPONSE_BODY)
        decision = make_decision(Verdict.DENY if outcome == FAILED else Verdict.ALLOW,
                                 (f"compensation.{compensation_id}",), why,
                                 gateway.policy.version, Plane.REASONING)
        info: dict[str, Any] = dict(context or {})
        if trigger is not None:
            info["trigger"] = dict(trigger)
        if session is not None:
            info["session"] = session
        info["detail"] = why
        gateway.record_outcome(action, decision, outcome, extra={EXTRA_KEY: info},
                               adjudicated=False)
        log.warning("%s: %s", outcome, why)

    def _void(self, session: str, seq: int) -> None:
        try:
            self._gateway.store.journal_update(session, seq, {"v": ENTRY_VERSION,
                                                              "state": VOID})
        except (StateError, ValueError) as e:
            log.error("could not void journal entry %s of %s: %s", seq, session, e)


class CompensationError(Exception):
    """A compensating call was sent and did not succeed (or could not be sent)."""


def _digest(action: Action) -> str | None:
    verified = getattr(action.principal, "verified", None)
    return verified.digest if verified is not None else None


def _target(gateway: Gateway, action: Action, item: Compensation) -> dict[str, Any]:
    """Where the undo call goes: the named server's URL, else the matched call's."""
    if item.server is not None and item.server != action.server:
        for ref in gateway.policy.servers.values():
            if ref.name == item.server:
                return {"server": ref.name, "scheme": ref.scheme, "host": ref.host,
                        "port": ref.port, "path": ref.path}
        raise ValueError(f"server `{item.server}` is not declared")
    return {"server": action.server, "scheme": action.scheme, "host": action.host,
            "port": action.port, "path": action.path}


def _failed(result: Any) -> bool:
    if isinstance(result, HttpResult):
        return not 200 <= result.status < 300
    return isinstance(result, Mapping) and result.get("isError") is True


def _http_target(url: str) -> dict[str, Any]:
    """Where an HTTP undo goes, as the action the adjudicator judges."""
    parts = urlsplit(url)
    try:
        host = normalize_host(parts.hostname or "")
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except (HostError, ValueError) as e:
        raise Unresolvable(f"the undo url {url!r} is not usable: {e}") from None
    return {"server": "", "scheme": parts.scheme, "host": host, "port": port,
            "path": normalize_path(parts.path or "/")}


def _url(action: Action) -> str:
    host = f"[{action.host}]" if ":" in action.host else action.host
    return f"{action.scheme}://{host}:{action.port}{action.path}"


async def _addresses(host: str, port: int) -> tuple[str, ...]:
    """The addresses the network plane judges (as the addon resolves a request's host).
    In the proxy process the resolver is guarded too: a blocked address refuses the
    connection."""
    try:
        if parse_ip(host) is not None:
            return ()
    except HostError:
        return ()
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port), DNS_TIMEOUT)
    except (OSError, TimeoutError):
        return ()
    return tuple(sorted({str(i[4][0]) for i in infos}))


async def _handshake(client: httpx.AsyncClient, url: str, version: str) -> dict[str, str]:
    """Open a 2025-era session (initialize + notifications/initialized); returns the
    headers that name it. Raises ``CompensationError``."""
    headers = {"content-type": "application/json",
               "accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": "fiveplane-rollback-init", "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {},
                       "clientInfo": CLIENT_INFO}}
    resp = await client.post(url, json=init, headers=headers)
    session_id = resp.headers.get("mcp-session-id")
    if resp.status_code != 200 or not session_id:
        raise CompensationError(f"the agent's session has ended and a new one could not be "
                                f"opened (initialize: HTTP {resp.status_code})")
    message = _response_message(resp, "fiveplane-rollback-init")
    result = message.get("result")
    if not isinstance(result, Mapping):
        raise CompensationError("the agent's session has ended and the server refused a new "
                                f"one: {json.dumps(message.get('error'), default=str)[:200]}")
    agreed = result.get("protocolVersion")
    named = {**headers, "mcp-session-id": session_id,
             "mcp-protocol-version": str(agreed or version)}
    ack = await client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                            headers=named)
    if ack.status_code not in (200, 202):
        raise CompensationError(f"the new session was not initialized (HTTP {ack.status_code})")
    return {"mcp-session-id": session_id, "mcp-protocol-version": named["mcp-protocol-version"]}


def _response_message(resp: httpx.Response, rpc_id: Any) -> dict[str, Any]:
    """The JSON-RPC response to ``rpc_id`` in a JSON body or an event stream."""
    raw = resp.content[:MAX_RESPONSE + 1]
    if len(raw) > MAX_RESPONSE:
        raise CompensationError("the server's answer is too large")
    ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        if ctype == "text/event-stream":
            parser = SseParser()
            events = parser.feed(raw)
            messages = [loads_strict(e.data) for e in events if e.data]
        else:
            messages = [loads_strict(raw)]
    except BodyError as e:
        raise CompensationError(f"the server's answer cannot be parsed: {e}") from None
    for message in messages:
        if isinstance(message, dict) and message.get("id") == rpc_id and (
                "result" in message or "error" in message):
            return message
    raise CompensationError("the server's answer holds no response to the call")


def _text(result: Mapping[str, Any]) -> str:
    for item in result.get("content") or ():
        if isinstance(item, Mapping) and item.get("type") == "text":
            return str(item.get("text", ""))[:200]
    return json.dumps(result, default=str)[:200]
