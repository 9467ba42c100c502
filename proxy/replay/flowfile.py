"""mitmproxy flow files (``mitmdump -w``, fiveplane's recorder), read one flow at a time.

A flow file is a sequence of tnetstring frames (``<length>:<payload><type>``), one per
flow. Frames are read here so that a damaged file still yields everything before the
damage: a frame whose payload does not parse is reported and skipped (the next frame
starts right after it), and a truncated or garbled frame ends the read with a note
naming the flow and byte offset. Flows are read as state dictionaries, not flow
objects: only the members replay uses are parsed (connection state and certificates
are skipped), and flows from older mitmproxy versions are migrated by mitmproxy's own
``compat`` module (imported lazily: the rest of ``proxy`` does not need mitmproxy).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .capture import CapturedFlow, CaptureError, CaptureNote, Message

__all__ = ["read_flow_file"]

MAX_PREFIX = 12  # digits: mitmproxy refuses longer length prefixes too


def read_flow_file(path: str | Path) -> Iterator[CapturedFlow | CaptureNote]:
    try:
        fo = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    except OSError as e:
        raise CaptureError(f"cannot read capture {path}: {e.strerror or e}") from e
    return _read(fo)


def _read(fo: BinaryIO) -> Iterator[CapturedFlow | CaptureNote]:
    with fo:
        offset = 0
        index = 0
        while True:
            index += 1
            where = f"flow {index} at byte {offset}"
            frame = _frame(fo)
            if frame is None:
                return
            if isinstance(frame, str):
                yield CaptureNote(index, where, frame)
                return
            type_byte, payload, size = frame
            offset += size
            try:
                state = _state(type_byte, payload)
                item = _convert(index, where, state)
            except Exception as e:  # a bad flow never stops the replay of the others
                yield CaptureNote(index, where, f"unreadable flow, skipped: {e!r}")
                continue
            yield item


def _state(type_byte: int, payload: bytes) -> dict[str, Any]:
    """The flow's state dictionary in the current format. Flows written by this
    mitmproxy version are parsed member by member, skipping what replay never reads (the
    connection state, certificates included, is most of a flow); older ones are parsed
    whole and migrated by mitmproxy."""
    from mitmproxy.io import compat, tnetstring
    from mitmproxy.version import FLOW_FORMAT_VERSION

    if type_byte != ord("}"):
        raise ValueError(f"a flow is a dictionary, not a {chr(type_byte)!r} value")
    view = memoryview(payload)
    raw = _members(payload, 0, len(payload))

    def member(span: tuple[int, int, int]) -> Any:
        kind, start, stop = span
        return tnetstring.parse(kind, view[start:stop])

    version = member(raw["version"]) if "version" in raw else None
    if version != FLOW_FORMAT_VERSION:
        state = tnetstring.parse(type_byte, view)
        assert isinstance(state, dict)
        return compat.migrate_flow(state)
    kind = member(raw["type"]) if "type" in raw else None
    wanted = _WANTED_TCP if kind in ("tcp", "udp") else _WANTED
    state = {k: member(raw[k]) for k in wanted if k in raw}
    if "client_conn" not in state and "client_conn" in raw:
        _, start, stop = raw["client_conn"]
        conn = _members(payload, start, stop)  # its id only (certificates are skipped)
        state["client_conn"] = {"id": member(conn["id"])} if "id" in conn else {}
    return state


_WANTED = ("type", "metadata", "request", "response", "error")
_WANTED_TCP = ("type", "metadata", "client_conn", "server_conn")


def _members(data: bytes, start: int, stop: int) -> dict[str, tuple[int, int, int]]:
    """Top-level members of the tnetstring dictionary in ``data[start:stop]``: name →
    (type byte, value start, value stop); values are not parsed."""
    out: dict[str, tuple[int, int, int]] = {}
    i = start
    while i < stop:
        colon = data.find(b":", i, i + MAX_PREFIX + 1)
        if colon <= i:
            raise ValueError("not a tnetstring: missing or invalid length prefix")
        key_end = colon + 1 + int(data[i:colon])
        key = data[colon + 1:key_end].decode("utf-8", "surrogateescape")
        i = key_end + 1  # skip the key's type byte
        colon = data.find(b":", i, i + MAX_PREFIX + 1)
        if colon <= i:
            raise ValueError("not a tnetstring: missing or invalid length prefix")
        value_end = colon + 1 + int(data[i:colon])
        if value_end >= stop:
            raise ValueError("not a tnetstring: truncated value")
        out[key] = (data[value_end], colon + 1, value_end)
        i = value_end + 1
    return out


def _frame(fo: BinaryIO) -> tuple[int, bytes, int] | str | None:
    """(type byte, payload, bytes consumed), None at a clean end, or why it is broken."""
    first = fo.read(1)
    if first == b"":
        return None
    digits = b""
    c = first
    while c.isdigit():
        digits += c
        if len(digits) > MAX_PREFIX:
            return "not a flow file frame: absurdly long length prefix; the rest is unreadable"
        c = fo.read(1)
    if c != b":" or not digits:
        return (f"not a flow file frame (found {first + c!r} where a length prefix "
                "should start); the rest of the file is unreadable")
    length = int(digits)
    payload = fo.read(length)
    type_byte = fo.read(1)
    if len(payload) < length or not type_byte:
        got = len(payload)
        return (f"truncated: the file ends {got} bytes into a flow of {length} bytes; "
                "the flows before it were read")
    return type_byte[0], payload, len(digits) + 1 + length + 1


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return "" if value is None else str(value)


def _headers(fields: Any) -> tuple[tuple[str, str], ...]:
    return tuple((_text(k).lower(), _text(v)) for k, v in fields or ())


def _message(resp: dict[str, Any]) -> Message:
    return Message(int(resp["status_code"]), _headers(resp.get("headers")),
                   resp.get("content") or b"")


def _plain(value: Any) -> Any:
    """Metadata as stored: bytes keys/values from old writers become text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _upstream(data: Any) -> Message | None:
    if not isinstance(data, dict):
        return None
    headers = tuple((str(_plain(k)).lower(), str(_plain(v)))
                    for k, v in data.get("headers") or ())
    body = data.get("content") or b""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    return Message(int(data.get("status", 0)), headers, body, bool(data.get("truncated")))


