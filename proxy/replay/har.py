"""HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/) read as a stream, and written.

A HAR file is one JSON document, but ``log.entries`` can hold a day of traffic: the
reader walks the document with a small incremental scanner and decodes one entry at a
time, so memory is bounded by the largest entry, not the file. Keys may come in any
order (``entries`` before ``creator`` is valid JSON).

Per entry, what replay needs is checked and every problem named:
``request.method``, ``request.url``, ``request.headers`` and ``startedDateTime`` are
required (an entry without them is reported and skipped; the rest still replays);
a missing or failed ``response`` only means there is no response to govern. HAR bodies
(``postData.text``, ``response.content.text``) are the *decoded* content, so a
``Content-Encoding`` header next to them is dropped. ``encoding: "base64"`` is honoured
on ``content`` (spec) and on ``postData`` (a common extension). HTTP/2 pseudo-headers
(``:authority``) are dropped, as mitmproxy does not show them either.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode, urlsplit

from ..netaddr import HostError, parse_ip
from .capture import CapturedFlow, CaptureError, CaptureNote, Message

__all__ = ["HarWriter", "har_entry", "read_har"]

CHUNK = 1 << 16
MAX_ENTRY = 1 << 30     # one entry larger than this is refused (the file is not read on)
_WS = " \t\r\n"
_DECODER = json.JSONDecoder()


class _Broken(ValueError):
    """The document's structure is broken at this point: nothing after it can be read."""


class _Scanner:
    """Just enough of a streaming JSON reader to walk to ``log.entries`` and decode its
    items one by one (each item is decoded with the stdlib decoder)."""

    def __init__(self, fo: IO[str]) -> None:
        self._fo = fo
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._lines = 0     # newlines in text already dropped from the buffer

    @property
    def line(self) -> int:
        return self._lines + self._buf.count("\n", 0, self._pos) + 1

    def _fill(self, want: int = CHUNK) -> bool:
        if self._eof:
            return False
        data = self._fo.read(max(want, CHUNK))
        if not data:
            self._eof = True
            return False
        if self._pos:
            self._lines += self._buf.count("\n", 0, self._pos)
            self._buf = self._buf[self._pos:]
            self._pos = 0
        self._buf += data
        return True

    def peek(self) -> str:
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in _WS:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if c == "" or c not in chars:
            found = "the end of the file" if c == "" else repr(c)
            raise _Broken(f"expected {' or '.join(repr(x) for x in chars)}, found {found}")
        self._pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as e:
                incomplete = (e.msg.startswith("Unterminated string")
                              or e.pos >= len(self._buf) - 1)
                if not incomplete or self._eof:
                    raise _Broken(f"invalid JSON: {e.msg}") from None
                if len(self._buf) - self._pos > MAX_ENTRY:
                    raise _Broken(f"a value larger than {MAX_ENTRY} characters") from None
                self._fill(len(self._buf) - self._pos)  # doubles: linear time for big values
                continue
            if end == len(self._buf) and not self._eof and self._fill():
                continue  # a number may go on in the next chunk: decode again
            self._pos = end
            return value


def read_har(path: str | Path) -> Iterator[CapturedFlow | CaptureNote]:
    try:
        fo = open(path, encoding="utf-8-sig", errors="strict", newline="")  # noqa: SIM115
    except OSError as e:
        raise CaptureError(f"cannot read capture {path}: {e.strerror or e}") from e
    return _read(fo)


def _read(fo: IO[str]) -> Iterator[CapturedFlow | CaptureNote]:
    with fo:
        scan = _Scanner(fo)
        found = False
        index = 0
        try:
            scan.expect("{")
            for key in _keys(scan):
                if key != "log":
                    scan.value()
                    continue
                scan.expect("{")
                for log_key in _keys(scan):
                    if log_key != "entries":
                        scan.value()
                        continue
                    found = True
                    scan.expect("[")
                    if scan.peek() == "]":
                        scan.expect("]")
                        continue
                    while True:
                        index += 1
                        line = scan.line
                        entry = scan.value()
                        yield entry_to_flow(index, f"entry {index} (line {line})", entry)
                        if scan.expect(",]") == "]":
                            break
        except _Broken as e:
            where = f"entry {index} (line {scan.line})" if index else f"line {scan.line}"
            yield CaptureNote(index, where, f"unreadable HAR: {e}; nothing after it can be "
                                             "read")
            return
        except UnicodeDecodeError as e:
            yield CaptureNote(index, f"entry {index}" if index else "file",
                              f"not UTF-8 text: {e.reason}; nothing after it can be read")
            return
        if not found:
            yield CaptureNote(0, "file", "no `log.entries` array: not a HAR file")


