"""What the gateway tells its observers: one ``DecisionEvent`` per recorded decision, and
the few events that are not decisions (policy reloads, state errors).

Observers run after the evidence record was appended, on the caller's thread, and must be
cheap: they feed counters, a bounded ring buffer and log lines. An observer that raises
never changes a decision (the record is already written and the decision stands); the
error is logged and counted by ``Observers``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..action import Action
from ..decision import Decision

log = logging.getLogger("fiveplane.observe")


@dataclass(frozen=True, slots=True)
class DecisionEvent:
    decision_id: str
    action: Action | None
    decision: Decision           # what was decided (the recorded decision)
    enforced: Decision           # what the proxy does
    outcome: str                 # forwarded | denied | refused | held | redacted | ...
    adjudication_us: float
    total_us: float
    at: float                    # unix seconds
    recorded: bool = True        # False: the record could not be appended (denied)
    approval: Mapping[str, Any] | None = None   # the resolved hold, when this closes one
    trace: Mapping[str, Any] | None = field(default=None)


class DecisionObserver(Protocol):
    def decided(self, event: DecisionEvent) -> None: ...


class Observers:
    """The gateway's observers, each shielded from the others' failures. Any object with
    ``decided(event)`` is an observer; ``reloaded``, ``state_error`` are optional."""

    __slots__ = ("_all", "errors")

    def __init__(self, observers: Iterable[DecisionObserver] = ()) -> None:
        self._all: tuple[Any, ...] = tuple(observers)
        self.errors = 0

    def __bool__(self) -> bool:
        return bool(self._all)

    def add(self, observer: Any) -> None:
        self._all = (*self._all, observer)

    def decided(self, event: DecisionEvent) -> None:
        for observer in self._all:
            try:
                observer.decided(event)
            except Exception as e:
                self._failed(observer, e)

    def reloaded(self, ok: bool, version: str, name: str, error: str | None = None) -> None:
        self._call("reloaded", ok, version, name, error)

    def state_error(self, where: str, error: BaseException) -> None:
        self._call("state_error", where, error)

    def _call(self, method: str, *args: Any) -> None:
        for observer in self._all:
            hook = getattr(observer, method, None)
            if hook is None:
                continue
            try:
                hook(*args)
            except Exception as e:
                self._failed(observer, e)

    def _failed(self, observer: Any, error: Exception) -> None:
        self.errors += 1
        log.error("observer %s failed (the decision stands): %r",
                  type(observer).__name__, error)
