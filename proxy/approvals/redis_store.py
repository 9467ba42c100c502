"""``RedisApprovalStore``: approval requests in Redis, shared by every proxy process and
replica that uses the same ``--state redis://HOST:PORT/DB``.

Each operation is one optimistic transaction (``WATCH`` the keys it reads, check the same
rules as the other backends in Python, ``MULTI``/``EXEC`` the writes; Redis refuses the
``EXEC`` when another client changed a watched key meanwhile and the operation runs again
on fresh data). So a decision and a use are atomic across replicas: two replicas consuming
one approval at once see one success and one ``ApprovalConflict`` ("already used").

After every committed change the store publishes ``{"id", "o"}`` on the state store's
``approvals`` channel (``RedisStore.publish``); every other replica's store reads the
request and tells its own subscribers, so a call held on replica B wakes within a pub/sub
hop of the approval given through replica A's control API. Pub/sub delivery is at most
once: after the listener reconnects (Redis restarted, network gone) the store re-reads
every request a local ``wait`` is waiting for, and ``wait``'s poll (1 s) is the backstop.

Keys (``P`` = the state store's prefix + ``ap:``)::

    P r:<id>        string  the request as JSON (``ApprovalRequest.to_dict``)
    P all           zset    id -> created_at (``list``, ``purge``)
    P d:<digest>    zset    id -> created_at (``request``, ``find``)
    P live          zset    id -> expires_at of pending requests (count, ``expire``)
    P s:<session>   set     ids of a session (``cancel_session``)

Redis unreachable or slower than the state store's timeout: ``StateError`` from every
method (the gateway denies the held call: ``approvals.unavailable``). Persistence: as for
budgets (see ``proxy/state/redis_store.py``); without AOF a Redis restart forgets pending
requests and unused approvals (held calls then end as not found: denied).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ..principal import Principal
from ..state.errors import StateError
from ..state.redis_store import RedisStore
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
)
from .store import MAX_PENDING, POLL_SECONDS, NotifyingStore, Requests, cancellable

log = logging.getLogger("fiveplane.approvals.redis")
CHANNEL = "approvals"
_BATCH = 500


class RedisApprovalStore(NotifyingStore):
    """``state``: a ``RedisStore`` to share (its pool and pub/sub listener; not closed by
    this store) or a ``redis://`` URL (a store of its own, closed with this one)."""

    def __init__(self, state: RedisStore | str, *, clock: Callable[[], float] | None = None,
                 max_pending: int = MAX_PENDING, poll: float = POLL_SECONDS) -> None:
        super().__init__(clock=clock or time.time, max_pending=max_pending, poll=poll)
        self._owned = not isinstance(state, RedisStore)
        self._state = RedisStore(state) if not isinstance(state, RedisStore) else state
        self._r = self._state.client
        self._p = self._state.prefix + "ap:"
        self._origin = uuid.uuid4().hex
        self._wlock = threading.Lock()
        self._waiting: Counter[str] = Counter()
        self._closed = False
        try:
            self._unsubscribe = self._state.subscribe(CHANNEL, self._heard,
                                                      on_reconnect=self._resync)
        except BaseException:
            if self._owned:
                self._state.close()
            raise

    def __repr__(self) -> str:
        return f"RedisApprovalStore({self._state.name!r})"

    # --- keys and rows ------------------------------------------------------------------

    def _k(self, kind: str, name: str = "") -> str:
        return f"{self._p}{kind}:{name}" if name else f"{self._p}{kind}"

    def _load(self, reader: Any, ids: Sequence[str]) -> Requests:
        out: Requests = []
        for i in range(0, len(ids), _BATCH):
            chunk = ids[i:i + _BATCH]
            for raw in reader.mget([self._k("r", x) for x in chunk]):
                if raw is not None:
                    out.append(ApprovalRequest.from_dict(json.loads(raw)))
        return out

    def _save(self, pipe: Any, request: ApprovalRequest) -> ApprovalRequest:
        pipe.set(self._k("r", request.id),
                 json.dumps(request.to_dict(), separators=(",", ":"), default=str))
        if request.status is Status.PENDING:
            pipe.zadd(self._k("live"), {request.id: request.expires_at})
        else:
            pipe.zrem(self._k("live"), request.id)
        return request

    @staticmethod
    def _ids(raw: Iterable[bytes]) -> list[str]:
        return [x.decode() for x in raw]

    # --- transactions and notification -------------------------------------------------

    def _tx(self, op: str, fn: Callable[[Any], Any], *watch: str) -> Any:
        """Run ``fn(pipe)`` as one optimistic transaction on ``watch`` (``fn`` reads, may
        watch more keys, then calls ``pipe.multi()`` and queues its writes)."""
        if self._closed:
            raise StateError("approval store is closed")
        return self._state.run(op, self._r.transaction, fn, *watch, value_from_callable=True)

    def _commit(self, *requests: ApprovalRequest) -> None:
        """Tell local subscribers, then every other replica."""
        self._changed(*requests)
        for request in requests:
            try:
                self._state.publish(CHANNEL, {"id": request.id, "o": self._origin})
            except StateError as e:      # committed; other replicas' waiters poll
                log.warning("approval %s: change not announced: %s", request.id, e)

    def _heard(self, message: Mapping[str, Any]) -> None:
        request_id = message.get("id")
        if message.get("o") == self._origin or not isinstance(request_id, str) \
                or self._closed:
            return
        try:
            request = self.get(request_id)
        except StateError as e:
            log.warning("approval %s changed elsewhere, cannot read it: %s", request_id, e)
            return
        if request is not None:
            self._changed(request)

    def _resync(self) -> None:
        """After a reconnection: messages sent meanwhile are lost, re-read what we wait for."""
        with self._wlock:
            ids = list(self._waiting)
        if not ids or self._closed:
            return
        try:
            self._changed(*self._load(self._r, ids))
        except Exception as e:  # the next poll of each waiter reads it anyway
            log.warning("approvals: cannot re-read waited requests after reconnect: %s", e)

    async def wait(self, request_id: str, timeout: float | None = None) -> Status:
        with self._wlock:
            self._waiting[request_id] += 1
        try:
            return await super().wait(request_id, timeout)
        finally:
            with self._wlock:
                self._waiting[request_id] -= 1
                if self._waiting[request_id] <= 0:
                    del self._waiting[request_id]

    # --- the protocol -------------------------------------------------------------------

    def request(self, digest: str, *, rule_ids: Sequence[str], reason: str,
                principal: Principal, action: Mapping[str, Any] | None = None,
                session: str = "", principal_digest: str | None = None,
                policy_version: str = "", timeout: float = DEFAULT_TIMEOUT,
                now: float | None = None) -> ApprovalRequest:
        digest = check_name(digest, "digest")
        timeout = self._check_timeout(timeout)
        t = self._now(now)
        dkey, live = self._k("d", digest), self._k("live")
        fresh = ApprovalRequest(
            id=new_id(), digest=digest, rule_ids=tuple(rule_ids), reason=reason,
            principal=principal, action=MappingProxyType(dict(action or {})), created_at=t,
            expires_at=t + timeout, session=session, principal_digest=principal_digest,
            policy_version=policy_version, timeout=timeout)
        # round-trip the summary through JSON now, so this process returns what others read
        fresh = ApprovalRequest.from_dict(json.loads(json.dumps(fresh.to_dict(), default=str)))

        def fn(pipe: Any) -> tuple[ApprovalRequest, Requests, bool]:
            ids = self._ids(pipe.zrange(dkey, 0, -1))
            if ids:
                pipe.watch(*[self._k("r", x) for x in ids])
            rows = self._load(pipe, ids)
            expired = [r.evolve(status=Status.EXPIRED) for r in rows
                       if r.status is Status.PENDING and r.expires_at <= t]
            found = [r for r in rows if r.findable(t)]
            if found:
                pipe.multi()
                for r in expired:
                    self._save(pipe, r)
                return min(found, key=lambda r: (r.created_at, r.id)), expired, False
            count = int(pipe.zcount(live, f"({t!r}", "+inf"))
            if count >= self.max_pending:
                raise ApprovalError(f"too many pending approval requests ({count}); "
                                    "the call is refused")
            pipe.multi()
            for r in expired:
                self._save(pipe, r)
            self._save(pipe, fresh)
            pipe.zadd(self._k("all"), {fresh.id: t})
            pipe.zadd(dkey, {fresh.id: t})
            if session:
                pipe.sadd(self._k("s", session), fresh.id)
            return fresh, expired, True

        request, expired, created = self._tx("approval request", fn, dkey, live)
        self._commit(*expired, *([request] if created else []))
        return request

    def find(self, digest: str, now: float | None = None) -> ApprovalRequest | None:
        t = self._now(now)
        ids = self._ids(self._state.run("find approval", self._r.zrange,
                                        self._k("d", digest), 0, -1))
        rows = [r for r in self._state.run("find approval", self._load, self._r, ids)
                if r.findable(t)]
        return min(rows, key=lambda r: (r.created_at, r.id)) if rows else None

    def get(self, request_id: str) -> ApprovalRequest | None:
        if self._closed:
            raise StateError("approval store is closed")
        raw = self._state.run("get approval", self._r.get, self._k("r", request_id))
        return None if raw is None else ApprovalRequest.from_dict(json.loads(raw))

    def list(self, status: Status | str | None = None,
             limit: int | None = None) -> Requests:
        wanted = Status(status) if status is not None else None
        ids = self._ids(self._state.run("list approvals", self._r.zrange,
                                        self._k("all"), 0, -1))
        rows = [r for r in self._state.run("list approvals", self._load, self._r, ids)
                if wanted is None or r.status is wanted]
        rows.sort(key=lambda r: (r.created_at, r.id))
        return rows[-limit:] if limit else rows

    def _one(self, pipe: Any, request_id: str) -> ApprovalRequest | None:
        raw = pipe.get(self._k("r", request_id))
        return None if raw is None else ApprovalRequest.from_dict(json.loads(raw))

    def decide(self, request_id: str, approve: bool, approver: str, note: str = "",
               now: float | None = None) -> ApprovalRequest:
        t = self._now(now)

        def fn(pipe: Any) -> tuple[ApprovalRequest, bool]:
            request, who, text = self._check_decision(
                self._one(pipe, request_id), request_id, approver, note, t)
            pipe.multi()
            if t >= request.expires_at:
                return self._save(pipe, request.evolve(status=Status.EXPIRED)), False
            return self._save(pipe, request.evolve(
                status=Status.APPROVED if approve else Status.DENIED, approver=who,
                decided_at=t, note=text,
                expires_at=t + request.timeout if approve else request.expires_at)), True

        changed, decided = self._tx("decide approval", fn, self._k("r", request_id))
        self._commit(changed)
        if not decided:
            raise self._expired_error(request_id)
        return changed

    def consume(self, request_id: str, digest: str | None = None,
                now: float | None = None) -> ApprovalRequest:
        t = self._now(now)

        def fn(pipe: Any) -> ApprovalRequest:
            request = self._check_consume(self._one(pipe, request_id), request_id, digest, t)
            pipe.multi()
            return self._save(pipe, request.evolve(consumed_at=t))

        used = self._tx("consume approval", fn, self._k("r", request_id))
        self._commit(used)
        return used

    def cancel(self, request_id: str, note: str, now: float | None = None) -> ApprovalRequest:
        t = self._now(now)
        note = check_note(note)

        def fn(pipe: Any) -> ApprovalRequest:
            request = self._one(pipe, request_id)
            if request is None:
                raise ApprovalNotFound(f"no approval request `{request_id}`")
            if not cancellable(request):
                raise ApprovalConflict(f"approval request `{request_id}` is "
                                       f"{request.status.value} and cannot be cancelled")
            pipe.multi()
            return self._save(pipe, request.evolve(status=Status.CANCELLED, decided_at=t,
                                                   note=note))

        cancelled = self._tx("cancel approval", fn, self._k("r", request_id))
        self._commit(cancelled)
        return cancelled

    def cancel_session(self, session: str, note: str,
                       now: float | None = None) -> Requests:
        if not session:
            return []
        t = self._now(now)
        note = check_note(note)
        skey = self._k("s", session)

        def fn(pipe: Any) -> Requests:
            ids = self._ids(pipe.smembers(skey))
            if ids:
                pipe.watch(*[self._k("r", x) for x in ids])
            rows = [r for r in self._load(pipe, ids) if cancellable(r)]
            pipe.multi()
            return [self._save(pipe, r.evolve(status=Status.CANCELLED, decided_at=t,
                                              note=note)) for r in rows]

        out: Requests = self._tx("cancel session approvals", fn, skey)
        self._commit(*out)
        return out

    def expire(self, now: float | None = None) -> Requests:
        t = self._now(now)
        live = self._k("live")

        def fn(pipe: Any) -> Requests:
            ids = self._ids(pipe.zrangebyscore(live, "-inf", repr(t)))
            if ids:
                pipe.watch(*[self._k("r", x) for x in ids])
            rows = [r for r in self._load(pipe, ids)
                    if r.status is Status.PENDING and r.expires_at <= t]
            pipe.multi()
            for x in ids:                # stale index entries (a deleted request) go too
                pipe.zrem(live, x)
            return [self._save(pipe, r.evolve(status=Status.EXPIRED)) for r in rows]

        out: Requests = self._tx("expire approvals", fn, live)
        self._commit(*out)
        return out

    def purge(self, before: float) -> int:
        ids = self._ids(self._state.run("purge approvals", self._r.zrange,
                                        self._k("all"), 0, -1))
        gone = 0
        for i in range(0, len(ids), _BATCH):
            keys = [self._k("r", x) for x in ids[i:i + _BATCH]]

            def fn(pipe: Any, chunk: list[str] = ids[i:i + _BATCH]) -> int:
                old = [r for r in self._load(pipe, chunk)
                       if (end := r.ended_at()) is not None and end < before]
                pipe.multi()
                for r in old:
                    pipe.delete(self._k("r", r.id))
                    pipe.zrem(self._k("all"), r.id)
                    pipe.zrem(self._k("d", r.digest), r.id)
                    pipe.zrem(self._k("live"), r.id)
                    if r.session:
                        pipe.srem(self._k("s", r.session), r.id)
                return len(old)

            gone += self._tx("purge approvals", fn, *keys)
        return gone

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        if self._owned:
            self._state.close()
