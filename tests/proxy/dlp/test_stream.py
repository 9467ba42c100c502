"""Stream scanning: split secrets at every offset, cuts, memory bounds, bad input."""

from __future__ import annotations

import itertools
import json
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.codec import BodyError, SseParser
from proxy.dlp import StreamScanner, annotate, apply_findings, compile_detectors

SC = compile_detectors(["secrets", "pii"])
REDACT_ALL = {d: "redact" for d in SC.detectors}
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ASSIGN = f"aws_secret_access_key = {AWS_SECRET}"


def _event(i: int, text: str) -> bytes:
    msg = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": text}]}}
    return f"event: message\nid: {i}\ndata: {json.dumps(msg)}\n\n".encode()


SSE = _event(1, "first") + _event(2, f"here: {ASSIGN} ok") + _event(3, "third")
SECRET_AT = SSE.index(AWS_SECRET.encode())


def _run(ss: StreamScanner, pieces: list[bytes]) -> tuple[bytes, object]:
    out: list[bytes] = []
    cut = None
    for p in pieces:
        res = ss.feed(p)
        assert b"" not in res.emit
        out += res.emit
        cut = cut or res.cut
    res = ss.finish()
    assert b"" not in res.emit
    out += res.emit
    return b"".join(out), cut or res.cut


def _sse(actions: dict[str, str] = REDACT_ALL) -> StreamScanner:
    return StreamScanner(SC, actions, sse=True)


SSE_ONE_PIECE, _ = _run(_sse(), [SSE])


def test_sse_one_piece_output() -> None:
    assert AWS_SECRET.encode() not in SSE_ONE_PIECE
    events = SseParser().feed(SSE_ONE_PIECE)
    assert [e.id for e in events] == ["1", "2", "3"]
    second = json.loads(events[1].data)
    assert second["id"] == 7
    assert (
        second["result"]["content"][0]["text"]
        == "here: aws_secret_access_key = [REDACTED:aws_secret_key] ok"
    )
    assert SSE_ONE_PIECE.startswith(_event(1, "first"))  # unchanged events: byte-exact
    assert SSE_ONE_PIECE.endswith(_event(3, "third"))


@pytest.mark.parametrize("offset", range(SECRET_AT - 1, SECRET_AT + len(AWS_SECRET) + 2))
def test_sse_secret_split_at_every_offset(offset: int) -> None:
    out, cut = _run(_sse(), [SSE[:offset], SSE[offset:]])
    assert cut is None
    assert out == SSE_ONE_PIECE


RAW = (("lorem ipsum dolor " * 1500) + f"config: {ASSIGN}\n" + ("tail text " * 1200)).encode()
RAW_AT = RAW.index(AWS_SECRET.encode())


def _raw_reference(body: bytes, actions: dict[str, str] = REDACT_ALL) -> bytes:
    text = body.decode("utf-8", "surrogateescape")
    out, _ = apply_findings(text, annotate(SC.scan(text), actions))
    return out.encode("utf-8", "surrogateescape")


RAW_ONE_PIECE = _raw_reference(RAW)


def test_raw_one_piece_output() -> None:
    assert AWS_SECRET.encode() not in RAW_ONE_PIECE
    assert b"aws_secret_access_key = [REDACTED:aws_secret_key]\n" in RAW_ONE_PIECE
    out, _ = _run(StreamScanner(SC, REDACT_ALL), [RAW])
    assert out == RAW_ONE_PIECE


@pytest.mark.parametrize("offset", range(RAW_AT - 1, RAW_AT + len(AWS_SECRET) + 2))
def test_raw_secret_split_at_every_offset(offset: int) -> None:
    out, cut = _run(StreamScanner(SC, REDACT_ALL), [RAW[:offset], RAW[offset:]])
    assert cut is None
    assert out == RAW_ONE_PIECE


