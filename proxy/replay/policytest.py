"""``fiveplane test``: YAML test suites for policies, run through the live code path.

A suite names the policy it tests (relative to the suite file) and lists cases::

    policy: ../examples/support-agent.yaml
    cases:
      - name: small refunds go through
        server: crm                       # a server from the policy's mcp_servers
        tool: refund
        arguments: {customer_id: c-1, amount: 50}
        expect: {verdict: allow, rule: crm-refund-small}
      - name: tickets cannot be deleted
        method: DELETE
        url: https://tickets.example.com/api/v2/tickets/7
        expect: {verdict: deny, rule: defaults.effect}
      - name: a session: the handshake, then a call
        actions:
          - {server: crm, mcp_method: initialize, expect: {verdict: allow}}
          - {server: crm, tool: get_customer, arguments: {customer_id: c-1}}
        expect: {verdict: allow, rule: crm-read}     # the last action's decision

An action is an MCP message (``server`` or ``url``; ``tool`` / ``resource`` / ``prompt``
/ ``mcp_method``; ``arguments`` or raw ``params``; ``rpc_id``), an HTTP request
(``method``, ``url``), or a tunnel (``connect: host:port``). Any action may carry
``headers`` (a mapping, or a list of ``[name, value]`` pairs to repeat one), a raw
``body`` (text, or YAML that is sent as JSON) and ``addresses`` (what the host
resolves to). Each action becomes the ``RequestView`` the addon would build and goes
through ``Gateway.request`` (or ``Gateway.connect``), so mediation refusals are tested
too. ``expect``: ``verdict`` (as adjudicated: ``escalate`` stays ``escalate``),
``rule`` (one of the rule ids; a list: exactly these), optional ``enforced``,
``reason`` (a substring) and ``shadow`` (a ``mode: shadow`` rule that must have matched;
``none``: no shadow rule may match).

``principal`` (a chain: ``[human:alice, agent:planner]`` or ``{id, kind}`` mappings)
is put on the action as given, so rules matching ``principal`` can be tested without
minting tokens; the identity plane still sees no token (the case says so when the
policy has an ``identity`` section: send a real token in ``headers`` to test delegation
chains).

Each case runs on a fresh gateway with its own session state; its actions share one
session, in order. ``prior`` sets the scene first: earlier actions (an MCP call may
carry the ``result`` the tool returned; it is governed as the response, so untrusted
output labels the session and taints its values) and ``{label: NAME}`` events that
mark the session directly. A prior event that is denied is reported in the case's
notes. ``result`` works on any MCP action of a case.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..action import Kind
from ..decision import Verdict
from ..errors import PolicyError
from ..evidence import MemorySink
from ..gateway import principal_digest
from ..netaddr import HostError, parse_ip
from ..policy import CompiledPolicy, compile_file
from ..policy.loader import LocDict, LocList, parse_text
from ..principal import ANONYMOUS, Link, Principal, PrincipalKind
from ..state import principal_session
from ..translate import RequestView
from .engine import ReplayGateway, effective

__all__ = ["CaseResult", "discover", "run_suite", "run_suites"]

DEFAULT_GLOB = "policies/tests/*.yaml"
_SUITE_KEYS = {"policy", "name", "description", "cases"}
_MCP_KEYS = {"server", "tool", "resource", "prompt", "mcp_method", "arguments", "params",
             "rpc_id"}
_ACTION_KEYS = _MCP_KEYS | {"url", "method", "headers", "body", "connect", "addresses",
                            "principal", "expect", "name", "description", "result"}
_CASE_KEYS = _ACTION_KEYS | {"actions", "prior"}
_EXPECT_KEYS = {"verdict", "rule", "enforced", "reason", "shadow"}
_VERDICTS = {v.value for v in Verdict}
_IMPLIED = {"tool": "tools/call", "resource": "resources/read", "prompt": "prompts/get"}
_NO_STORE_NOTE = ("uses `prior` session events, but this gateway keeps no session state, "
                  "so the case is not evaluated")
_NO_RESULT: Any = object()
_PRINCIPAL_NOTE = ("`principal` is put on the action as given, without a token: rules "
                   "matching `principal` see it, but the identity plane treats the action "
                   "as presenting no token; send a real token in `headers` to test "
                   "delegation chains")


@dataclass(slots=True)
class CaseResult:
    file: str
    line: int
    name: str
    status: str                  # pass | fail | skip | error
    detail: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"where": self.where, "name": self.name, "status": self.status}
        if self.detail:
            d["detail"] = self.detail
        if self.notes:
            d["notes"] = self.notes
        return d


@dataclass(slots=True)
class _Expect:
    line: int
    verdict: str | None = None
    rules: tuple[str, ...] | None = None
    exact: bool = False
    enforced: str | None = None
    reason: str | None = None
    shadow: str | None = None


@dataclass(slots=True)
class _Step:
    line: int
    principal: Principal | None = None
    headers: tuple[tuple[str, str], ...] = ()
    view: RequestView | None = None
    result: Any = _NO_RESULT                # the tool's result: governed as the response
    labels: tuple[str, ...] = ()            # a `{label: ...}` session event
    connect: tuple[str, int] | None = None
    addresses: tuple[str, ...] = ()
    expect: _Expect | None = None
    label: str = ""


def _unknown(what: str, key: Any, known: set[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    hint = f"did you mean `{close[0]}`?" if close else f"known: {', '.join(sorted(known))}"
    return f"unknown {what} `{key}` ({hint})"


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[tuple[int, str]] = []

    def add(self, node: Any, key: str | None, message: str) -> None:
        line = getattr(node, "line", 0)
        if key is not None and isinstance(node, LocDict):
            line = node.key_lines.get(key, line)
        self.items.append((line, message))


# --- discovery and suites ---------------------------------------------------------------


def discover(paths: list[str]) -> list[Path]:
    if not paths:
        return sorted(Path().glob(DEFAULT_GLOB))
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]))
        else:
            out.append(p)
    return out


def run_suites(paths: list[Path]) -> list[CaseResult]:
    results: list[CaseResult] = []
    for path in paths:
        results.extend(run_suite(path))
    return results


def run_suite(path: Path) -> list[CaseResult]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return [CaseResult(file, 0, "", "error", f"cannot read test suite: {e}")]
    data, issues = parse_text(text, file)
    if issues:
        return [CaseResult(file, i.line or 0, "", "error", i.message) for i in issues]
    if not isinstance(data, LocDict):
        return [CaseResult(file, 1, "", "error", "a test suite is a mapping with `policy` "
                           "and `cases`")]
    problems = _Problems(file)
    for key in data:
        if key not in _SUITE_KEYS:
            problems.add(data, key, _unknown("key", key, _SUITE_KEYS))
    policy_ref = data.get("policy")
    cases = data.get("cases")
    if not isinstance(policy_ref, str) or not policy_ref:
        problems.add(data, "policy" if "policy" in data else None,
                     "`policy` must name the policy file this suite tests (relative to the "
                     "suite)")
    if not isinstance(cases, LocList) or not cases:
        problems.add(data, "cases" if "cases" in data else None,
                     "`cases` must be a non-empty list")
    if problems.items:
        return [CaseResult(file, line, "", "error", msg) for line, msg in problems.items]
    assert isinstance(policy_ref, str) and isinstance(cases, LocList)
    policy_path = path.parent / policy_ref
    try:
        policy = compile_file(policy_path)
    except PolicyError as e:
        first = "; ".join(str(i) for i in e.issues[:3])
        return [CaseResult(file, data.key_lines["policy"], "", "error",
                           f"policy {policy_path} does not compile: {first}")]
    return [_run_case(file, policy, case, cases.item_lines[i]) for i, case in enumerate(cases)]


# --- one case ---------------------------------------------------------------------------


def _run_case(file: str, policy: CompiledPolicy, case: Any, line: int) -> CaseResult:
    problems = _Problems(file)
    if not isinstance(case, LocDict):
        return CaseResult(file, line, "", "error", "a case must be a mapping")
    name = str(case.get("name") or case.get("description") or "")
    for key in case:
        if key not in _CASE_KEYS:
            problems.add(case, key, _unknown("key", key, _CASE_KEYS))
    principal = _principal(case, problems)
    prior = case.get("prior")
    before: list[_Step] = []
    if prior is not None:
        if not isinstance(prior, LocList):
            problems.add(case, "prior", "`prior` must be a list of session events")
        else:
            for event in prior:
                step = _prior_event(event, policy, principal, problems)
                if step is not None:
                    before.append(step)
    steps: list[_Step] = []
    actions = case.get("actions")
    if actions is not None:
        if set(case) & (_ACTION_KEYS - {"expect", "principal", "name", "description"}):
            problems.add(case, "actions", "a case has either `actions` or one action's keys, "
                         "not both")
        elif not isinstance(actions, LocList) or not actions:
            problems.add(case, "actions", "`actions` must be a non-empty list")
        else:
            for item in actions:
                step = _step(item, policy, principal, problems)
                if step is not None:
                    steps.append(step)
    else:
        step = _step(case, policy, principal, problems, expect_key=False)
        if step is not None:
            steps.append(step)
    case_expect = _expect(case, problems) if "expect" in case else None
    if steps and case_expect is not None:
        steps[-1].expect = case_expect
    if not problems.items and not any(s.expect for s in steps):
        problems.add(case, None, "the case has no `expect`")
    if problems.items:
        at, msg = problems.items[0]
        more = f" (and {len(problems.items) - 1} more problems)" if len(problems.items) > 1 else ""
        return CaseResult(file, at or line, name, "error", msg + more)
    notes = []
    if policy.identity is not None and any(s.principal is not None for s in steps):
        notes.append(_PRINCIPAL_NOTE)
    sink = MemorySink()
    gateway = ReplayGateway(policy, sink, time.time, instance="fiveplane-test")
    if before and not hasattr(gateway, "store"):
        return CaseResult(file, line, name, "skip", _NO_STORE_NOTE, notes)
    for i, step in enumerate(before):
        gateway.pinned = step.principal
        got = _adjudicate(gateway, sink, step)
        final = (got.get("enforced") or got["decision"]) if got is not None else None
        if final is not None and final["verdict"] not in ("allow", "modify", "narrow"):
            notes.append(f"prior event {i + 1} (line {step.line}) was denied by "
                         f"{', '.join(final['rule_ids'])}: the session may not hold "
                         "what the case assumes")
    for i, step in enumerate(steps):
        gateway.pinned = step.principal
        got = _adjudicate(gateway, sink, step)
        if step.expect is None or got is None:
            continue
        failure = _compare(step.expect, got)
        if failure:
            where = f"action {i + 1} of {len(steps)}: " if len(steps) > 1 else ""
            return CaseResult(file, step.expect.line if len(steps) == 1 else step.line,
                              name, "fail", where + failure, notes)
    return CaseResult(file, line, name, "pass", "", notes)


def _adjudicate(gateway: ReplayGateway, sink: MemorySink, step: _Step,
                ) -> dict[str, Any] | None:
    """Run one step through the gateway; the decision's evidence record (None for a
    label event)."""
    sink.records.clear()
    if step.labels:
        digest = principal_digest(step.principal or ANONYMOUS)
        gateway.store.mark(principal_session(digest), list(step.labels), time.time())
        return None
    if step.connect is not None:
        gateway.connect(*step.connect, step.headers)
        return sink.records[0]
    assert step.view is not None
    result = gateway.request(step.view, step.addresses)
    record = sink.records[0]
    action = result.action
    if step.result is not _NO_RESULT and result.forwarded and action is not None \
            and action.kind is Kind.MCP:
        body = {"jsonrpc": "2.0", "id": action.rpc_id, "result": step.result}
        gateway.governor(action).json_body(json.dumps(body).encode())
    return record


def _compare(exp: _Expect, rec: dict[str, Any]) -> str:
    decision = effective(rec)
    enforced = rec.get("enforced") or decision
    verdict, rules, reason = decision["verdict"], decision["rule_ids"], decision["reason"]
    problems = []
    if exp.verdict is not None and verdict != exp.verdict:
        problems.append(f"verdict {exp.verdict}")
    if exp.rules is not None:
        ok = set(rules) == set(exp.rules) if exp.exact else exp.rules[0] in rules
        if not ok:
            problems.append(f"rule{'s' if exp.exact else ''} {', '.join(exp.rules)}")
    if exp.enforced is not None and enforced["verdict"] != exp.enforced:
        problems.append(f"enforced {exp.enforced}")
    if exp.reason is not None and exp.reason not in reason:
        problems.append(f"reason containing {exp.reason!r}")
    shadow = rec.get("shadow")
    matched = shadow.get("matched", []) if shadow else []
    if exp.shadow == "none" and shadow is not None:
        problems.append(f"no shadow rule (got {', '.join(matched)})")
    elif exp.shadow not in (None, "none") and exp.shadow not in matched:
        problems.append(f"shadow rule {exp.shadow}")
    if not problems:
        return ""
    got = f"{verdict} by {', '.join(rules) or '-'}"
    if enforced["verdict"] != verdict:
        got += f" (enforced {enforced['verdict']})"
    return f"expected {' and '.join(problems)}, got {got}: {reason}"


# --- validation -------------------------------------------------------------------------


def _principal(node: LocDict, problems: _Problems) -> Principal | None:
    value = node.get("principal")
    if value is None:
        return None
    items = [value] if isinstance(value, str | dict) else value
    links: list[Link] = []
    if not isinstance(items, list) or not items:
        problems.add(node, "principal", "`principal` must be a chain: a list of `kind:id`")
        return None
    kinds = ", ".join(k.value for k in PrincipalKind)
    for item in items:
        if isinstance(item, str):
            kind, sep, ident = item.partition(":")
        elif isinstance(item, dict):
            kind, sep, ident = str(item.get("kind", "")), ":", str(item.get("id", ""))
        else:
            kind = sep = ident = ""
        if not sep or not ident or kind not in {k.value for k in PrincipalKind}:
            problems.add(node, "principal",
                         f"principal link {item!r} must be `kind:id` with kind one of {kinds}")
            return None
        links.append(Link(ident, PrincipalKind(kind)))
    return Principal(tuple(links))


def _prior_event(event: Any, policy: CompiledPolicy, principal: Principal | None,
                 problems: _Problems) -> _Step | None:
    if isinstance(event, LocDict) and "label" in event:
        labels = event["label"]
        labels = [labels] if isinstance(labels, str) else labels
        if set(event) != {"label"} or not isinstance(labels, list) or not labels or not all(
                isinstance(x, str) and x for x in labels):
            problems.add(event, "label", "a label event is `{label: NAME}` (or a list of names)")
            return None
        return _Step(event.line, principal=principal, labels=tuple(labels))
    step = _step(event, policy, principal, problems)
    if step is not None and step.expect is not None:
        problems.add(event, "expect", "prior events set the scene: they take no `expect`")
    return step


def _expect(node: LocDict, problems: _Problems) -> _Expect | None:
    spec = node.get("expect")
    if not isinstance(spec, LocDict) or not spec:
        problems.add(node, "expect", "`expect` must be a mapping with `verdict` and/or `rule`")
        return None
    exp = _Expect(spec.line)
    for key in spec:
        if key not in _EXPECT_KEYS:
            problems.add(spec, key, _unknown("expect key", key, _EXPECT_KEYS))
    for key in ("verdict", "enforced"):
        value = spec.get(key)
        if value is not None and value not in _VERDICTS:
            problems.add(spec, key, f"unknown verdict `{value}` (one of "
                         f"{', '.join(sorted(_VERDICTS))})")
    exp.verdict, exp.enforced = spec.get("verdict"), spec.get("enforced")
    rule = spec.get("rule")
    if isinstance(rule, str) and rule:
        exp.rules = (rule,)
    elif isinstance(rule, list) and rule and all(isinstance(r, str) for r in rule):
        exp.rules, exp.exact = tuple(rule), True
    elif rule is not None:
        problems.add(spec, "rule", "`rule` must be a rule id or a list of rule ids")
    reason = spec.get("reason")
    if reason is not None and not isinstance(reason, str):
        problems.add(spec, "reason", "`reason` must be a string")
    exp.reason = reason
    shadow = spec.get("shadow")
    if shadow is not None and not (isinstance(shadow, str) and shadow):
        problems.add(spec, "shadow", "`shadow` must be a shadow rule id or `none`")
    exp.shadow = shadow if isinstance(shadow, str) else None
    if exp.verdict is None and rule is None:
        problems.add(spec, None, "`expect` needs `verdict` and/or `rule`")
    return exp


def _headers(node: LocDict, problems: _Problems) -> list[tuple[str, str]]:
    value = node.get("headers")
    if value is None:
        return []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]
    else:
        problems.add(node, "headers", "`headers` must be a mapping or a list of [name, value]")
        return []
    out = []
    for k, v in pairs:
        if not isinstance(k, str) or not isinstance(v, str | int) or isinstance(v, bool):
            problems.add(node, "headers", f"header {k!r} must have a text value")
            return []
        out.append((k.lower(), str(v)))
    return out


def _body(node: LocDict, problems: _Problems) -> bytes | None:
    if "body" not in node:
        return None
    value = node["body"]
    if isinstance(value, str):
        return value.encode()
    try:
        return json.dumps(value).encode()
    except (TypeError, ValueError) as e:
        problems.add(node, "body", f"`body` cannot be sent as JSON: {e}")
        return b""


def _merge(defaults: list[tuple[str, str]], given: list[tuple[str, str]]) -> tuple[
        tuple[str, str], ...]:
    names = {k for k, _ in given}
    return tuple([*(h for h in defaults if h[0] not in names), *given])


def _endpoint(node: LocDict, policy: CompiledPolicy, problems: _Problems,
              ) -> tuple[str, str, int, str] | None:
    server, url = node.get("server"), node.get("url")
    if server is not None and url is not None:
        problems.add(node, "url", "give `server` (a name from mcp_servers) or `url`, not both")
        return None
    if server is not None:
        refs = {ref.name: ref for ref in policy.servers.values()}
        ref = refs.get(server) if isinstance(server, str) else None
        if ref is None:
            known = ", ".join(sorted(refs)) or "none"
            problems.add(node, "server", f"server `{server}` is not in the policy's "
                         f"mcp_servers (declared: {known}); give the endpoint's `url` instead")
            return None
        return ref.scheme, ref.host, ref.port, ref.path
    if not isinstance(url, str):
        problems.add(node, "url" if "url" in node else None,
                     "an MCP action needs `server` or `url`; an HTTP request needs `url`")
        return None
    return _split_url(node, url, problems)


def _split_url(node: LocDict, url: str, problems: _Problems) -> tuple[str, str, int, str] | None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        problems.add(node, "url", f"`url` {url!r} must be an absolute http(s) URL")
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def _addresses(node: LocDict, problems: _Problems) -> tuple[str, ...]:
    value = node.get("addresses")
    if value is None:
        return ()
    ok = isinstance(value, list) and all(isinstance(a, str) for a in value)
    if ok:
        try:
            ok = all(parse_ip(a) is not None for a in value)
        except HostError:
            ok = False
    if not ok:
        problems.add(node, "addresses", "`addresses` must be a list of IP addresses")
        return ()
    return tuple(value)


def _step(node: Any, policy: CompiledPolicy, principal: Principal | None, problems: _Problems,
          expect_key: bool = True) -> _Step | None:
    if not isinstance(node, LocDict):
        problems.add(node, None, "an action must be a mapping")
        return None
    if expect_key:  # an item of `actions`: its own keys are checked here
        for key in node:
            if key not in _ACTION_KEYS:
                problems.add(node, key, _unknown("action key", key, _ACTION_KEYS))
        if "principal" in node:
            principal = _principal(node, problems)
    step = _Step(node.line, principal=principal, addresses=_addresses(node, problems))
    if expect_key and "expect" in node:
        step.expect = _expect(node, problems)
    headers, body = _headers(node, problems), _body(node, problems)
    if "connect" in node:
        target = node["connect"]
        host, _, port = str(target).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or set(node) & (
                _MCP_KEYS | {"url", "method", "body"}):
            problems.add(node, "connect", "`connect` is `host:port`, without other request keys")
            return None
        step.connect = (host.strip("[]"), int(port))
        step.headers = tuple(headers)
        return step
    mcp = bool(set(node) & _MCP_KEYS)
    method = node.get("method", "POST" if mcp else "GET")
    if not isinstance(method, str) or not method:
        problems.add(node, "method", "`method` must be an HTTP method")
        return None
    endpoint = _endpoint(node, policy, problems) if mcp else (
        _split_url(node, node["url"], problems) if isinstance(node.get("url"), str) else None)
    if endpoint is None:
        if not mcp and "url" not in node:
            problems.add(node, None, "an action needs `url` (HTTP), `server`/`url` with "
                         "`tool`/`resource`/`prompt`/`mcp_method` (MCP), or `connect`")
        return None
    scheme, host, port, path = endpoint
    if "result" in node:
        if not mcp:
            problems.add(node, "result", "`result` is what an MCP tool returned: MCP actions "
                         "only")
        step.result = node["result"]
    defaults: list[tuple[str, str]] = []
    if mcp and method.upper() == "POST":
        defaults = [("content-type", "application/json"),
                    ("accept", "application/json, text/event-stream")]
        if body is None:
            body = _jsonrpc(node, problems)
    elif body is not None and not isinstance(node.get("body"), str):
        defaults = [("content-type", "application/json")]
    step.view = RequestView(method=method, scheme=scheme, host=host, port=port, path=path,
                            headers=_merge(defaults, headers), body=body or b"")
    return step


def _jsonrpc(node: LocDict, problems: _Problems) -> bytes:
    given = [k for k in ("tool", "resource", "prompt") if k in node]
    method = node.get("mcp_method")
    if len(given) > 1:
        problems.add(node, given[1], "give one of `tool`, `resource`, `prompt`")
        return b""
    if method is None:
        if not given:
            problems.add(node, None, "an MCP action needs `tool`, `resource`, `prompt` or "
                         "`mcp_method`")
            return b""
        method = _IMPLIED[given[0]]
    if not isinstance(method, str):
        problems.add(node, "mcp_method", "`mcp_method` must be a string")
        return b""
    params = node.get("params")
    if params is not None and not isinstance(params, dict):
        problems.add(node, "params", "`params` must be a mapping")
        return b""
    arguments = node.get("arguments", {})
    if not isinstance(arguments, dict):
        problems.add(node, "arguments", "`arguments` must be a mapping")
        return b""
    if params is None:
        params = {}
        if "tool" in node or "prompt" in node:
            params = {"name": node.get("tool", node.get("prompt")), "arguments": arguments}
        elif "resource" in node:
            params = {"uri": node["resource"]}
        elif arguments:
            params = {"arguments": arguments}
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if not method.startswith("notifications/"):
        msg["id"] = node.get("rpc_id", 1)
    if params:
        msg["params"] = params
    return json.dumps(msg).encode()
