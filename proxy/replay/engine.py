"""Replay: adjudicate a capture offline, the way the live proxy adjudicated it.

Each flow is two events, in time order: its request (at the request's start) and its
response (at the response's end). A bounded reorder window (``window`` flows) turns the
capture's order (flow files are written when a flow *ends*, so a long stream comes
after everything that happened while it was open) back into the order the proxy saw
the requests. Flows displaced further than the window are replayed late, and say so.

Per event, a ``Lane`` does what ``addons/fiveplane_gate.py`` does, on plain data:

* request: the ``Content-Length`` pre-check of ``requestheaders``, then the same
  ``RequestView`` → ``Gateway.request(view, addresses)``; CONNECT → ``Gateway.connect``;
  raw TCP/UDP → refused as unsupported;
* response of a forwarded MCP request: an event stream chunked through
  ``governor.sse`` (then ``b""``, as mitmproxy's end-of-stream call), a JSON body through
  ``governor.json_body``, anything else refused as unparseable.

Every decision goes to the lane's evidence sink, exactly once, as live; a ``Row`` is
made from each record. One ``Gateway`` serves the whole capture, so state carried by
the gateway (a session store, when it lands) carries across the capture in event order:
build it in ``make_gateway`` and advance its clock from ``Lane.now``.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..action import Action, Kind
from ..codec import BodyError, decode_body
from ..evidence import MemorySink
from ..gateway import Gateway
from ..identity import IdentityPlane, principal_for, token_from_headers
from ..netaddr import HostError, parse_ip
from ..policy import CompiledPolicy
from ..principal import ANONYMOUS, Principal
from ..translate import RequestView
from .capture import CapturedFlow, CaptureNote

__all__ = ["DEFAULT_WINDOW", "Change", "Lane", "ReplayGateway", "Row", "effective", "events",
           "replay", "what_if"]

DEFAULT_WINDOW = 1024
SSE_CHUNK = 16 * 1024
MAX_RESPONSE_DECODE = 1 << 30
_TCP_WHAT = {"tcp": "raw TCP streams (non-HTTP traffic in a tunnel)", "udp": "UDP streams"}

Clock = Callable[[], float]
GatewayFactory = Callable[[CompiledPolicy, MemorySink, Clock], Gateway]


def at_time(policy: CompiledPolicy, clock: Clock) -> CompiledPolicy:
    """``policy`` whose identity plane checks token validity at ``clock()`` instead of
    the wall clock (the plane is rebuilt; everything else is shared)."""
    if policy.identity is None or policy.identity_plane is None:
        return policy
    plane = IdentityPlane(policy.identity, policy.version, clock=clock)
    return dataclasses.replace(policy, identity_plane=plane)


# The gateway stamps each action with the time it decides (``action.at``: session marks,
# windows, budgets, provenance TTLs, token validity). A replay decides at the time of the
# capture: the gateway is given the lane's clock.


class ReplayGateway(Gateway):
    """The live ``Gateway`` with a replaceable clock: delegation tokens are verified,
    and their validity checked, at the time the capture says the request was made.
    ``pinned`` (policy tests) puts a given principal on every action instead of the
    token's."""

    def __init__(self, policy: CompiledPolicy, sink: MemorySink, clock: Clock, *,
                 instance: str = "replay") -> None:
        super().__init__(at_time(policy, clock), sink, instance=instance, clock=clock)
        self.clock = clock
        self.pinned: Principal | None = None

    def principal(self, headers: Iterable[tuple[str, str]],
                  connection_token: str | None = None) -> Principal:
        if self.pinned is not None:
            return self.pinned
        config = self.policy.identity
        if config is None:
            return ANONYMOUS
        token = token_from_headers(headers, config)
        if token is None:
            token = connection_token
        return principal_for(token, config, self.clock())


def effective(record: dict[str, Any]) -> dict[str, Any]:
    """The decision a record stands for: the adjudicated one, unless something else was
    enforced for other reasons (a budget, session state: other rule ids). An unrealized
    primitive enforced as deny keeps its own verdict (``escalate``) and rule ids; the
    ``enforced`` verdict says deny."""
    decision = record["decision"]
    enforced = record.get("enforced")
    if enforced and list(enforced["rule_ids"]) != list(decision["rule_ids"]):
        return enforced
    return decision