def test_every_offset_of_the_whole_event_and_keyword() -> None:
    # Beyond the secret itself: splits in the keyword, the JSON around it, the event framing.
    start = SSE.index(b"data:", SSE.index(b"id: 2"))
    for k in range(start, SSE.index(b"\n\n", SECRET_AT) + 3):
        assert _run(_sse(), [SSE[:k], SSE[k:]])[0] == SSE_ONE_PIECE, k
    for k in range(RAW_AT - 40, RAW_AT + len(AWS_SECRET) + 5):
        assert _run(StreamScanner(SC, REDACT_ALL), [RAW[:k], RAW[k:]])[0] == RAW_ONE_PIECE, k


FILL = "filler words here " * 300  # 5.4 KB: findings land in different rounds
MIXED = (
    "start AKIAIOSFODNN7EXAMPLE then "
    + FILL
    + "mail jane.doe@example.com, card 4111 1111 1111 1111, iban DE89 3704 0044 0532 0130 00 "
    + FILL
    + "-----BEGIN PRIVATE KEY-----\n"
    + "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n" * 120
    + "-----END PRIVATE KEY----- "
    + FILL
    + "password=Xk9#mQ2!vL token ghp_"
    + "a1B2c3D4e5" * 3
    + "abcdef "
    + "é€✓ " * 50
    + "ssn 123-45-6789 call (415) 555-2671 eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_ " * 3
    + FILL
    + "x" * 3000
    + " end"
).encode() + b"\xff\xfe"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, len(MIXED) - 1), max_size=12, unique=True))
def test_raw_any_chunking_equals_one_piece(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(MIXED)]
    pieces = [MIXED[a:b] for a, b in itertools.pairwise(bounds)]
    ss = StreamScanner(SC, REDACT_ALL)
    assert _run(ss, pieces)[0] == _raw_reference(MIXED)


def test_raw_tiny_chunks() -> None:
    assert len(MIXED) > 3 * SC.window
    assert _run(StreamScanner(SC, REDACT_ALL), [MIXED[i : i + 7] for i in range(0, len(MIXED), 7)])[
        0
    ] == _raw_reference(MIXED)


def test_raw_byte_by_byte_with_a_small_window() -> None:
    sc = compile_detectors(["pii", "secrets.aws_access_key_id", "secrets.generic"])
    actions = {d: "redact" for d in sc.detectors}
    out, _ = _run(StreamScanner(sc, actions), [MIXED[i : i + 1] for i in range(len(MIXED))])
    text = MIXED.decode("utf-8", "surrogateescape")
    ref, _ = apply_findings(text, annotate(sc.scan(text), actions))
    assert out == ref.encode("utf-8", "surrogateescape")


def test_raw_utf8_split_and_invalid_bytes_pass_through() -> None:
    body = "héllo wörld €".encode() + b"\xff\xc3" + b" AKIAIOSFODNN7EXAMPLE \xed\xa0\x80 fin"
    for k in range(1, len(body)):
        out, _ = _run(StreamScanner(SC, REDACT_ALL), [body[:k], body[k:]])
        assert out == body.replace(b"AKIAIOSFODNN7EXAMPLE", b"[REDACTED:aws_access_key_id]")


# --- cuts -------------------------------------------------------------------------------------


def test_sse_cut_on_third_event() -> None:
    stream = _event(1, "one") + _event(2, "two") + _event(3, f"leak {ASSIGN}") + _event(4, "four")
    actions = {**REDACT_ALL, "secrets.aws_secret_key": "deny"}
    ss = _sse(actions)
    out: list[bytes] = []
    cut = None
    for i in range(0, len(stream), 37):
        res = ss.feed(stream[i : i + 37])
        out += res.emit
        if res.cut is not None:
            cut = res.cut
            break
    assert cut is not None and cut.detector == "secrets.aws_secret_key" and cut.action == "deny"
    assert b"".join(out) == _event(1, "one") + _event(2, "two")
    assert AWS_SECRET not in repr(cut)
    assert ss.feed(b"more").emit == [] and ss.finish().emit == []


