"""The control listener's operator routes: ``/metrics`` (open on loopback, or behind its
own bearer token), the activity API and page behind the console login, evidence lookup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.approvals import MemoryApprovalStore
from proxy.audit import AuditLog
from proxy.control import ControlAuth, ThreadedControlServer, create_app
from proxy.gateway import Gateway
from proxy.observe import Telemetry
from proxy.observe.activity import EvidenceFinder
from proxy.policy import compile_file
from proxy.state import MemoryStore
from proxy.translate import RequestView

TOKEN = "control-token-0123456789abcdef"
METRICS_TOKEN = "metrics-token-0123456789abcdef"
POLICY = """\
version: 1
name: t
mcp_servers: {crm: {url: "https://crm.example.com/mcp"}}
rules:
  - {id: no-wipe, match: {server: crm, tool: delete_all}, effect: deny, reason: no wiping}
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Gateway, Telemetry, AuditLog, Path]]:
    (tmp_path / "p.yaml").write_text(POLICY)
    telemetry = Telemetry.create(decision_log=False)
    audit = AuditLog(tmp_path / "audit", "unit")
    store = MemoryStore()
    gw = Gateway(compile_file(tmp_path / "p.yaml"), audit, store=store,
                 observers=telemetry.observers())
    yield gw, telemetry, audit, tmp_path
    audit.close()


def serve(gw: Gateway, telemetry: Telemetry, audit: AuditLog,
          metrics_token: str | None = None) -> ThreadedControlServer:
    app = create_app(MemoryApprovalStore(), ControlAuth.single(TOKEN), gw.store,
                     telemetry=telemetry, metrics_token=metrics_token,
                     evidence=EvidenceFinder(audit.path))
    return ThreadedControlServer(app)


def wipe(gw: Gateway) -> str:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "delete_all", "arguments": {}}}
    return gw.request(RequestView("POST", "https", "crm.example.com", 443, "/mcp",
                                  (("content-type", "application/json"),),
                                  json.dumps(body).encode())).decision_id


def test_metrics_open_on_loopback_and_token_when_configured(setup) -> None:
    gw, telemetry, audit, _ = setup
    wipe(gw)
    with serve(gw, telemetry, audit) as server:
        r = httpx.get(server.url + "/metrics", trust_env=False)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert 'fiveplane_rule_decisions_total{rule="no-wipe",verdict="deny"} 1.0' in r.text
        # a foreign Host (DNS rebinding) is refused here too
        assert httpx.get(server.url + "/metrics", headers={"host": "evil.example"},
                         trust_env=False).status_code == 421
    with serve(gw, telemetry, audit, METRICS_TOKEN) as server:
        assert httpx.get(server.url + "/metrics", trust_env=False).status_code == 401
        assert httpx.get(server.url + "/metrics", trust_env=False,
                         headers={"authorization": f"Bearer {TOKEN}"}).status_code == 401
        ok = httpx.get(server.url + "/metrics", trust_env=False,
                       headers={"authorization": f"Bearer {METRICS_TOKEN}"})
        assert ok.status_code == 200 and "fiveplane_decisions_total" in ok.text


def test_activity_api_needs_the_control_token_and_links_evidence(setup) -> None:
    gw, telemetry, audit, _ = setup
    did = wipe(gw)
    audit.flush(5)
    with serve(gw, telemetry, audit) as server:
        api = server.url + "/api/activity"
        assert httpx.get(api, trust_env=False).status_code == 401
        auth = {"authorization": f"Bearer {TOKEN}"}
        data = httpx.get(api + "?rule=no-wipe", headers=auth, trust_env=False).json()
        assert [e["decision_id"] for e in data["entries"]] == [did]
        assert data["counters"] == {"no-wipe": {"deny": 1}} and data["last"] == 1
        assert httpx.get(api + "?since=1", headers=auth, trust_env=False).json()["entries"] == []
        assert httpx.get(api + "?since=x", headers=auth, trust_env=False).status_code == 400
        evidence = httpx.get(f"{server.url}/api/evidence/{did}", headers=auth,
                             trust_env=False).json()
        assert evidence["body"]["id"] == did and evidence["body"]["decision"]["rule_ids"] == \
            ["no-wipe"]
        assert httpx.get(f"{server.url}/api/evidence/{'0' * 32}", headers=auth,
                         trust_env=False).status_code == 404
        assert httpx.get(f"{server.url}/api/evidence/nothex", headers=auth,
                         trust_env=False).status_code == 400
        page = httpx.get(server.url + "/activity", trust_env=False)
        assert page.status_code == 200 and 'id="login-form"' in page.text
        assert 'name="next" value="/activity"' in page.text and did not in page.text
