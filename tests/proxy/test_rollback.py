"""Rollback in the core: the ``compensations`` section compiles (or names every mistake),
calls that need a compensation journal it before they are forwarded (and are denied when
they cannot), results resolve the undo arguments, and a rollback runs each entry once,
adjudicated, recording every step. End to end with a real server: tests/e2e/test_rollback.py.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.decision import Verdict
from proxy.errors import PolicyError
from proxy.evidence import MemorySink
from proxy.gateway import Gateway
from proxy.policy import compile_file, compile_text
from proxy.policy.compensations import Unresolvable, parse_path
from proxy.rollback import EXTRA_KEY
from proxy.state import MemoryStore, StateStore
from proxy.translate import RequestView

POLICY = """\
version: 1
name: t
mcp_servers: {crm: {url: "https://crm.example.com/mcp"}}
compensations:
  - id: undo-ticket
    match: {server: crm, tool: create_ticket}
    undo: {tool: delete_ticket, args: {id: {from_result: ticket.id}, why: rollback}}
rules:
  - {id: tickets, match: {server: crm, tool: create_ticket}, effect: allow}
  - {id: no-undo, match: {server: crm, tool: delete_ticket}, effect: deny}
  - {id: no-mass-delete, match: {server: crm, tool: delete_all}, effect: deny, rollback: true}
  - {id: no-export, match: {server: crm, tool: export}, effect: deny}
  - {id: drop, match: {server: crm, tool: drop_all}, effect: rollback}
"""


def issues(text: str) -> list[tuple[int, str]]:
    with pytest.raises(PolicyError) as info:
        compile_text(textwrap.dedent(text), "p.yaml")
    return [(i.line, i.code) for i in info.value.issues]


def test_every_compensation_mistake_is_reported_at_once() -> None:
    found = issues("""\
        version: 1
        name: broken
        mcp_servers: {crm: {url: "https://crm.example.com/mcp"}}
        compensations:
          - id: undo
            match: {server: crn, tool: create_ticket}
            undo: {server: bank, tool: delete_ticket, args: {id: {from_result: "a..b"}}}
          - id: undo
            match: {server: crm}
            undo: {tool: delete_ticket}
          - id: mixed
            match: {server: crm, tool: t}
            undo: {tool: u, args: {id: {from_result: id, from_args: id}}}
        rules:
          - {id: a, match: {server: crm, tool: t}, effect: allow, rollback: true}
          - {id: b, match: {server: crm, tool: u}, effect: escalate, rollback: true}
        """)
    assert found == [
        (6, "policy_reference_error"),          # unknown matched server, with a hint
        (7, "policy_reference_error"),          # unknown undo server
        (7, "policy_compensation_error"),       # malformed from_result path
        (8, "policy_duplicate_id"),
        (9, "policy_compensation_error"),       # match without a tool
        (13, "policy_schema_error"),            # from_result and from_args at once
        (15, "policy_conflict_error"),          # rollback on an allowing rule
        (16, "policy_conflict_error"),          # rollback on a rule that may proceed later
    ]


def test_http_compensation_mistakes() -> None:
    found = issues("""\
        version: 1
        name: broken
        compensations:
          - id: host-from-result
            match: {host: api.example.com, method: POST, path: /tickets}
            undo: {method: DELETE, url: "https://{result.host}/tickets/1"}
          - id: bad-placeholder
            match: {host: api.example.com, method: POST}
            undo: {method: DELETE, url: "https://api.example.com/t/{id}"}
          - id: tool-for-http
            match: {host: api.example.com, method: POST}
            undo: {tool: delete_ticket}
          - id: no-url
            match: {host: api.example.com, method: POST}
            undo: {method: DELETE}
        """)
    assert found == [(6, "policy_compensation_error"), (9, "policy_compensation_error"),
                     (12, "policy_compensation_error"), (15, "policy_compensation_error")]


def test_http_undo_urls_encode_each_value_as_one_segment() -> None:
    from proxy.policy.compensations import HttpResult

    policy = compile_text("""\
version: 1
name: t
compensations:
  - id: undo
    match: {host: api.example.com, method: POST, path: /tickets}
    undo: {method: DELETE, url: "https://api.example.com/tickets/{result.id}?v={result.n}"}