def test_raw_cut_emits_everything_before_the_finding() -> None:
    actions = {**REDACT_ALL, "secrets.aws_secret_key": "deny"}
    ss = StreamScanner(SC, actions)
    out, cut = _run(ss, [RAW[i : i + 1000] for i in range(0, len(RAW), 1000)])
    assert cut is not None and cut.detector == "secrets.aws_secret_key"
    assert out == RAW[:RAW_AT]
    assert ss.feed(b"x").emit == []


def test_sse_metadata_finding_cuts() -> None:
    stream = b": keepalive AKIAIOSFODNN7EXAMPLE\n\n" + _event(1, "ok")
    out, cut = _run(_sse(), [stream])
    assert out == b"" and cut is not None and cut.action == "deny"
    out, cut = _run(_sse(), [b": keepalive\n\n" + _event(1, "ok")])
    assert cut is None and out == b": keepalive\n\n" + _event(1, "ok")


def test_sse_non_json_data_is_redacted_as_text() -> None:
    stream = b"data: plain AKIAIOSFODNN7EXAMPLE text\n\n"
    out, _ = _run(_sse(), [stream])
    assert out == b"data: plain [REDACTED:aws_access_key_id] text\n\n"


def test_sse_deep_json_data_is_scanned_as_text() -> None:
    data = "[" * 5000 + '"AKIAIOSFODNN7EXAMPLE"' + "]" * 5000
    out, _ = _run(_sse(), [f"data: {data}\n\n".encode()])
    assert b"AKIAIOSFODNN7EXAMPLE" not in out and b"[REDACTED:aws_access_key_id]" in out


def test_sse_invalid_utf8_and_oversized_events_raise() -> None:
    with pytest.raises(BodyError) as info:
        _sse().feed(b"data: \xff\xfe\n\n")
    assert info.value.code == "invalid_utf8"
    with pytest.raises(BodyError) as info:
        StreamScanner(SC, REDACT_ALL, sse=True, max_event=64).feed(b"data: " + b"x" * 100)
    assert info.value.code == "sse_invalid"


def test_sse_unterminated_last_event_is_dropped() -> None:
    out, _ = _run(_sse(), [_event(1, "ok") + b"data: half"])
    assert out == _event(1, "ok")


def test_overlap_must_cover_the_window() -> None:
    with pytest.raises(ValueError, match="smaller than the scanner's window"):
        StreamScanner(SC, REDACT_ALL, overlap=100)
    small = compile_detectors(["pii.email"])
    assert StreamScanner(small, {}).overlap == small.window < 1024


def test_findings_and_counts_are_reported() -> None:
    ss = StreamScanner(SC, {"pii.email": "allow"})
    res = ss.feed(b"a@b.example.com " + b"x" * (SC.window + 10))
    assert [f.detector for f in res.findings] == ["pii.email"]
    assert res.emit == [b"a@b.example.com " + b"x" * 10]  # allow: passed as is
    assert ss.counts == {"pii.email": 1}


# --- memory -----------------------------------------------------------------------------------


def test_10mb_stream_keeps_memory_bounded() -> None:
    rng = random.Random(5)
    block = bytes(
        rng.choice(b'abcdefghij klmnopqrstuvwxyz0123456789.,:"{}') for _ in range(1 << 16)
    )
    needle = f" {ASSIGN} card 4111 1111 1111 1111 ".encode()
    ss = StreamScanner(SC, REDACT_ALL)
    tracemalloc.start()
    try:
        sent = out = 0
        for i in range(160):  # 160 x 64 KiB = 10 MiB
            chunk = block[:1000] + needle + block[1000 + len(needle) :] if i % 8 == 0 else block
            sent += len(chunk)
            out += sum(len(b) for b in ss.feed(chunk).emit)
            assert ss.held <= ss.overlap + len(chunk)
        out += sum(len(b) for b in ss.finish().emit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sent == 10 * 1024 * 1024
    assert ss.counts["secrets.aws_secret_key"] == 20
    assert peak < 3 * 1024 * 1024, peak