def default_gateway(policy: CompiledPolicy, sink: MemorySink, clock: Clock) -> Gateway:
    return ReplayGateway(policy, sink, clock)


@dataclass(frozen=True, slots=True)
class Row:
    """One adjudicated action of the replay."""

    flow: int                 # 1-based flow position in the capture
    ordinal: int              # 0: the flow's request (or CONNECT); 1, 2...: response-time
    time: float
    principal: str
    kind: str                 # connect | http | mcp | mcp_server | response | refused
    target: str               # server name, origin, or host:port
    what: str                 # "tools/call refund", "GET /api/x", "CONNECT"
    verdict: str              # as adjudicated (escalate stays escalate)
    enforced: str             # as enforced (unrealized primitives deny)
    rule_ids: tuple[str, ...]
    reason: str
    decision_id: str
    method: str = ""
    host: str = ""
    path: str = ""
    server: str = ""
    mcp_method: str = ""
    name: str = ""
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[int, int]:
        return self.flow, self.ordinal

    @property
    def decision(self) -> tuple[str, tuple[str, ...]]:
        return self.verdict, self.rule_ids

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "flow": self.flow, "action": self.ordinal, "time": self.time,
            "principal": self.principal, "kind": self.kind, "target": self.target,
            "what": self.what, "verdict": self.verdict, "rule_ids": list(self.rule_ids),
            "reason": self.reason, "decision_id": self.decision_id,
        }
        if self.enforced != self.verdict:
            d["enforced"] = self.enforced
        for key in ("method", "host", "path", "server", "mcp_method", "name"):
            value = getattr(self, key)
            if value:
                d[key] = value
        if self.notes:
            d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True, slots=True)
class Change:
    """An action whose decision differs between two policies (None: not reached)."""

    old: Row | None
    new: Row | None

    @property
    def row(self) -> Row:
        row = self.new or self.old
        assert row is not None
        return row

    @property
    def group(self) -> str:
        def side(r: Row | None) -> str:
            return ", ".join(r.rule_ids) if r else "(not reached)"
        return f"{side(self.old)} → {side(self.new)}"


# --- event order ------------------------------------------------------------------------


@dataclass(order=True, slots=True)
class _Event:
    time: float
    seq: int
    phase: str = field(compare=False)
    flow: CapturedFlow = field(compare=False)


def events(items: Iterable[CapturedFlow | CaptureNote], window: int = DEFAULT_WINDOW,
           ) -> Iterator[tuple[str, CapturedFlow, bool] | CaptureNote]:
    """(phase, flow, late) in time order within ``window`` flows; notes as they come."""
    heap: list[_Event] = []
    seq = itertools.count()
    last = float("-inf")
    limit = max(1, window) * 2
    for item in items:
        if isinstance(item, CaptureNote):
            yield item
            continue
        heapq.heappush(heap, _Event(item.time, next(seq), "request", item))
        heapq.heappush(heap, _Event(max(item.end, item.time), next(seq), "response", item))
        while len(heap) > limit:
            ev = heapq.heappop(heap)
            yield ev.phase, ev.flow, ev.time < last
            last = max(last, ev.time)
    while heap:
        ev = heapq.heappop(heap)
        yield ev.phase, ev.flow, ev.time < last
        last = max(last, ev.time)


# --- one policy over the capture --------------------------------------------------------


def _redacted_token(headers: tuple[tuple[str, str], ...], token_header: str) -> bool:
    names = {token_header.lower(), "proxy-authorization"}
    return any(k in names and "[REDACTED" in v for k, v in headers)


def _chain_text(links: Any) -> str:
    if isinstance(links, list) and links:
        return " → ".join(str(x.get("id", "?")) if isinstance(x, dict) else str(x)
                          for x in links)
    return "anonymous"


def _is_ip(host: str) -> bool:
    try:
        return parse_ip(host) is not None
    except HostError:
        return False


def _hostport(scheme: str, host: str, port: int) -> str:
    default = 443 if scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" if port == default else f"{scheme}://{shown}:{port}"


