"""The streaming HAR 1.2 reader: what it keeps, what it names as missing, what it
survives, and that memory does not grow with the file."""

from __future__ import annotations

import base64
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from proxy.replay import har
from proxy.replay.capture import CapturedFlow, CaptureNote, read_capture
from proxy.replay.har import HarWriter, har_entry, read_har

STARTED = "2025-03-01T10:00:00.000Z"


def entry(url: str = "https://api.example.com/v1/items?page=2", method: str = "GET",
          **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "startedDateTime": STARTED, "time": 250,
        "request": {"method": method, "url": url, "httpVersion": "HTTP/2",
                    "headers": [{"name": ":authority", "value": "api.example.com"},
                                {"name": "Accept", "value": "application/json"}],
                    "cookies": [], "queryString": [], "headersSize": -1, "bodySize": 0},
        "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/2",
                     "headers": [{"name": "Content-Type", "value": "application/json"}],
                     "cookies": [], "content": {"size": 2, "mimeType": "application/json",
                                                "text": "{}"},
                     "redirectURL": "", "headersSize": -1, "bodySize": 2},
        "cache": {}, "timings": {"send": 0, "wait": 250, "receive": 0},
    }
    e.update(extra)
    return e


def write(tmp_path: Path, entries: list[Any], name: str = "c.har") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"log": {"version": "1.2",
                                        "creator": {"name": "t", "version": "1"},
                                        "entries": entries}}, indent=2))
    return path


def items(path: Path) -> list[CapturedFlow | CaptureNote]:
    return list(read_capture(path))


def test_an_entry_becomes_the_request_the_proxy_would_see(tmp_path: Path) -> None:
    post = entry("http://tickets.example.com:8080/api", "POST")
    post["request"]["headers"] += [{"name": "Content-Type", "value": "application/json"},
                                   {"name": "Content-Encoding", "value": "gzip"}]
    post["request"]["postData"] = {"mimeType": "application/json", "text": '{"a": 1}'}
    post["serverIPAddress"] = "[2001:db8::1]"
    (get, flow), = [items(write(tmp_path, [entry(), post]))]
    assert isinstance(get, CapturedFlow) and isinstance(flow, CapturedFlow)
    assert (get.index, get.kind, get.method, get.scheme, get.host, get.port, get.path) == (
        1, "http", "GET", "https", "api.example.com", 443, "/v1/items?page=2")
    assert get.headers == (("accept", "application/json"),)  # pseudo-header dropped
    assert get.time == pytest.approx(1740823200.0) and get.end == pytest.approx(get.time + 0.25)
    assert get.response is not None and get.response.body == b"{}"
    assert (flow.scheme, flow.port, flow.body) == ("http", 8080, b'{"a": 1}')
    assert ("content-encoding", "gzip") not in flow.headers  # HAR bodies are decoded
    assert "Content-Encoding dropped" in flow.notes[0]
    assert flow.addresses == ("2001:db8::1",)
    assert get.upstream_response() is get.response


def test_bodies_base64_params_and_proxy_replies(tmp_path: Path) -> None:
    b64 = entry(method="POST")
    b64["request"]["postData"] = {"mimeType": "application/octet-stream",
                                  "text": base64.b64encode(b"\x00\xff").decode(),
                                  "encoding": "base64"}
    b64["response"]["content"] = {"size": 3, "mimeType": "text/event-stream",
                                  "text": base64.b64encode(b"d:1").decode(),
                                  "encoding": "base64"}
    b64["response"]["headers"] = [{"name": "Content-Encoding", "value": "br"}]
    form = entry(method="POST")
    form["request"]["postData"] = {"mimeType": "application/x-www-form-urlencoded",
                                   "params": [{"name": "q", "value": "a b"},
                                              {"name": "n", "value": "1"}]}
    denied = entry()
    denied["response"]["status"] = 403
    denied["response"]["headers"].append({"name": "X-Fiveplane-Decision", "value": "abc"})
    one, two, three = items(write(tmp_path, [b64, form, denied]))
    assert isinstance(one, CapturedFlow) and one.body == b"\x00\xff"
    assert one.response is not None and one.response.body == b"d:1"
    assert one.response.headers == (("content-type", "text/event-stream"),)  # from mimeType
    assert isinstance(two, CapturedFlow) and two.body == b"q=a+b&n=1"
    assert isinstance(three, CapturedFlow) and three.upstream_response() is None


