"""W3C trace context: read the agent's ``traceparent``, strictly.

A valid header is carried into the evidence record (``extra.trace``) and forwarded
upstream unchanged (the proxy never rewrites it). An invalid one (wrong shape, wrong
lengths, not lower-case hex, all-zero ids, version ``ff``, repeated, or oversized) is not
recorded raw: the record says only that it was invalid, why, and how long it was. Either
way the call itself is unaffected: trace context is telemetry, never a governing input.

Format (W3C Trace Context, level 1): ``VV-TTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT-PPPPPPPPPPPPPPPP-FF``;
version ``00`` is exactly 55 characters. A later version may append ``-...`` fields: it is
accepted by its first 55 characters when the 56th is ``-`` (as the spec asks), up to
``MAX_LENGTH`` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

HEADER = "traceparent"
MAX_LENGTH = 512
_HEX = re.compile(r"[0-9a-f]+")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    traceparent: str = ""        # the valid header (first 55 chars for a later version)
    error: str = ""              # why it was refused ("" when valid)
    length: int = 0              # the length of what was sent

    @property
    def valid(self) -> bool:
        return not self.error

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def parent_id(self) -> str:
        return self.traceparent[36:52]

    @property
    def sampled(self) -> bool:
        return bool(int(self.traceparent[53:55], 16) & 1) if self.valid else False

    def to_record(self) -> dict[str, Any]:
        """The evidence record's ``extra.trace``: never the raw value of a refused header."""
        if self.valid:
            return {"traceparent": self.traceparent, "trace_id": self.trace_id,
                    "parent_id": self.parent_id}
        return {"invalid": self.error, "length": self.length}


def parse_traceparent(value: str) -> TraceContext:
    length = len(value)
    if length > MAX_LENGTH:
        return TraceContext(error=f"longer than {MAX_LENGTH} characters", length=length)
    text = value.strip(" \t")
    if len(text) < 55:
        return TraceContext(error="too short", length=length)
    version = text[:2]
    if not _is_hex(version) or version == "ff":
        return TraceContext(error="bad version", length=length)
    if version == "00" and len(text) != 55:
        return TraceContext(error="version 00 must be 55 characters", length=length)
    if len(text) > 55 and text[55] != "-":
        return TraceContext(error="bad field separator", length=length)
    head = text[:55]
    if head[2] != "-" or head[35] != "-" or head[52] != "-":
        return TraceContext(error="bad field separator", length=length)
    trace_id, parent_id, flags = head[3:35], head[36:52], head[53:55]
    if not (_is_hex(trace_id) and _is_hex(parent_id) and _is_hex(flags)):
        return TraceContext(error="not lower-case hex", length=length)
    if trace_id == _ZERO_TRACE:
        return TraceContext(error="all-zero trace id", length=length)
    if parent_id == _ZERO_PARENT:
        return TraceContext(error="all-zero parent id", length=length)
    return TraceContext(traceparent=head, length=length)


def trace_from_headers(headers: Iterable[tuple[str, str]]) -> TraceContext | None:
    """The request's trace context (header names lower-case), or None without one."""
    found = [v for k, v in headers if k == HEADER]
    if not found:
        return None
    if len(found) > 1:
        return TraceContext(error="repeated header", length=sum(len(v) for v in found))
    return parse_traceparent(found[0])


def _is_hex(text: str) -> bool:
    return _HEX.fullmatch(text) is not None
