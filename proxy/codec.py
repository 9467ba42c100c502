"""Strict, fail-closed decoding of HTTP bodies, JSON documents and Server-Sent Events.

The proxy must see a body exactly the way the upstream server (or the agent) will see it, so
every helper here refuses input whose meaning could differ between parsers instead of guessing:
stacked or unknown content codings, trailing bytes after a compressed stream, duplicate JSON
keys, non-standard JSON literals, invalid UTF-8, and so on. Every refusal raises
:class:`BodyError`, which carries a stable short ``code`` for logs and metrics and a
human-readable message.

This module deliberately has no mitmproxy dependency so it can be unit-tested and reused on its
own. Decompression is incremental and bounded: no decoder ever materialises more than ``limit``
bytes plus one output chunk.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import brotli

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

__all__ = [
    "MAX_CODINGS",
    "MAX_SSE_EVENT",
    "BodyError",
    "SseEvent",
    "SseParser",
    "decode_body",
    "json_depth_ok",
    "loads_strict",
    "sse_encode",
]


class BodyError(ValueError):
    """A body that the proxy refuses to interpret. ``code`` is stable; the message is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"BodyError({self.code!r}, {self.message!r})"


# --------------------------------------------------------------------------------------------
# Content-Encoding
# --------------------------------------------------------------------------------------------

#: Compressed input is fed to decoders in slices of this size (bounds internal input copies).
_IN_CHUNK = 64 * 1024
#: Each decoder call produces at most about this many bytes of output.
_OUT_CHUNK = 64 * 1024
#: More non-identity codings than this in one Content-Encoding header is refused.
MAX_CODINGS = 4
#: zstd window limit (RFC 8878 section 3.1.1.1.2 / RFC 9659: HTTP decoders need only 8 MiB).
_ZSTD_WINDOW_LOG_MAX = 23

_OWS = " \t"


