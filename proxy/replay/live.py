"""``--live PROXY_URL``: resend a capture's requests through a running proxy, for load
and regression tests against real upstreams.

Requests go out in capture order (``concurrency`` at a time) with the recorded method,
URL, headers and body. CONNECT flows are not resent (the client opens its own tunnel
for HTTPS), nor are raw TCP/UDP flows. Hop-by-hop and proxy headers are dropped.
MCP sessions are re-established on the fly: when a resent request gets a new
``Mcp-Session-Id`` where the recording had another, later requests carrying the
recorded id are sent with the new one. An event stream is read until it ends or for
``timeout`` seconds (a long-lived stream is closed then and counts as answered).
Redacted captures resend the redaction markers, not the secrets.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .capture import CapturedFlow, CaptureNote

__all__ = ["LiveResult", "LiveSummary", "live_replay"]

_DROP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                   "proxy-authorization", "proxy-connection", "te", "upgrade", "trailer"})


@dataclass(frozen=True, slots=True)
class LiveResult:
    index: int
    method: str
    url: str
    status: int | None
    elapsed: float
    error: str = ""


@dataclass(slots=True)
class LiveSummary:
    sent: int = 0
    skipped: int = 0
    errors: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "skipped": self.skipped, "errors": self.errors,
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "seconds": round(self.elapsed, 3), "requests_per_second": round(self.rate, 1),
                "latency_ms": {"p50": round(self.percentile(50) * 1000, 2),
                               "p95": round(self.percentile(95) * 1000, 2)}}


class _Sessions:
    def __init__(self) -> None:
        self._map: dict[str, str] = {}
        self._lock = threading.Lock()

    def rewrite(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        with self._lock:
            return [(k, self._map.get(v, v) if k == "mcp-session-id" else v)
                    for k, v in headers]

    def learn(self, recorded: str, new: str) -> None:
        if recorded and new and recorded != new:
            with self._lock:
                self._map[recorded] = new


def _verify(ca: str | Path | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=str(ca)) if ca else True


def _send(client: Any, flow: CapturedFlow, sessions: _Sessions, timeout: float) -> LiveResult:
    import httpx

    headers = sessions.rewrite([(k, v) for k, v in flow.headers if k not in _DROP])
    start = time.perf_counter()
    try:
        request = client.build_request(flow.method, flow.url, headers=headers,
                                       content=flow.body or None)
        resp = client.send(request, stream=True)
        try:
            if "text/event-stream" in resp.headers.get("content-type", ""):
                deadline = start + timeout
                try:
                    for _ in resp.iter_raw():
                        if time.perf_counter() > deadline:
                            break
                except httpx.ReadTimeout:
                    pass  # a long-lived stream: answered, closed by us
            else:
                resp.read()
        finally:
            resp.close()
    except httpx.HTTPError as e:
        return LiveResult(flow.index, flow.method, flow.url, None,
                          time.perf_counter() - start, f"{type(e).__name__}: {e}")
    recorded = flow.response.header("mcp-session-id") if flow.response else ""
    sessions.learn(recorded, resp.headers.get("mcp-session-id", ""))
    return LiveResult(flow.index, flow.method, flow.url, resp.status_code,
                      time.perf_counter() - start)


def live_replay(items: Iterable[CapturedFlow | CaptureNote], proxy_url: str, *,
                ca: str | Path | None = None, concurrency: int = 1, timeout: float = 10.0,
                on_result: Callable[[LiveResult | CaptureNote], None] = lambda r: None,
                ) -> LiveSummary:
    import httpx

    summary = LiveSummary()
    sessions = _Sessions()
    limits = httpx.Limits(max_connections=max(1, concurrency) * 2)
    started = time.perf_counter()

    def done(result: LiveResult) -> None:
        summary.sent += 1
        summary.latencies.append(result.elapsed)
        if result.status is None:
            summary.errors += 1
        else:
            summary.by_status[result.status] += 1
        on_result(result)

    with httpx.Client(proxy=proxy_url, verify=_verify(ca), trust_env=False, timeout=timeout,
                      limits=limits, follow_redirects=False) as client:
        if concurrency <= 1:
            for item in items:
                if isinstance(item, CaptureNote):
                    on_result(item)
                elif item.kind != "http":
                    summary.skipped += 1
                else:
                    done(_send(client, item, sessions, timeout))
        else:
            gate = threading.BoundedSemaphore(concurrency * 2)  # bounded in-flight work
            lock = threading.Lock()

            def finish(fut: Future[LiveResult]) -> None:
                gate.release()
                with lock:
                    done(fut.result())

            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                for item in items:
                    if isinstance(item, CaptureNote):
                        on_result(item)
                        continue
                    if item.kind != "http":
                        summary.skipped += 1
                        continue
                    gate.acquire()
                    pool.submit(_send, client, item, sessions, timeout).add_done_callback(
                        finish)
    summary.elapsed = time.perf_counter() - started
    return summary
