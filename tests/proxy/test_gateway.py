"""The gateway: decisions recorded before acting, reloads keep the last good policy,
unrealized primitives deny, audit failures deny."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from proxy.audit import AuditLog
from proxy.audit.verify import log_files, verify
from proxy.audit.writer import Commit
from proxy.decision import Verdict
from proxy.errors import AuditError
from proxy.evidence import MemorySink
from proxy.gateway import Gateway
from proxy.policy import compile_file
from proxy.translate import RequestView

POLICY = """\
version: 1
name: t
mcp_servers: {crm: {url: "https://crm.example.com/mcp"}}
rules:
  - {id: read, match: {server: crm, tool: get_customer}, effect: allow}
  - id: big-refund
    match: {server: crm, tool: refund, args: {amount: {gt: 100}}}
    effect: escalate
"""


def gateway(tmp_path: Path, text: str = POLICY, sink=None) -> Gateway:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return Gateway(compile_file(path), sink or MemorySink(), policy_path=path)


def mcp_view(body: dict, **headers: str) -> RequestView:
    return RequestView("POST", "https", "crm.example.com", 443, "/mcp",
                       (("content-type", "application/json"), *headers.items()),
                       json.dumps(body).encode())


def call(name: str, **args) -> dict:
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": args}}


def test_every_decision_is_recorded(tmp_path: Path) -> None:
    sink = MemorySink()
    gw = gateway(tmp_path, sink=sink)
    allowed = gw.request(mcp_view(call("get_customer", id="customer-secret-value-42")))
    denied = gw.request(mcp_view(call("delete_all")))
    assert allowed.forwarded and not denied.forwarded
    assert [r["decision_id"] for r in sink.records] == [allowed.decision_id, denied.decision_id]
    assert sink.records[1]["decision"]["rule_ids"] == ["defaults.effect"]
    assert sink.records[0]["action"]["argument_names"] == ["id"]
    # arguments are digested, never written raw
    assert "customer-secret-value-42" not in json.dumps(sink.records)


def test_denied_mcp_call_gets_a_jsonrpc_error_naming_the_rule(tmp_path: Path) -> None:
    result = gateway(tmp_path).request(mcp_view(call("delete_all")))
    assert result.reply is not None and result.reply.status == 200
    body = json.loads(result.reply.body)
    assert body["id"] == 7 and body["error"]["code"] == -32003
    assert "defaults.effect" in body["error"]["message"]
    assert body["error"]["data"]["decision_id"] == result.decision_id


def test_unrealized_primitives_are_enforced_as_deny(tmp_path: Path) -> None:
    sink = MemorySink()
    result = gateway(tmp_path, sink=sink).request(mcp_view(call("refund", amount=500)))
    assert result.decision.verdict is Verdict.DENY
    assert result.decision.rule_ids == ("big-refund",)
    assert "approval" in result.decision.reason
    record = sink.records[-1]
    assert record["decision"]["verdict"] == "escalate"
    assert record["enforced"]["verdict"] == "deny"


def test_refusals_are_recorded_as_mediation_rules(tmp_path: Path) -> None:
    sink = MemorySink()
    gw = gateway(tmp_path, sink=sink)
    batch = RequestView("POST", "https", "crm.example.com", 443, "/mcp",
                        (("content-type", "application/json"),), b"[" + json.dumps(
                            call("get_customer")).encode() + b"]")
    result = gw.request(batch)
    assert result.decision.rule_ids == ("mediation.jsonrpc_batch",)
    assert result.reply is not None and result.reply.status == 403
    assert sink.records[-1]["outcome"] == "refused"


def test_reload_swaps_only_a_policy_that_compiles(tmp_path: Path) -> None:
    gw = gateway(tmp_path)
    old = gw.policy.version
    path = tmp_path / "p.yaml"
    path.write_text(POLICY + "  - {id: oops, match: {tool: x}, effect: maybe}\n")
    error = gw.reload()
    assert error is not None and error.issues[0].code == "policy_schema_error"
    assert gw.policy.version == old
    assert gw.request(mcp_view(call("get_customer"))).forwarded

    path.write_text(POLICY.replace("effect: allow", "effect: deny"))
    assert gw.reload() is None
    assert gw.policy.version != old
    result = gw.request(mcp_view(call("get_customer")))
    assert not result.forwarded and result.decision.rule_ids == ("read",)


class BrokenSink(MemorySink):
    def record(self, *args, **kwargs) -> Commit:
        return Commit.failed(AuditError("disk full"))


def test_a_decision_that_cannot_be_recorded_is_not_acted_on(tmp_path: Path) -> None:
    result = gateway(tmp_path, sink=BrokenSink()).request(mcp_view(call("get_customer")))
    assert not result.forwarded
    assert result.decision.rule_ids == ("audit.unavailable",)
    assert "disk full" in result.decision.reason


def test_a_late_audit_failure_denies_and_gives_budgets_back(tmp_path: Path) -> None:
    class LateFailure(MemorySink):
        def record(self, *args, **kwargs) -> Commit:
            super().record(*args, **kwargs)
            commit = Commit(threading.Lock())
            commit.done, commit.error = True, AuditError("fsync failed")
            return commit

    text = POLICY + ("budgets: [{id: reads, match: {server: crm, tool: get_customer}, "
                     "limit: 1, per: global}]\n")
    gw = gateway(tmp_path, text, sink=LateFailure())
    first = gw.request(mcp_view(call("get_customer")))
    assert first.decision.rule_ids == ("audit.unavailable",)
    gw._evidence = MemorySink()
    settled = asyncio.run(gw.settle(gw.request(mcp_view(call("get_customer")))))
    assert settled.forwarded  # the failed call gave its budget back


def test_audit_log_records_every_decision_durably(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", "test")
    gw = gateway(tmp_path, sink=log)
    allowed = asyncio.run(gw.settle(gw.request(mcp_view(call("get_customer")))))
    denied = gw.request(mcp_view(call("delete_all")))
    assert allowed.forwarded and not denied.forwarded
    log.close()
    (chain,) = log_files(tmp_path / "audit")
    report = verify(chain)
    assert report.ok, report.summary()
    assert report.records == 2
