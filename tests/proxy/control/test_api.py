"""The control API: authentication, approve/deny, sessions and the kill switch."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from proxy.approvals import Status
from proxy.control import create_app

TOKEN = "test-control-token-0123456789abcdef"
AGENT_TOKEN = "agent-refunder-token-0123456789abcdef"
BASE = "http://127.0.0.1:8081"
SESSION = "3f9a0c1d2e4b.00000000000000000000000000000001"


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/approvals"), ("GET", "/api/approvals/x"), ("POST", "/api/approvals/x/approve"),
    ("POST", "/api/approvals/x/deny"), ("GET", "/api/sessions"),
    ("POST", f"/api/sessions/{SESSION}/kill"), ("GET", "/api/whoami"),
])
def test_no_token_is_401_and_a_wrong_one_403(client, method, path):
    r = client.request(method, path)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.request(method, path, headers={"authorization": "Bearer not-the-token"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    r = client.request(method, path, headers={"authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401


def test_whoami_names_the_token_holder(bearer, client):
    assert bearer.get("/api/whoami").json() == {"approver": "bob", "via": "bearer"}
    r = client.get("/api/whoami", headers={"authorization": f"Bearer {AGENT_TOKEN}"})
    assert r.json()["approver"] == "refunder"


def test_foreign_host_is_refused(bearer):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1."""
    r = bearer.get("/api/approvals", headers={"host": "evil.example:8081"})
    assert r.status_code == 421
    for host in ("127.0.0.1:8081", "localhost:8081", "[::1]:8081", "localhost"):
        assert bearer.get("/api/whoami", headers={"host": host}).status_code == 200


