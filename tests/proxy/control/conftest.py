"""Fixtures of the control tests: an approval store with held calls, a session store, the
app, and clients (bearer, console login)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from proxy.approvals import ApprovalRequest, MemoryApprovalStore
from proxy.control import ControlAuth, create_app
from proxy.principal import Link, Principal, PrincipalKind
from proxy.state import MemoryStore

TOKEN = "test-control-token-0123456789abcdef"
AGENT_TOKEN = "agent-refunder-token-0123456789abcdef"
BASE = "http://127.0.0.1:8081"
CHAIN = Principal((Link("alice", PrincipalKind.HUMAN), Link("planner", PrincipalKind.AGENT),
                   Link("refunder", PrincipalKind.AGENT)))
SESSION = "3f9a0c1d2e4b.00000000000000000000000000000001"


@pytest.fixture
def approvals() -> MemoryApprovalStore:
    return MemoryApprovalStore()


@pytest.fixture
def sessions() -> MemoryStore:
    store = MemoryStore()
    store.touch(SESSION, "3f9a0c1d2e4b" + "0" * 52, time.time())
    return store


@pytest.fixture
def hold_call(approvals: MemoryApprovalStore) -> Callable[..., ApprovalRequest]:
    def make(amount: int = 900, session: str = SESSION, **kw: Any) -> ApprovalRequest:
        return approvals.request(
            f"sha256:{amount}", rule_ids=["refund.over_threshold"],
            reason="refunds over 500 need a human", principal=CHAIN,
            action={"kind": "mcp", "summary": "MCP tools/call refund on bank", "server": "bank",
                    "mcp_method": "tools/call", "name": "refund",
                    "arguments": {"amount": amount, "customer": "c-17", "api_key": "***"}},
            session=session, policy_version="sha256:p", **kw)

    return make


@pytest.fixture
def auth() -> ControlAuth:
    # `refunder` holds a token too: the agent's own principal must not approve its calls
    return ControlAuth({"bob": TOKEN, "refunder": AGENT_TOKEN})


@pytest.fixture
def app(approvals: MemoryApprovalStore, sessions: MemoryStore, auth: ControlAuth) -> Any:
    return create_app(approvals, auth, sessions)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        yield c


@pytest.fixture
def bearer(app: Any) -> Iterator[TestClient]:
    with TestClient(app, base_url=BASE, follow_redirects=False,
                    headers={"authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.fixture
def console(app: Any) -> Iterator[tuple[TestClient, str]]:
    """A logged-in console client and its CSRF token."""
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        r = c.post("/login", data={"token": TOKEN}, headers={"origin": BASE})
        assert r.status_code == 303
        page = c.get("/").text
        marker = 'name="csrf" value="'
        csrf = page[page.index(marker) + len(marker):].split('"', 1)[0]
        yield c, csrf
