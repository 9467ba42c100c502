"""Metrics, decision logs, the activity feed and trace context on a real gateway (real
policy, real audit log where it matters): counters match the calls made, label sets stay
bounded under 10,000 distinct tool names, logs carry the decision id and never argument
values, traceparent is validated strictly."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from proxy.audit import AuditLog
from proxy.evidence import MemorySink
from proxy.gateway import Gateway
from proxy.observe import ActivityFeed, Telemetry, parse_traceparent, trace_from_headers
from proxy.observe.activity import EvidenceFinder
from proxy.observe.logs import JsonFormatter, configure_logging
from proxy.observe.metrics import Metrics
from proxy.policy import compile_file
from proxy.translate import RequestView

POLICY = """\
version: 1
name: t
mcp_servers: {crm: {url: "https://crm.example.com/mcp"}}
rules:
  - {id: read, match: {server: crm, tool: get_customer}, effect: allow}
  - {id: no-wipe, match: {server: crm, tool: delete_all}, effect: deny, reason: no wiping}
"""
SECRET = "sk-live-0123456789ABCDEFghijKLMN"
VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def gateway(tmp_path: Path, telemetry: Telemetry, sink=None) -> Gateway:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY)
    return Gateway(compile_file(path), sink or MemorySink(), policy_path=path,
                   observers=telemetry.observers())


def view(name: str, headers: tuple[tuple[str, str], ...] = (), **args: object) -> RequestView:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": name, "arguments": args}}
    return RequestView("POST", "https", "crm.example.com", 443, "/mcp",
                       (("content-type", "application/json"), *headers),
                       json.dumps(body).encode())


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_match_the_calls_and_labels_stay_bounded(tmp_path: Path) -> None:
    telemetry = Telemetry.create(decision_log=False)
    gw = gateway(tmp_path, telemetry)
    for _ in range(3):
        assert not gw.request(view("delete_all", confirm=True)).forwarded
    for _ in range(2):
        assert gw.request(view("get_customer", id="c-1")).forwarded
    metrics = telemetry.metrics
    got = samples(metrics)
    assert got[("fiveplane_rule_decisions_total", (("rule", "no-wipe"), ("verdict", "deny")))] == 3
    assert got[("fiveplane_rule_decisions_total", (("rule", "read"), ("verdict", "allow")))] == 2
    assert got[("fiveplane_decisions_total", (("outcome", "denied"), ("plane", "endpoint"),
                                              ("verdict", "deny")))] == 3
    assert got[("fiveplane_adjudication_seconds_count", ())] == 5

    # 10,000 distinct tool names (each denied by the default): the first one opens the
    # default rule's series, the other 9,999 add none
    gw.request(view("tool-first"))
    before = metrics.series()
    started = time.perf_counter()
    for i in range(9_999):
        gw.request(view(f"tool-{i:05d}-{SECRET[:4]}"))
    took = time.perf_counter() - started
    after = metrics.series()
    text = metrics.render().decode()
    assert "tool-0" not in text
    print(f"\nseries before {before}, after 10,000 distinct tool names {after} "
          f"({took:.1f} s for 10,000 decisions)")
    assert after == before
    assert samples(metrics)[("fiveplane_rule_decisions_total",
                             (("rule", "defaults.effect"), ("verdict", "deny")))] == 10_000
    # the activity feed stayed bounded too
    assert len(telemetry.activity) <= 2000
    assert len(telemetry.activity.counters()) == 3


def test_rule_label_is_capped_and_overflow_counted() -> None:
    metrics = Metrics(max_rules=3)
    for i in range(10):
        metrics.stream_cut((f"data.detector{i}",))
    got = samples(metrics)
    rules = {dict(k[1])["rule"] for k in got if k[0] == "fiveplane_stream_cuts_total"}
    assert rules == {"data.detector0", "data.detector1", "data.detector2", "other"}
    assert got[("fiveplane_stream_cuts_total", (("rule", "other"),))] == 7
    assert got[("fiveplane_metric_label_overflow_total", (("label", "rule"),))] == 7


def test_audit_batches_reloads_and_policy_version(tmp_path: Path) -> None:
    telemetry = Telemetry.create(decision_log=False)
    audit = AuditLog(tmp_path / "audit", "unit")
    audit.on_batch = telemetry.metrics.audit_batch_done
    gw = gateway(tmp_path, telemetry, sink=audit)
    telemetry.metrics.policy_version(gw.policy.name, gw.policy.version)
    for _ in range(5):
        gw.request(view("get_customer", id="c-1")).judged.commit.wait_sync(5)
    (tmp_path / "p.yaml").write_text(POLICY + "  - {id: broken\n")
    assert gw.reload() is not None
    (tmp_path / "p.yaml").write_text(POLICY.replace("no wiping", "never wipe"))
    assert gw.reload() is None
    audit.close()
    got = samples(telemetry.metrics)
    assert got[("fiveplane_audit_records_written_total", ())] >= 5
    assert got[("fiveplane_audit_failures_total", ())] == 0
    assert got[("fiveplane_audit_commit_seconds_count", ())] >= 1
    assert got[("fiveplane_policy_reloads_total", (("result", "failed"),))] == 1
    assert got[("fiveplane_policy_reloads_total", (("result", "ok"),))] == 1
    info = [dict(k[1]) for k in got if k[0] == "fiveplane_policy_info"]
    assert info == [{"name": "t", "version": gw.policy.version.split(":")[1][:12]}]


def test_decision_log_lines_link_to_evidence_without_values(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        telemetry = Telemetry.create(metrics=False)
        gw = gateway(tmp_path, telemetry)
        allowed = gw.request(view("get_customer", id=SECRET))
        denied = gw.request(view("delete_all", (("traceparent", VALID),), note=SECRET))
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    decisions = [d for d in lines if d.get("event") == "decision"]
    assert [d["decision_id"] for d in decisions] == [denied.decision_id]   # allows: not logged
    (line,) = decisions
    assert line["level"] == "warning" and line["verdict"] == "deny"
    assert line["rule_ids"] == ["no-wipe"] and line["reason"] == "no wiping"
    assert line["tool"] == "delete_all" and line["trace_id"] == VALID[3:35]
    assert allowed.forwarded
    assert SECRET not in stream.getvalue()


def test_text_format_is_one_readable_line() -> None:
    record = logging.LogRecord("fiveplane.decision", logging.WARNING, "", 0, "deny %s", ("x",),
                               None)
    record.decision_id = "ab" * 16
    record.rule_ids = ["no-wipe"]
    out = JsonFormatter().format(record)
    assert json.loads(out)["decision_id"] == "ab" * 16
    from proxy.observe.logs import TextFormatter

    text = TextFormatter().format(record)
    assert "\n" not in text and "decision_id=" + "ab" * 16 in text and "rule_ids=no-wipe" in text


def test_activity_feed_filters_and_evidence_link(tmp_path: Path) -> None:
    telemetry = Telemetry.create(metrics=False, decision_log=False)
    audit = AuditLog(tmp_path / "audit", "unit")
    gw = gateway(tmp_path, telemetry, sink=audit)
    denied = [gw.request(view("delete_all", (("x-fiveplane-session", "s1"),))) for _ in range(2)]
    gw.request(view("get_customer", (("x-fiveplane-session", "s2"),), id=SECRET))
    audit.flush(5)
    feed: ActivityFeed = telemetry.activity
    assert [e["decision_id"] for e in feed.since(0, {"rule": "no-wipe"})] == \
        [d.decision_id for d in reversed(denied)]
    assert len(feed.since(0, {"verdict": "allow"})) == 1
    session = denied[0].action.session
    assert {e["session"] for e in feed.since(0, {"session": session})} == {session}
    assert feed.since(feed.last) == []
    assert feed.counters() == {"no-wipe": {"deny": 2}, "read": {"allow": 1}}
    found = EvidenceFinder(audit.path)(denied[1].decision_id)
    assert found is not None and found["body"]["id"] == denied[1].decision_id
    assert "sealed" not in found["body"]
    assert EvidenceFinder(audit.path)("0" * 32) is None
    with pytest.raises(ValueError):
        EvidenceFinder(audit.path)("../../etc/passwd")
    assert SECRET not in json.dumps(feed.since(0))
    gw.request(view("get_customer", id=SECRET * 1000))
    unread = feed._entries[-1]
    assert SECRET not in repr(unread._event)      # argument values are never kept
    audit.close()


def test_traceparent_reaches_the_record_and_bad_ones_are_not_recorded_raw(
        tmp_path: Path) -> None:
    sink = MemorySink()
    gw = gateway(tmp_path, Telemetry.create(metrics=False, decision_log=False), sink=sink)
    huge = "00-" + "a" * 10 * 1024
    ok = gw.request(view("get_customer", (("traceparent", VALID),), id="c"))
    bad = gw.request(view("get_customer", (("traceparent", huge),), id="c"))
    assert ok.forwarded and bad.forwarded            # trace context never decides
    assert sink.records[0]["trace"] == {
        "traceparent": VALID, "trace_id": VALID[3:35], "parent_id": VALID[36:52]}
    assert sink.records[1]["trace"] == {
        "invalid": "longer than 512 characters", "length": len(huge)}
    assert huge not in json.dumps(sink.records)
    assert ok.strip.isdisjoint({"traceparent"})


@pytest.mark.parametrize("value, error", [
    ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", "all-zero trace id"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", "all-zero parent id"),
    (VALID.upper(), "not lower-case hex"),
    ("ff" + VALID[2:], "bad version"),
    (VALID + "-extra", "version 00 must be 55 characters"),
    (VALID[:-1], "too short"),
    (VALID.replace("-", "_"), "bad field separator"),
])
def test_invalid_traceparents(value: str, error: str) -> None:
    assert parse_traceparent(value).error == error


def test_repeated_and_future_versions() -> None:
    assert trace_from_headers([("traceparent", VALID), ("traceparent", VALID)]).error == \
        "repeated header"
    future = "01" + VALID[2:] + "-what-comes-next"
    assert parse_traceparent(future).traceparent == "01" + VALID[2:]
    assert trace_from_headers([("x-other", "1")]) is None


REASONS = {"longer than 512 characters", "too short", "bad version", "bad field separator",
           "version 00 must be 55 characters", "not lower-case hex", "all-zero trace id",
           "all-zero parent id"}


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=2000))
def test_no_string_is_ever_recorded_unless_valid(value: str) -> None:
    ctx = parse_traceparent(value)
    if not ctx.valid:   # only a fixed reason and the length: nothing the agent wrote
        assert ctx.to_record() == {"invalid": ctx.error, "length": len(value)}
        assert ctx.error in REASONS
    else:
        assert len(ctx.traceparent) == 55 and ctx.traceparent == value.strip(" \t")[:55]


@given(st.text("0123456789abcdef", min_size=32, max_size=32),
       st.text("0123456789abcdef", min_size=16, max_size=16),
       st.text("0123456789abcdef", min_size=2, max_size=2))
def test_every_well_formed_traceparent_is_accepted(trace: str, parent: str, flags: str) -> None:
    value = f"00-{trace}-{parent}-{flags}"
    ctx = parse_traceparent(value)
    zero = trace == "0" * 32 or parent == "0" * 16
    assert ctx.valid is not zero
    if not zero:
        assert (ctx.trace_id, ctx.parent_id) == (trace, parent)


def test_otel_span_is_a_child_of_the_agents_trace(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry.create(metrics=False, decision_log=False, otel_provider=provider)
    gw = gateway(tmp_path, telemetry)
    denied = gw.request(view("delete_all", (("traceparent", VALID),)))
    gw.request(view("get_customer", id="c"))
    first, second = exporter.get_finished_spans()
    assert first.name == "fiveplane.adjudicate"
    assert format(first.context.trace_id, "032x") == VALID[3:35]
    assert format(first.parent.span_id, "016x") == VALID[36:52]
    assert first.attributes["fiveplane.decision_id"] == denied.decision_id
    assert first.attributes["fiveplane.verdict"] == "deny"
    assert second.parent is None                 # no traceparent: a root span


def test_redactions_counted_by_detector(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POLICY + """\
data:
  detect: [pii.email]
  requests: {pii.email: redact}
""")
    telemetry = Telemetry.create(decision_log=False)
    gw = Gateway(compile_file(path), MemorySink(), observers=telemetry.observers())
    result = gw.request(view("get_customer", note="write to alice@example.com please"))
    assert result.forwarded and b"alice@example.com" not in (result.body or b"")
    got = samples(telemetry.metrics)
    assert got[("fiveplane_redactions_total", (("detector", "pii.email"),
                                               ("where", "request")))] == 1
    assert got[("fiveplane_decisions_total", (("outcome", "redacted"), ("plane", "data"),
                                              ("verdict", "modify")))] == 1
