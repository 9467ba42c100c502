"""defer / pause in the core: ``until`` compiles into the rule (with file:line errors), a
window's ``contains``/``opens_after`` agree with each other, and a parked call is woken by
a completion in its own session only, denied at its timeout or when its session is
killed — with the real Gateway, SQLite state and approval stores, no mitmproxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.approvals import SqliteApprovalStore
from proxy.decision import Verdict
from proxy.errors import PolicyError
from proxy.evidence import MemorySink
from proxy.gateway import Gateway
from proxy.policy import compile_text
from proxy.policy.until import _window
from proxy.state import SqliteStore, session_key
from proxy.translate import RequestView

POLICY = """\
version: 1
name: defer
network:
  allow_internal: [{cidr: 127.0.0.1/32}]
mcp_servers:
  crm: {url: "http://127.0.0.1:9/mcp"}
rules:
  - {id: crm-tools, match: {server: crm, tool: [refund, list_tickets]}, effect: allow}
  - id: refund-after-tickets
    match: {server: crm, tool: refund}
    effect: defer
    until: {completed: {server: crm, tool: list_tickets}}
    timeout: 1.5
"""


def issues(text: str) -> list[tuple[int, str, str | None]]:
    with pytest.raises(PolicyError) as info:
        compile_text(textwrap.dedent(text), "p.yaml")
    return [(i.line, i.code, i.rule_id) for i in info.value.issues]


def test_until_mistakes_are_reported_with_lines_and_codes() -> None:
    found = issues("""\
        version: 1
        name: t
        mcp_servers:
          crm: {url: "http://127.0.0.1:9/mcp"}
        rules:
          - id: no-until
            match: {server: crm, tool: a}
            effect: defer
          - id: timeout-on-allow
            match: {server: crm, tool: b}
            effect: allow
            timeout: 3
          - id: bad-window
            match: {server: crm, tool: c}
            effect: pause
            until:
              window: {from: "9", to: "17:00", tz: Mars/Base}
              approved: nobody
        """)
    assert (8, "policy_until_error", "no-until") in found
    assert (12, "policy_until_error", "timeout-on-allow") in found
    assert sum(1 for f in found if f[1] == "policy_until_error" and f[2] == "bad-window") == 2
    assert any(f[1] == "policy_reference_error" and f[2] == "bad-window" for f in found)


def test_a_rule_with_until_matches_only_while_it_does_not_hold() -> None:
    policy = compile_text(POLICY)
    rule = policy.rules_by_id["refund-after-tickets"]
    assert rule.until is not None and rule.timeout == 1.5
    assert [c.label for c in policy.completions] == ["@completed:refund-after-tickets"]


windows = st.builds(
    lambda start, length, days, tz: {"from": start, "to": length, "days": days, "tz": tz},
    st.integers(0, 24 * 3600 - 1), st.integers(1, 24 * 3600 - 1),
    st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1,
             max_size=7, unique=True),
    st.sampled_from(["UTC", "+05:30", "-08:00", "Europe/Berlin", "America/New_York"]))


def _near_dst_change(zone: dt.tzinfo, at: float) -> bool:
    """A clock change within the hour (a skipped local time cannot be inside)."""
    offset = dt.datetime.fromtimestamp(at, zone).utcoffset()
    return offset != dt.datetime.fromtimestamp(at - 3600, zone).utcoffset()


def _clock(seconds: int) -> str:
    seconds %= 24 * 3600
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@settings(max_examples=300, deadline=None)
@given(windows, st.floats(1.7e9, 1.9e9))
def test_window_opens_exactly_where_it_starts_to_contain(spec: dict, at: float) -> None:
    text = {"from": _clock(spec["from"]), "to": _clock(spec["from"] + spec["to"]),
            "days": spec["days"], "tz": spec["tz"]}
    window, found = _window(text, ())
    assert found == [] and window is not None
    opening = window.opens_after(at)
    assert opening is not None and at < opening <= at + 8 * 86400
    assert window.contains(opening) or _near_dst_change(window.zone, opening)
    if not window.contains(at):
        # closed from ``at`` until the opening: no sampled instant in between is inside
        for k in range(1, 97):
            probe = at + (opening - at) * k / 97
            assert not window.contains(probe) or probe >= opening - 1


def view(tool: str, session: str, rpc_id: int = 1) -> RequestView:
    body = (f'{{"jsonrpc":"2.0","id":{rpc_id},"method":"tools/call","params":'
            f'{{"name":"{tool}","arguments":{{}}}}}}').encode()
    return RequestView("POST", "http", "127.0.0.1", 9, "/mcp",
                       (("content-type", "application/json"),
                        ("accept", "application/json, text/event-stream"),
                        ("x-fiveplane-session", session)), body)


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    return Gateway(compile_text(POLICY), MemorySink(), store=SqliteStore(tmp_path / "s.db"),
                   approvals=SqliteApprovalStore(tmp_path / "a.db"))


def test_completion_in_the_same_session_releases_and_redecides(gateway: Gateway) -> None:
    async def scenario() -> tuple[float, object, object]:
        parked = gateway.request(view("refund", "task-1"))
        assert parked.parked is not None and parked.decision.verdict is Verdict.DEFER
        waiting = asyncio.create_task(gateway.resolve_hold(parked))
        await asyncio.sleep(0.3)
        other = gateway.request(view("list_tickets", "task-2"))
        gateway.completed(other.action, ok=True)          # another session: no effect
        await asyncio.sleep(0.3)
        assert not waiting.done()
        mine = gateway.request(view("list_tickets", "task-1"))
        gateway.completed(mine.action, ok=False)          # an error result: no effect
        await asyncio.sleep(0.3)
        assert not waiting.done()
        started = time.monotonic()
        gateway.completed(mine.action, ok=True)
        result = await waiting
        return time.monotonic() - started, result, parked

    took, result, parked = asyncio.run(scenario())
    assert took < 0.2                                      # a signal, not a poll
    assert result.forwarded and result.decision.rule_ids == ("crm-tools",)
    records = gateway._evidence.records  # type: ignore[attr-defined]
    (again,) = [r for r in records if r.get("parked")]
    assert again["parked"]["first"] == parked.decision_id
    assert again["adjudicated"] and again["outcome"] == "forwarded"


def test_parked_call_denied_at_timeout_and_when_killed(gateway: Gateway) -> None:
    async def scenario() -> tuple[float, object, object]:
        started = time.monotonic()
        timed_out = await gateway.resolve_hold(gateway.request(view("refund", "t-1")))
        took = time.monotonic() - started
        parked = gateway.request(view("refund", "t-2", rpc_id=2))
        waiting = asyncio.create_task(gateway.resolve_hold(parked))
        await asyncio.sleep(0.2)
        gateway.store.kill(session_key(None, "t-2"), "stop it", time.time())
        return took, timed_out, await waiting

    took, timed_out, killed = asyncio.run(scenario())
    assert 1.4 < took < 3
    assert timed_out.reply is not None
    assert timed_out.decision.rule_ids == ("refund-after-tickets",)
    assert "did not hold within 1.5 s" in timed_out.decision.reason
    assert killed.reply is not None and killed.decision.rule_ids == ("session.killed",)
    assert "stop it" in killed.decision.reason


APPROVAL_POLICY = """\
version: 1
name: defer-approved
network:
  allow_internal: [{cidr: 127.0.0.1/32}]
