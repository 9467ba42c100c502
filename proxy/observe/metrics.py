"""Prometheus metrics of one proxy process (``prometheus-client``, a registry of its own).

Every label set is bounded: verdicts, planes, outcomes and result names are closed enums;
rule ids come from the policy or the proxy's own refusal ids (``mediation.*``, ``data.*``,
...), and are still capped by ``BoundedLabel`` (``MAX_RULES`` distinct values, the rest
counted as ``other``), so a policy with thousands of rules or an unforeseen id source
cannot blow up the series count. Tool names, targets, principals, sessions and argument
values are never labels: the activity page and the evidence log carry those.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..errors import AuditError
from .events import DecisionEvent

MAX_RULES = 256
OTHER = "other"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# seconds: adjudication is µs-scale, end to end includes the durable audit commit
_FAST = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
         0.025, 0.05, 0.1)
_E2E = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5)
_WAIT = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class BoundedLabel:
    """Admit at most ``limit`` distinct values of one label; later new values become
    ``other`` (and are counted in ``fiveplane_metric_label_overflow_total``)."""

    __slots__ = ("_lock", "_seen", "limit", "name", "overflow")

    def __init__(self, name: str, limit: int, overflow: Counter) -> None:
        self.name, self.limit = name, limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.overflow = overflow

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit:
                self.overflow.labels(self.name).inc()
                return OTHER
            self._seen.add(value)
            return value


class Metrics:
    """The observer that counts. ``render()`` is the ``/metrics`` body."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 max_rules: int = MAX_RULES) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.label_overflow = Counter(
            "fiveplane_metric_label_overflow", "Label values folded into `other` because the "
            "label reached its cap", ["label"], registry=r)
        self._rule = BoundedLabel("rule", max_rules, self.label_overflow)
        self.decisions = Counter(
            "fiveplane_decisions", "Decisions recorded, by enforced verdict, plane and "
            "outcome (one per decision)", ["verdict", "plane", "outcome"], registry=r)
        self.rule_decisions = Counter(
            "fiveplane_rule_decisions", "Decisions by rule id and enforced verdict (a "
            "decision made by several rules counts once for each)", ["rule", "verdict"],
            registry=r)
        self.adjudication = Histogram(
            "fiveplane_adjudication_seconds", "Time to decide one action (session context, "
            "policy, budgets)", buckets=_FAST, registry=r)
        self.decision_time = Histogram(
            "fiveplane_decision_seconds", "Time from the start of deciding to the evidence "
            "record queued", buckets=_FAST, registry=r)
        self.added = Histogram(
            "fiveplane_request_added_seconds", "End-to-end latency the proxy added to a "
            "request before forwarding or answering it (includes the durable audit commit; "
            "held calls excluded)", ["result"], buckets=_E2E, registry=r)
        self.held = Gauge("fiveplane_held_calls", "Calls waiting for a human now",
                          registry=r)
        self.holds = Counter("fiveplane_holds", "Calls held for approval", registry=r)
        self.approval_wait = Histogram(
            "fiveplane_approval_wait_seconds", "How long a held call waited, by how the hold "
            "ended", ["outcome"], buckets=_WAIT, registry=r)
        self.cuts = Counter("fiveplane_stream_cuts", "Responses cut mid-stream, by rule id",
                            ["rule"], registry=r)
        self.redactions = Counter(
            "fiveplane_redactions", "Rewrites by the data plane, by detector and where",
            ["detector", "where"], registry=r)
        self.audit_records = Counter("fiveplane_audit_records_written",
                                     "Evidence records made durable", registry=r)
        self.audit_failures = Counter(
            "fiveplane_audit_failures", "Evidence records that could not be written (their "
            "decisions were denied)", registry=r)
        self.audit_commit = Histogram(
            "fiveplane_audit_commit_seconds", "Write + fsync time of one group commit",
            buckets=_E2E, registry=r)
        self.audit_batch = Histogram(
            "fiveplane_audit_batch_records", "Records per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 8192), registry=r)
        self.reloads = Counter("fiveplane_policy_reloads", "Policy reloads by result",
                               ["result"], registry=r)
        self.policy_info = Gauge("fiveplane_policy_info", "The enforced policy (value 1)",
                                 ["name", "version"], registry=r)
        self.policy_loaded = Gauge("fiveplane_policy_loaded_timestamp_seconds",
                                   "When the enforced policy was loaded", registry=r)
        self.state_errors = Counter("fiveplane_state_errors", "Session state backend "
                                    "errors, by where they happened", ["where"], registry=r)
        self.observer_errors = Gauge("fiveplane_observer_failures", "Telemetry observer "
                                     "calls that failed so far (the decision stood)",
                                     registry=r)
        self._policy: tuple[str, str] | None = None
        self._held_lock = threading.Lock()
        self._held = 0
        # label children by key: `labels()` takes a lock and builds a tuple per call
        self._children: dict[tuple[str, str, str], Any] = {}
        self._rule_children: dict[tuple[str, str], Any] = {}
        for result in ("ok", "failed"):
            self.reloads.labels(result)     # export zeros: alerts need the series to exist
        self.audit_failures.inc(0)

    # --- observer hooks -------------------------------------------------------------------

    def decided(self, event: DecisionEvent) -> None:
        enforced = event.enforced
        verdict = enforced.verdict.value
        key = (verdict, enforced.plane.value, event.outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.decisions.labels(*key)
        child.inc()
        for rule in enforced.rule_ids or ("none",):
            rkey = (rule, verdict)
            child = self._rule_children.get(rkey)
            if child is None:
                child = self.rule_decisions.labels(self._rule(rule), verdict)
                if len(self._rule_children) < 32 * MAX_RULES:
                    self._rule_children[rkey] = child
            child.inc()
        if event.adjudication_us:
            self.adjudication.observe(event.adjudication_us / 1e6)
        if event.total_us:
            self.decision_time.observe(event.total_us / 1e6)
        if event.outcome == "held":
            self.holds.inc()
            with self._held_lock:
                self._held += 1
                self.held.inc()
        if event.approval is not None:
            self._hold_ended(event)
        if event.outcome == "redacted":
            where = _where(enforced)
            for rule in enforced.rule_ids:
                if rule.startswith("data."):
                    self.redactions.labels(self._rule(rule[5:]), where).inc()

    def _hold_ended(self, event: DecisionEvent) -> None:
        approval = event.approval or {}
        with self._held_lock:
            if self._held > 0:      # a hold opened before a restart is not counted
                self._held -= 1
                self.held.dec()
        created = approval.get("created_at")
        if isinstance(created, (int, float)):
            wait = max(0.0, event.at - created) if event.at else 0.0
            ended = str(approval.get("outcome") or "unknown")
            self.approval_wait.labels(_bounded_outcome(ended)).observe(wait)

    def reloaded(self, ok: bool, version: str, name: str, error: str | None = None) -> None:
        self.reloads.labels("ok" if ok else "failed").inc()
        if ok:
            self.policy_version(name, version)

    def state_error(self, where: str, error: BaseException) -> None:
        self.state_errors.labels(where).inc()

    # --- fed by other parts ---------------------------------------------------------------

    def policy_version(self, name: str, version: str) -> None:
        """Exactly one ``fiveplane_policy_info`` series: the enforced policy."""
        current = (name, version.split(":", 1)[-1][:12])
        if self._policy == current:
            return
        if self._policy is not None:
            self.policy_info.remove(*self._policy)
        self.policy_info.labels(*current).set(1)
        self.policy_loaded.set(time.time())
        self._policy = current

    def audit_batch_done(self, records: int, seconds: float, error: AuditError | None) -> None:
        """``AuditLog.on_batch``: runs on the audit writer thread."""
        if error is None:
            self.audit_records.inc(records)
            self.audit_commit.observe(seconds)
            self.audit_batch.observe(records)
        else:
            self.audit_failures.inc(records)

    def request_done(self, seconds: float, result: str) -> None:
        self.added.labels(result if result in _RESULTS else OTHER).observe(seconds)

    def stream_cut(self, rule_ids: tuple[str, ...]) -> None:
        for rule in rule_ids or ("none",):
            self.cuts.labels(self._rule(rule)).inc()

    def watch_observers(self, errors: Callable[[], float]) -> None:
        """Export how often telemetry observers failed (read at scrape time)."""
        self.observer_errors.set_function(errors)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def series(self) -> int:
        """How many time series ``/metrics`` exposes now (the cardinality report)."""
        return sum(len(m.samples) for m in self.registry.collect())


_RESULTS = frozenset({"forwarded", "denied"})


def _where(decision: object) -> str:
    for d in getattr(decision, "directives", ()):
        where = d.params.get("where") if hasattr(d, "params") else None
        if where in ("request", "response"):
            return str(where)
    return "unknown"


def _bounded_outcome(outcome: str) -> str:
    return outcome if outcome in _HOLD_OUTCOMES else OTHER


_HOLD_OUTCOMES = frozenset({"approved", "denied", "expired", "timeout", "cancelled",
                            "abandoned", "replayed"})