def _keys(scan: _Scanner) -> Iterator[str]:
    """The keys of an object whose `{` was consumed; the caller consumes each value."""
    if scan.peek() == "}":
        scan.expect("}")
        return
    while True:
        key = scan.value()
        if not isinstance(key, str):
            raise _Broken("an object key must be a string")
        scan.expect(":")
        yield key
        if scan.expect(",}") == "}":
            return


# --- one entry --------------------------------------------------------------------------


class _Missing(ValueError):
    pass


def _field(obj: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise _Missing(f"missing `{where}{name}`")
    value = obj[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _Missing(f"`{where}{name}` must be {names}, not {type(value).__name__}")
    return value


def _har_headers(items: list[Any], where: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        name = _field(item, "name", str, f"{where}[{i}].")
        value = _field(item, "value", str, f"{where}[{i}].")
        if not name.startswith(":"):
            out.append((name.lower(), value))
    return tuple(out)


def _without(headers: tuple[tuple[str, str], ...], name: str) -> tuple[tuple[str, str], ...]:
    return tuple(h for h in headers if h[0] != name)


def _text(obj: dict[str, Any], where: str) -> bytes:
    text = obj.get("text")
    if text is None:
        return b""
    if not isinstance(text, str):
        raise _Missing(f"`{where}text` must be a string")
    if obj.get("encoding") == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _Missing(f"`{where}text` is not valid base64: {e}") from None
    return text.encode("utf-8", "surrogatepass")


def _time(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise _Missing(f"`startedDateTime` {text!r} is not an ISO 8601 date") from None


def entry_to_flow(index: int, where: str, entry: Any) -> CapturedFlow | CaptureNote:
    try:
        return _entry(index, entry)
    except _Missing as e:
        return CaptureNote(index, where, f"{e}; entry skipped")


def _entry(index: int, entry: Any) -> CapturedFlow:
    if not isinstance(entry, dict):
        raise _Missing(f"an entry must be an object, not {type(entry).__name__}")
    req = _field(entry, "request", dict, "")
    method = _field(req, "method", str, "request.")
    url = _field(req, "url", str, "request.")
    headers = _har_headers(_field(req, "headers", list, "request."), "request.headers")
    start = _time(_field(entry, "startedDateTime", str, ""))
    if not method:
        raise _Missing("`request.method` is empty")
    connect = method.upper() == "CONNECT"
    parts = urlsplit(f"//{url}" if connect and "//" not in url else url)
    try:
        host, port = parts.hostname or "", parts.port
    except ValueError as e:
        raise _Missing(f"`request.url` {url!r}: {e}") from None
    scheme = parts.scheme.lower() or ("https" if port in (None, 443) else "http")
    if not host or scheme not in ("http", "https"):
        raise _Missing(f"`request.url` {url!r} is not an absolute http(s) URL")
    port = port or (443 if scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    notes: list[str] = []
    body = b""
    post = req.get("postData")
    if isinstance(post, dict):
        body = _text(post, "request.postData.")
        params = post.get("params")
        if not body and isinstance(params, list) and params:
            pairs = [(str(p.get("name", "")), str(p.get("value", "")))
                     for p in params if isinstance(p, dict)]
            body = urlencode(pairs).encode()
        if body and any(h[0] == "content-encoding" for h in headers):
            headers = _without(headers, "content-encoding")
            notes.append("request body in the HAR is decoded: Content-Encoding dropped")
    elif post is not None:
        raise _Missing("`request.postData` must be an object")
    elapsed = entry.get("time")
    end = start + (elapsed / 1000 if isinstance(elapsed, int | float) and elapsed > 0
                   and math.isfinite(elapsed) else 0.0)
    addresses: tuple[str, ...] = ()
    ip = entry.get("serverIPAddress")
    if isinstance(ip, str) and ip:
        try:
            literal = parse_ip(host)
            if literal is None and parse_ip(ip.strip("[]")) is not None:
                addresses = (ip.strip("[]"),)
        except HostError:
            pass
    conn = entry.get("connection")
    flow = CapturedFlow(
        index=index, kind="connect" if connect else "http",
        time=start, end=end, method=method, scheme=scheme, host=host, port=port, path=path,
        headers=headers, body=body, addresses=addresses, notes=notes,
        conn=conn if isinstance(conn, str) else "",
    )
    flow.response = _response(entry.get("response"), notes)
    return flow


def _response(resp: Any, notes: list[str]) -> Message | None:
    if resp is None:
        notes.append("no `response` in the entry: nothing to govern")
        return None
    try:
        status = _field(resp, "status", int, "response.")
        headers = _har_headers(_field(resp, "headers", list, "response."), "response.headers")
        content = _field(resp, "content", dict, "response.")
        body = _text(content, "response.content.")
    except _Missing as e:
        notes.append(f"{e}: the response is not governed")
        return None
    if status <= 0:
        notes.append("the request failed when it was captured (status 0): no response")
        return None
    if not any(h[0] == "content-type" for h in headers):
        mime = content.get("mimeType")
        if isinstance(mime, str) and mime:
            headers = (*headers, ("content-type", mime))
    if any(h[0] == "content-encoding" for h in headers):
        headers = _without(headers, "content-encoding")
    size = content.get("size")
    if not body and isinstance(size, int) and size > 0:
        notes.append("response body not in the HAR (no `content.text`)")
    return Message(status, headers, body)


# --- writing ----------------------------------------------------------------------------


def _pairs(headers: Any) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in headers]


def _content(body: bytes) -> dict[str, str]:
    try:
        return {"text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"text": base64.b64encode(body).decode(), "encoding": "base64"}


def har_entry(*, started: float, method: str, url: str, headers: Any = (), body: bytes = b"",
              status: int = 0, response_headers: Any = (), response_body: bytes = b"",
              mime_type: str = "", time_ms: float = 0.0, http_version: str = "HTTP/1.1",
              server_ip: str | None = None) -> dict[str, Any]:
    """One HAR 1.2 entry (bodies decoded, as the spec wants them)."""
    parts = urlsplit(url)
    request: dict[str, Any] = {
        "method": method, "url": url, "httpVersion": http_version, "cookies": [],
        "headers": _pairs(headers),
        "queryString": [{"name": k, "value": v} for k, _, v in
                        (p.partition("=") for p in parts.query.split("&") if p)],
        "headersSize": -1, "bodySize": len(body),
    }
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
    if body:
        request["postData"] = {"mimeType": ctype, **_content(body)}
    entry: dict[str, Any] = {
        "startedDateTime": datetime.fromtimestamp(started).astimezone().isoformat(),
        "time": time_ms,
        "request": request,
        "response": {
            "status": status, "statusText": "", "httpVersion": http_version, "cookies": [],
            "headers": _pairs(response_headers),
            "content": {"size": len(response_body), "mimeType": mime_type,
                        **_content(response_body)},
            "redirectURL": "", "headersSize": -1, "bodySize": len(response_body),
        },
        "cache": {},
        "timings": {"send": 0, "wait": time_ms, "receive": 0},
    }
    if server_ip:
        entry["serverIPAddress"] = server_ip
    return entry


class HarWriter:
    """Writes a HAR 1.2 document entry by entry (nothing is held in memory)."""

    def __init__(self, fo: IO[str], creator: str = "fiveplane", version: str = "1") -> None:
        self._fo = fo
        self._n = 0
        head = {"version": "1.2", "creator": {"name": creator, "version": version}}
        fo.write('{"log": ' + json.dumps(head)[:-1] + ', "entries": [\n')

    def add(self, entry: dict[str, Any]) -> None:
        self._fo.write((",\n" if self._n else "") + json.dumps(entry))
        self._n += 1

    def close(self) -> None:
        self._fo.write("\n]}}\n")
        self._fo.flush()
