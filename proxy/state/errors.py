"""The one error of the state store: the backend could not do what was asked.

``StateError`` is raised by every backend for every backend failure (database locked
beyond the busy timeout, disk full, corrupt file, store closed, a bound that would be
exceeded rather than silently dropped, later: Redis unreachable). The gateway denies
the action it was deciding (fail closed) and records the message as the reason.

Bad *arguments* (a NaN amount, an empty label, an event that is not JSON) raise
``ValueError`` instead: they are bugs or hostile input at the caller, which also denies.
"""

from __future__ import annotations

from ..errors import GovernanceError


class StateError(GovernanceError):
    """A state backend failed; the action that needed the state must be denied."""
