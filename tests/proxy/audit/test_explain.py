"""Evidence Sufficiency: every recorded decision re-adjudicates to the same verdict and rules."""

from __future__ import annotations

import uuid
from pathlib import Path

from audit_kit import POLICY, write_log

from proxy import testing
from proxy.audit import AuditLog, PolicyStore, explain, explain_all
from proxy.audit.explain import tally
from proxy.audit.keys import load_secret
from proxy.decision import Plane, Verdict
from proxy.engine import Adjudicator
from proxy.policy.rules import make_decision

OTHER_POLICY = POLICY.replace("effect: escalate", "effect: deny")


def test_every_record_reexplains_with_zero_mismatches(tmp_path: Path) -> None:
    log = write_log(tmp_path, "explain:1", 60, every=25)
    results = list(explain_all(log.path, tmp_path / "policies"))
    counts = tally(results)
    assert counts == {"match": 60, "mismatch": 0, "skipped": 0, "error": 0}
    verdicts = {r.recorded["verdict"] for r in results}
    assert {"allow", "deny", "escalate"} <= verdicts
    assert all(r.matches is True for r in results)
    one = explain(log.path, 1, tmp_path / "policies")
    assert one.status == "match" and one.action is not None
    assert dict(one.action.arguments) == {"amount": 500, "to": "DE89370400440532013000"}
    assert "MATCH" in str(one) and "refund-cap" in str(one)
    by_id = explain(log.path, one.record["id"], tmp_path / "policies")
    assert by_id.seq == 1


def test_several_policy_versions_in_one_log(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "policies")
    log = AuditLog(tmp_path, "versions:1")
    action = testing.mcp_call("refund", amount=75)
    for text in (POLICY, OTHER_POLICY):
        policy = testing.policy(text)
        store.put(policy.source)
        decision = Adjudicator(policy).decide(action)
        log.record(action, decision, outcome="denied", decision_id=uuid.uuid4().hex)
    log.close()
    results = list(explain_all(log.path, store))
    assert [r.recorded["verdict"] for r in results] == ["escalate", "deny"]
    assert tally(results)["mismatch"] == 0


def test_changed_policy_text_is_a_mismatch(tmp_path: Path) -> None:
    log = write_log(tmp_path, "altered:1", 10)
    stored = next((tmp_path / "policies").glob("*.yaml"))
    stored.write_text(stored.read_text().replace("gt: 100", "gt: 1000"))
    results = list(explain_all(log.path, tmp_path / "policies"))
    assert tally(results)["mismatch"] == 10
    assert all(r.matches is False for r in results)
    assert "altered" in results[0].reason


def test_missing_policy_is_a_mismatch(tmp_path: Path) -> None:
    log = write_log(tmp_path, "missing:1", 3)
    result = explain(log.path, 0, tmp_path / "elsewhere")
    assert result.status == "mismatch" and "not in the store" in result.reason


def test_a_different_decision_is_a_mismatch(tmp_path: Path) -> None:
    """A record whose decision the policy would not give (e.g. an engine change)."""
    policy = testing.policy(POLICY)
    PolicyStore(tmp_path / "policies").put(policy.source)
    log = AuditLog(tmp_path, "engine:1")
    action = testing.mcp_call("get_customer", id=1)
    wrong = make_decision(Verdict.DENY, ("refund-cap",), "made up", policy.version,
                          Plane.ENDPOINT)
    log.record(action, wrong, outcome="denied", decision_id="x").wait_sync(5)
    log.close()
    result = explain(log.path, 0, tmp_path / "policies")
    assert result.status == "mismatch"
    assert result.recomputed is not None and result.recomputed["verdict"] == "allow"
    assert any("verdict" in d for d in result.diff) and any("rule ids" in d for d in result.diff)


def test_refusals_and_notes_are_skipped(tmp_path: Path) -> None:
    policy = testing.policy(POLICY)
    log = AuditLog(tmp_path, "refusal:1")
    refusal = make_decision(Verdict.DENY, ("mediation.jsonrpc_invalid",), "bad json",
                            policy.version, Plane.REASONING)
    log.record(None, refusal, outcome="refused", decision_id="r1", adjudicated=False,
               stop="request_body").wait_sync(5)
    log.record(testing.mcp_call("get_x"), refusal, outcome="refused", decision_id="r2",
               adjudicated=False).wait_sync(5)
    log.close()
    results = list(explain_all(log.path, tmp_path / "policies"))
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert "mediation" in results[0].reason


def test_explain_needs_the_audit_key(tmp_path: Path) -> None:
    log = write_log(tmp_path, "key:1", 2)
    secret = load_secret(log.keys.secret_path)
    log.keys.secret_path.unlink()
    result = explain(log.path, 1, tmp_path / "policies")
    assert result.status == "error" and "audit key" in result.reason
    assert explain(log.path, 1, tmp_path / "policies", secret).status == "match"
    assert explain(log.path, 1, tmp_path / "policies", b"\0" * 32).status == "error"