mcp_servers:
  crm: {url: "http://127.0.0.1:9/mcp"}
rules:
  - {id: crm-tools, match: {server: crm, tool: [refund, export]}, effect: allow}
  - {id: refund-needs-approval, match: {server: crm, tool: refund}, effect: escalate}
  - id: export-after-approved-refund
    match: {server: crm, tool: export}
    effect: defer
    until: {approved: refund-needs-approval}
    timeout: 10
"""


def test_deferred_until_an_approval_elsewhere_in_the_session(tmp_path: Path) -> None:
    approvals = SqliteApprovalStore(tmp_path / "a.db")
    gateway = Gateway(compile_text(APPROVAL_POLICY), MemorySink(),
                      store=SqliteStore(tmp_path / "s.db"), approvals=approvals)
    assert gateway.policy.awaited_approvals == frozenset({"refund-needs-approval"})

    async def scenario() -> tuple[object, object, float]:
        export = gateway.request(view("export", "task-1"))
        assert export.parked is not None
        parked = asyncio.create_task(gateway.resolve_hold(export))
        refund = gateway.request(view("refund", "task-1", rpc_id=2))
        assert refund.hold is not None
        held = asyncio.create_task(gateway.resolve_hold(refund))
        await asyncio.sleep(0.3)
        assert not parked.done()
        started = time.monotonic()
        approvals.decide(refund.hold.id, True, "finance-lead", "ok")
        refunded = await held
        exported = await parked
        return refunded, exported, time.monotonic() - started

    refunded, exported, took = asyncio.run(scenario())
    assert refunded.forwarded
    assert exported.forwarded and exported.decision.rule_ids == ("crm-tools",)
    assert took < 0.5
