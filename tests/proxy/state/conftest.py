"""Fixtures of the state tests: every backend behind one factory.

``BACKENDS`` is the list the contract suite runs over; the Redis backend adds its entry
here (skipped when no ``redis-server`` is available) and must pass the same tests.
A factory takes a fresh database path (file backends use it) and the bounds to use.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.state import MemoryStore, SqliteStore, StateStore

if str(Path(__file__).parent) not in sys.path:  # make `redis_fixture` importable in any mode
    sys.path.insert(0, str(Path(__file__).parent))

from redis_fixture import redis_server  # noqa: F401 -- a fixture, used by name

Factory = Callable[..., StateStore]


def _redis_store(path: Path, url: str = "", **kw: Any) -> StateStore:
    from proxy.state.redis_store import RedisStore  # needs the `redis` package

    return RedisStore(url, prefix=f"fp:{path.stem}:", **kw)   # one prefix per store


BACKENDS: dict[str, Callable[..., StateStore]] = {
    "memory": lambda path, **kw: MemoryStore(**kw),
    "sqlite-memory": lambda path, **kw: SqliteStore(":memory:", **kw),
    "sqlite-file": lambda path, **kw: SqliteStore(path, **kw),
    "sqlite-shared": lambda path, **kw: SqliteStore(path, shared=True, **kw),
    "redis": _redis_store,      # this test's own redis-server (skipped without one)
}


@pytest.fixture(params=list(BACKENDS))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[StateStore] = []
    redis = request.param == "redis"
    extra = {"url": request.getfixturevalue("redis_server").url} if redis else {}

    def make(**kw: Any) -> StateStore:
        store = BACKENDS[request.param](tmp_path / f"state{len(opened)}.db", **extra, **kw)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Factory) -> StateStore:
    return make_store()
