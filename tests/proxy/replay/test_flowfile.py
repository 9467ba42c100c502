"""mitmproxy flow files: read one flow at a time, damage reported with the flow and byte
offset, everything before it (and after a bad flow whose frame is intact) still read."""

from __future__ import annotations

import io as stdio
import tracemalloc
from pathlib import Path

import pytest
from mitmproxy import http, io
from mitmproxy.test import tflow, tutils

from proxy.replay.capture import CapturedFlow, CaptureError, CaptureNote, read_capture


def flow(i: int, *, body: bytes = b"", host: str = "127.0.0.1") -> http.HTTPFlow:
    req = tutils.treq(method=b"POST", host=host, port=8000, path=f"/api/{i}".encode(),
                      headers=http.Headers(content_type="application/json"), content=body,
                      timestamp_start=1_700_000_000 + i)
    f = tflow.tflow(req=req, resp=tutils.tresp(content=b'{"ok": true}'))
    f.metadata["fiveplane"] = {"decision_id": f"d{i}", "verdict": "allow", "rule_ids": ["r"]}
    return f


def write(path: Path, flows: list[http.HTTPFlow]) -> bytes:
    buf = stdio.BytesIO()
    writer = io.FlowWriter(buf)
    for f in flows:
        writer.add(f)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_flows_become_captured_flows(tmp_path: Path) -> None:
    path = tmp_path / "c.flows"
    connect = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="example.com", port=443,
                                          path=b"", content=b""))
    tcp = tflow.ttcpflow()
    dns = tflow.tdnsflow()
    write(path, [flow(1, body=b'{"a": 1}'), connect, tcp])  # type: ignore[list-item]
    with path.open("ab") as fo:
        io.FlowWriter(fo).add(dns)
    one, two, three, four = read_capture(path)
    assert isinstance(one, CapturedFlow)
    assert (one.index, one.kind, one.method, one.host, one.port, one.path, one.body) == (
        1, "http", "POST", "127.0.0.1", 8000, "/api/1", b'{"a": 1}')
    assert ("content-type", "application/json") in one.headers
    assert one.recorded == {"decision_id": "d1", "verdict": "allow", "rule_ids": ["r"]}
    assert one.response is not None and one.response.body == b'{"ok": true}'
    assert one.time == 1_700_000_001
    assert isinstance(two, CapturedFlow) and two.kind == "connect" and two.url == "example.com:443"
    assert isinstance(three, CapturedFlow) and three.kind == "tcp"
    assert isinstance(four, CaptureNote) and not four.error and "not governed" in four.message


def test_truncated_file_reports_the_tail_and_keeps_the_flows_before(tmp_path: Path) -> None:
    path = tmp_path / "t.flows"
    data = write(path, [flow(i) for i in range(5)])
    path.write_bytes(data[:-100])
    got = list(read_capture(path))
    assert [g.index for g in got if isinstance(g, CapturedFlow)] == [1, 2, 3, 4]
    note = got[-1]
    assert isinstance(note, CaptureNote) and note.error and note.index == 5
    assert note.where.startswith("flow 5 at byte ")
    offset = int(note.where.rsplit(" ", 1)[1])
    assert data[offset:offset + 1].isdigit() and offset == len(write(
        tmp_path / "four.flows", [flow(i) for i in range(4)]))
    assert "truncated" in note.message and "the flows before it were read" in note.message


def test_a_bad_flow_with_an_intact_frame_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "b.flows"
    good = write(tmp_path / "g.flows", [flow(1)])
    bad = b"5:hello,"                      # a valid frame, but a string, not a flow
    worse = b"10:3:abc;2:xy}"             # a dictionary frame with a broken payload
    path.write_bytes(good + bad + worse + good)
    got = list(read_capture(path))
    assert [type(g).__name__ for g in got] == ["CapturedFlow", "CaptureNote", "CaptureNote",
                                               "CapturedFlow"]
    assert "skipped" in got[1].message and got[3].index == 4  # type: ignore[union-attr]


def test_garbage_ends_the_read_with_a_clear_note(tmp_path: Path) -> None:
    path = tmp_path / "g.flows"
    path.write_bytes(write(tmp_path / "x.flows", [flow(1)]) + b"GARBAGE")
    one, note = read_capture(path)
    assert isinstance(one, CapturedFlow)
    assert isinstance(note, CaptureNote) and "not a flow file frame" in note.message
    text = tmp_path / "t.txt"
    text.write_text("hello")
    with pytest.raises(CaptureError, match="not a mitmproxy flow file or a HAR file"):
        read_capture(text)
    with pytest.raises(CaptureError, match="cannot read capture"):
        read_capture(tmp_path / "missing.flows")
    (tmp_path / "empty.flows").write_bytes(b"")
    assert list(read_capture(tmp_path / "empty.flows")) == []


def test_two_thousand_flows_stream_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "many.flows"
    with path.open("wb") as fo:
        writer = io.FlowWriter(fo)
        for i in range(2000):
            writer.add(flow(i, body=b'{"pad": "' + b"p" * 4000 + b'"}'))
    size = path.stat().st_size
    tracemalloc.start()
    count = sum(1 for item in read_capture(path) if isinstance(item, CapturedFlow))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 2000
    assert peak < size / 10, (peak, size)


def test_the_fast_path_reads_what_mitmproxy_reads(tmp_path: Path) -> None:
    """Members are parsed one by one for current-format flows; the result equals what
    mitmproxy's own reader gives, and an older format goes through mitmproxy's migration."""
    flows = [flow(1, body=b'{"x": "\xc3\xa9"}', host="xn--bcher-kva.example"),
             tflow.tflow(resp=True, err=True), tflow.tflow(err=True)]
    path = tmp_path / "f.flows"
    write(path, flows)
    ours = [f for f in read_capture(path) if isinstance(f, CapturedFlow)]
    with path.open("rb") as fo:
        theirs = list(io.FlowReader(fo).stream())
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs, strict=True):
        assert isinstance(b, http.HTTPFlow)
        assert (a.method, a.scheme, a.host, a.port, a.path, a.body) == (
            b.request.method, b.request.scheme, b.request.host, b.request.port,
            b.request.path, b.request.raw_content or b"")
        assert a.headers == tuple((k.lower(), v) for k, v in b.request.headers.items(True))
        assert (a.response is None) == (b.response is None)
        if a.response is not None and b.response is not None:
            assert (a.response.status, a.response.body) == (b.response.status_code,
                                                           b.response.raw_content or b"")
    old = tmp_path / "old.flows"
    state = flows[0].get_state()
    state["version"] = 20  # the previous format: read through mitmproxy's migration
    from mitmproxy.io import tnetstring

    old.write_bytes(tnetstring.dumps(state))
    (migrated,) = read_capture(old)
    assert isinstance(migrated, CapturedFlow) and migrated.path == "/api/1"