class _Sink:
    """Collects decoder output and refuses as soon as it grows past ``limit``."""

    __slots__ = ("_chunks", "_coding", "_limit", "_size")

    def __init__(self, limit: int, coding: str) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._coding = coding

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._chunks.clear()
            raise BodyError(
                "decompression_bomb",
                f"{self._coding}-decoded body exceeds the limit of {self._limit} bytes",
            )
        self._chunks.append(chunk)

    def result(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def _slices(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    for pos in range(0, len(view), _IN_CHUNK):
        yield view[pos : pos + _IN_CHUNK]


def _corrupt(coding: str, detail: str) -> BodyError:
    return BodyError("corrupt_encoding", f"corrupt {coding} content: {detail}")


def _trailing(coding: str, unit: str) -> BodyError:
    return _corrupt(
        coding,
        f"unexpected bytes after the end of the {unit} (concatenated or padded streams are "
        "decoded differently by different servers and are refused)",
    )


def _inflate(data: bytes, wbits: int, coding: str, limit: int) -> bytes:
    """zlib-family decoder (gzip / zlib / raw deflate) with bounded output."""
    unit = "gzip member" if wbits > 15 else "deflate stream"
    sink = _Sink(limit, coding)
    d = zlib.decompressobj(wbits)
    try:
        for piece in _slices(data):
            if d.eof:
                raise _trailing(coding, unit)
            pending: bytes | memoryview = piece
            while pending:
                sink.write(d.decompress(pending, _OUT_CHUNK))
                pending = d.unconsumed_tail
                if d.eof and pending:
                    raise _trailing(coding, unit)
        # Drain output that zlib still holds after the last input byte was consumed.
        while not d.eof:
            chunk = d.decompress(b"", _OUT_CHUNK)
            if not chunk:
                break
            sink.write(chunk)
    except zlib.error as exc:
        raise _corrupt(coding, str(exc)) from None
    if not d.eof:
        raise _corrupt(coding, f"truncated {unit}")
    if d.unused_data:
        raise _trailing(coding, unit)
    return sink.result()


def _looks_like_zlib(data: bytes) -> bool:
    """RFC 1950 header check, as browsers do to tell zlib-wrapped from raw deflate."""
    if len(data) < 2:
        return False
    cmf, flg = data[0], data[1]
    return (cmf & 0x0F) == 8 and (cmf >> 4) <= 7 and ((cmf << 8) | flg) % 31 == 0


def _gunzip(data: bytes, limit: int, coding: str) -> bytes:
    return _inflate(data, 16 + zlib.MAX_WBITS, coding, limit)


def _deflate(data: bytes, limit: int, coding: str) -> bytes:
    # "deflate" is specified as zlib-wrapped, but many servers send raw deflate; browsers accept
    # both, telling them apart by the zlib header. Do the same.
    wbits = zlib.MAX_WBITS if _looks_like_zlib(data) else -zlib.MAX_WBITS
    return _inflate(data, wbits, coding, limit)


def _unbrotli(data: bytes, limit: int, coding: str) -> bytes:
    sink = _Sink(limit, coding)
    d = brotli.Decompressor()
    try:
        for piece in _slices(data):
            if d.is_finished():
                raise _trailing(coding, "brotli stream")
            chunk = d.process(piece, output_buffer_limit=_OUT_CHUNK)
            # With an output limit the decoder keeps unconsumed input internally (even when
            # can_accept_more_data() is True): drain it before feeding more.
            while chunk:
                sink.write(chunk)
                if d.is_finished():
                    break
                chunk = d.process(b"", output_buffer_limit=_OUT_CHUNK)
    except brotli.error as exc:
        # Also raised (rather than stopping) for bytes after the end of the stream.
        raise _corrupt(coding, str(exc) or "decoder failed") from None
    if not d.is_finished():
        raise _corrupt(coding, "truncated brotli stream")
    return sink.result()


def _unzstd(data: bytes, limit: int, coding: str) -> bytes:
    sink = _Sink(limit, coding)
    try:
        d = zstd.ZstdDecompressor(
            options={zstd.DecompressionParameter.window_log_max: _ZSTD_WINDOW_LOG_MAX}
        )
        for piece in _slices(data):
            if d.eof:
                raise _trailing(coding, "zstd frame")
            sink.write(d.decompress(piece, _OUT_CHUNK))
            while not d.needs_input and not d.eof:
                sink.write(d.decompress(b"", _OUT_CHUNK))
            if d.eof and d.unused_data:
                raise _trailing(coding, "zstd frame")
    except zstd.ZstdError as exc:
        raise _corrupt(coding, str(exc)) from None
    if not d.eof:
        raise _corrupt(coding, "truncated zstd frame")
    return sink.result()


_DECODERS: dict[str, Callable[[bytes, int, str], bytes]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _deflate,
    "br": _unbrotli,
    "zstd": _unzstd,
}


def _parse_codings(content_encoding: str | None) -> list[str]:
    if not content_encoding:
        return []
    codings: list[str] = []
    for item in content_encoding.split(","):
        token = item.strip(_OWS)
        if not token:  # RFC 9110 section 5.6.1: empty list elements are allowed and ignored
            continue
        name = token.lower()
        if not token.isascii() or (name not in _DECODERS and name != "identity"):
            raise BodyError(
                "unsupported_encoding",
                f"unsupported Content-Encoding {token[:40]!r} "
                f"(supported: identity, {', '.join(_DECODERS)})",
            )
        if name != "identity":
            codings.append(name)
    if len(codings) > MAX_CODINGS:
        raise BodyError(
            "unsupported_encoding",
            f"Content-Encoding stacks {len(codings)} codings; at most {MAX_CODINGS} are accepted",
        )
    return codings


def decode_body(data: bytes, content_encoding: str | None, *, limit: int) -> bytes:
    """Undo ``Content-Encoding`` and return the identity body.

    ``content_encoding`` is the (comma-joined) header value: codings are listed in the order they
    were applied and are undone in reverse. Names are case-insensitive; ``identity`` and empty
    elements are no-ops. Supported: gzip, x-gzip, deflate (zlib-wrapped or raw), br, zstd.

    Every stage decompresses incrementally and stops as soon as its output exceeds ``limit``.
    Raises :class:`BodyError` with code ``body_too_large`` (input over ``limit``),
    ``unsupported_encoding``, ``decompression_bomb`` or ``corrupt_encoding`` (invalid,
    truncated, or followed by trailing bytes / a second gzip member or zstd frame).
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    codings = _parse_codings(content_encoding)
    if len(data) > limit:
        raise BodyError(
            "body_too_large", f"body of {len(data)} bytes exceeds the limit of {limit} bytes"
        )
    if not data:
        return b""
    out = data if isinstance(data, bytes) else bytes(data)
    for name in reversed(codings):
        out = _DECODERS[name](out, limit, name)
    return out


# --------------------------------------------------------------------------------------------
# Strict JSON
# --------------------------------------------------------------------------------------------

# A JSON string (possibly unterminated: then it runs to the end) or a bracket.
_DEPTH_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
# Cheap pre-filter: any \uD800-\uDFFF escape (maybe a false hit after an escaped backslash).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_BOM = "\ufeff"


def json_depth_ok(text: str, max_depth: int) -> bool:
    """True if no point of ``text`` is nested deeper than ``max_depth`` arrays/objects.

    Counts ``[``/``{`` against ``]``/``}`` outside JSON strings without parsing, stopping as soon
    as the limit is crossed, so arbitrarily deep input is rejected in time linear in the prefix.
    """
    depth = 0
    for m in _DEPTH_TOKEN.finditer(text):
        ch = m.group()
        if ch == "[" or ch == "{":
            depth += 1
            if depth > max_depth:
                return False
        elif depth and (ch == "]" or ch == "}"):
            depth -= 1
    return True


def _short(value: str, n: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def _pairs_hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyError(
                    "duplicate_key",
                    f"duplicate key {_short(key)} in JSON object (parsers disagree on which "
                    "value wins)",
                )
            seen.add(key)
    return obj


def _parse_constant(name: str) -> object:
    raise BodyError("json_nonfinite", f"non-standard JSON literal {name} is not allowed")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError("json_nonfinite", f"JSON number {text[:40]} overflows to infinity")
    return value


def _lone_surrogate(value: object) -> str | None:
    """Return the first string (key or value) in ``value`` that is not valid Unicode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            candidates: list[str] = [item]
        elif isinstance(item, dict):
            candidates = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for s in candidates:
            if not s.isascii():
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError:
                    return s
    return None


def loads_strict(data: bytes | str, *, max_depth: int = 64) -> object:
    """Parse a JSON document, refusing everything that parsers could read differently.

    Codes: ``invalid_utf8`` (bytes that are not strict UTF-8, a leading BOM, or an unpaired
    surrogate escape), ``json_too_deep`` (checked before parsing), ``duplicate_key``,
    ``json_nonfinite`` (NaN/Infinity literals, numbers overflowing to infinity) and
    ``invalid_json`` (anything else, with json's line/column message).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BodyError(
                "invalid_utf8",
                f"JSON body is not valid UTF-8 at byte {exc.start}: {exc.reason}",
            ) from None
    else:
        text = data
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BodyError(
                    "invalid_utf8",
                    f"JSON text contains an unencodable character at index {exc.start}",
                ) from None
    if text.startswith(_BOM):
        raise BodyError("invalid_utf8", "JSON body starts with a byte order mark (U+FEFF)")
    if not json_depth_ok(text, max_depth):
        raise BodyError("json_too_deep", f"JSON nesting is deeper than {max_depth} levels")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs_hook,
            parse_constant=_parse_constant,
            parse_float=_parse_float,
        )
    except BodyError:
        raise
    except json.JSONDecodeError as exc:
        raise BodyError("invalid_json", f"invalid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("json_too_deep", "JSON nesting is too deep to parse") from None
    except ValueError as exc:  # e.g. integers beyond sys.get_int_max_str_digits()
        raise BodyError("invalid_json", f"invalid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        bad = _lone_surrogate(value)
        if bad is not None:
            raise BodyError(
                "invalid_utf8",
                f"JSON string {_short(bad.encode('utf-8', 'backslashreplace').decode())} "
                "contains an unpaired surrogate escape",
            )
    return value


# --------------------------------------------------------------------------------------------
# Server-Sent Events
# --------------------------------------------------------------------------------------------

#: Default cap on one SSE event (raw bytes, including its terminating blank line).
MAX_SSE_EVENT = 16 * 1024 * 1024

_EOL = re.compile(rb"[\r\n]")
_UTF8_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A


@dataclass(slots=True)
class SseEvent:
    """One SSE event as split by :class:`SseParser`.

    ``raw`` holds the exact bytes, terminating blank line included, so the event can be forwarded
    unchanged. ``data`` is the ``data:`` lines joined with ``"\\n"``; ``event`` defaults to
    ``"message"``; ``id`` is this event's own ``id:`` field (``None`` if it has none).
    ``has_data`` tells whether a client would dispatch it: comment-only and empty blocks
    (keep-alives, stray blank lines) have ``has_data == False``.
    """

    raw: bytes
    data: str
    event: str
    id: str | None
    has_data: bool = False


class SseParser:
    """Incremental ``text/event-stream`` splitter (WHATWG HTML, "Parsing an event stream").

    :meth:`feed` accepts arbitrary chunks and returns the complete events, in order. Lines may
    end in CRLF, LF or CR, mixed freely; an event ends at the first empty line. Every input byte
    ends up in exactly one event's ``raw`` or in :meth:`flush`, so forwarding the raws and the
    flushed tail reproduces the stream byte for byte, whatever the chunking. Because a CR may be
    the first half of a CRLF, a trailing CR is held until the next byte arrives.

    Raises :class:`BodyError` (``sse_invalid``) when one event exceeds ``max_event`` bytes, and
    (``invalid_utf8``) on a line that is not UTF-8. After an error the parser stays failed.
    """

    __slots__ = (
        "_bom_checked",
        "_buf",
        "_data",
        "_error",
        "_event",
        "_has_data",
        "_id",
        "_line",
        "_pos",
        "_start",
        "max_event",
    )

    def __init__(self, max_event: int = MAX_SSE_EVENT) -> None:
        if max_event < 1:
            raise ValueError("max_event must be >= 1")
        self.max_event = max_event
        self._buf = bytearray()
        self._start = 0  # start of the current event in _buf
        self._line = 0  # start of the current line in _buf
        self._pos = 0  # where to resume scanning for a line terminator
        self._bom_checked = False
        self._error: BodyError | None = None
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._has_data = False

    @property
    def pending(self) -> int:
        """Number of buffered bytes not yet returned as part of an event."""
        return len(self._buf) - self._start

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Buffer ``chunk`` and return every event it completes."""
        if self._error is not None:
            raise self._error
        if not chunk:
            return []
        buf = self._buf
        buf += chunk
        if not self._bom_checked:
            # The stream decoder strips one leading BOM; keep it in raw, skip it for parsing.
            if len(buf) < len(_UTF8_BOM) and _UTF8_BOM.startswith(buf):
                return []
            self._bom_checked = True
            if buf.startswith(_UTF8_BOM):
                self._line = self._pos = len(_UTF8_BOM)
        events: list[SseEvent] = []
        try:
            self._scan(events)
        except BodyError as exc:
            self._error = exc
            raise
        if self._start:
            del buf[: self._start]
            self._line -= self._start
            self._pos -= self._start
            self._start = 0
        return events

    def flush(self) -> bytes:
        """Return (and forget) the bytes of the incomplete trailing event, if any."""
        rest = bytes(self._buf[self._start :])
        self._buf.clear()
        self._start = self._line = self._pos = 0
        self._reset_fields()
        return rest

    def _scan(self, events: list[SseEvent]) -> None:
        buf = self._buf
        size = len(buf)
        search = _EOL.search
        while True:
            m = search(buf, self._pos)
            if m is None:
                self._pos = size
                break
            i = m.start()
            if buf[i] == _CR:
                if i + 1 == size:  # CR or CRLF? decided by the next byte
                    self._pos = i
                    break
                end = i + 2 if buf[i + 1] == _LF else i + 1
            else:
                end = i + 1
            if end - self._start > self.max_event:
                raise self._too_big()
            if i == self._line:  # empty line: the event is complete
                events.append(self._dispatch(bytes(buf[self._start : end])))
                self._start = end
            else:
                self._field(buf[self._line : i])
            self._line = self._pos = end
        if size - self._start > self.max_event:
            raise self._too_big()

    def _too_big(self) -> BodyError:
        return BodyError("sse_invalid", f"SSE event exceeds the limit of {self.max_event} bytes")

    def _field(self, line: bytearray) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BodyError(
                "invalid_utf8", f"SSE line is not valid UTF-8 at byte {exc.start}: {exc.reason}"
            ) from None
        if text.startswith(":"):
            return  # comment
        name, colon, value = text.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:  # an id containing NUL is ignored
            self._id = value
        # "retry" and unknown fields do not affect the event.

    def _dispatch(self, raw: bytes) -> SseEvent:
        event = SseEvent(
            raw=raw,
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._id,
            has_data=self._has_data,
        )
        self._reset_fields()
        return event

    def _reset_fields(self) -> None:
        self._data = []
        self._event = ""
        self._id = None
        self._has_data = False


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_encode(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """Serialise one SSE event: optional ``event:``/``id:`` lines, one ``data:`` line per line of
    ``data`` (CRLF, CR and LF all split), terminated by a blank line (``"\\n\\n"``)."""
    lines: list[str] = []
    if event is not None:
        if _LINE_BREAK.search(event):
            raise BodyError("sse_invalid", "SSE event name must not contain a line break")
        lines.append(f"event: {event}")
    if id is not None:
        if _LINE_BREAK.search(id) or "\x00" in id:
            raise BodyError("sse_invalid", "SSE id must not contain a line break or NUL")
        lines.append(f"id: {id}")
    lines.extend(f"data: {part}" for part in _LINE_BREAK.split(data))
    text = "\n".join(lines) + "\n\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BodyError(
            "invalid_utf8", f"SSE event contains an unencodable character at index {exc.start}"
        ) from None
