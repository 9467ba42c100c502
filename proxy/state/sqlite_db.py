"""One SQLite database file shared by the state components (session state now; approvals and
pins later use the same file, connection and lock with their own tables).

* one connection per process, guarded by a re-entrant lock: threads of one process never
  wait on SQLite's file lock (whose busy handler sleeps in milliseconds); they queue on
  the lock, which costs nanoseconds;
* WAL journal, ``synchronous=NORMAL`` (a process crash loses nothing; a power loss may
  lose the last commits) or ``FULL`` with ``durable=True`` (an fsync per commit);
* writes are ``BEGIN IMMEDIATE`` transactions: the write lock is taken before the first
  read, so a read-check-write (a budget) is atomic across processes sharing the file; a
  writer waits at most ``busy_timeout`` seconds for another process, then ``StateError``;
* ``changed_elsewhere()`` tells a component whether another connection (another process)
  committed since it last asked (``PRAGMA data_version``), so in-process caches stay
  exact when several processes share the file;
* every ``sqlite3.Error`` becomes ``StateError`` naming the file and the operation.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import StateError


class SqliteDb:
    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0,
                 durable: bool = False) -> None:
        self.path = str(path)
        if self.path != ":memory:" and not self.path.startswith("file:"):
            self.path = str(Path(self.path).expanduser())
        self.lock = threading.RLock()
        self._depth = 0
        self.conn: sqlite3.Connection | None = None
        try:
            if self.path != ":memory:" and not self.path.startswith("file:"):
                parent = Path(self.path).resolve().parent
                if not parent.is_dir():
                    raise StateError(f"state database {self.path}: directory {parent} "
                                     "does not exist")
            self.conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None,
                check_same_thread=False, cached_statements=256,
                uri=self.path.startswith("file:"))
            conn = self.conn
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self.journal_mode = str(mode).lower()
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("CREATE TABLE IF NOT EXISTS meta("
                         "key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
            self._data_version = self._read_data_version()
        except sqlite3.Error as e:
            self.close()
            raise StateError(f"state database {self.path}: cannot open: {e}") from e

    def __repr__(self) -> str:
        return f"SqliteDb({self.path!r}, journal={self.journal_mode})"

    @property
    def in_memory(self) -> bool:
        return self.path == ":memory:" or "mode=memory" in self.path

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StateError(f"state database {self.path} is closed")
        return self.conn

    @contextmanager
    def write(self, what: str) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction (nested calls join the outer one). Commits when
        the block ends, rolls back if it raises."""
        with self.lock:
            conn = self._connection()
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StateError(f"state database {self.path}: {what}: {_why(e)}") from e
            self._depth = 1
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as e:
                with suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StateError(f"state database {self.path}: {what}: {_why(e)}") from e
                raise
            finally:
                self._depth = 0

    @contextmanager
    def read(self, what: str) -> Iterator[sqlite3.Connection]:
        """Statements outside a write transaction (each one sees a consistent snapshot)."""
        with self.lock:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as e:
                raise StateError(f"state database {self.path}: {what}: {_why(e)}") from e

    def _read_data_version(self) -> int:
        return int(self._connection().execute("PRAGMA data_version").fetchone()[0])

    def changed_elsewhere(self) -> bool:
        """True when another connection committed since the last call (call under ``lock``)."""
        try:
            version = self._read_data_version()
        except sqlite3.Error as e:
            raise StateError(f"state database {self.path}: data_version: {_why(e)}") from e
        if version != self._data_version:
            self._data_version = version
            return True
        return False

    def migrate(self, component: str, steps: Sequence[Sequence[str]]) -> None:
        """Bring ``component``'s tables to ``len(steps)``: step *i* (a list of statements)
        runs once, when the stored version is *i*. All in one transaction."""
        key = f"schema:{component}"
        with self.write(f"migrate {component}") as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            version = int(row[0]) if row else 0
            if version > len(steps):
                raise StateError(f"state database {self.path}: {component} schema version "
                                 f"{version} is newer than this fiveplane ({len(steps)})")
            for step in steps[version:]:
                for statement in step:
                    conn.execute(statement)
            if version != len(steps):
                conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) "
                             "DO UPDATE SET value = excluded.value", (key, str(len(steps))))

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                with suppress(sqlite3.Error):
                    self.conn.close()
                self.conn = None


def _why(e: sqlite3.Error) -> str:
    text = str(e)
    if "locked" in text or "busy" in text:
        return f"{text} (another process held the write lock past the busy timeout)"
    return text
