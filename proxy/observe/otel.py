"""Optional OpenTelemetry spans: one ``fiveplane.adjudicate`` span per decision, a child
of the agent's ``traceparent`` when it sent a valid one.

OpenTelemetry is an extra (``pip install fiveplane[otel]``), never a hard dependency:
without it ``tracer_or_none`` is None and nothing here is imported by the proxy. The span
is made after the decision was recorded, with the decision's own start and end times, so
tracing adds nothing to the governing path and an exporter failure cannot touch it.
"""

from __future__ import annotations

import time
from typing import Any

from .events import DecisionEvent

SPAN_NAME = "fiveplane.adjudicate"


def available() -> bool:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def setup_tracing(service: str = "fiveplane") -> Any:
    """An SDK ``TracerProvider`` exporting spans over OTLP/HTTP (the standard
    ``OTEL_EXPORTER_OTLP_*`` variables configure where). Raises ``RuntimeError`` when the
    ``otel`` extra is not installed."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        raise RuntimeError("OpenTelemetry spans need the `otel` extra: "
                           "pip install 'fiveplane[otel]'") from e
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise RuntimeError("OpenTelemetry export needs opentelemetry-exporter-otlp-proto-http "
                           "(part of the `otel` extra)") from e
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class SpanObserver:
    """Observer: a span per decision from ``provider`` (an SDK ``TracerProvider``)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        self._trace = trace
        self._tracer = provider.get_tracer("fiveplane")
        self._propagator = TraceContextTextMapPropagator()

    def decided(self, event: DecisionEvent) -> None:
        parent = None
        trace = event.trace
        if trace and "traceparent" in trace:
            parent = self._propagator.extract({"traceparent": trace["traceparent"]})
        end = time.time_ns()
        start = end - int(event.total_us * 1000)
        enforced = event.enforced
        attributes: dict[str, Any] = {
            "fiveplane.decision_id": event.decision_id,
            "fiveplane.verdict": enforced.verdict.value,
            "fiveplane.outcome": event.outcome,
            "fiveplane.rule_ids": list(enforced.rule_ids),
            "fiveplane.adjudication_us": event.adjudication_us,
        }
        if event.action is not None:
            attributes["fiveplane.kind"] = event.action.kind.value
            if event.action.name:
                attributes["fiveplane.tool"] = event.action.name[:200]
        span = self._tracer.start_span(SPAN_NAME, context=parent, start_time=start,
                                       attributes=attributes)
        if enforced.verdict.refuses:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR,
                                               enforced.reason[:200]))
        span.end(end_time=end)
