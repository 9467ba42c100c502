"""fiveplane's recorder: every flow that crossed the proxy, in a mitmproxy flow file.

Load it after the gate (``mitmdump -s addons/fiveplane_gate.py -s
addons/fiveplane_recorder.py --set fiveplane_record=capture.flows``, or
``master.addons.add(recorder.tap, gate, recorder)``). Each flow is written when it ends
(``response``, ``error``, CONNECT established or refused, TCP/UDP end), refused ones
included, with the gate's decisions in ``flow.metadata["fiveplane"]`` and what replay
needs in ``flow.metadata["fiveplane_record"]`` (plain data):

* ``addresses``: what the host resolved to when the gate decided;
* ``answered_by_proxy``: the response was made by the proxy (the upstream never saw the
  request);
* ``upstream``: the response as the upstream sent it, when the client got something
  else (a filtered ``tools/list``, a withheld notification, a cut stream). Streamed
  bodies are kept too (up to ``fiveplane_record_max_body``), so SSE replays;
* ``redacted`` / ``incomplete`` (still open when the proxy stopped).

The request is written as the client sent it, before the gate normalized anything.
That needs a look at the flow *before* the gate: ``recorder.tap`` runs first in the
addon chain (the recorder puts it at the front itself when it is loaded as a script;
mitmproxy has no public API for that, see ``_install_tap``). The live flow is never
changed: the written copy is made with ``flow.copy()`` and redacted there, unless
``fiveplane_record_secrets`` is set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from mitmproxy import ctx, http, io

from proxy.netaddr import HostError, normalize_host
from proxy.replay.redact import redact_bytes, redact_header

log = logging.getLogger("fiveplane.recorder")
META = "fiveplane"
RECORD = "fiveplane_record"
FORMAT = 1
_SEEN_LIMIT = 100_000


def _fields(pairs: Iterable[tuple[str, str]]) -> http.Headers:
    return http.Headers([(k.encode("utf-8", "surrogateescape"),
                          v.encode("utf-8", "surrogateescape")) for k, v in pairs])


def _redact_message(msg: http.Message) -> bool:
    """Redact headers and body in place; True when anything was replaced."""
    pairs = list(msg.headers.items(multi=True))
    red_pairs = [(k, redact_header(k, v)) for k, v in pairs]
    changed = red_pairs != pairs
    if changed:
        msg.headers = _fields(red_pairs)
    raw = msg.raw_content
    if not raw:
        return changed
    coding = msg.headers.get("content-encoding", "identity").lower()
    if coding not in ("", "identity"):
        try:
            decoded = msg.get_content(strict=True) or b""
        except ValueError:
            decoded = None
        if decoded is not None:
            red = redact_bytes(decoded)
            if red is not decoded:
                msg.content = red
            return changed or red is not decoded
    red = redact_bytes(raw)
    if red is raw:
        return changed
    msg.raw_content = red
    if "content-length" in msg.headers:
        msg.headers["content-length"] = str(len(red))
    return True


class _StreamCapture:
    """Wraps the response's stream setting: keeps what the upstream sent and what the
    client got (up to ``cap`` bytes each) and otherwise changes nothing."""

    def __init__(self, inner: Any, cap: int) -> None:
        self.inner = inner
        self.cap = cap
        self.raw = bytearray()
        self.out = bytearray()
        self.truncated = False

    def _keep(self, buf: bytearray, data: bytes) -> None:
        room = self.cap - len(buf)
        if len(data) > room:
            self.truncated = True
            data = data[:max(room, 0)]
        buf += data

    def __call__(self, chunk: bytes) -> list[bytes]:
        self._keep(self.raw, chunk)
        if callable(self.inner):
            result = self.inner(chunk)
            parts = [result] if isinstance(result, bytes) else list(result)
        else:
            parts = [chunk]
        parts = [p for p in parts if p]  # never b"": it would end a chunked body
        for part in parts:
            self._keep(self.out, part)
        return parts


class UpstreamTap:
    """The recorder's eyes in front of the gate: the request as the client sent it and
    the response as the upstream sent it, before the gate changes either."""

    def __init__(self, recorder: FiveplaneRecorder) -> None:
        self.recorder = recorder

    def request(self, flow: http.HTTPFlow) -> None:
        if self.recorder.on:
            self.recorder.client[flow.id] = (flow.request.host, flow.request.headers.fields)

    def response(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if self.recorder.on and resp is not None and flow.id not in self.recorder.streams:
            self.recorder.upstream[flow.id] = (resp.status_code, resp.headers.fields,
                                               resp.raw_content or b"")


class FiveplaneRecorder:
    def __init__(self) -> None:
        self.tap = UpstreamTap(self)
        self.client: dict[str, tuple[str, Any]] = {}
        self.upstream: dict[str, tuple[int, Any, bytes]] = {}
        self.streams: dict[str, _StreamCapture] = {}
        self._answered: set[str] = set()
        self._addresses: dict[str, list[str]] = {}
        self._active: dict[str, Any] = {}
        self._seen: dict[str, None] = {}
        self._fo: Any = None
        self._writer: io.FlowWriter | None = None
        self._path = ""
        self._inserted = False

    @property
    def on(self) -> bool:
        return self._writer is not None

    def load(self, loader: Any) -> None:
        loader.add_option("fiveplane_record", str, "",
                          "Write every flow, with fiveplane's decisions, to this mitmproxy "
                          "flow file (empty: off; a leading + appends).")
        loader.add_option("fiveplane_record_secrets", bool, False,
                          "Keep credentials and secrets in recorded flows (default: redacted).")
        loader.add_option("fiveplane_record_max_body", int, 16 * 1024 * 1024,
                          "Bytes of each streamed body kept in a recorded flow.")

    def configure(self, updated: set[str]) -> None:
        if "fiveplane_record" not in updated:
            return
        path = ctx.options.fiveplane_record
        if path == self._path:
            return
        self._close()
        self._path = path
        if not path:
            return
        append = path.startswith("+")
        target = os.path.expanduser(path[1:] if append else path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        try:
            self._fo = os.fdopen(os.open(target, flags, 0o600), "ab" if append else "wb")
        except OSError as e:
            from mitmproxy import exceptions

            raise exceptions.OptionsError(f"cannot open capture {target}: {e}") from e
        self._writer = io.FlowWriter(self._fo)
        log.info("recording flows to %s", target)

    def running(self) -> None:
        self._install_tap()

    def done(self) -> None:
        for flow in list(self._active.values()):
            self._write(flow, incomplete=True)
        self._close()
        if self._inserted:
            chain = ctx.master.addons.chain
            if self.tap in chain:
                chain.remove(self.tap)

    def _install_tap(self) -> None:
        """Put the tap at the front of the addon chain unless it was added already.
        ``AddonManager.chain`` is not public API (pinned by a test)."""
        from mitmproxy.addonmanager import traverse

        manager = ctx.master.addons
        if not any(a is self.tap for a in traverse(manager.chain)):
            manager.chain.insert(0, self.tap)
            self._inserted = True

    def _close(self) -> None:
        if self._fo is not None:
            self._fo.close()
        self._fo = self._writer = None

    # --- hooks (the gate has run before each of these) -----------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if not self.on:
            return
        self._active[flow.id] = flow
        if flow.response is not None:
            self._answered.add(flow.id)
        self._addresses[flow.id] = await self._resolved(flow)

    async def _resolved(self, flow: http.HTTPFlow) -> list[str]:
        meta = flow.metadata.get(META) or {}
        if "addresses" in meta:
            return [str(a) for a in meta["addresses"]]
        # The gate keeps what it resolved for a few seconds: ask it (no new DNS query).
        lookup: Callable[..., Any] | None = getattr(
            ctx.master.addons.get("fiveplanegate"), "_addresses", None)
        if lookup is None:
            return []
        try:
            return list(await lookup(normalize_host(flow.request.host), flow.request.port))
        except (HostError, OSError):
            return []

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.on and flow.response is not None and flow.response.stream:
            capture = _StreamCapture(flow.response.stream,
                                     ctx.options.fiveplane_record_max_body)
            self.streams[flow.id] = capture
            flow.response.stream = capture

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    http_connected = http_connect_error = response
    tcp_end = tcp_error = udp_end = udp_error = response

    # --- writing ----------------------------------------------------------------------------

    def _write(self, flow: Any, incomplete: bool = False) -> None:
        if not self.on or flow.id in self._seen:
            return
        self._seen[flow.id] = None
        if len(self._seen) > _SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]
        try:
            copy = self._prepare(flow, incomplete)
            assert self._writer is not None and self._fo is not None
            try:
                self._writer.add(copy)
            except ValueError:  # another addon left metadata a flow file cannot hold
                copy.metadata = {k: v for k, v in copy.metadata.items() if k in (META, RECORD)}
                self._writer.add(copy)
            self._fo.flush()
        except Exception as e:
            log.error("could not record flow %s: %r", flow.id, e)
        finally:
            for store in (self.client, self.upstream, self.streams, self._addresses,
                          self._active):
                store.pop(flow.id, None)
            self._answered.discard(flow.id)

    def _prepare(self, flow: Any, incomplete: bool) -> Any:
        copy = flow.copy()  # the live flow is never changed
        record: dict[str, Any] = {"format": FORMAT}
        if incomplete:
            record["incomplete"] = True
        if isinstance(flow, http.HTTPFlow) and flow.request.method.upper() != "CONNECT":
            self._http(flow, copy, record)
        if not ctx.options.fiveplane_record_secrets and self._redact(copy, record):
            record["redacted"] = True
        copy.metadata[RECORD] = record
        return copy

    @staticmethod
    def _redact(copy: Any, record: dict[str, Any]) -> bool:
        changed = copy.metadata.pop("proxyauth", None) is not None
        if isinstance(copy, http.HTTPFlow):
            path = copy.request.path.encode("utf-8", "surrogateescape")
            red = redact_bytes(path)
            if red is not path:
                copy.request.path = red.decode("utf-8", "surrogateescape")
                changed = True
            for msg in (copy.request, copy.response):
                if msg is not None:
                    changed = _redact_message(msg) or changed
        up = record.get("upstream")
        if up is not None:
            headers = [[k, redact_header(k, v)] for k, v in up["headers"]]
            content = redact_bytes(up["content"])
            changed = changed or headers != up["headers"] or content is not up["content"]
            up["headers"], up["content"] = headers, content
        return changed

    def _http(self, flow: http.HTTPFlow, copy: http.HTTPFlow, record: dict[str, Any]) -> None:
        sent = self.client.get(flow.id)
        if sent is not None:
            host, fields = sent
            if host != copy.request.host:
                record["forwarded_host"] = copy.request.host
                copy.request.data.host = host
            copy.request.headers = http.Headers(fields)
        record["addresses"] = self._addresses.get(flow.id, [])
        answered = flow.id in self._answered
        record["answered_by_proxy"] = answered
        stream = self.streams.get(flow.id)
        resp = copy.response
        if stream is not None and resp is not None:
            resp.raw_content = bytes(stream.out)
            if stream.raw != stream.out or stream.truncated:
                record["upstream"] = _upstream(resp.status_code, resp.headers.items(multi=True),
                                               bytes(stream.raw), stream.truncated)
            return
        got = self.upstream.get(flow.id)
        if got is None or answered or resp is None:
            return
        status, fields, raw = got
        if (status, fields, raw) != (resp.status_code, resp.headers.fields,
                                     resp.raw_content or b""):
            record["upstream"] = _upstream(status, http.Headers(fields).items(multi=True), raw,
                                           False)


def _upstream(status: int, headers: Iterable[tuple[str, str]], content: bytes,
              truncated: bool) -> dict[str, Any]:
    up: dict[str, Any] = {"status": status, "headers": [[k, v] for k, v in headers],
                          "content": content}
    if truncated:
        up["truncated"] = True
    return up


addons = [FiveplaneRecorder()]
