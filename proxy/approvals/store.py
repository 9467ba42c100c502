"""The approval store interface, and the notification + waiting machinery every backend
shares.

``ApprovalStore`` is what the gateway, the addon and the control API use. Backends:

* ``MemoryApprovalStore`` (``memory.py``): one process, nothing persisted; tests.
* ``SqliteApprovalStore`` (``sqlite.py``): the default; its own table in a SQLite file
  (it may be the state database), so pending requests survive a restart.
* a Redis backend implements the same protocol: each operation one Lua script, and
  ``subscribe`` fed by a pub/sub channel so the replica holding a call learns of a
  decision taken on another replica at once (see ``README.md``).

Every state change is *published* after it is committed: ``NotifyingStore._changed``
calls each subscriber with the new ``ApprovalRequest``. ``wait`` is built on that (plus a
slow poll as a backstop for writers in another process), so a held call wakes within
milliseconds of ``decide`` in this process. Subscribers are called on the thread that made
the change; they must be quick and must not raise (errors are logged and ignored).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any, Protocol, runtime_checkable

from ..principal import Principal
from .model import (
    DEFAULT_TIMEOUT,
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalRequest,
    SelfApproval,
    Status,
    check_name,
    check_note,
    is_self_approval,
)

log = logging.getLogger("fiveplane.approvals")

Listener = Callable[[ApprovalRequest], None]
Requests = list[ApprovalRequest]   # (a class with a ``list`` method cannot say ``list[...]``)
POLL_SECONDS = 1.0          # backstop poll of ``wait`` (writers in another process)
MAX_PENDING = 10_000        # live pending requests; one more is refused (the call denied)


@runtime_checkable
class ApprovalStore(Protocol):
    """Approval requests bound to exact calls. Thread-safe; every method is atomic.

    ``now`` arguments default to the store's clock (``time.time``)."""

    def request(self, digest: str, *, rule_ids: Sequence[str], reason: str,
                principal: Principal, action: Mapping[str, Any] | None = None,
                session: str = "", principal_digest: str | None = None,
                policy_version: str = "", timeout: float = DEFAULT_TIMEOUT,
                now: float | None = None) -> ApprovalRequest:
        """The request for the call with this ``digest``: an identical call that is pending
        (not expired) or approved and not yet used finds that request; otherwise a new
        pending one expiring ``timeout`` seconds from ``now``. Raises ``ApprovalError``
        past ``MAX_PENDING`` live pending requests."""
        ...

    def find(self, digest: str, now: float | None = None) -> ApprovalRequest | None:
        """The pending-and-live or approved-and-unused request of this digest, if any."""
        ...

    def get(self, request_id: str) -> ApprovalRequest | None: ...

    def list(self, status: Status | str | None = None,
             limit: int | None = None) -> Requests:
        """Requests with this status (all without), oldest first; ``limit``: the newest
        ``limit`` of them."""
        ...

    def decide(self, request_id: str, approve: bool, approver: str, note: str = "",
               now: float | None = None) -> ApprovalRequest:
        """Approve or deny a pending request. ``ApprovalNotFound``; ``ApprovalConflict``
        when it is not pending or has expired (it is marked expired then);
        ``SelfApproval`` when ``approver`` is a principal of the call's chain. Approving
        sets ``expires_at = now + timeout``: the window to use the approval."""
        ...

    def consume(self, request_id: str, digest: str | None = None,
                now: float | None = None) -> ApprovalRequest:
        """Use an approval once: it must be approved, unused, unexpired and (when given)
        for this ``digest``; else ``ApprovalConflict``. Call it just before the call
        proceeds."""
        ...

    def cancel(self, request_id: str, note: str, now: float | None = None) -> ApprovalRequest:
        """Cancel a pending (or approved, unused) request; ``ApprovalConflict`` otherwise."""
        ...

    def cancel_session(self, session: str, note: str,
                       now: float | None = None) -> Requests:
        """Cancel every pending or approved-unused request of a session (kill switch)."""
        ...

    def expire(self, now: float | None = None) -> Requests:
        """Mark pending requests past their deadline expired; returns them."""
        ...

    def purge(self, before: float) -> int:
        """Delete requests that left pending before ``before`` (decided, expired, cancelled,
        used). Returns how many went."""
        ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(request)`` after every change; returns the unsubscribe function."""
        ...

    async def wait(self, request_id: str, timeout: float | None = None) -> Status:
        """Wait until the request leaves pending or ``timeout`` seconds pass (``None``: until
        its deadline). A request found past its deadline is expired first, so the result
        is never ``PENDING`` after the deadline. ``ApprovalNotFound`` for an unknown id."""
        ...

    def close(self) -> None: ...


class Notifier:
    """Fan-out of changed requests to subscribers (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: tuple[Listener, ...] = ()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    def publish(self, requests: Iterable[ApprovalRequest]) -> None:
        listeners = self._listeners
        for request in requests:
            for listener in listeners:
                try:
                    listener(request)
                except Exception:
                    log.exception("approval listener failed for %s", request.id)


class NotifyingStore:
    """What backends share: the clock, ``subscribe``/``wait`` and the decision rules."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 max_pending: int = MAX_PENDING, poll: float = POLL_SECONDS) -> None:
        self.clock = clock
        self.max_pending = max_pending
        self.poll = poll
        self._notifier = Notifier()

    # implemented by the backend
    def get(self, request_id: str) -> ApprovalRequest | None:
        raise NotImplementedError

    def expire(self, now: float | None = None) -> Requests:
        raise NotImplementedError

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else float(now)

    def _changed(self, *requests: ApprovalRequest) -> None:
        """Publish committed changes (a Redis backend also calls this for changes it hears
        of on its channel)."""
        if requests:
            self._notifier.publish(requests)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._notifier.subscribe(listener)

    async def wait(self, request_id: str, timeout: float | None = None) -> Status:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def listener(request: ApprovalRequest) -> None:
            if request.id == request_id:
                with suppress(RuntimeError):   # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(wake.set)

        unsubscribe = self.subscribe(listener)
        try:
            end = math.inf if timeout is None else loop.time() + max(0.0, timeout)
            while True:
                wake.clear()
                request = self.get(request_id)
                if request is None:
                    raise ApprovalNotFound(f"no approval request `{request_id}`")
                if request.status is not Status.PENDING:
                    return request.status
                now = self.clock()
                if now >= request.expires_at:
                    self.expire(now)
                    request = self.get(request_id)
                    return request.status if request is not None else Status.EXPIRED
                left = min(end - loop.time(), request.expires_at - now)
                if left <= 0:
                    return Status.PENDING
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(left, self.poll))
        finally:
            unsubscribe()

    # --- rules every backend applies ----------------------------------------------------

    @staticmethod
    def _check_decision(request: ApprovalRequest | None, request_id: str, approver: str,
                        note: str, now: float) -> tuple[ApprovalRequest, str, str]:
        """Validate a decision; returns the request, approver and note. Raises for an
        unknown or decided request; an expired one is returned as is (the backend marks
        it expired, then raises ``ApprovalConflict``)."""
        approver = check_name(approver, "approver")
        note = check_note(note)
        if request is None:
            raise ApprovalNotFound(f"no approval request `{request_id}`")
        if request.status is not Status.PENDING:
            by = f" by {request.approver}" if request.approver else ""
            raise ApprovalConflict(f"approval request `{request_id}` is already "
                                   f"{request.status.value}{by}")
        if is_self_approval(request, approver):
            raise SelfApproval(f"`{approver}` is a principal of this call's chain: agents "
                               "cannot approve their own calls")
        return request, approver, note

    @staticmethod
    def _expired_error(request_id: str) -> ApprovalConflict:
        return ApprovalConflict(f"approval request `{request_id}` has expired")

    @staticmethod
    def _check_consume(request: ApprovalRequest | None, request_id: str, digest: str | None,
                       now: float) -> ApprovalRequest:
        if request is None:
            raise ApprovalNotFound(f"no approval request `{request_id}`")
        if digest is not None and digest != request.digest:
            raise ApprovalConflict(f"approval `{request_id}` was given for another call")
        if request.status is not Status.APPROVED:
            raise ApprovalConflict(f"approval request `{request_id}` is "
                                   f"{request.status.value}, not approved")
        if request.consumed_at is not None:
            raise ApprovalConflict(f"approval `{request_id}` was already used")
        if now >= request.expires_at:
            raise ApprovalConflict(f"approval `{request_id}` has expired unused")
        return request

    @staticmethod
    def _check_timeout(timeout: float) -> float:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"an approval timeout must be a positive number of seconds, "
                             f"got {timeout!r}")
        return float(timeout)


def cancellable(request: ApprovalRequest) -> bool:
    return request.status is Status.PENDING or (
        request.status is Status.APPROVED and request.consumed_at is None)