def test_missing_fields_are_named_per_entry_and_the_rest_still_replays(tmp_path: Path) -> None:
    no_request = entry()
    del no_request["request"]
    no_method = entry()
    del no_method["request"]["method"]
    relative = entry(url="/relative/path")
    no_headers = entry()
    del no_headers["request"]["headers"]
    bad_header = entry()
    bad_header["request"]["headers"].append({"name": "X-Broken"})
    no_time = entry()
    del no_time["startedDateTime"]
    bad_time = entry(startedDateTime="yesterday")
    bad_b64 = entry(method="POST")
    bad_b64["request"]["postData"] = {"text": "***", "encoding": "base64"}
    numeric_method = entry()
    numeric_method["request"]["method"] = 7
    bad = [no_request, no_method, relative, no_headers, bad_header, no_time, bad_time, bad_b64,
           numeric_method, "not an object"]
    got = items(write(tmp_path, [entry(), *bad, entry(url="https://last.example.com/")]))
    flows = [g for g in got if isinstance(g, CapturedFlow)]
    notes = [g for g in got if isinstance(g, CaptureNote)]
    assert [f.index for f in flows] == [1, 12]
    assert flows[1].host == "last.example.com"
    assert [n.index for n in notes] == list(range(2, 12))
    assert all(n.error and n.message.endswith("entry skipped") for n in notes)
    messages = [n.message for n in notes]
    assert "missing `request`" in messages[0]
    assert "missing `request.method`" in messages[1]
    assert "not an absolute http(s) URL" in messages[2]
    assert "missing `request.headers`" in messages[3]
    assert "missing `request.headers[2].value`" in messages[4]
    assert "missing `startedDateTime`" in messages[5]
    assert "not an ISO 8601 date" in messages[6]
    assert "not valid base64" in messages[7]
    assert "`request.method` must be str, not int" in messages[8]
    assert "must be an object" in messages[9]
    assert notes[0].where.startswith("entry 2 (line ")


def test_response_problems_leave_the_request_replayable(tmp_path: Path) -> None:
    no_response = entry()
    del no_response["response"]
    failed = entry()
    failed["response"]["status"] = 0
    no_content = entry()
    del no_content["response"]["content"]
    no_text = entry()
    del no_text["response"]["content"]["text"]
    got = items(write(tmp_path, [no_response, failed, no_content, no_text]))
    assert all(isinstance(g, CapturedFlow) for g in got)
    assert [g.response is None for g in got] == [True, True, True, False]  # type: ignore[union-attr]
    notes = [g.notes for g in got]  # type: ignore[union-attr]
    assert "no `response`" in notes[0][0]
    assert "status 0" in notes[1][0]
    assert "missing `response.content`" in notes[2][0]
    assert "no `content.text`" in notes[3][0]


def test_keys_in_any_order_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "odd.har"
    doc = ('\ufeff{"meta": [1, {"x": "}"}], "log": {"entries": [' + json.dumps(entry())
           + '], "creator": {"name": "t"}, "version": "1.2"}, "tail": 3.5e10}')
    path.write_text(doc, encoding="utf-8")
    got = items(path)
    assert len(got) == 1 and isinstance(got[0], CapturedFlow)
    empty = tmp_path / "empty.har"
    empty.write_text('{"log": {"version": "1.2", "entries": []}}')
    assert items(empty) == []


def test_broken_documents(tmp_path: Path) -> None:
    good = json.dumps(entry())
    cut = tmp_path / "cut.har"
    cut.write_text('{"log": {"entries": [' + good + ", " + good[:40])
    got = items(cut)
    assert isinstance(got[0], CapturedFlow)
    assert isinstance(got[1], CaptureNote) and "unreadable HAR" in got[1].message
    assert len(got) == 2
    nolog = tmp_path / "nolog.har"
    nolog.write_text('{"version": "1.2"}')
    (note,) = items(nolog)
    assert isinstance(note, CaptureNote) and "no `log.entries`" in note.message
    latin = tmp_path / "latin.har"
    latin.write_bytes(b'{"log": {"entries": [{"x": "\xe9"}]}}')
    (note,) = items(latin)
    assert isinstance(note, CaptureNote) and "not UTF-8" in note.message


def test_chunk_boundaries_do_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [entry(url=f"https://h{i}.example.com/{'p' * i}", time=12345.678 + i)
               for i in range(30)]
    path = write(tmp_path, entries)
    whole = items(path)
    for chunk in (1, 2, 7, 64):
        monkeypatch.setattr(har, "CHUNK", chunk)
        assert items(path) == whole


def test_a_large_entry_reads_in_linear_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            ) -> None:
    big = entry(method="POST")
    big["request"]["postData"] = {"text": "x" * 4_000_000}
    monkeypatch.setattr(har, "CHUNK", 4096)
    start = time.perf_counter()
    (flow,) = items(write(tmp_path, [big]))
    assert isinstance(flow, CapturedFlow) and len(flow.body) == 4_000_000
    assert time.perf_counter() - start < 5  # quadratic rescanning would take minutes


def test_writer_round_trip_and_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "w.har"
    n = 2000
    with path.open("w") as fo:
        writer = HarWriter(fo)
        for i in range(n):
            writer.add(har_entry(
                started=1_700_000_000 + i, method="POST", url=f"https://h.example.com/{i}",
                headers=[("Content-Type", "application/json")],
                body=json.dumps({"i": i, "pad": "p" * 2000}).encode(), status=200,
                response_headers=[("Content-Type", "application/json")],
                response_body=b'{"ok": true}', mime_type="application/json", time_ms=3))
        writer.close()
    assert json.loads(path.read_text())["log"]["version"] == "1.2"
    size = path.stat().st_size
    tracemalloc.start()
    count = 0
    for item in read_har(path):
        assert isinstance(item, CapturedFlow)
        count += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    assert peak < size / 10, (peak, size)  # streamed: a few entries, never the whole file
