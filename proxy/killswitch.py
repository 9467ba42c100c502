"""Open streams by session, for the kill switch.

A killed session's further actions are denied at the request stop point and its held
calls are released, but a response that is already streaming (an MCP SSE stream, a GET
stream, a long plain download) has no later request to deny, and a silent stream
produces no chunk a per-chunk check could see. So the addon files every stream it
lets through here and sweeps them every ``SWEEP_SECONDS``: a stream whose session (or
principal) is killed — by the control API in this process, or by another process
sharing the state store — is handed back to be cut. Reading the kill switch fails
closed: a store that cannot answer cuts the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from .action import Action
from .approvals.model import principal_digest
from .state import StateError, StateStore

log = logging.getLogger("fiveplane")

SWEEP_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Doomed:
    """A stream to cut: the addon's ``handle`` (flow, governor), the action that opened
    it and why."""

    key: Hashable
    action: Action
    handle: Any
    reason: str


class OpenStreams:
    """Streams in flight (single event loop: no locking)."""

    def __init__(self) -> None:
        self._open: dict[Hashable, tuple[Action, Any]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, key: Hashable, action: Action, handle: Any) -> None:
        self._open[key] = (action, handle)

    def discard(self, key: Hashable) -> None:
        self._open.pop(key, None)

    def sweep(self, store: StateStore) -> list[Doomed]:
        """Remove and return the streams whose session or principal was killed."""
        doomed: list[Doomed] = []
        for key, (action, handle) in list(self._open.items()):
            try:
                killed = store.killed(action.session, principal_digest(action.principal))
            except (StateError, ValueError) as e:
                killed = f"the kill switch could not be read, so the stream is cut: {e}"
            if killed is None:
                continue
            del self._open[key]
            doomed.append(Doomed(key, action, handle, killed))
        return doomed
