"""``MemoryApprovalStore``: approval requests in a dict (one process, nothing persisted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ..principal import Principal
from ..randomid import random_id
from ..state.errors import StateError
from .model import (
    DEFAULT_TIMEOUT,
    ApprovalConflict,
    ApprovalError,
    ApprovalNotFound,
    ApprovalRequest,
    Status,
    check_name,
    check_note,
)
from .store import MAX_PENDING, POLL_SECONDS, NotifyingStore, Requests, cancellable


class MemoryApprovalStore(NotifyingStore):
    def __init__(self, *, clock: Callable[[], float] | None = None,
                 max_pending: int = MAX_PENDING, poll: float = POLL_SECONDS) -> None:
        super().__init__(clock=clock or time.time, max_pending=max_pending, poll=poll)
        self._lock = threading.RLock()
        self._requests: dict[str, ApprovalRequest] = {}
        self._closed = False

    def _open(self) -> None:
        if self._closed:
            raise StateError("approval store is closed")

    def _put(self, request: ApprovalRequest) -> ApprovalRequest:
        self._requests[request.id] = request
        return request

    def _expire_locked(self, now: float, digest: str | None = None) -> Requests:
        out = []
        for r in list(self._requests.values()):
            if r.status is Status.PENDING and r.expires_at <= now and (
                    digest is None or r.digest == digest):
                out.append(self._put(r.evolve(status=Status.EXPIRED)))
        return out

    def request(self, digest: str, *, rule_ids: Sequence[str], reason: str,
                principal: Principal, action: Mapping[str, Any] | None = None,
                session: str = "", principal_digest: str | None = None,
                policy_version: str = "", timeout: float = DEFAULT_TIMEOUT,
                now: float | None = None) -> ApprovalRequest:
        digest = check_name(digest, "digest")
        timeout = self._check_timeout(timeout)
        t = self._now(now)
        with self._lock:
            self._open()
            expired = self._expire_locked(t, digest)
            found = self._find_locked(digest, t)
            if found is None:
                live = sum(1 for r in self._requests.values() if r.live(t))
                if live >= self.max_pending:
                    raise ApprovalError(f"too many pending approval requests ({live}); "
                                        "the call is refused")
                found = self._put(ApprovalRequest(
                    id=new_id(), digest=digest, rule_ids=tuple(rule_ids), reason=reason,
                    principal=principal, action=MappingProxyType(dict(action or {})),
                    created_at=t, expires_at=t + timeout, session=session,
                    principal_digest=principal_digest, policy_version=policy_version,
                    timeout=timeout))
                created = [found]
            else:
                created = []
        self._changed(*expired, *created)
        return found

    def _find_locked(self, digest: str, now: float) -> ApprovalRequest | None:
        matches = [r for r in self._requests.values()
                   if r.digest == digest and r.findable(now)]
        return min(matches, key=lambda r: (r.created_at, r.id)) if matches else None

    def find(self, digest: str, now: float | None = None) -> ApprovalRequest | None:
        with self._lock:
            self._open()
            return self._find_locked(digest, self._now(now))

    def get(self, request_id: str) -> ApprovalRequest | None:
        self._open()
        return self._requests.get(request_id)

    def list(self, status: Status | str | None = None,
             limit: int | None = None) -> Requests:
        wanted = Status(status) if status is not None else None
        with self._lock:
            self._open()
            out = sorted((r for r in self._requests.values()
                          if wanted is None or r.status is wanted),
                         key=lambda r: (r.created_at, r.id))
        return out[-limit:] if limit else out

    def decide(self, request_id: str, approve: bool, approver: str, note: str = "",
               now: float | None = None) -> ApprovalRequest:
        t = self._now(now)
        with self._lock:
            self._open()
            request, approver, note = self._check_decision(
                self._requests.get(request_id), request_id, approver, note, t)
            if t >= request.expires_at:
                expired = self._put(request.evolve(status=Status.EXPIRED))
                decided = None
            else:
                decided = self._put(request.evolve(
                    status=Status.APPROVED if approve else Status.DENIED, approver=approver,
                    decided_at=t, note=note,
                    expires_at=t + request.timeout if approve else request.expires_at))
        if decided is None:
            self._changed(expired)
            raise self._expired_error(request_id)
        self._changed(decided)
        return decided

    def consume(self, request_id: str, digest: str | None = None,
                now: float | None = None) -> ApprovalRequest:
        t = self._now(now)
        with self._lock:
            self._open()
            request = self._check_consume(self._requests.get(request_id), request_id,
                                          digest, t)
            used = self._put(request.evolve(consumed_at=t))
        self._changed(used)
        return used

    def cancel(self, request_id: str, note: str, now: float | None = None) -> ApprovalRequest:
        t = self._now(now)
        note = check_note(note)
        with self._lock:
            self._open()
            request = self._requests.get(request_id)
            if request is None:
                raise ApprovalNotFound(f"no approval request `{request_id}`")
            if not cancellable(request):
                raise ApprovalConflict(f"approval request `{request_id}` is "
                                       f"{request.status.value} and cannot be cancelled")
            cancelled = self._put(request.evolve(status=Status.CANCELLED, decided_at=t,
                                                 note=note))
        self._changed(cancelled)
        return cancelled

    def cancel_session(self, session: str, note: str,
                       now: float | None = None) -> Requests:
        t = self._now(now)
        note = check_note(note)
        with self._lock:
            self._open()
            out = [self._put(r.evolve(status=Status.CANCELLED, decided_at=t, note=note))
                   for r in list(self._requests.values())
                   if session and r.session == session and cancellable(r)]
        self._changed(*out)
        return out

    def expire(self, now: float | None = None) -> Requests:
        t = self._now(now)
        with self._lock:
            self._open()
            out = self._expire_locked(t)
        self._changed(*out)
        return out

    def purge(self, before: float) -> int:
        with self._lock:
            self._open()
            gone = [r.id for r in self._requests.values()
                    if (end := r.ended_at()) is not None and end < before]
            for request_id in gone:
                del self._requests[request_id]
        return len(gone)

    def close(self) -> None:
        self._closed = True


def new_id() -> str:
    """A random, URL-safe request id (128 bits) an approver can type after ``approve``."""
    return random_id(16)
