"""The console: login, what it shows, and CSRF safety of its state-changing requests."""

from __future__ import annotations

from starlette.testclient import TestClient

from proxy.approvals import Status
from proxy.control import COOKIE

TOKEN = "test-control-token-0123456789abcdef"
BASE = "http://127.0.0.1:8081"
SESSION = "3f9a0c1d2e4b.00000000000000000000000000000001"


def test_without_login_the_console_is_the_login_page(client, hold_call):
    r = hold_call()
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="login-form"' in page.text and 'type="password"' in page.text
    assert r.id not in page.text and "refund" not in page.text
    assert client.get("/fragment").status_code == 401


def test_login_with_a_wrong_token(client):
    r = client.post("/login", data={"token": "wrong-token-0123456789"}, headers={"origin": BASE})
    assert r.status_code == 403 and "not valid" in r.text
    assert COOKIE not in r.cookies
    assert client.post("/login", data={}, headers={"origin": BASE}).status_code == 401


def test_login_from_another_origin_is_refused(client):
    r = client.post("/login", data={"token": TOKEN}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and COOKIE not in r.cookies


def test_login_sets_an_opaque_strict_httponly_cookie(client):
    r = client.post("/login", data={"token": TOKEN}, headers={"origin": BASE})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie


def test_console_shows_the_pending_call(console, hold_call):
    c, _ = console
    r = hold_call()
    page = c.get("/").text
    assert 'id="approver">bob<' in page
    assert f'id="approval-{r.id}"' in page
    assert '<span class="tool">refund</span>' in page and "on bank" in page
    assert "refund.over_threshold" in page and "refunds over 500 need a human" in page
    for who in ("alice", "planner", "refunder"):
        assert f">{who}</span>" in page
    assert "&quot;api_key&quot;: &quot;***&quot;" in page
    assert 'class="left" data-expires=' in page
    assert f'data-session="{SESSION}"' in page
    assert '<script src="/console.js"></script>' in page
    assert c.get("/console.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/console.css").headers["content-type"].startswith("text/css")
    assert f'id="approval-{r.id}"' in c.get("/fragment").text


def test_values_are_escaped(console, approvals):
    c, _ = console
    from proxy.principal import Link, Principal, PrincipalKind
    evil = Principal((Link("<script>alert(1)</script>", PrincipalKind.AGENT),))
    approvals.request("sha256:x", rule_ids=["<b>r</b>"], reason="<img src=x onerror=1>",
                      principal=evil, action={"name": "<i>t</i>",
                                              "arguments": {"q": "</pre><script>"}})
    page = c.get("/").text
    assert "<script>alert" not in page and "<img src=x" not in page and "<i>t</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 1          # only the console's own script tag


def test_approve_from_the_console(console, approvals, hold_call):
    c, csrf = console
    r = hold_call()
    resp = c.post(f"/api/approvals/{r.id}/approve", data={"csrf": csrf, "note": "ok"},
                  headers={"origin": BASE})
    assert resp.status_code == 303
    assert resp.headers["location"] == f"/?done=approved&id={r.id}"
    stored = approvals.get(r.id)
    assert stored.status is Status.APPROVED and stored.approver == "bob" and stored.note == "ok"
    page = c.get(resp.headers["location"]).text
    assert f"Approved {r.id}" in page and f'id="approval-{r.id}"' not in page


def test_json_with_cookie_and_csrf_header(console, approvals, hold_call):
    c, csrf = console
    r = hold_call()
    resp = c.post(f"/api/approvals/{r.id}/deny", json={"note": "no"},
                  headers={"x-csrf-token": csrf, "origin": BASE})
    assert resp.status_code == 200 and resp.json()["approval"]["approver"] == "bob"
    assert c.get("/api/whoami").json() == {"approver": "bob", "via": "cookie"}


def test_cookie_without_csrf_token_is_refused(console, approvals, hold_call):
    c, _ = console
    r = hold_call()
    resp = c.post(f"/api/approvals/{r.id}/approve", json={}, headers={"origin": BASE})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "csrf"
    form = c.post(f"/api/approvals/{r.id}/approve", data={"note": "x"},
                  headers={"origin": BASE})
    assert form.status_code == 303 and "error=csrf" in form.headers["location"]
    wrong = c.post(f"/api/approvals/{r.id}/approve", json={},
                   headers={"origin": BASE, "x-csrf-token": "guess"})
    assert wrong.status_code == 403
    assert approvals.get(r.id).status is Status.PENDING


def test_cross_origin_is_refused_even_with_the_csrf_token(console, approvals, hold_call):
    c, csrf = console
    r = hold_call()
    for headers in (
        {"origin": "https://evil.example"},
        {"origin": "http://127.0.0.1:9999"},
        {"origin": "null"},
        {"referer": "https://evil.example/page"},
        {},                                                  # neither Origin nor Referer
        {"origin": BASE, "sec-fetch-site": "cross-site"},
        {"origin": BASE, "sec-fetch-site": "same-site"},
    ):
        resp = c.post(f"/api/approvals/{r.id}/approve", json={},
                      headers={"x-csrf-token": csrf, **headers})
        assert resp.status_code == 403, headers
        assert resp.json()["error"]["code"] == "csrf"
    assert approvals.get(r.id).status is Status.PENDING
    ok = c.post(f"/api/approvals/{r.id}/approve", json={},
                headers={"x-csrf-token": csrf, "referer": f"{BASE}/",
                         "sec-fetch-site": "same-origin"})
    assert ok.status_code == 200


def test_kill_from_the_console(console, sessions, hold_call):
    c, csrf = console
    held = hold_call()
    resp = c.post(f"/api/sessions/{SESSION}/kill", data={"csrf": csrf, "reason": "stop"},
                  headers={"origin": BASE})
    assert resp.status_code == 303 and "done=killed" in resp.headers["location"]
    assert sessions.killed(SESSION) == "stop (killed by bob)"
    page = c.get(resp.headers["location"]).text
    assert "killed: stop (killed by bob)" in page
    assert f'id="approval-{held.id}"' not in page


def test_console_errors_come_back_as_messages(console, approvals, hold_call):
    c, csrf = console
    r = hold_call()
    approvals.decide(r.id, False, "carol")
    resp = c.post(f"/api/approvals/{r.id}/approve", data={"csrf": csrf},
                  headers={"origin": BASE})
    assert resp.status_code == 303
    assert resp.headers["location"] == f"/?error=conflict&id={r.id}"
    assert "already decided" in c.get(resp.headers["location"]).text


def test_logout_ends_the_login(console, hold_call):
    c, csrf = console
    r = c.post("/logout", data={"csrf": csrf}, headers={"origin": BASE})
    assert r.status_code == 303
    assert 'id="login-form"' in c.get("/").text


def test_stale_cookie(app, hold_call):
    with TestClient(app, base_url=BASE, follow_redirects=False,
                    cookies={COOKIE: "made-up-login-id"}) as c:
        r = c.get("/api/approvals")
        assert r.status_code == 403
        page = c.get("/")
        assert 'id="login-form"' in page.text
        assert f"{COOKIE}=" in page.headers.get("set-cookie", "")     # cleared


def test_login_expires(approvals, auth):
    from proxy.control import create_app

    now = [1000.0]
    app = create_app(approvals, auth, clock=lambda: now[0], login_ttl=60)
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        c.post("/login", data={"token": TOKEN}, headers={"origin": BASE})
        assert c.get("/api/whoami").status_code == 200
        now[0] += 61
        assert c.get("/api/whoami").status_code == 403