class Lane:
    """One policy's view of the capture: its own gateway and evidence sink."""

    def __init__(self, policy: CompiledPolicy, *,
                 make_gateway: GatewayFactory = default_gateway) -> None:
        self.sink = MemorySink()
        self.now = 0.0                          # the capture's clock at the current event
        self.gateway_clock: Clock = lambda: self.now
        self.gateway = make_gateway(policy, self.sink, self.gateway_clock)
        self._pending: dict[int, Action] = {}   # forwarded MCP requests awaiting a response
        self._next: dict[int, int] = {}         # next row ordinal per open flow
        self._tunnels: dict[str, str] = {}      # client connection → its CONNECT's token

    @property
    def policy(self) -> CompiledPolicy:
        return self.gateway.policy

    def handle(self, phase: str, flow: CapturedFlow, late: bool = False) -> list[Row]:
        self.now = flow.time if phase == "request" else max(flow.end, flow.time)
        notes: list[str] = []
        if late:
            notes.append("replayed late: the flow ends further out of order than the "
                         "reorder window")
        if phase == "request":
            self._next[flow.index] = 0
            notes.extend(flow.notes)
            notes.extend(self._request(flow))
        else:
            self._response(flow)
        # MCP guard notes (first pins, screening findings) are evidence, not decisions
        rows = [self._row(flow, rec, notes) for rec in self.sink.records if "mcp" not in rec]
        self.sink.records.clear()
        if phase == "response":
            self._next.pop(flow.index, None)
        return rows

    # --- the request: stop points 1-3 ---------------------------------------------------

    def _request(self, flow: CapturedFlow) -> list[str]:
        gw = self.gateway
        identity = gw.policy.identity
        notes = []
        if identity is not None and _redacted_token(flow.headers, identity.token_header):
            notes.append("the delegation token was redacted in the recording: the principal "
                         "cannot be recomputed (record with fiveplane_record_secrets)")
        if flow.kind == "connect":
            gw.connect(flow.host, flow.port, flow.headers)
            token = token_from_headers(flow.headers, identity)
            if isinstance(token, str) and flow.conn:
                self._tunnels[flow.conn] = token
            return notes
        if flow.kind in _TCP_WHAT:
            gw.refuse(None, "mediation.unsupported_protocol",
                      f"{_TCP_WHAT[flow.kind]} cannot be adjudicated, so they are refused")
            return notes
        declared = flow.header("content-length")
        limit = gw.policy.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            gw.refuse(None, "mediation.body_too_large",
                      f"request body of {declared} bytes exceeds the {limit}-byte limit")
            return notes
        view = RequestView(method=flow.method, scheme=flow.scheme, host=flow.host,
                           port=flow.port, path=flow.path, headers=flow.headers,
                           body=flow.body)
        addresses = () if _is_ip(flow.host) else flow.addresses
        result = gw.request(view, addresses, connection_token=self._tunnels.get(flow.conn))
        if not (result.forwarded and result.action is not None
                and result.action.kind is Kind.MCP):
            return notes
        self._pending[flow.index] = result.action
        if flow.upstream_response() is None and flow.response is not None:
            notes.append("forwarded now, but the capture has no upstream response to govern "
                         "(the proxy answered it when it was recorded)")
        return notes

    # --- the response: stop points 4-6 -----------------------------------------------------

    def _response(self, flow: CapturedFlow) -> None:
        action = self._pending.pop(flow.index, None)
        resp = flow.upstream_response() if action is not None else None
        if action is None or resp is None:
            return
        gw = self.gateway
        ctype = resp.header("content-type").lower()
        if "text/event-stream" in ctype:
            governor = gw.governor(action)
            if resp.header("content-encoding", "identity").lower() not in ("", "identity"):
                gw.refuse(None, "mediation.encoded_stream",
                          "the server compressed an MCP event stream; it cannot be governed")
                return
            try:
                body = resp.body
                for i in range(0, len(body), SSE_CHUNK):
                    governor.sse(body[i:i + SSE_CHUNK])
                governor.sse(b"")
            except Exception as e:
                if governor.cut is None:
                    gw.refuse(None, "addon.error", f"error while governing a stream: {e!r}")
            return
        if resp.status >= 300 or not resp.body:
            return
        main = ctype.split(";", 1)[0].strip()
        if main != "application/json":
            gw.refuse(action, "mediation.unparseable_response",
                      f"MCP response with content type {main or 'none'!r} cannot be governed")
            return
        try:
            content = decode_body(resp.body, resp.header("content-encoding") or None,
                                  limit=MAX_RESPONSE_DECODE)
        except BodyError as e:
            gw.refuse(None, "addon.error",
                      f"internal error in the response hook, denied (fail closed): {e!r}")
            return
        gw.governor(action).json_body(content)

    # --- rows ---------------------------------------------------------------------------

    def _row(self, flow: CapturedFlow, rec: dict[str, Any], notes: list[str]) -> Row:
        ordinal = self._next.get(flow.index, 0)
        self._next[flow.index] = ordinal + 1
        decision = effective(rec)
        enforced = rec.get("enforced") or decision
        action = rec.get("action")
        who = _chain_text(rec.get("principal") or flow.principal)
        notes = [*notes, *_primitive_notes(rec)]
        base = dict(
            flow=flow.index, ordinal=ordinal, time=self.now, principal=who,
            verdict=decision["verdict"], enforced=enforced["verdict"],
            rule_ids=tuple(decision["rule_ids"]), reason=decision["reason"],
            decision_id=rec["decision_id"], notes=tuple(notes),
        )
        if action is None:
            if flow.kind in _TCP_WHAT:
                target, what = f"{flow.host}:{flow.port}", f"{flow.kind.upper()} stream"
            elif flow.kind == "connect":
                target, what = f"{flow.host}:{flow.port}", "CONNECT"
            else:
                target = _hostport(flow.scheme, flow.host, flow.port)
                what = f"{flow.method} {flow.path}"
            return Row(kind="refused", target=target, what=what, method=flow.method,
                       host=flow.host, path=flow.path.split("?", 1)[0], **base)
        kind = action["kind"]
        host, port, scheme = action["host"], action["port"], action["scheme"]
        mcp_method, name = action.get("mcp_method", ""), action.get("name", "")
        server = action.get("server", "")
        if kind == "connect":
            target, what = f"{host}:{port}", "CONNECT"
        elif kind == "http":
            target = _hostport(scheme, host, port)
            what = f"{action.get('method', '')} {action.get('path', '')}"
        else:
            target = server or _hostport(scheme, host, port)
            what = f"{mcp_method} {name}".strip()
            if kind == "mcp_server":
                what = f"server → client {what}"
            elif kind == "response" or ordinal > 0:
                what = f"response to {what}"
        return Row(kind=kind, target=target, what=what, method=action.get("method", ""),
                   host=host, path=action.get("path", ""), server=server,
                   mcp_method=mcp_method, name=name, **base)