def test_allowed_hosts_can_be_widened(approvals, auth):
    app = create_app(approvals, auth, allowed_hosts=["control.internal"])
    with TestClient(app, base_url="http://control.internal:8081") as c:
        r = c.get("/api/whoami", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        assert c.get("/api/whoami", headers={"host": "127.0.0.1"}).status_code == 421


def test_no_cors(bearer):
    r = bearer.options("/api/approvals", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert r.status_code == 405
    assert not any(h.startswith("access-control-") for h in r.headers)
    r = bearer.get("/api/approvals", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_security_headers(client):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"


# --- approvals ----------------------------------------------------------------------------------


def test_list_and_get(bearer, hold_call):
    a, b = hold_call(900), hold_call(1200)
    body = bearer.get("/api/approvals").json()
    assert [r["id"] for r in body["approvals"]] == [a.id, b.id]
    first = body["approvals"][0]
    assert first["status"] == "pending" and 299 < first["time_left"] <= 300
    assert first["principal"] == [{"id": "alice", "kind": "human"},
                                  {"id": "planner", "kind": "agent"},
                                  {"id": "refunder", "kind": "agent"}]
    assert first["rule_ids"] == ["refund.over_threshold"]
    assert first["action"]["arguments"]["api_key"] == "***"
    assert bearer.get(f"/api/approvals/{a.id}").json()["approval"]["id"] == a.id
    r = bearer.get("/api/approvals/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert bearer.get("/api/approvals", params={"status": "approved"}).json()["approvals"] == []
    assert len(bearer.get("/api/approvals", params={"status": "all"}).json()["approvals"]) == 2
    assert bearer.get("/api/approvals", params={"status": "bogus"}).status_code == 400


def test_approve_records_the_token_holder(bearer, approvals, hold_call):
    r = hold_call()
    resp = bearer.post(f"/api/approvals/{r.id}/approve", json={"note": "customer called"})
    assert resp.status_code == 200
    body = resp.json()["approval"]
    assert body["status"] == "approved" and body["approver"] == "bob"
    assert body["note"] == "customer called"
    assert "_done" not in resp.json()
    stored = approvals.get(r.id)
    assert stored.status is Status.APPROVED and stored.approver == "bob"
    again = bearer.post(f"/api/approvals/{r.id}/deny", json={})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


def test_deny_without_body(bearer, approvals, hold_call):
    r = hold_call()
    resp = bearer.post(f"/api/approvals/{r.id}/deny")
    assert resp.status_code == 200 and resp.json()["approval"]["status"] == "denied"
    assert approvals.get(r.id).status is Status.DENIED


def test_the_agent_cannot_approve_its_own_call(client, approvals, hold_call):
    r = hold_call()
    resp = client.post(f"/api/approvals/{r.id}/approve",
                       headers={"authorization": f"Bearer {AGENT_TOKEN}"})
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "self_approval"
    assert "agents cannot approve their own calls" in resp.json()["error"]["message"]
    assert approvals.get(r.id).status is Status.PENDING


def test_unknown_and_expired(bearer, approvals, hold_call):
    assert bearer.post("/api/approvals/nope/approve").status_code == 404
    r = hold_call(timeout=0.001)
    import time
    time.sleep(0.01)
    resp = bearer.post(f"/api/approvals/{r.id}/approve")
    assert resp.status_code == 409 and "expired" in resp.json()["error"]["message"]
    listed = bearer.get("/api/approvals", params={"status": "expired"}).json()["approvals"]
    assert [x["id"] for x in listed] == [r.id]


def test_bad_bodies(bearer, hold_call):
    r = hold_call()
    assert bearer.post(f"/api/approvals/{r.id}/approve", content=b"[1]",
                       headers={"content-type": "application/json"}).status_code == 400
    assert bearer.post(f"/api/approvals/{r.id}/approve", json={"note": 5}).status_code == 400
    assert bearer.post(f"/api/approvals/{r.id}/approve", content=b"{",
                       headers={"content-type": "application/json"}).status_code == 400
    big = bearer.post(f"/api/approvals/{r.id}/approve", json={"note": "x" * 70_000})
    assert big.status_code == 413


# --- sessions and the kill switch ---------------------------------------------------------------


def test_sessions_list(bearer, sessions, hold_call):
    hold_call()
    sessions.touch("old.session", "anonymous", 1000.0)
    body = bearer.get("/api/sessions").json()
    assert [s["session"] for s in body["sessions"]] == [SESSION, "old.session"]
    assert body["sessions"][0]["held"] == 1 and body["sessions"][0]["killed"] is None
    recent = bearer.get("/api/sessions", params={"active_within": "3600"}).json()["sessions"]
    assert [s["session"] for s in recent] == [SESSION]
    assert bearer.get("/api/sessions", params={"active_within": "x"}).status_code == 400


def test_kill_denies_the_session_and_releases_its_held_calls(bearer, sessions, approvals,
                                                              hold_call):
    held = hold_call()
    other = hold_call(700, session="other.session")
    resp = bearer.post(f"/api/sessions/{SESSION}/kill", json={"reason": "runaway agent"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["session"] == SESSION and body["cancelled"] == [held.id]
    assert body["killed"] == "runaway agent (killed by bob)"
    assert sessions.killed(SESSION) == "runaway agent (killed by bob)"
    assert approvals.get(held.id).status is Status.CANCELLED
    assert approvals.get(other.id).status is Status.PENDING
    listed = bearer.get("/api/sessions").json()["sessions"][0]
    assert listed["killed"] == "runaway agent (killed by bob)"
    # idempotent: the first reason stays
    bearer.post(f"/api/sessions/{SESSION}/kill", json={})
    assert sessions.killed(SESSION) == "runaway agent (killed by bob)"


def test_kill_unknown_session(bearer):
    assert bearer.post("/api/sessions/nope.123/kill").status_code == 404


def test_without_a_session_store(approvals, auth):
    app = create_app(approvals, auth)
    with TestClient(app, base_url=BASE, headers={"authorization": f"Bearer {TOKEN}"}) as c:
        assert c.get("/api/sessions").status_code == 503
        assert c.post(f"/api/sessions/{SESSION}/kill").status_code == 503
        assert c.get("/api/approvals").status_code == 200
