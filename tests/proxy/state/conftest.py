"""Fixtures of the state tests: every backend behind one factory.

``BACKENDS`` is the list the contract suite runs over; the Redis backend adds its entry
here (skipped when no ``redis-server`` is available) and must pass the same tests.
A factory takes a fresh database path (file backends use it) and the bounds to use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.state import MemoryStore, SqliteStore, StateStore

Factory = Callable[..., StateStore]

BACKENDS: dict[str, Callable[..., StateStore]] = {
    "memory": lambda path, **kw: MemoryStore(**kw),
    "sqlite-memory": lambda path, **kw: SqliteStore(":memory:", **kw),
    "sqlite-file": lambda path, **kw: SqliteStore(path, **kw),
    "sqlite-shared": lambda path, **kw: SqliteStore(path, shared=True, **kw),
}


@pytest.fixture(params=list(BACKENDS))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[StateStore] = []

    def make(**kw: Any) -> StateStore:
        store = BACKENDS[request.param](tmp_path / f"state{len(opened)}.db", **kw)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Factory) -> StateStore:
    return make_store()