def _primitive_notes(rec: dict[str, Any]) -> list[str]:
    """What a narrowing changed and what shadow rules would have decided."""
    out = []
    narrowed = rec.get("narrowed")
    if narrowed is not None and narrowed.get("changed"):
        out.append(f"narrowed {', '.join(narrowed['changed'])} by "
                   f"{', '.join(narrowed.get('rule_ids', ()))}")
    shadow = rec.get("shadow")
    if shadow is not None:
        out.append(f"shadow: would {shadow['verdict']} by {', '.join(shadow['rule_ids'])} "
                   f"(matched {', '.join(shadow.get('matched', ()))})")
    return out


# --- drivers ----------------------------------------------------------------------------


def replay(items: Iterable[CapturedFlow | CaptureNote], policy: CompiledPolicy, *,
           window: int = DEFAULT_WINDOW, make_gateway: GatewayFactory = default_gateway,
           ) -> Iterator[Row | CaptureNote]:
    """Every adjudicated action of the capture, in event order (notes in between)."""
    lane = Lane(policy, make_gateway=make_gateway)
    for ev in events(items, window):
        if isinstance(ev, CaptureNote):
            yield ev
            continue
        yield from lane.handle(*ev)


def what_if(items: Iterable[CapturedFlow | CaptureNote], new: CompiledPolicy,
            old: CompiledPolicy, *, window: int = DEFAULT_WINDOW,
            make_gateway: GatewayFactory = default_gateway) -> Iterator[Change | CaptureNote]:
    """The actions whose decision (verdict or rule ids) differs between ``old`` and
    ``new``, and actions only one of them reaches (e.g. the response of a request the
    other policy refused). Both policies see the same events, read once."""
    lanes = (Lane(old, make_gateway=make_gateway), Lane(new, make_gateway=make_gateway))
    for ev in events(items, window):
        if isinstance(ev, CaptureNote):
            yield ev
            continue
        before, after = (lane.handle(*ev) for lane in lanes)
        for a, b in itertools.zip_longest(before, after):
            if a is None or b is None or a.decision != b.decision:
                yield Change(a, b)
