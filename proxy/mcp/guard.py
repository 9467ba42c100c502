"""``McpGuard``: pinning, screening, shadowing and session binding behind three hooks.

The response governor calls ``tools_listed`` with the raw ``tools`` array of every
``tools/list`` result (before filtering it for the principal) and ``list_changed`` for
``notifications/tools/list_changed``; the gateway calls ``call_hold`` before deciding a
``tools/call`` and ``session_hold`` / ``session_created`` for ``Mcp-Session-Id``. Every hook
returns plain data — what to strip, what to refuse, what to hold, what to record — and the
caller realizes it (JSON-RPC error, evidence record), exactly like the stdio wrapper does.

Server identities are stable (``server_identity(action)``: ``scheme://host:port/path`` or
``stdio:<id>``); scopes for shadowing are principal sessions (``shadow_scope(action)``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..action import Action
from ..decision import Plane, Verdict
from ..policy.rules import make_decision
from .base import Hold, Note
from .binding import SessionBinding
from .config import Effect, McpConfig
from .pins import FIRST_SIGHT_RULE, PIN_RULE, RELIST_RULE, PinBook, PinCheck, ToolSet
from .screen import CODES, Finding, ScreenReport, screen_tools, tool_name
from .shadow import SHADOW_RULE, ShadowBook, ShadowFinding

MAX_NOTE_TOOLS = 200       # tools named in one evidence note
MAX_NOTE_FINDINGS = 50
_FLAG_SERVERS = 1024       # servers whose screening flags are kept in memory
_LIST_CACHE = 64           # tools/list results whose screening and canonical form are kept
_RAW = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


@dataclass(frozen=True, slots=True)
class ToolFlag:
    """What screening decided for one tool of a server."""

    effect: Effect
    rule_id: str
    reason: str
    codes: tuple[str, ...]


@dataclass(slots=True)
class _Seen:
    reports: dict[tuple[int, frozenset[str]], ScreenReport] = field(default_factory=dict)
    toolset: ToolSet | None = None


@dataclass(frozen=True, slots=True)
class ListReport:
    """What to do with one ``tools/list`` result.

    ``strip``: tool names to remove from the result the agent sees (screening ``strip`` /
    ``deny``, unapproved pin changes, ``shadowing: deny``). ``refuse``: refuse the whole
    result (answer the request with this rule's JSON-RPC error instead). ``notes``: evidence
    to record (one per kind of outcome)."""

    server: str
    strip: frozenset[str] = frozenset()
    refuse: Hold | None = None
    notes: tuple[Note, ...] = ()
    findings: tuple[Finding, ...] = ()
    pin: PinCheck | None = None
    shadowed: tuple[ShadowFinding, ...] = ()

    def apply(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """``result`` (a ``tools/list`` result object) without the stripped tools."""
        tools = result.get("tools")
        if not self.strip or not isinstance(tools, list):
            return dict(result)
        return {**result, "tools": [t for t in tools if tool_name(t) not in self.strip]}


class McpGuard:
    def __init__(self, config: McpConfig | None, store: Any, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config or McpConfig()
        self.pins = PinBook(store, clock=clock)
        self.shadows = ShadowBook(store, clock=clock)
        self.bindings = SessionBinding(store, clock=clock)
        self._clock = clock
        self._flags: OrderedDict[str, dict[str, ToolFlag]] = OrderedDict()
        self._lists: OrderedDict[tuple[str, bytes], _Seen] = OrderedDict()
        self._lock = threading.Lock()

    # --- tools/list -------------------------------------------------------------------------

    def tools_listed(self, server: str, tools: Any, *, scope: str = "",
                     complete: bool = True, now: float | None = None) -> ListReport:
        """A ``tools/list`` result from ``server``: screen, pin, record offers.

        ``complete``: False when the request carried ``params.cursor`` or the result has
        ``nextCursor`` (one page of the list). ``scope``: the shadowing scope (empty: no
        shadowing check)."""
        now = self._clock() if now is None else now
        tools = list(tools) if isinstance(tools, list | tuple) else []
        config = self.config
        cached = self._cached(server, tools)
        strip: set[str] = set()
        notes: list[Note] = []
        refuse: Hold | None = None
        flags: dict[str, ToolFlag] = {}
        findings: tuple[Finding, ...] = ()
        if config.screen is not None:
            foreign = self.shadows.foreign_names(scope, server) if scope else frozenset()
            key = (config.screen.max_description_bytes, foreign)
            report = cached.reports.get(key)
            if report is None:
                report = screen_tools(tools, max_bytes=config.screen.max_description_bytes,
                                      foreign_names=foreign)
                cached.reports = {key: report}
            findings = report.findings
            flags = self._flags_from(server, report.by_tool)
            for name, flag in flags.items():
                if flag.effect in (Effect.STRIP, Effect.DENY):
                    strip.add(name)
                if flag.effect is Effect.DENY and refuse is None:
                    refuse = Hold(flag.rule_id, flag.reason, Verdict.DENY,
                                  {"server": server, "tool": name, "codes": list(flag.codes)})
            notes.extend(_screen_notes(server, flags, findings))
        pin: PinCheck | None = None
        if config.pin_tools:
            if cached.toolset is None:
                cached.toolset = ToolSet.from_list(tools)
            pin = self.pins.check(server, tools, complete=complete, now=now,
                                  toolset=cached.toolset)
            strip |= pin.unapproved
            note = _pin_note(pin, len(tools))
            if note is not None:
                notes.append(note)
        shadowed: tuple[ShadowFinding, ...] = ()
        if scope:
            names = [tool_name(t) for t in tools]
            shadowed = tuple(self.shadows.offer(scope, server, names, now))
            if shadowed:
                deny = config.shadowing == "deny"
                if deny:
                    strip |= {f.name for f in shadowed}
                notes.append(Note(
                    (SHADOW_RULE,),
                    f"{len(shadowed)} tool name(s) of {server} are also offered by other MCP "
                    f"servers in this session: {', '.join(f.name for f in shadowed[:10])}"
                    + ("; calls to them are denied" if deny else ""),
                    "redacted" if deny else "forwarded",
                    {"server": server,
                     "shadowed": [f.to_dict() for f in shadowed[:MAX_NOTE_TOOLS]]}))
        with self._lock:
            if complete or server not in self._flags:
                self._flags[server] = flags
            else:
                self._flags[server] = {**self._flags[server], **flags}
            self._flags.move_to_end(server)
            while len(self._flags) > _FLAG_SERVERS:
                self._flags.popitem(last=False)
        return ListReport(server, frozenset(strip), refuse, tuple(notes), findings, pin,
                          shadowed)

    def _cached(self, server: str, tools: list[Any]) -> _Seen:
        """What was computed for this very list before (servers list the same tools to
        every session): keyed by a digest of the raw JSON."""
        try:
            raw = _RAW.encode(tools)
        except (TypeError, ValueError, RecursionError):
            return _Seen()
        key = (server, hashlib.sha256(raw.encode("utf-8", "surrogatepass")).digest())
        with self._lock:
            seen = self._lists.get(key)
            if seen is None:
                seen = self._lists[key] = _Seen()
            self._lists.move_to_end(key)
            while len(self._lists) > _LIST_CACHE:
                self._lists.popitem(last=False)
        return seen

    def _flags_from(self, server: str,
                    by_tool: Mapping[str, Iterable[Finding]]) -> dict[str, ToolFlag]:
        screen = self.config.screen
        assert screen is not None
        flags: dict[str, ToolFlag] = {}
        for name, found in by_tool.items():
            found = sorted(found, key=lambda f: _CODE_ORDER[f.code])
            effect = max((screen.effect(f.category) for f in found), key=lambda e: e.rank)
            top = next(f for f in found if screen.effect(f.category) is effect)
            codes = tuple(dict.fromkeys(f.code for f in found))
            reason = (f"tool `{name}` of MCP server {server} was flagged by description "
                      f"screening ({', '.join(codes)}; {top.where}: {top.excerpt[:160]})")
            flags[name] = ToolFlag(effect, top.rule_id, reason, codes)
        return flags

    def list_changed(self, server: str, now: float | None = None) -> Note | None:
        """``notifications/tools/list_changed`` from ``server``: calls to it wait until the
        client lists the tools again (rule ``mcp.pin_relist``). Returns the note to record
        (None when pinning is off or the server has no pin yet)."""
        if not self.config.pin_tools:
            return None
        hold = self.pins.list_changed(server, now)
        if hold is None:
            return None
        return Note((RELIST_RULE,), hold.reason, "held", {"server": server})

    # --- calls ------------------------------------------------------------------------------

    def call_hold(self, server: str, tool: str, *, scope: str = "") -> Hold | None:
        """Why a ``tools/call`` of ``tool`` on ``server`` may not proceed, or None: a pin
        change awaiting review or a pending re-list (the whole server), a screening flag
        (this tool), a shadowed name under ``shadowing: deny``."""
        config = self.config
        if config.pin_tools:
            hold = self.pins.hold(server)
            if hold is not None:
                return hold
        if config.screen is not None:
            flag = self._flag(server, tool)
            if flag is not None and flag.effect is not Effect.RECORD:
                verdict = Verdict.ESCALATE if flag.effect is Effect.ESCALATE else Verdict.DENY
                return Hold(flag.rule_id, flag.reason, verdict,
                            {"server": server, "tool": tool, "codes": list(flag.codes)})
        if config.shadowing == "deny" and scope:
            return self.shadows.hold(scope, server, tool)
        return None

    def _flag(self, server: str, tool: str) -> ToolFlag | None:
        with self._lock:
            flags = self._flags.get(server)
        if flags is None:
            flags = self._flags_from_pin(server)
            if flags is None:
                return None
        return flags.get(tool)

    def _flags_from_pin(self, server: str) -> dict[str, ToolFlag] | None:
        """This process has not seen the server's list (another worker did, or a restart):
        screen the pinned and pending definitions instead."""
        if not self.config.pin_tools or self.config.screen is None:
            return None
        rec = self.pins.get(server)
        if rec is None:
            return None
        defs: list[Any] = []
        for tools in (rec.tools(), rec.pending_tools() or {}):
            for value in tools.values():
                if isinstance(value, dict) and "$duplicates" in value:
                    defs.extend(value["$duplicates"])
                else:
                    defs.append(value)
        report = screen_tools(defs, max_bytes=self.config.screen.max_description_bytes)
        flags = self._flags_from(server, report.by_tool)
        with self._lock:
            self._flags[server] = flags
            while len(self._flags) > _FLAG_SERVERS:
                self._flags.popitem(last=False)
        return flags

    # --- sessions ---------------------------------------------------------------------------

    def session_hold(self, server: str, session_id: str | None,
                     principal_digest: str | None) -> Hold | None:
        """A request to ``server`` presents ``session_id`` (``Mcp-Session-Id``)."""
        if not self.config.bind_sessions or not session_id or not session_id.strip():
            return None
        return self.bindings.check(server, session_id, principal_digest)

    def session_created(self, server: str, session_id: str | None,
                        principal_digest: str | None) -> Hold | None:
        """A response from ``server`` carries ``Mcp-Session-Id`` (the initialize response)."""
        if not self.config.bind_sessions or not session_id or not session_id.strip():
            return None
        return self.bindings.bind(server, session_id, principal_digest)


_CODE_ORDER = {code: i for i, code in enumerate(CODES)}
_OUTCOME = {Effect.RECORD: "forwarded", Effect.ESCALATE: "held", Effect.STRIP: "redacted",
            Effect.DENY: "cut"}


def _screen_notes(server: str, flags: Mapping[str, ToolFlag],
                  findings: tuple[Finding, ...]) -> list[Note]:
    notes = []
    for effect in (Effect.DENY, Effect.STRIP, Effect.ESCALATE, Effect.RECORD):
        tools = {name: flag for name, flag in flags.items() if flag.effect is effect}
        if not tools:
            continue
        rule_ids = tuple(sorted({f"mcp.screen.{code}" for flag in tools.values()
                                 for code in flag.codes}))
        names = sorted(tools)
        verb = {Effect.DENY: "the tools/list result was refused",
                Effect.STRIP: "removed from the tools/list result and calls are denied",
                Effect.ESCALATE: "calls to them are held for approval",
                Effect.RECORD: "recorded only"}[effect]
        detail = {
            "server": server, "effect": effect.value,
            "tools": {n: list(tools[n].codes) for n in names[:MAX_NOTE_TOOLS]},
            "findings": [f.to_dict() for f in findings if f.tool in tools][:MAX_NOTE_FINDINGS],
        }
        if len(names) > MAX_NOTE_TOOLS:
            detail["more_tools"] = len(names) - MAX_NOTE_TOOLS
        notes.append(Note(rule_ids, f"description screening flagged {len(names)} tool(s) of "
                          f"MCP server {server} ({', '.join(names[:10])}): {verb}",
                          _OUTCOME[effect], detail))
    return notes


def _pin_note(pin: PinCheck, count: int) -> Note | None:
    if pin.status == "first_sight":
        return Note((FIRST_SIGHT_RULE,),
                    f"pinned {count} tool definition(s) of MCP server {pin.server} on first "
                    f"sight ({pin.digest[:19]})", "forwarded",
                    {"server": pin.server, "digest": pin.digest})
    if pin.status == "changed":
        hold = pin.hold
        assert hold is not None
        return Note((PIN_RULE,), hold.reason, "held", {
            "server": pin.server, "pinned": pin.pinned, "pending": pin.pending,
            "changed": [{"name": d.name, "change": d.change,
                         "fields": [f.path for f in d.fields][:20]}
                        for d in pin.changed[:MAX_NOTE_TOOLS]]})
    return None


# --- evidence ---------------------------------------------------------------------------------


def record_note(gateway: Any, action: Action | None, note: Note) -> str | None:
    """Write ``note`` to ``gateway``'s evidence log; returns the record's decision id (None
    when it could not be queued). Notes do not wait for durability: what they justify —
    stripping tools, refusing a list, holding calls — is the restrictive direction.

    Uses ``gateway.note(action, note)`` once the gateway has it; until then it records
    through the gateway's evidence interface the way ``Gateway.refuse`` does."""
    method = getattr(gateway, "note", None)
    if callable(method):
        return method(action, note)  # type: ignore[no-any-return]
    evidence = getattr(gateway, "_evidence", None)
    if evidence is None:
        return None
    decision = make_decision(note.verdict, note.rule_ids, note.reason, gateway.policy.version,
                             Plane.REASONING)
    decision_id = uuid.uuid4().hex
    detail = json.loads(json.dumps(note.detail, default=str))
    try:
        commit = evidence.record(action, decision, outcome=note.outcome,
                                 decision_id=decision_id, adjudicated=False,
                                 extra={"mcp": detail})
    except Exception:
        return None
    return None if getattr(commit, "error", None) is not None else decision_id


def hold_decision(gateway: Any, action: Action | None, hold: Hold) -> tuple[str, Any]:
    """Record and return the refusal for a ``Hold`` (until the gateway realizes holds
    itself — an escalate with an approval store — a hold is enforced as a denial, and the
    reason says which verdict the hold asked for)."""
    method = getattr(gateway, "hold", None)
    if callable(method):
        return method(action, hold)  # type: ignore[no-any-return]
    reason = hold.reason
    if hold.verdict is Verdict.ESCALATE:
        reason = f"{reason} (held for review: escalate, enforced as deny)"
    return gateway.refuse(action, hold.rule_id, reason)  # type: ignore[no-any-return]