""")
    (item,) = policy.compensations.http
    ok = HttpResult(201, json.dumps({"id": "../admin#x", "n": 3}).encode())
    assert item.url_for(ok) == "https://api.example.com/tickets/%2E%2E%2Fadmin%23x?v=3"
    for bad in (HttpResult(500, b'{"id": 1, "n": 1}'), HttpResult(200, b"<html>"),
                HttpResult(200, b'{"id": {"a": 1}, "n": 1}')):
        with pytest.raises(Unresolvable):
            item.url_for(bad)


def test_rollback_rules_and_paths_compile() -> None:
    policy = compile_text(POLICY)
    assert policy.rollback_rules == {"no-mass-delete", "drop"}
    (item,) = policy.compensations.items
    assert (item.id, item.tool, item.needs_result) == ("undo-ticket", "delete_ticket", True)
    assert parse_path("items.0.id") == ("items", 0, "id")
    for bad in ("", ".id", "id.", "a..b", "a b", "a[0]"):
        assert parse_path(bad) is None, bad


def test_undo_arguments_come_from_the_result() -> None:
    item = compile_text(POLICY).compensations.items[0]
    gw_action = _action(compile_text(POLICY))
    structured = {"structuredContent": {"ticket": {"id": "N-7"}}, "content": []}
    text = {"content": [{"type": "text", "text": json.dumps({"ticket": {"id": "N-8"}})}]}
    assert item.resolve(gw_action, structured) == {"id": "N-7", "why": "rollback"}
    assert item.resolve(gw_action, text) == {"id": "N-8", "why": "rollback"}
    for result in ({"content": [{"type": "text", "text": "created N-9"}]},
                   {"structuredContent": {"ticket": {}}},
                   {"structuredContent": {"ticket": {"id": None}}},
                   {"isError": True, "structuredContent": {"ticket": {"id": "N-1"}}},
                   "not an object"):
        with pytest.raises(Unresolvable):
            item.resolve(gw_action, result)


# --- the gateway -------------------------------------------------------------------------


def gateway(tmp_path: Path, store: StateStore | None = None,
            sink: MemorySink | None = None) -> Gateway:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    return Gateway(compile_file(path), sink or MemorySink(), policy_path=path,
                   store=store or MemoryStore())


def view(name: str, rpc_id: int = 7, **args: Any) -> RequestView:
    body = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
            "params": {"name": name, "arguments": args}}
    return RequestView("POST", "https", "crm.example.com", 443, "/mcp",
                       (("content-type", "application/json"),), json.dumps(body).encode())


def _action(policy: Any) -> Any:
    from proxy.translate import translate_request
    return translate_request(view("create_ticket", title="x"), policy)


def created(gw: Gateway, ticket: str) -> Any:
    result = gw.request(view("create_ticket", title=ticket))
    assert result.forwarded and EXTRA_KEY in result.action.extra
    gw.observe(result.action, {"structuredContent": {"ticket": {"id": ticket}}})
    return result


def test_a_call_whose_compensation_cannot_be_journaled_is_not_sent(tmp_path: Path) -> None:
    sink = MemorySink()
    gw = gateway(tmp_path, MemoryStore(max_journal=1), sink)
    created(gw, "N-1")
    refused = gw.request(view("create_ticket", title="second"))
    assert not refused.forwarded and refused.decision.rule_ids == ("rollback.journal",)
    assert "cannot be journaled" in refused.decision.reason
    assert sink.records[-1]["outcome"] == "refused"
    assert [e.data["state"] for e in gw.store.journal(refused.action.session)] == ["ready"]


def test_calls_that_need_no_compensation_journal_nothing(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    result = gw.request(view("create_ticket", title="x"))
    other = replace(result.action, extra={})
    gw.observe(other, {"structuredContent": {"ticket": {"id": "N-1"}}})
    assert [e.data["state"] for e in gw.store.journal(result.action.session)] == ["pending"]
    assert gw.store.journal_sessions() == [result.action.session]


def test_a_result_without_the_value_is_uncompensable_evidence(tmp_path: Path) -> None:
    sink = MemorySink()
    gw = gateway(tmp_path, sink=sink)
    result = gw.request(view("create_ticket", title="x"))
    gw.observe(result.action, {"content": [{"type": "text", "text": "ticket created"}]})
    (entry,) = gw.store.journal(result.action.session)
    assert entry.data["state"] == "uncompensable" and "not JSON" in entry.data["why"]
    record = sink.records[-1]
    assert record["outcome"] == "uncompensable"
    assert record["decision"]["rule_ids"] == ["compensation.undo-ticket"]
    assert "create_ticket cannot be compensated by delete_ticket" in record["decision"]["reason"]


def test_an_error_result_voids_the_entry(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    result = gw.request(view("create_ticket", title="x"))
    gw.observe(result.action, {"isError": True, "content": [{"type": "text", "text": "no"}]})
    assert asyncio.run(gw.rollback.run(result.action.session, {"kind": "test"})) == []


def test_only_rollback_rules_trigger_a_rollback(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    session = gw.request(view("create_ticket", title="x")).action.session
    assert gw.request(view("delete_all")).rollback == session
    assert gw.request(view("drop_all")).decision.verdict is Verdict.ROLLBACK
    assert gw.request(view("drop_all")).rollback == session
    assert gw.request(view("export")).rollback is None
    assert gw.request(view("create_ticket", title="y")).rollback is None


def test_a_compensation_the_policy_refuses_is_not_sent_and_each_entry_runs_once(
        tmp_path: Path) -> None:
    sink = MemorySink()
    gw = gateway(tmp_path, sink=sink)
    session = created(gw, "N-1").action.session
    created(gw, "N-2")
    trigger = gw.request(view("delete_all"))

    async def twice() -> list[list[str]]:
        return list(await asyncio.gather(
            *(gw.rollback.run(session, {"kind": "refusal",
                                        "decision_id": trigger.decision_id})
              for _ in range(2))))

    outcomes = asyncio.run(twice())
    assert sorted(map(len, outcomes)) == [0, 2]          # one run took both entries
    assert [o for run in outcomes for o in run] == ["compensation_failed"] * 2
    steps = [r for r in sink.records if r["outcome"] == "compensation_failed"]
    assert len(steps) == 2
    for step in steps:
        info = step["rollback"]          # MemorySink keeps extra at the top level
        assert "the policy refuses the compensating call, so it is not sent" in info["detail"]
        decided = next(r for r in sink.records if r["decision_id"] == info["decision"])
        assert decided["decision"]["rule_ids"] == ["no-undo"]
        assert decided["action"]["name"] == "delete_ticket"
        assert decided["action"]["argument_names"] == ["id", "why"]
    assert gw.store.journal(session) == []


def test_a_kill_rolls_back_in_the_background_check(tmp_path: Path) -> None:
    sink = MemorySink()
    gw = gateway(tmp_path, sink=sink)
    session = created(gw, "N-1").action.session
    assert asyncio.run(gw.rollback.run_killed()) == 0      # alive: nothing to do
    gw.store.kill(session, "runaway", 1.0)
    assert asyncio.run(gw.rollback.run_killed()) == 1
    assert asyncio.run(gw.rollback.run_killed()) == 0      # consumed
    (step,) = [r for r in sink.records if "rollback" in r]
    assert step["rollback"]["trigger"] == {"kind": "session.killed",
                                                    "reason": "runaway"}
    # the kill stops the agent, not the proxy's own compensating call: it was adjudicated
    decided = next(r for r in sink.records
                   if r["decision_id"] == step["rollback"]["decision"])
    assert decided["decision"]["rule_ids"] == ["no-undo"]


def test_compensating_calls_trust_the_upstream_ca_the_proxy_forwards_with(
        tmp_path: Path) -> None:
    """A real HTTPS upstream with a private CA: until the proxy trusts that CA (as
    ``--upstream-ca`` makes it do for forwarded calls) the compensating call never gets
    past TLS; then it is sent as a stateless MCP call and its success recorded."""
    import sys
    servers = Path(__file__).resolve().parents[1] / "e2e" / "servers"
    sys.path.insert(0, str(servers))
    from http_upstream import TestCA, Upstream

    ca = TestCA(tmp_path / "ca")
    with Upstream(tls=True, ca=ca) as up:
        up.set_response("/mcp", status=200, body={
            "jsonrpc": "2.0", "id": "fiveplane-rollback-undo-ticket",
            "result": {"content": [{"type": "text", "text": "deleted"}]}})
        text = (POLICY.replace("https://crm.example.com/mcp", f"{up.url}/mcp")
                .replace("effect: deny}", "effect: allow}", 1)
                + f"network: {{allow_internal: [{{cidr: 127.0.0.1/32, ports: [{up.port}]}}]}}\n")
        path = tmp_path / "tls.yaml"
        path.write_text(text)
        sink = MemorySink()
        gw = Gateway(compile_file(path), sink, store=MemoryStore())

        def one_rollback() -> list[str]:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "create_ticket", "arguments": {"title": "t"}}}
            made = gw.request(RequestView(
                "POST", "https", "127.0.0.1", up.port, "/mcp",
                (("content-type", "application/json"),), json.dumps(body).encode()))
            assert made.forwarded, made.decision
            gw.observe(made.action, {"structuredContent": {"ticket": {"id": "N-1"}}})
            return asyncio.run(gw.rollback.run(made.action.session, {"kind": "test"}))

        assert one_rollback() == ["compensation_failed"]
        assert up.hits == []                                  # refused at the TLS handshake
        assert "could not be reached" in sink.records[-1]["rollback"]["detail"]
        gw.rollback.trust(str(ca.ca_pem))
        assert one_rollback() == ["compensated"]
        (hit,) = up.hits
        sent = hit.json()
        assert sent["method"] == "tools/call" and sent["params"]["name"] == "delete_ticket"
        assert sent["params"]["arguments"] == {"id": "N-1", "why": "rollback"}
        assert hit.headers["mcp-method"] == "tools/call"
        assert hit.headers["mcp-name"] == "delete_ticket"
        assert hit.headers["mcp-protocol-version"] == "2026-07-28"


def test_a_reserved_call_that_is_not_sent_after_all_leaves_nothing_to_undo(
        tmp_path: Path) -> None:
    sink = MemorySink()
    gw = gateway(tmp_path, sink=sink)
    reserved = gw.request(view("create_ticket", title="x"))
    gw.rollback.cancel(reserved.action)
    assert [e.data["state"] for e in gw.store.journal(reserved.action.session)] == ["void"]
    assert asyncio.run(gw.rollback.run(reserved.action.session, {"kind": "test"})) == []
    assert not [r for r in sink.records if "rollback" in r]


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(min_size=1), st.integers(),
                       st.sampled_from([".", "..", "../..", "a/../b", "%2e%2e", "?x=1#y"])))
def test_a_result_value_is_exactly_one_path_segment(value: str | int) -> None:
    """Whatever the server returns, the undo URL keeps its host and its number of
    segments, and the segment decodes back to the value."""
    from urllib.parse import unquote, urlsplit

    from proxy.policy.compensations import HttpResult

    (item,) = HTTP_UNDO.compensations.http
    url = item.url_for(HttpResult(200, json.dumps({"id": value}).encode()))
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == (
        "https", "api.example.com", "", "")
    prefix, segment = parts.path.rsplit("/", 1)
    assert prefix == "/tickets" and unquote(segment) == str(value)
    sent = httpx.URL(url)                   # what the client puts on the wire
    assert sent.host == "api.example.com" and sent.raw_path.count(b"/") == 2
    assert sent.raw_path.rsplit(b"/", 1)[1] not in (b".", b"..", b"")


HTTP_UNDO = compile_text("""\
version: 1
name: t
compensations:
  - id: undo
    match: {host: api.example.com, method: POST, path: /tickets}
    undo: {method: DELETE, url: "https://api.example.com/tickets/{result.id}"}
