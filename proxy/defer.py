"""Parked calls: ``defer`` and ``pause`` realized inside the proxy.

A request decided ``defer`` (or ``pause``) waits here, as an asyncio task of its own flow,
so every other flow keeps moving. It is woken at once when its session changes in this
process (a call completed, a held call was approved: ``Parking.completed`` /
``Parking.approved`` poke the session's waiters), at the moment a time window opens, and
every ``RECHECK_SECONDS`` for changes made by another process sharing the state store.
On each wake it asks the adjudicator, recording nothing, whether the decision would
change with the session state of now; when it would, the call is judged again, that
re-decision is recorded as its own evidence record (``extra.parked`` links it to the
first decision), and realized like a fresh one (forwarded, denied, held for a person,
or parked again under the same deadline).

``pause`` also opens an approval request: a person may resume (approve) or deny the
call before its precondition holds; without ``until`` only a person can.

Everything that ends a wait without the precondition denies, and says why: the
deadline (the rule's ``timeout``, else ``defaults.approval_timeout``), the client
disconnecting (nothing is forwarded), the session being killed, a state or approval
store error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .action import Action, Kind
from .approvals import ApprovalError, Status
from .approvals.model import principal_digest
from .decision import Decision, Verdict
from .policy.until import approval_label
from .replies import deny_reply
from .state import StateError

if TYPE_CHECKING:
    from .gateway import Gateway, RequestResult

log = logging.getLogger("fiveplane")

CHECK_SECONDS = 0.25     # client gone? session killed?
RECHECK_SECONDS = 1.0    # re-decide without a local signal: another replica changed state
_PARKING = (Verdict.DEFER, Verdict.PAUSE)


@dataclass(frozen=True, slots=True)
class Parked:
    """What a parked request keeps for a later hold: its raw body and query string (an
    approval request binds both for plain HTTP), and its headers (a compensation journaled
    when it is let through names the agent's MCP session)."""

    body: bytes | None = None
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()


class _Waiter:
    __slots__ = ("event", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def wake(self) -> None:
        # Signals come from the proxy's loop and from other threads (control API tools).
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self.loop.call_soon_threadsafe(self.event.set)


class Parking:
    """The parked calls of one gateway, by session."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._waiters: dict[str, set[_Waiter]] = {}
        self._lock = threading.Lock()

    # --- what the policy allows a parked call to wait ---------------------------------

    def timeout(self, decision: Decision) -> float:
        """Seconds a call parked (or held) by ``decision`` may wait: the shortest
        ``timeout`` of its rules, else the policy's ``approval_timeout``."""
        policy = self._gw.policy
        limits = [rule.timeout for rid in decision.rule_ids
                  if (rule := policy.rules_by_id.get(rid)) is not None
                  and rule.timeout is not None]
        return min(limits) if limits else policy.approval_timeout

    def _preconditions(self, decision: Decision) -> str:
        policy = self._gw.policy
        texts = [rule.until.text for rid in decision.rule_ids
                 if (rule := policy.rules_by_id.get(rid)) is not None
                 and rule.until is not None]
        return "; ".join(texts) or "a person's decision"

    def _next_opening(self, decision: Decision, now: float) -> float | None:
        policy = self._gw.policy
        times = [t for rid in decision.rule_ids
                 if (rule := policy.rules_by_id.get(rid)) is not None
                 and rule.until is not None and (t := rule.until.next_change(now)) is not None]
        return min(times) if times else None

    # --- signals: the session changed ----------------------------------------------------

    def completed(self, request: Action) -> None:
        """``request`` completed successfully: mark its session for every ``until.completed``
        that admits it, and wake the session's parked calls."""
        completions = self._gw.policy.completions
        if not completions or not request.session:
            return
        labels = [c.label for c in completions if c.match.admits(request)]
        if labels:
            self._gw.store.mark(request.session, labels, self._gw.now())
            self.poke(request.session)

    def approved(self, action: Action, decision: Decision) -> None:
        """A person approved ``action`` held by ``decision``: mark the session for the
        rules some ``until.approved`` names, and wake its parked calls."""
        names = self._gw.policy.awaited_approvals.intersection(decision.rule_ids)
        if not names or not action.session:
            return
        try:
            self._gw.store.mark(action.session, [approval_label(n) for n in sorted(names)],
                                self._gw.now())
        except (StateError, ValueError) as e:
            log.error("could not record the approval for %s: %s", action.summary(), e)
            return
        self.poke(action.session)

    def poke(self, session: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(session, ()))
        for waiter in waiters:
            waiter.wake()

    # --- waiting -------------------------------------------------------------------------

    async def wait(self, result: RequestResult,
                   check: Callable[[], str | None] | None = None) -> RequestResult:
        """Wait until the parked call may be decided again (or must be denied); return
        what the addon realizes: forwarded (``reply`` None) or denied."""
        assert result.action is not None and result.parked is not None
        gw = self._gw
        loop = asyncio.get_running_loop()
        session = result.action.session
        waiter = _Waiter(loop)
        with self._lock:
            self._waiters.setdefault(session, set()).add(waiter)
        unsubscribe: Callable[[], None] | None = None
        if result.hold is not None and gw.approvals is not None:
            held_id = result.hold.id

            def on_change(request: Any) -> None:
                if request.id == held_id:
                    waiter.wake()
            unsubscribe = gw.approvals.subscribe(on_change)
        started = loop.time()
        deadline = started + self.timeout(result.decision)
        first = result.decision_id
        current = result
        # decide again at once: the session may have changed while the first decision
        # was being made durable, before this waiter could hear about it
        last_decide = started - RECHECK_SECONDS
        try:
            while True:
                action = current.action
                assert action is not None
                why = self._stop(action, current.decision, check)
                if why is not None:
                    return self._deny(current, why[0], f"{current.decision.reason}; {why[1]}, "
                                      "so the parked call is denied", first, started)
                if current.hold is not None:
                    decided = self._decided(current)
                    if decided is not None:
                        return await gw.resolve_hold(replace(current, parked=None), check)
                now = gw.now()
                if waiter.event.is_set() or loop.time() - last_decide >= RECHECK_SECONDS \
                        or self._opened(current.decision, now, last_decide, loop.time()):
                    waiter.event.clear()
                    last_decide = loop.time()
                    changed = self._changed(action, current.decision)
                    if changed:
                        current = await self._again(current, first, started, check)
                        if current.parked is None or current.reply is not None:
                            return current
                        continue
                left = deadline - loop.time()
                if left <= 0:
                    return self._expired(current, first, started)
                step = min(CHECK_SECONDS, left)
                opening = self._next_opening(current.decision, now)
                if opening is not None:
                    step = min(step, max(0.0, opening - now) + 0.001)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(), step)
        finally:
            with self._lock:
                waiters = self._waiters.get(session)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[session]
            if unsubscribe is not None:
                unsubscribe()

    def _opened(self, decision: Decision, now: float, last: float, mono: float) -> bool:
        """A window opened since the last decision (wall clock ``now``)."""
        opening = self._next_opening(decision, now - (mono - last))
        return opening is not None and opening <= now

    def _decided(self, result: RequestResult) -> Status | None:
        """The person's decision on a paused call's approval request, if any yet."""
        assert result.hold is not None and self._gw.approvals is not None
        try:
            current = self._gw.approvals.get(result.hold.id)
        except (ApprovalError, StateError):
            return Status.EXPIRED  # resolve_hold reads it again and denies with the reason
        if current is None or current.status is not Status.PENDING:
            return current.status if current is not None else Status.EXPIRED
        return None

    def _changed(self, action: Action, decision: Decision) -> bool:
        try:
            fresh = self._gw.redecide(action)
        except Exception:
            return True
        return fresh.verdict is not decision.verdict or fresh.rule_ids != decision.rule_ids

    async def _again(self, current: RequestResult, first: str, started: float,
                     check: Callable[[], str | None] | None) -> RequestResult:
        """Judge the parked call again (recorded, linked to the first decision) and realize
        the new decision."""
        gw = self._gw
        assert current.action is not None and current.parked is not None
        link = self._link(current, first, started)
        judged = gw.judge(replace(current.action, at=gw.now()), extra={"parked": link})
        if current.hold is not None and gw.approvals is not None:
            # the precondition resumed the call: nobody needs to decide it any more
            with contextlib.suppress(ApprovalError, StateError, ValueError):
                gw.approvals.cancel(current.hold.id, "resumed: the call was decided again "
                                    f"(decision {judged.decision_id})")
        new = gw.realize_request(judged, current.strip, current.body, current.parked)
        new = await gw.settle(new)
        if new.reply is not None:
            return new
        if new.parked is not None and new.decision.verdict in _PARKING:
            return new                      # parked again: the loop waits on
        if new.hold is not None:
            return await gw.resolve_hold(new, check)   # escalated now: a person decides
        return new

    def _link(self, current: RequestResult, first: str, started: float) -> dict[str, Any]:
        waited = asyncio.get_running_loop().time() - started
        return {"first": first, "previous": current.decision_id,
                "waited_seconds": round(waited, 3)}

    def _stop(self, action: Action, decision: Decision, check: Callable[[], str | None] | None
              ) -> tuple[tuple[str, ...], str] | None:
        """Why the wait must end now, as (rule ids, reason): the client went away, the
        session (or its principal) was killed, the kill switch cannot be read."""
        gone = check() if check is not None else None
        if gone:
            return decision.rule_ids, gone
        try:
            killed = self._gw.store.killed(action.session, principal_digest(action.principal))
        except (StateError, ValueError) as e:
            return ("state.unavailable",), f"the kill switch could not be read: {e}"
        if killed is not None:
            return ("session.killed",), f"the session was killed by an operator: {killed}"
        return None

    def _expired(self, current: RequestResult, first: str, started: float) -> RequestResult:
        limit = self.timeout(current.decision)
        reason = (f"{current.decision.reason}; its precondition "
                  f"({self._preconditions(current.decision)}) did not hold within "
                  f"{limit:g} s, so the call is denied")
        if current.hold is not None and self._gw.approvals is not None:
            with contextlib.suppress(ApprovalError, StateError, ValueError):
                self._gw.approvals.cancel(current.hold.id, f"timed out after {limit:g} s")
        return self._deny(current, current.decision.rule_ids, reason, first, started)

    def _deny(self, current: RequestResult, rule_ids: tuple[str, ...], reason: str,
              first: str, started: float) -> RequestResult:
        action = current.action
        assert action is not None
        decision_id, decision = self._gw.refuse(
            action, rule_ids[0], reason, outcome="denied", rule_ids=rule_ids,
            extra={"parked": self._link(current, first, started)})
        reply = deny_reply(decision, decision_id, mcp=action.kind is Kind.MCP,
                           rpc_id=action.rpc_id)
        return replace(current, decision_id=decision_id, decision=decision, reply=reply,
                       hold=None, parked=None, inject=None, judged=None)