def _convert(index: int, where: str, state: dict[str, Any]) -> CapturedFlow | CaptureNote:
    ftype = _text(state.get("type"))
    meta = state.get("metadata") or {}
    if ftype in ("tcp", "udp"):
        host, port = (state.get("server_conn") or {}).get("address") or ("", 0)
        start = float((state.get("client_conn") or {}).get("timestamp_start") or 0.0)
        return CapturedFlow(index, ftype, start, start, host=_text(host), port=int(port),
                            scheme=ftype)  # type: ignore[arg-type]
    if ftype != "http":
        return CaptureNote(index, where, f"{ftype or 'unknown'} flow: not governed by "
                           "fiveplane, skipped", error=False)
    req = state["request"]
    resp = state.get("response")
    error = state.get("error")
    gate = meta.get("fiveplane")
    raw_rec = meta.get("fiveplane_record")
    raw_rec = raw_rec if isinstance(raw_rec, dict) else {}
    rec = {k: _plain(v) for k, v in raw_rec.items() if k != "upstream"}
    start = float(req.get("timestamp_start") or 0.0)
    end = max(start, float((resp or {}).get("timestamp_end") or 0.0),
              float((error or {}).get("timestamp") or 0.0))
    method = _text(req.get("method")).upper()
    notes: list[str] = []
    captured = CapturedFlow(
        index=index,
        kind="connect" if method == "CONNECT" else "http",
        time=start,
        end=end,
        method=method,
        scheme=_text(req.get("scheme")),
        host=_text(req.get("host")),
        port=int(req.get("port") or 0),
        path=_text(req.get("path")),
        headers=_headers(req.get("headers")),
        body=req.get("content") or b"",
        addresses=tuple(str(a) for a in rec.get("addresses") or ()),
        principal=rec.get("principal") or (gate.get("principal") if isinstance(gate, dict)
                                            else None),
        conn=_text((state.get("client_conn") or {}).get("id")),
        response=_message(resp) if resp else None,
        upstream=_upstream(raw_rec.get("upstream")),
        answered_by_proxy=rec.get("answered_by_proxy"),
        recorded=_plain(gate) if isinstance(gate, dict) else None,
        notes=notes,
    )
    if rec.get("incomplete"):
        notes.append("the flow had not finished when the recording stopped")
    if rec.get("redacted"):
        notes.append("secrets were redacted in the recording: a decision on those values "
                     "may differ")
    if error and not resp:
        notes.append(f"no response: {_text(error.get('msg'))}")
    elif (captured.response is not None and not rec and not captured.response.body
          and "text/event-stream" in captured.response.header("content-type")):
        notes.append("streamed body not in the capture (record with fiveplane's recorder "
                     "or mitmproxy's store_streamed_bodies)")
    return captured
