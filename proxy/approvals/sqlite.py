"""``SqliteApprovalStore``: approval requests in their own table of a SQLite file.

The file may be the state database (``SqliteStore``'s): the table has its own schema
version (``SqliteDb.migrate("approvals", ...)``). Pass a path (the store opens and owns its
connection) or an open ``SqliteDb`` (shared; the store does not close it). Nothing is
cached, so several processes may share the file; a decision made by another process
reaches this process's waiters by ``wait``'s backstop poll (``poll`` seconds), one made
in this process at once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..principal import Principal
from ..state.sqlite_db import SqliteDb
from .memory import new_id
from .model import (
    DEFAULT_TIMEOUT,
    ApprovalConflict,
    ApprovalError,
    ApprovalNotFound,
    ApprovalRequest,
    Status,
    check_name,
    check_note,
    principal_from,
)
from .store import MAX_PENDING, POLL_SECONDS, NotifyingStore, Requests, cancellable

SCHEMA: list[list[str]] = [
    [  # version 1
        """CREATE TABLE approvals(
             id TEXT PRIMARY KEY, digest TEXT NOT NULL, status TEXT NOT NULL,
             created_at REAL NOT NULL, expires_at REAL NOT NULL, timeout REAL NOT NULL,
             decided_at REAL, consumed_at REAL, approver TEXT, note TEXT NOT NULL DEFAULT '',
             session TEXT NOT NULL DEFAULT '', principal_digest TEXT,
             policy_version TEXT NOT NULL DEFAULT '', data TEXT NOT NULL) WITHOUT ROWID""",
        "CREATE INDEX approvals_digest ON approvals(digest, status)",
        "CREATE INDEX approvals_status ON approvals(status, created_at)",
        "CREATE INDEX approvals_session ON approvals(session, status)",
    ],
]

_COLUMNS = ("id, digest, status, created_at, expires_at, timeout, decided_at, consumed_at, "
            "approver, note, session, principal_digest, policy_version, data")
_FINDABLE = ("(status = 'pending' OR (status = 'approved' AND consumed_at IS NULL)) "
             "AND expires_at > ?")


class SqliteApprovalStore(NotifyingStore):
    def __init__(self, path: str | Path | SqliteDb, *, clock: Callable[[], float] | None = None,
                 max_pending: int = MAX_PENDING, poll: float = POLL_SECONDS,
                 busy_timeout: float = 5.0, durable: bool = False) -> None:
        super().__init__(clock=clock or time.time, max_pending=max_pending, poll=poll)
        self._owned = not isinstance(path, SqliteDb)
        self._db = SqliteDb(path, busy_timeout=busy_timeout, durable=durable) \
            if not isinstance(path, SqliteDb) else path
        try:
            self._db.migrate("approvals", SCHEMA)
        except BaseException:
            if self._owned:
                self._db.close()
            raise
        self.path = self._db.path

    def __repr__(self) -> str:
        return f"SqliteApprovalStore({self.path!r})"

    # --- rows -------------------------------------------------------------------------

    @staticmethod
    def _row(row: Sequence[Any]) -> ApprovalRequest:
        (rid, digest, status, created_at, expires_at, timeout, decided_at, consumed_at,
         approver, note, session, pdigest, version, data) = row
        extra = json.loads(data)
        return ApprovalRequest(
            id=rid, digest=digest, rule_ids=tuple(extra.get("rule_ids", ())),
            reason=extra.get("reason", ""), principal=principal_from(extra.get("principal")),
            action=MappingProxyType(extra.get("action", {})), created_at=created_at,
            expires_at=expires_at, status=Status(status), session=session,
            principal_digest=pdigest, policy_version=version, approver=approver,
            decided_at=decided_at, note=note, consumed_at=consumed_at, timeout=timeout)

    def _select(self, c: sqlite3.Connection, where: str,
                args: Sequence[Any] = ()) -> Requests:
        return [self._row(r) for r in c.execute(
            f"SELECT {_COLUMNS} FROM approvals WHERE {where}", args).fetchall()]

    def _one(self, c: sqlite3.Connection, request_id: str) -> ApprovalRequest | None:
        rows = self._select(c, "id = ?", (request_id,))
        return rows[0] if rows else None

    def _expire_in(self, c: sqlite3.Connection, now: float,
                   digest: str | None = None) -> Requests:
        where = "status = 'pending' AND expires_at <= ?"
        args: tuple[Any, ...] = (now,)
        if digest is not None:
            where += " AND digest = ?"
            args += (digest,)
        rows = self._select(c, where, args)
        if rows:
            c.executemany("UPDATE approvals SET status = 'expired' WHERE id = ?",
                          [(r.id,) for r in rows])
        return [r.evolve(status=Status.EXPIRED) for r in rows]

    def _set(self, c: sqlite3.Connection, request: ApprovalRequest) -> ApprovalRequest:
        c.execute("UPDATE approvals SET status = ?, expires_at = ?, decided_at = ?, "
                  "consumed_at = ?, approver = ?, note = ? WHERE id = ?",
                  (request.status.value, request.expires_at, request.decided_at,
                   request.consumed_at, request.approver, request.note, request.id))
        return request

    # --- the protocol -------------------------------------------------------------------

    def request(self, digest: str, *, rule_ids: Sequence[str], reason: str,
                principal: Principal, action: Mapping[str, Any] | None = None,
                session: str = "", principal_digest: str | None = None,
                policy_version: str = "", timeout: float = DEFAULT_TIMEOUT,
                now: float | None = None) -> ApprovalRequest:
        digest = check_name(digest, "digest")
        timeout = self._check_timeout(timeout)
        t = self._now(now)
        data = json.dumps({"rule_ids": list(rule_ids), "reason": reason,
                           "principal": principal.to_dict(), "action": dict(action or {})},
                          separators=(",", ":"), ensure_ascii=False, default=str)
        created: list[ApprovalRequest] = []
        with self._db.write("approval request") as c:
            expired = self._expire_in(c, t, digest)
            found = self._select(c, f"digest = ? AND {_FINDABLE} ORDER BY created_at, id "
                                 "LIMIT 1", (digest, t))
            if found:
                request = found[0]
            else:
                live = c.execute("SELECT count(*) FROM approvals WHERE status = 'pending' "
                                 "AND expires_at > ?", (t,)).fetchone()[0]
                if live >= self.max_pending:
                    raise ApprovalError(f"too many pending approval requests ({live}); "
                                        "the call is refused")
                request = ApprovalRequest(
                    id=new_id(), digest=digest, rule_ids=tuple(rule_ids), reason=reason,
                    principal=principal, action=MappingProxyType(dict(action or {})),
                    created_at=t, expires_at=t + timeout, session=session,
                    principal_digest=principal_digest, policy_version=policy_version,
                    timeout=timeout)
                c.execute(f"INSERT INTO approvals({_COLUMNS}) "
                          "VALUES(?, ?, 'pending', ?, ?, ?, NULL, NULL, NULL, '', ?, ?, ?, ?)",
                          (request.id, digest, t, t + timeout, timeout, session,
                           principal_digest, policy_version, data))
                request = self._row(c.execute(f"SELECT {_COLUMNS} FROM approvals WHERE id = ?",
                                              (request.id,)).fetchone())
                created.append(request)
        self._changed(*expired, *created)
        return request

    def find(self, digest: str, now: float | None = None) -> ApprovalRequest | None:
        with self._db.read("find approval") as c:
            rows = self._select(c, f"digest = ? AND {_FINDABLE} ORDER BY created_at, id "
                                "LIMIT 1", (digest, self._now(now)))
        return rows[0] if rows else None

    def get(self, request_id: str) -> ApprovalRequest | None:
        with self._db.read("get approval") as c:
            return self._one(c, request_id)

    def list(self, status: Status | str | None = None,
             limit: int | None = None) -> Requests:
        with self._db.read("list approvals") as c:
            if status is None:
                where, args = "1", ()
            else:
                where, args = "status = ?", (Status(status).value,)
            order = " ORDER BY created_at DESC, id DESC"
            if limit:
                order += f" LIMIT {int(limit)}"
            rows = self._select(c, where + order, args)
        rows.reverse()
        return rows

    def decide(self, request_id: str, approve: bool, approver: str, note: str = "",
               now: float | None = None) -> ApprovalRequest:
        t = self._now(now)
        with self._db.write("decide approval") as c:
            request, approver, note = self._check_decision(
                self._one(c, request_id), request_id, approver, note, t)
            if t >= request.expires_at:
                changed = self._set(c, request.evolve(status=Status.EXPIRED))
                decided = False
            else:
                changed = self._set(c, request.evolve(
                    status=Status.APPROVED if approve else Status.DENIED, approver=approver,
                    decided_at=t, note=note,
                    expires_at=t + request.timeout if approve else request.expires_at))
                decided = True
        self._changed(changed)
        if not decided:
            raise self._expired_error(request_id)
        return changed

    def consume(self, request_id: str, digest: str | None = None,
                now: float | None = None) -> ApprovalRequest:
        t = self._now(now)
        with self._db.write("consume approval") as c:
            request = self._check_consume(self._one(c, request_id), request_id, digest, t)
            used = self._set(c, request.evolve(consumed_at=t))
        self._changed(used)
        return used

    def cancel(self, request_id: str, note: str, now: float | None = None) -> ApprovalRequest:
        t = self._now(now)
        note = check_note(note)
        with self._db.write("cancel approval") as c:
            request = self._one(c, request_id)
            if request is None:
                raise ApprovalNotFound(f"no approval request `{request_id}`")
            if not cancellable(request):
                raise ApprovalConflict(f"approval request `{request_id}` is "
                                       f"{request.status.value} and cannot be cancelled")
            cancelled = self._set(c, request.evolve(status=Status.CANCELLED, decided_at=t,
                                                    note=note))
        self._changed(cancelled)
        return cancelled

    def cancel_session(self, session: str, note: str,
                       now: float | None = None) -> Requests:
        if not session:
            return []
        t = self._now(now)
        note = check_note(note)
        with self._db.write("cancel session approvals") as c:
            rows = [r for r in self._select(c, "session = ? AND status IN ('pending', "
                                            "'approved')", (session,)) if cancellable(r)]
            out = [self._set(c, r.evolve(status=Status.CANCELLED, decided_at=t, note=note))
                   for r in rows]
        self._changed(*out)
        return out

    def expire(self, now: float | None = None) -> Requests:
        t = self._now(now)
        with self._db.write("expire approvals") as c:
            out = self._expire_in(c, t)
        self._changed(*out)
        return out

    def purge(self, before: float) -> int:
        with self._db.write("purge approvals") as c:
            cur = c.execute(
                "DELETE FROM approvals WHERE status != 'pending' AND (CASE "
                "WHEN status = 'approved' THEN coalesce(consumed_at, expires_at) "
                "WHEN status = 'expired' THEN expires_at "
                "ELSE coalesce(decided_at, expires_at) END) < ?", (before,))
            return cur.rowcount

    def close(self) -> None:
        if self._owned:
            self._db.close()
