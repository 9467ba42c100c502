"""Tests for proxy.codec: bounded Content-Encoding decoding, strict JSON and incremental SSE."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import struct
import tracemalloc
import zlib

import brotli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.codec import (
    MAX_CODINGS,
    BodyError,
    SseEvent,
    SseParser,
    decode_body,
    json_depth_ok,
    loads_strict,
    sse_encode,
)

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd  # type: ignore[import-not-found,no-redef]

PAYLOAD = b'{"tool": "search", "args": {"q": "caf\xc3\xa9"}}\n' * 500
LIMIT = 1 << 20


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": lambda data: brotli.compress(data, quality=5),
    "zstd": zstd.compress,
}


def assert_code(exc_info: pytest.ExceptionInfo[BodyError], code: str) -> None:
    assert exc_info.value.code == code, f"{exc_info.value.code}: {exc_info.value}"
    assert str(exc_info.value)  # always a human-readable message


# ------------------------------------------------------------------------------------------
# BodyError
# ------------------------------------------------------------------------------------------


def test_body_error_carries_code_and_message() -> None:
    err = BodyError("invalid_json", "bad things at line 1")
    assert isinstance(err, ValueError)
    assert err.code == "invalid_json"
    assert str(err) == "bad things at line 1"
    assert "invalid_json" in repr(err)


# ------------------------------------------------------------------------------------------
# decode_body: round trips
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_round_trip_each_coding(coding: str) -> None:
    assert decode_body(ENCODERS[coding](PAYLOAD), coding, limit=LIMIT) == PAYLOAD


def test_raw_deflate_is_accepted_like_browsers() -> None:
    assert decode_body(raw_deflate(PAYLOAD), "deflate", limit=LIMIT) == PAYLOAD


@pytest.mark.parametrize("header", [None, "", "identity", "IDENTITY", " identity , "])
def test_identity_and_empty_are_no_ops(header: str | None) -> None:
    assert decode_body(PAYLOAD, header, limit=LIMIT) == PAYLOAD


@pytest.mark.parametrize("header", ["GZIP", "Gzip", "gZiP", "X-GZip"])
def test_coding_names_are_case_insensitive(header: str) -> None:
    assert decode_body(gzip.compress(PAYLOAD), header, limit=LIMIT) == PAYLOAD


def test_stacked_gzip_then_br_is_decoded_in_reverse() -> None:
    body = brotli.compress(gzip.compress(PAYLOAD))
    assert decode_body(body, "gzip, br", limit=LIMIT) == PAYLOAD
    with pytest.raises(BodyError) as ei:  # wrong order must not silently "work"
        decode_body(body, "br, gzip", limit=LIMIT)
    assert_code(ei, "corrupt_encoding")


def test_stacked_three_codings_with_identity_and_empty_elements() -> None:
    body = zstd.compress(raw_deflate(gzip.compress(PAYLOAD)))
    header = "gzip ,identity,, deflate,\tzstd"
    assert decode_body(body, header, limit=LIMIT) == PAYLOAD


def test_empty_body_with_coding_is_empty() -> None:
    assert decode_body(b"", "gzip", limit=LIMIT) == b""


def test_output_exactly_at_limit_is_allowed() -> None:
    data = b"x" * 1000
    assert decode_body(gzip.compress(data), "gzip", limit=1000) == data
    with pytest.raises(BodyError) as ei:
        decode_body(gzip.compress(data), "gzip", limit=999)
    assert_code(ei, "decompression_bomb")


def test_large_incompressible_body_crosses_many_chunks() -> None:
    import random

    rnd = random.Random(1234)
    data = rnd.randbytes(700_000) + bytes(700_000)
    for coding, enc in ENCODERS.items():
        assert decode_body(enc(data), coding, limit=len(data)) == data, coding
    assert decode_body(raw_deflate(data), "deflate", limit=len(data)) == data


# ------------------------------------------------------------------------------------------
# decode_body: refusals
# ------------------------------------------------------------------------------------------


def test_body_too_large_before_decoding() -> None:
    with pytest.raises(BodyError) as ei:
        decode_body(b"x" * 101, None, limit=100)
    assert_code(ei, "body_too_large")
    with pytest.raises(BodyError) as ei:
        decode_body(gzip.compress(b"x" * 5000, compresslevel=0), "gzip", limit=100)
    assert_code(ei, "body_too_large")
    assert decode_body(b"x" * 100, None, limit=100) == b"x" * 100


@pytest.mark.parametrize(
    "header",
    [
        "compress",
        "x-compress",
        "gzip;q=1",
        "br, snappy",
        "gzip br",
        "gz\u0131p",  # dotless i: must not be case-folded into "gzip"
        ", ".join(["gzip"] * (MAX_CODINGS + 1)),
    ],
)
def test_unsupported_encoding(header: str) -> None:
    with pytest.raises(BodyError) as ei:
        decode_body(b"abc", header, limit=LIMIT)
    assert_code(ei, "unsupported_encoding")


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_decompression_bomb_each_coding(coding: str) -> None:
    body = ENCODERS[coding](bytes(4 << 20))
    with pytest.raises(BodyError) as ei:
        decode_body(body, coding, limit=64 * 1024)
    assert_code(ei, "decompression_bomb")


def test_decompression_bomb_in_inner_stacked_layer() -> None:
    body = brotli.compress(gzip.compress(bytes(4 << 20)))
    with pytest.raises(BodyError) as ei:
        decode_body(body, "gzip, br", limit=64 * 1024)
    assert_code(ei, "decompression_bomb")


def gzip_bomb(mib: int) -> bytes:
    """A valid gzip member inflating to ``mib`` MiB of zeros, built without compressing them all.

    After a full flush the deflate state is reset, so every 1 MiB chunk of zeros compresses to
    the very same bytes: compress one, repeat it, and write the gzip framing by hand.
    """
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    final_empty_block = b"\x03\x00"
    trailer = struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)
    return header + block * mib + final_empty_block + trailer


def test_gzip_bomb_builder_produces_valid_gzip() -> None:
    assert gzip.decompress(gzip_bomb(3)) == bytes(3 << 20)


def test_one_gigabyte_gzip_bomb_is_refused_within_memory_bound() -> None:
    bomb = gzip_bomb(1024)  # ~1 MB on the wire, 1 GiB inflated
    limit = 2 << 20
    assert len(bomb) < limit
    tracemalloc.start()
    try:
        with pytest.raises(BodyError) as ei:
            decode_body(bomb, "gzip", limit=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_code(ei, "decompression_bomb")
    assert peak < 4 * limit, peak


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_truncated_stream_is_corrupt(coding: str) -> None:
    body = ENCODERS[coding](PAYLOAD)
    with pytest.raises(BodyError) as ei:
        decode_body(body[: len(body) // 2], coding, limit=LIMIT)
    assert_code(ei, "corrupt_encoding")
    assert coding in str(ei.value)


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_garbage_is_corrupt(coding: str) -> None:
    with pytest.raises(BodyError) as ei:
        decode_body(b"this is not compressed at all, honest", coding, limit=LIMIT)
    assert_code(ei, "corrupt_encoding")


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_trailing_bytes_after_stream_are_corrupt(coding: str) -> None:
    with pytest.raises(BodyError) as ei:
        decode_body(ENCODERS[coding](PAYLOAD) + b"\x00", coding, limit=LIMIT)
    assert_code(ei, "corrupt_encoding")


def test_trailing_bytes_after_raw_deflate_are_corrupt() -> None:
    with pytest.raises(BodyError) as ei:
        decode_body(raw_deflate(PAYLOAD) + b"smuggled", "deflate", limit=LIMIT)
    assert_code(ei, "corrupt_encoding")


def test_multi_member_gzip_is_refused_as_ambiguous() -> None:
    body = gzip.compress(b'{"name": "safe"}') + gzip.compress(b'{"name": "delete_all"}')
    with pytest.raises(BodyError) as ei:
        decode_body(body, "gzip", limit=LIMIT)
    assert_code(ei, "corrupt_encoding")
    assert "gzip member" in str(ei.value)


def test_multi_frame_zstd_is_refused_as_ambiguous() -> None:
    body = zstd.compress(b"first") + zstd.compress(b"second")
    with pytest.raises(BodyError) as ei:
        decode_body(body, "zstd", limit=LIMIT)
    assert_code(ei, "corrupt_encoding")


def test_gzip_bad_crc_is_corrupt() -> None:
    body = bytearray(gzip.compress(PAYLOAD))
    body[-8] ^= 0xFF
    with pytest.raises(BodyError) as ei:
        decode_body(bytes(body), "gzip", limit=LIMIT)
    assert_code(ei, "corrupt_encoding")


def test_zstd_window_larger_than_8_mib_is_refused() -> None:
    # Streaming, so the frame does not shrink its window to the (unknown) content size.
    compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 25})
    body = compressor.compress(bytes(1000)) + compressor.flush()
    with pytest.raises(BodyError) as ei:
        decode_body(body, "zstd", limit=LIMIT)
    assert_code(ei, "corrupt_encoding")


# ------------------------------------------------------------------------------------------
# loads_strict
# ------------------------------------------------------------------------------------------


def test_loads_strict_plain_values() -> None:
    assert loads_strict('{"a": [1, 2.5, true, null, "x"]}') == {"a": [1, 2.5, True, None, "x"]}
    assert loads_strict(b' {"caf\xc3\xa9": "\xe2\x82\xac"} ') == {"café": "€"}
    assert loads_strict('"\\ud83d\\ude00"') == "\U0001f600"  # a proper surrogate pair


def test_duplicate_key_attack_is_refused() -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict('{"name":"safe","name":"delete_all"}')
    assert_code(ei, "duplicate_key")
    assert "'name'" in str(ei.value)


@pytest.mark.parametrize(
    "doc",
    [
        '{"params": {"arguments": {"path": "/tmp", "path": "/etc/passwd"}}}',
        '[{"ok": 1}, {"a": {"b": [{"cmd": "ls", "cmd": "rm -rf /"}]}}]',
        '{"name": "safe", "n\\u0061me": "delete_all"}',  # same key after unescaping
    ],
)
def test_nested_duplicate_key_is_refused(doc: str) -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict(doc)
    assert_code(ei, "duplicate_key")


def test_same_key_in_sibling_objects_is_fine() -> None:
    assert loads_strict('[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]


def test_ten_thousand_levels_are_refused_without_recursion_error() -> None:
    for doc in ("[" * 10_000 + "]" * 10_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
        with pytest.raises(BodyError) as ei:
            loads_strict(doc)
        assert_code(ei, "json_too_deep")
        assert not json_depth_ok(doc, 64)


def test_unclosed_deep_nesting_is_refused_as_too_deep() -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict(b"[" * 1_000_000)
    assert_code(ei, "json_too_deep")


def test_depth_limit_boundary() -> None:
    assert loads_strict("[" * 64 + "]" * 64) is not None
    with pytest.raises(BodyError) as ei:
        loads_strict("[" * 65 + "]" * 65)
    assert_code(ei, "json_too_deep")
    assert loads_strict("[[[]]]", max_depth=3) == [[[]]]
    with pytest.raises(BodyError):
        loads_strict("[[[]]]", max_depth=2)


def test_recursion_error_is_mapped_when_caller_raises_max_depth() -> None:
    doc = "[" * 200_000 + "]" * 200_000
    with pytest.raises(BodyError) as ei:
        loads_strict(doc, max_depth=1_000_000)
    assert_code(ei, "json_too_deep")


def test_depth_scan_ignores_brackets_in_strings() -> None:
    text = json.dumps({"s": "[[[[{{{{" * 100, "t": '\\"[[[[', "u": "\\\\"})
    assert json_depth_ok(text, 1)
    assert loads_strict(text, max_depth=1)["s"].startswith("[[[[")
    assert json_depth_ok('["x\\"[[[["]', 1)  # an escaped quote does not end the string
    assert json_depth_ok("", 0)
    assert json_depth_ok("1", 0)
    assert not json_depth_ok("[]", 0)


@pytest.mark.parametrize("data", [b"\xff", b'{"a": "\xc3"}', b'"\xed\xa0\x80"', b'"\xc0\xaf"'])
def test_invalid_utf8_is_refused(data: bytes) -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict(data)
    assert_code(ei, "invalid_utf8")


@pytest.mark.parametrize("data", [b'\xef\xbb\xbf{"a": 1}', '\ufeff{"a": 1}'])
def test_byte_order_mark_is_refused(data: bytes | str) -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict(data)
    assert_code(ei, "invalid_utf8")


def test_utf16_is_not_autodetected() -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict('{"a": 1}'.encode("utf-16-le"))
    assert ei.value.code in {"invalid_utf8", "invalid_json"}


@pytest.mark.parametrize("doc", ['"\\ud800"', '{"\\udfff": 1}', '["ok", "x\\ud83d"]'])
def test_unpaired_surrogate_escape_is_refused(doc: str) -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict(doc)
    assert_code(ei, "invalid_utf8")


def test_escaped_backslash_before_u_is_not_a_surrogate() -> None:
    assert loads_strict('"\\\\ud800"') == "\\ud800"


@pytest.mark.parametrize(
    "doc", ["NaN", "Infinity", "-Infinity", '{"x": NaN}', "[1, Infinity]", "1e999", "-1e999"]
)
def test_nonfinite_numbers_are_refused(doc: str) -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict(doc)
    assert_code(ei, "json_nonfinite")


def test_underflow_and_large_finite_numbers_are_fine() -> None:
    assert loads_strict("1e-999") == 0.0
    assert loads_strict("1.7976931348623157e308") == 1.7976931348623157e308


@pytest.mark.parametrize(
    "doc", ["", "   ", "{", '{"a" 1}', "[1,]", "{'a': 1}", '{"a": 1} {"b": 2}', "01", '"\x01"']
)
def test_invalid_json_reports_position(doc: str) -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict(doc)
    assert_code(ei, "invalid_json")
    assert "line 1 column" in str(ei.value)


def test_absurdly_long_integer_is_invalid_json() -> None:
    with pytest.raises(BodyError) as ei:
        loads_strict("9" * 10_000)
    assert_code(ei, "invalid_json")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, database=None)
@given(JSON_VALUES)
def test_hypothesis_json_round_trip(value: object) -> None:
    assert loads_strict(json.dumps(value), max_depth=1000) == value
    encoded = json.dumps(value, ensure_ascii=False).encode("utf-8")
    assert loads_strict(encoded, max_depth=1000) == value


# ------------------------------------------------------------------------------------------
# SseParser
# ------------------------------------------------------------------------------------------


def feed_all(parser: SseParser, chunks: list[bytes]) -> list[SseEvent]:
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def test_sse_basic_events_and_keepalive_comment() -> None:
    stream = b"event: delta\nid: 1\ndata: hello\ndata: world\n\n: keep-alive\n\ndata:{}\n\n"
    parser = SseParser()
    events = parser.feed(stream)
    assert [(e.data, e.event, e.id, e.has_data) for e in events] == [
        ("hello\nworld", "delta", "1", True),
        ("", "message", None, False),
        ("{}", "message", None, True),
    ]
    assert b"".join(e.raw for e in events) == stream
    assert parser.pending == 0
    assert parser.flush() == b""


def test_sse_partial_event_is_buffered_until_complete() -> None:
    parser = SseParser()
    assert parser.feed(b"data: par") == []
    assert parser.pending == 9
    assert parser.feed(b"tial\n") == []
    [event] = parser.feed(b"\ndata: next")
    assert event.data == "partial"
    assert event.raw == b"data: partial\n\n"
    assert parser.pending == len(b"data: next")
    assert parser.flush() == b"data: next"
    assert parser.pending == 0


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_sse_each_line_ending(eol: bytes) -> None:
    stream = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol + b"x"
    parser = SseParser()
    events = parser.feed(stream)
    assert [e.data for e in events] == ["a\nb", "c"]
    assert b"".join(e.raw for e in events) + parser.flush() == stream


def test_sse_mixed_line_endings() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r\n\n"
    parser = SseParser()
    events = parser.feed(stream)
    # "\r\r\n" is CR (end of line) + CRLF (blank line); the final "\n" is a stray blank line.
    assert [e.raw for e in events] == [
        b"data: a\r\ndata: b\rdata: c\n\r\n",
        b"data: d\r\r\n",
        b"\n",
    ]
    assert [e.data for e in events] == ["a\nb\nc", "d", ""]
    assert not events[2].has_data


def test_sse_trailing_cr_waits_for_next_byte() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r\n\r") == []  # the CR may be the start of a CRLF
    [event] = parser.feed(b"\n")
    assert event.raw == b"data: a\r\n\r\n"
    assert parser.feed(b"data: b\r\r") == []
    [event] = parser.feed(b"data: c")
    assert event.raw == b"data: b\r\r"
    assert parser.flush() == b"data: c"


def test_sse_field_parsing_rules() -> None:
    stream = (
        b"data\n"  # field with no colon: empty value
        b"data:no-space\n"
        b"data:  two-spaces\n"
        b"event:\n"  # empty event type means "message"
        b"id: a\x00b\n"  # ids containing NUL are ignored
        b"retry: 100\n"
        b"unknown: x\n"
        b": comment\n"
        b"\n"
    )
    [event] = SseParser().feed(stream)
    assert event.data == "\nno-space\n two-spaces"
    assert event.event == "message"
    assert event.id is None
    assert event.has_data


def test_sse_empty_data_field_dispatches() -> None:
    [event] = SseParser().feed(b"data:\n\n")
    assert event.data == ""
    assert event.has_data


def test_sse_empty_id_is_kept() -> None:
    [event] = SseParser().feed(b"id:\ndata: x\n\n")
    assert event.id == ""


def test_sse_leading_bom_is_skipped_for_parsing_but_kept_in_raw() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\ndata: y\n\n"
    events = feed_all(SseParser(), [bytes([b]) for b in stream])
    assert [e.data for e in events] == ["x", "y"]
    assert events[0].raw.startswith(b"\xef\xbb\xbf")
    assert b"".join(e.raw for e in events) == stream
    # Only at the very start of the stream.
    [event] = SseParser().feed(b"data: x\n\n\xef\xbb\xbfdata: y\n\n")[1:]
    assert not event.has_data


def test_sse_never_returns_empty_raw_and_blank_lines_are_kept() -> None:
    stream = b"\n\r\n\rdata: x\n\n\n"
    parser = SseParser()
    events = parser.feed(stream) + parser.feed(b"\n")
    assert all(e.raw for e in events)
    assert b"".join(e.raw for e in events) == stream + b"\n"
    assert [e.data for e in events if e.has_data] == ["x"]


def test_sse_invalid_utf8_is_refused() -> None:
    parser = SseParser()
    with pytest.raises(BodyError) as ei:
        parser.feed(b"data: \xff\xfe\n\n")
    assert_code(ei, "invalid_utf8")


def test_sse_oversized_event_in_one_chunk() -> None:
    parser = SseParser(max_event=100)
    assert parser.feed(b"data: " + b"x" * 92 + b"\n\n")  # exactly 100 bytes is fine
    with pytest.raises(BodyError) as ei:
        parser.feed(b"data: " + b"x" * 93 + b"\n\n")
    assert_code(ei, "sse_invalid")


def test_sse_oversized_partial_event_is_refused_early_and_error_is_sticky() -> None:
    parser = SseParser(max_event=1000)
    parser.feed(b"data: " + b"x" * 900)
    with pytest.raises(BodyError) as ei:
        parser.feed(b"y" * 200)  # no terminator yet, but already too big
    assert_code(ei, "sse_invalid")
    with pytest.raises(BodyError):
        parser.feed(b"\n\n")


def test_sse_many_short_lines_in_a_big_event_are_counted() -> None:
    parser = SseParser(max_event=1000)
    with pytest.raises(BodyError) as ei:
        for _ in range(200):
            parser.feed(b"data: x\n")
    assert_code(ei, "sse_invalid")


def test_sse_default_max_event_is_16_mib() -> None:
    assert SseParser().max_event == 16 * 1024 * 1024


def test_sse_buffer_is_compacted() -> None:
    parser = SseParser()
    for i in range(1000):
        assert len(parser.feed(f"data: {i}\n\n".encode())) == 1
        assert parser.pending == 0


def test_sse_encode() -> None:
    assert sse_encode("hi") == b"data: hi\n\n"
    assert sse_encode("a\nb\r\nc\rd", event="delta", id="7") == (
        b"event: delta\nid: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert sse_encode("") == b"data: \n\n"
    assert sse_encode(" lead", event="") == b"event: \ndata:  lead\n\n"
    [event] = SseParser().feed(sse_encode(" lead"))
    assert event.data == " lead"


@pytest.mark.parametrize(
    "kwargs", [{"event": "a\nb"}, {"id": "1\r2"}, {"id": "x\x00"}, {"event": "\r"}]
)
def test_sse_encode_refuses_line_breaks_in_fields(kwargs: dict[str, str]) -> None:
    with pytest.raises(BodyError) as ei:
        sse_encode("x", **kwargs)
    assert_code(ei, "sse_invalid")


# --- hypothesis: chunking never changes the result -----------------------------------------

FIELD_TEXT = st.text(
    st.characters(exclude_characters="\r\n\x00", exclude_categories=("Cs",)), max_size=12
)
SSE_EVENTS = st.lists(
    st.tuples(st.text(max_size=40), st.none() | FIELD_TEXT, st.none() | FIELD_TEXT),
    max_size=8,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def event_tuple(e: SseEvent) -> tuple[bytes, str, str, str | None, bool]:
    return (e.raw, e.data, e.event, e.id, e.has_data)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(SSE_EVENTS, st.lists(st.integers(min_value=0), max_size=30))
def test_hypothesis_sse_chunking_is_transparent(
    specs: list[tuple[str, str | None, str | None]], cuts: list[int]
) -> None:
    encoded = [sse_encode(data, event=event, id=id_) for data, event, id_ in specs]
    stream = b"".join(encoded)

    whole = SseParser()
    whole_events = whole.feed(stream)
    assert whole.flush() == b""

    chunked = SseParser()
    chunks = split_at(stream, cuts)
    assert b"".join(chunks) == stream
    chunked_events = feed_all(chunked, chunks)
    assert chunked.flush() == b""

    assert [event_tuple(e) for e in chunked_events] == [event_tuple(e) for e in whole_events]
    assert b"".join(e.raw for e in chunked_events) == stream
    assert [e.raw for e in whole_events] == encoded
    assert [(e.data, e.event, e.id) for e in whole_events] == [
        (re.sub(r"\r\n|\r", "\n", data), event or "message", id_) for data, event, id_ in specs
    ]


EOLS = st.sampled_from([b"\n", b"\r\n", b"\r"])
SSE_LINE = st.one_of(
    st.builds(lambda v: b"data:" + v.encode(), FIELD_TEXT),
    st.builds(lambda v: b"data: " + v.encode(), FIELD_TEXT),
    st.builds(lambda v: b"event: " + v.encode(), FIELD_TEXT),
    st.builds(lambda v: b"id: " + v.encode(), FIELD_TEXT),
    st.builds(lambda v: b":" + v.encode(), FIELD_TEXT),
    st.just(b"data"),
    st.just(b"retry: 10"),
)
RAW_EVENT = st.tuples(st.lists(st.tuples(SSE_LINE, EOLS), max_size=4), EOLS)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    st.lists(RAW_EVENT, max_size=8),
    st.binary(max_size=10).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.lists(st.integers(min_value=0), max_size=30),
)
def test_hypothesis_sse_mixed_line_endings_and_partial_tail(
    raw_events: list[tuple[list[tuple[bytes, bytes]], bytes]], tail: bytes, cuts: list[int]
) -> None:
    stream = b"".join(
        b"".join(line + eol for line, eol in lines) + end for lines, end in raw_events
    )
    stream += tail

    whole = SseParser()
    whole_events = whole.feed(stream)
    whole_rest = whole.flush()

    chunked = SseParser()
    chunked_events = feed_all(chunked, split_at(stream, cuts))
    chunked_rest = chunked.flush()

    assert [event_tuple(e) for e in chunked_events] == [event_tuple(e) for e in whole_events]
    assert chunked_rest == whole_rest
    assert b"".join(e.raw for e in whole_events) + whole_rest == stream
    assert all(e.raw for e in whole_events)
    # The flushed tail is what follows the last blank line: the dangling tail (or a held CR).
    assert whole_rest.endswith(tail)
