"""Scanning a response (or request) body while it streams, chunk by chunk.

:class:`StreamScanner` is synchronous and cheap enough to run inside a mitmproxy stream
callable. Two modes:

* **raw** (default) - any chunked text body. The scanner holds back the last ``overlap``
  characters of what it has seen: a match can only change while more text may still arrive
  within its reach, so everything before the hold-back is final and is emitted, redacted.
  ``overlap`` defaults to :attr:`Scanner.window` (and may not be smaller): the widest match a
  detector can make, plus how far before its anchor a finding may start, plus the widest
  keyword assignment (whose fate depends on findings in its value), plus look-ahead margins.
  A finding that straddles the hold-back boundary is held back whole. The output is
  byte-for-byte what :func:`proxy.dlp.redact.apply_findings` gives for the whole body at
  once, whatever the chunking. Bytes that are not UTF-8 pass through unchanged
  (``surrogateescape``); a multi-byte character split across chunks is reassembled first.
* **sse** - ``text/event-stream``. Events are split with :class:`proxy.codec.SseParser` and
  handled one at a time: JSON ``data`` is redacted with :func:`~proxy.dlp.redact.redact_json`
  (JSON-RPC ids untouched) and the event re-encoded, other data as text; unchanged events
  are forwarded byte for byte. A finding in an event's other lines (``id:``, ``event:``,
  comments) with a non-``allow`` action cuts the stream (those cannot be redacted safely).
  Parse errors (:class:`proxy.codec.BodyError`: oversized event, invalid UTF-8) propagate:
  the caller refuses the rest of the stream. An unterminated last event is dropped, as
  clients drop it.

Memory: raw mode holds at most ``overlap`` + ``context`` characters plus one chunk (about
9 KiB with all built-in detectors); SSE mode holds one event (at most ``max_event`` bytes)
and its parsed JSON.

A ``deny`` finding *cuts* the stream: :attr:`StreamResult.emit` then ends with everything
before the finding, :attr:`StreamResult.cut` is the finding, and every later call returns
nothing. The caller appends its own error event (MCP: a JSON-RPC error for the request id)
and closes the upstream connection.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..codec import MAX_SSE_EVENT, BodyError, SseEvent, SseParser, loads_strict, sse_encode
from .detectors import Finding, Scanner
from .redact import ALLOW, DENY, REDACT, annotate, apply_findings, process_text, redact_json

__all__ = ["StreamResult", "StreamScanner"]

_EMPTY: tuple[Finding, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamResult:
    """What to send on: ``emit`` never contains ``b""`` (mitmproxy would read it as the end
    of the body). ``cut`` is the deny finding that ended the stream, if any. ``findings``
    lists every finding completed by this call (evidence, session labels)."""

    emit: list[bytes]
    cut: Finding | None = None
    findings: tuple[Finding, ...] = _EMPTY


class StreamScanner:
    def __init__(self, scanner: Scanner, actions: Mapping[str, str], *,
                 overlap: int | None = None, sse: bool = False,
                 max_event: int = MAX_SSE_EVENT, max_depth: int = 64) -> None:
        if overlap is None:
            overlap = scanner.window
        if overlap < scanner.window:
            raise ValueError(f"overlap {overlap} is smaller than the scanner's window "
                             f"({scanner.window}): a match split across chunks could be missed")
        self.scanner = scanner
        self.actions = dict(actions)
        self.overlap = overlap
        self.context = scanner.context
        self.sse = sse
        self.max_depth = max_depth
        self.cut: Finding | None = None
        #: findings so far per detector (the findings themselves are returned per call, so
        #: memory does not grow with the stream)
        self.counts: dict[str, int] = {}
        self._parser = SseParser(max_event) if sse else None
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._buf = ""          # context (already emitted) + pending text
        self._pend = 0          # where the pending text starts in _buf
        self._done = False

    @property
    def held(self) -> int:
        """Characters (raw mode) or bytes (SSE mode) currently held back."""
        if self._parser is not None:
            return self._parser.pending
        return len(self._buf) - self._pend

    # --- public ------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> StreamResult:
        if self.cut is not None or self._done or not chunk:
            return StreamResult([])
        if self._parser is not None:
            return self._events(self._parser.feed(chunk))
        self._buf += self._decoder.decode(chunk)
        return self._advance(final=False)

    def finish(self) -> StreamResult:
        """End of the body: flush everything that is still held back."""
        if self.cut is not None or self._done:
            return StreamResult([])
        self._done = True
        if self._parser is not None:
            self._parser.flush()        # an unterminated event is dropped, as clients do
            return StreamResult([])
        self._buf += self._decoder.decode(b"", final=True)
        return self._advance(final=True)

    # --- raw ---------------------------------------------------------------------------------

    def _advance(self, *, final: bool) -> StreamResult:
        buf, pend = self._buf, self._pend
        size = len(buf)
        if not final and size - pend <= self.overlap:
            return StreamResult([])
        found = annotate(self.scanner.scan_range(buf, pend, size), self.actions)
        boundary = size if final else _boundary(found, size - self.overlap)
        done = [f for f in found if f.end <= boundary]
        text, deny = apply_findings(buf, done, pend, boundary)
        if deny is not None:
            self.cut = deny
            done = [f for f in done if f.start < deny.start or f is deny]
        self._count(done)
        keep = max(0, boundary - self.context)
        self._buf = buf[keep:]
        self._pend = boundary - keep
        emit = [text.encode("utf-8", "surrogateescape")] if text else []
        return StreamResult(emit, deny, tuple(done))

    # --- SSE ---------------------------------------------------------------------------------

    def _events(self, events: list[SseEvent]) -> StreamResult:
        out: list[bytes] = []
        done: list[Finding] = []
        for ev in events:
            raw, findings, deny = self._event(ev)
            done.extend(findings)
            if deny is not None:
                self.cut = deny
                break
            out.append(raw)
        self._count(done)
        return StreamResult([b for b in out if b], self.cut, tuple(done))

    def _count(self, findings: list[Finding]) -> None:
        for f in findings:
            self.counts[f.detector] = self.counts.get(f.detector, 0) + 1

    def _event(self, ev: SseEvent) -> tuple[bytes, list[Finding], Finding | None]:
        meta = _meta_lines(ev.raw)
        found: list[Finding] = []
        if meta:
            r = process_text(meta, self.scanner, self.actions)
            bad = [f for f in r.findings if f.action != ALLOW]
            if bad:
                return b"", list(r.findings), _as_deny(bad[0])
            found.extend(r.findings)
        if not ev.has_data:
            return ev.raw, found, None
        try:
            doc = loads_strict(ev.data, max_depth=self.max_depth)
        except BodyError:
            r = process_text(ev.data, self.scanner, self.actions)
            new_data = r.value
        else:
            r = redact_json(doc, self.scanner, self.actions)
            new_data = None if r.value is doc else json.dumps(r.value, ensure_ascii=False)
        found.extend(r.findings)
        deny = next((f for f in r.findings if f.action == DENY), None)
        if deny is not None:
            return b"", found, deny
        if not any(f.action == REDACT for f in r.findings) or new_data is None:
            return ev.raw, found, None
        name = None if ev.event == "message" else ev.event
        return sse_encode(new_data, event=name, id=ev.id), found, None


def _boundary(found: list[Finding], cut: int) -> int:
    """The emit boundary: ``cut``, moved back to the start of any finding whose extent
    (from its anchor or start, whichever is first, to its end) straddles it."""
    spans = sorted((min(f.start, f.anchor) if f.anchor >= 0 else f.start, f.end)
                   for f in found)
    boundary = cut
    lo_run, hi_run = -1, -1
    for lo, hi in spans:
        if lo >= hi_run:                          # a new group of overlapping extents
            if lo_run < boundary < hi_run:
                return lo_run
            lo_run, hi_run = lo, hi
        else:
            hi_run = max(hi_run, hi)
    if lo_run < boundary < hi_run:
        return lo_run
    return boundary


def _meta_lines(raw: bytes) -> str:
    """The lines of an SSE event other than ``data:`` lines (``id``, ``event``, comments)."""
    meta = [ln for ln in raw.splitlines() if ln and not ln.startswith(b"data")]
    return b"\n".join(meta).decode("utf-8", "surrogateescape") if meta else ""


def _as_deny(f: Finding) -> Finding:
    return f if f.action == DENY else replace(f, action=DENY)
