"""Fixtures of the approval tests: every backend behind one factory, a fake clock, and
actions to hold. ``BACKENDS`` is what the store contract runs over; the Redis backend adds
its entry here and must pass the same tests."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.action import Action, Kind, StopPoint
from proxy.approvals import ApprovalStore, MemoryApprovalStore, SqliteApprovalStore
from proxy.principal import Link, Principal, PrincipalKind

_STATE_TESTS = str(Path(__file__).parents[1] / "state")
if _STATE_TESTS not in sys.path:  # the real redis-server fixture of the state tests
    sys.path.insert(0, _STATE_TESTS)

from redis_fixture import redis_server  # noqa: E402,F401 -- a fixture, used by name


def _redis(path: Path, url: str = "", **kw: Any) -> ApprovalStore:
    from proxy.approvals.redis_store import RedisApprovalStore
    from proxy.state.redis_store import RedisStore

    # one prefix per store: several stores in one test do not share requests
    return RedisApprovalStore(RedisStore(url, prefix=f"fp:{path.stem}:"), **kw)


BACKENDS: dict[str, Callable[..., ApprovalStore]] = {
    "memory": lambda path, **kw: MemoryApprovalStore(**kw),
    "sqlite-memory": lambda path, **kw: SqliteApprovalStore(":memory:", **kw),
    "sqlite-file": lambda path, **kw: SqliteApprovalStore(path, **kw),
    "redis": _redis,     # this test's own redis-server
}

ALICE = Principal((Link("alice", PrincipalKind.HUMAN), Link("planner", PrincipalKind.AGENT),
                   Link("refunder", PrincipalKind.AGENT)))


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=list(BACKENDS))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    opened: list[ApprovalStore] = []
    extra = ({"url": request.getfixturevalue("redis_server").url}
             if request.param == "redis" else {})

    def make(**kw: Any) -> ApprovalStore:
        store = BACKENDS[request.param](tmp_path / "approvals.db", **extra, **kw)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
        state = getattr(store, "_state", None)
        if state is not None:
            state.close()


@pytest.fixture
def store(make_store: Callable[..., ApprovalStore], clock: Clock) -> ApprovalStore:
    return make_store(clock=clock)


def refund(amount: float = 900, principal: Principal = ALICE, **args: Any) -> Action:
    """An MCP ``tools/call refund`` as the gateway decides it."""
    return Action(kind=Kind.MCP, stop=StopPoint.REQUEST_BODY, scheme="http",
                  host="127.0.0.1", port=9000, method="POST", path="/mcp", server="bank",
                  mcp_method="tools/call", name="refund",
                  arguments={"amount": amount, "customer": "c-17", **args},
                  principal=principal, session="sess-1", rpc_id=7)


def open_request(store: ApprovalStore, digest: str = "sha256:aa", *,
                 principal: Principal = ALICE, session: str = "sess-1",
                 timeout: float = 300.0, now: float | None = None) -> Any:
    return store.request(digest, rule_ids=["refund.over_threshold"], reason="refund over 500",
                         principal=principal, action={"name": "refund"}, session=session,
                         policy_version="sha256:policy", timeout=timeout, now=now)


@pytest.fixture
def call() -> Callable[..., Action]:
    return refund


@pytest.fixture
def opened() -> Callable[..., Any]:
    return open_request


@pytest.fixture
def alice() -> Principal:
    return ALICE