""")


def test_a_call_held_for_approval_is_journaled_and_compensable_once_approved(
        tmp_path: Path) -> None:
    from proxy.approvals import open_approvals

    path = tmp_path / "held.yaml"
    path.write_text(POLICY.replace("{id: tickets, match: {server: crm, tool: create_ticket}, "
                                   "effect: allow}",
                                   "{id: tickets, match: {server: crm, tool: create_ticket}, "
                                   "effect: escalate}"))
    approvals = open_approvals("memory:")
    gw = Gateway(compile_file(path), MemorySink(), store=MemoryStore(), approvals=approvals)
    held = gw.request(view("create_ticket", title="x"))
    assert held.hold is not None and EXTRA_KEY in held.action.extra
    session = held.action.session
    assert [e.data["state"] for e in gw.store.journal(session)] == ["pending"]

    async def approve_and_wait() -> Any:
        waiting = asyncio.ensure_future(gw.resolve_hold(held))
        await asyncio.sleep(0.05)
        approvals.decide(held.hold.id, True, "alice")
        return await asyncio.wait_for(waiting, 30)

    released = asyncio.run(approve_and_wait())
    assert released.forwarded and EXTRA_KEY in released.action.extra
    gw.observe(released.action, {"structuredContent": {"ticket": {"id": "N-5"}}})
    (entry,) = gw.store.journal(session)
    assert (entry.data["state"], entry.data["arguments"]) == (
        "ready", {"id": "N-5", "why": "rollback"})
