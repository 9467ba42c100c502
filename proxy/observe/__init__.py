"""The operators' view: metrics, structured decision logs, trace context and the live
activity feed, all fed by one observer hook on the gateway (``Gateway(observers=...)``).

Importable without mitmproxy. ``Telemetry`` bundles what ``fiveplane run`` turns on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .activity import ActivityFeed
from .events import DecisionEvent, DecisionObserver, Observers
from .logs import DecisionLog, configure_logging
from .trace import TraceContext, parse_traceparent, trace_from_headers


@dataclass
class Telemetry:
    """What one proxy process reports: ``metrics`` (None: off), the decision log, the
    activity feed (always on: the console reads it), optional OpenTelemetry spans."""

    metrics: Any = None                     # proxy.observe.metrics.Metrics | None
    log: DecisionLog | None = field(default_factory=DecisionLog)
    activity: ActivityFeed = field(default_factory=ActivityFeed)
    spans: Any = None                       # proxy.observe.otel.SpanObserver | None

    @classmethod
    def create(cls, *, metrics: bool = True, decision_log: bool = True,
               otel_provider: Any = None) -> Telemetry:
        m = None
        if metrics:
            from .metrics import Metrics

            m = Metrics()
        spans = None
        if otel_provider is not None:
            from .otel import SpanObserver

            spans = SpanObserver(otel_provider)
        return cls(metrics=m, log=DecisionLog() if decision_log else None, spans=spans)

    def observers(self) -> list[Any]:
        return [o for o in (self.metrics, self.log, self.activity, self.spans)
                if o is not None]


__all__ = ["ActivityFeed", "DecisionEvent", "DecisionLog", "DecisionObserver", "Observers",
           "Telemetry", "TraceContext", "configure_logging", "parse_traceparent",
           "trace_from_headers"]
