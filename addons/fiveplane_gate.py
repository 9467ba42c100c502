"""fiveplane's mitmproxy addon: translate flows for the core, realize its decisions.

Usable embedded (``fiveplane run``) and as ``mitmdump -s addons/fiveplane_gate.py
--set fiveplane_policy=policies/default.yaml``. Every hook fails closed: mitmproxy
logs an addon exception and forwards the flow, so each hook catches everything and
denies instead.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import server_hooks

from proxy.action import Action, Kind, StopPoint
from proxy.approvals import open_approvals
from proxy.audit import AuditLog, PolicyStore
from proxy.audit.writer import parse_durability
from proxy.control import start_control
from proxy.errors import AuditError, PolicyError
from proxy.gateway import Gateway, RequestResult
from proxy.http_response import StreamGovernor, govern_body
from proxy.identity.config import token_from_headers
from proxy.killswitch import SWEEP_SECONDS, OpenStreams
from proxy.mcp.answer import answer_server, upstream_trust
from proxy.mcp_response import ResponseGovernor
from proxy.netaddr import HostError, normalize_host, parse_ip
from proxy.observe import Telemetry
from proxy.observe.activity import EvidenceFinder
from proxy.policy import compile_file
from proxy.policy.compensations import HttpResult
from proxy.replies import Reply, deny_reply, sse_error_event
from proxy.rollback import EXTRA_KEY as ROLLBACK_KEY
from proxy.state import StateError, open_store
from proxy.translate import RequestView

log = logging.getLogger("fiveplane")
META = "fiveplane"
DNS_TIMEOUT = 5.0


def _respond(flow: http.HTTPFlow, reply: Reply) -> None:
    flow.response = http.Response.make(reply.status, reply.body, reply.headers)


def fail_closed(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Turn any exception in a flow hook into a deny with a reason."""

    @functools.wraps(hook)
    async def wrapper(self: FiveplaneGate, flow: http.HTTPFlow) -> None:
        try:
            await hook(self, flow)
        except Exception as e:
            self.deny_on_error(flow, hook.__name__, e)

    return wrapper


class FiveplaneGate:
    def __init__(self) -> None:
        self.gateway: Gateway | None = None
        self._actions: dict[str, Action] = {}
        self._governors: dict[str, ResponseGovernor] = {}
        self._dns: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._rollbacks: asyncio.Task[None] | None = None
        self._streams = OpenStreams()        # for the kill switch: cut when killed
        self._sweeper: asyncio.Task[None] | None = None
        self._resolve: Any = None
        self._tunnel_tokens: dict[str, str] = {}
        self._answering: set[asyncio.Task[bool]] = set()
        self.control: Any = None
        self._stopping: Any = None
        self.telemetry: Telemetry | None = None
        self._evidence_path: Path | None = None

    # --- options and configuration ---------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option("fiveplane_policy", str, "", "Policy YAML file.")
        loader.add_option("fiveplane_state_dir", str, ".fiveplane",
                          "Directory for evidence and local state.")
        loader.add_option("fiveplane_instance", str, "", "Instance name in evidence records.")
        loader.add_option("fiveplane_state", str, "",
                          "Session state store (default: sqlite in the state directory).")
        loader.add_option("fiveplane_shared_state", bool, False,
                          "Other processes use the same SQLite state file (fiveplane run "
                          "--workers): cached reads first check for their writes.")
        loader.add_option("fiveplane_reload_interval", float, 1.0,
                          "Seconds between policy file checks (0 disables hot reload).")
        loader.add_option("fiveplane_control", str, "127.0.0.1:8081",
                          "HOST:PORT of the approvals console and control API ('off' to "
                          "disable; port 0 picks a free one).")
        loader.add_option("fiveplane_control_token", str, "",
                          "Control API token (default: generated in the state directory).")
        loader.add_option("fiveplane_audit_durability", str, "fsync",
                          "When a decision's record is durable before it is acted on: `fsync` "
                          "(every record fsynced first), or `batch[:SECONDS]` (written first, "
                          "fsynced within SECONDS, default 0.05: a machine crash can lose the "
                          "last records of actions taken; a proxy crash cannot).")
        loader.add_option("fiveplane_rollback_interval", float, 1.0,
                          "Seconds between checks for killed sessions whose compensations "
                          "must run (a kill may come from another process).")
        loader.add_option("fiveplane_metrics", bool, True,
                          "Serve Prometheus metrics on the control listener (/metrics).")
        loader.add_option("fiveplane_metrics_token", str, "",
                          "Bearer token /metrics requires (default: none; the control "
                          "listener is loopback-only unless configured otherwise).")
        loader.add_option("fiveplane_decision_log", bool, True,
                          "Log one line per decision other than allow (logger "
                          "fiveplane.decision).")
        loader.add_option("fiveplane_otel", bool, False,
                          "Export an OpenTelemetry span per decision (needs the otel extra; "
                          "OTEL_EXPORTER_OTLP_* configure where).")
        loader.add_option("fiveplane_test_faults", bool, False,
                          "Testing only: a request header `x-fiveplane-test-fault` raises "
                          "inside the addon, to prove that addon errors deny.")

    def configure(self, updated: set[str]) -> None:
        self._configure(updated)
        if self.gateway is not None and updated & {"ssl_verify_upstream_trusted_ca",
                                                   "ssl_insecure", "fiveplane_policy"}:
            # compensating calls trust what forwarded calls trust
            self.gateway.rollback.trust(ctx.options.ssl_verify_upstream_trusted_ca or None,
                                        insecure=ctx.options.ssl_insecure)

    def _configure(self, updated: set[str]) -> None:
        if "fiveplane_policy" not in updated and "fiveplane_state_dir" not in updated:
            return
        path = ctx.options.fiveplane_policy
        if not path:
            # Without a policy every hook denies ("not configured"): fail closed.
            log.error("fiveplane_policy is not set: every request will be denied")
            return
        try:
            policy = compile_file(path)
        except PolicyError as e:
            if self.gateway is not None:  # a reload: keep the last good policy
                log.error("policy does not compile, keeping the previous one:\n%s", e)
                self.gateway.observers.reloaded(False, self.gateway.policy.version,
                                                self.gateway.policy.name, str(e))
                return
            raise exceptions.OptionsError(f"policy does not compile:\n{e}") from e
        if self.gateway is not None and self.gateway.policy_path == Path(path):
            self.gateway.swap(policy)
            self.gateway.observers.reloaded(True, policy.version, policy.name)
            return
        telemetry = self._telemetry()
        state = Path(ctx.options.fiveplane_state_dir)
        # A stable instance name keeps one signing key across restarts (a new chain file
        # each time); the default names each process.
        instance = ctx.options.fiveplane_instance or f"{os.uname().nodename}-{os.getpid()}"
        try:
            interval = parse_durability(ctx.options.fiveplane_audit_durability)
            audit = AuditLog(state / "audit", instance, fsync_interval=interval)
            policies = PolicyStore(state / "audit" / "policies")
        except (AuditError, ValueError) as e:
            raise exceptions.OptionsError(str(e)) from e
        if interval is not None:
            log.warning("audit durability is batch: records are fsynced within %s s, after "
                        "they are acted on", interval)
        try:
            store = open_store(ctx.options.fiveplane_state or state / "state.sqlite",
                               shared=ctx.options.fiveplane_shared_state)
        except StateError as e:
            raise exceptions.OptionsError(str(e)) from e
        if self.gateway is not None:
            self.gateway.close()
        try:
            spec = ctx.options.fiveplane_state.strip()
            # approvals live beside shared state (every replica sees a decision); memory
            # state keeps them in memory; otherwise a file in the state directory
            approvals = open_approvals(
                spec if spec.startswith(("memory:", "redis://", "rediss://", "unix://"))
                else state / "approvals.sqlite", state=store)
            self.gateway = Gateway(policy, audit, instance=instance, policy_path=path,
                                   store=store, policies=policies, approvals=approvals,
                                   observers=telemetry.observers())
        except (AuditError, StateError) as e:
            raise exceptions.OptionsError(str(e)) from e
        self._evidence_path = audit.path
        if telemetry.metrics is not None:
            audit.on_batch = telemetry.metrics.audit_batch_done
            telemetry.metrics.policy_version(policy.name, policy.version)
            telemetry.metrics.watch_observers(lambda: float(self.gw().observers.errors))

    def _telemetry(self) -> Telemetry:
        """Created once per process: counters survive a change of policy file."""
        if self.telemetry is None:
            provider = None
            if ctx.options.fiveplane_otel:
                from proxy.observe.otel import setup_tracing

                try:
                    provider = setup_tracing()
                except RuntimeError as e:
                    raise exceptions.OptionsError(str(e)) from e
            self.telemetry = Telemetry.create(
                metrics=ctx.options.fiveplane_metrics,
                decision_log=ctx.options.fiveplane_decision_log, otel_provider=provider)
        return self.telemetry

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._resolve is None:
            self._resolve = loop.getaddrinfo
            loop.getaddrinfo = self._guarded_getaddrinfo  # type: ignore[method-assign]
        if ctx.options.fiveplane_reload_interval > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_policy())
        if ctx.options.fiveplane_rollback_interval > 0 and self._rollbacks is None:
            self._rollbacks = asyncio.create_task(self._watch_kills())
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_streams())
        listen = ctx.options.fiveplane_control
        if listen != "off" and self.control is None and self.gateway is not None:
            host, _, port = listen.rpartition(":")
            assert self.gateway.approvals is not None
            for attempt in (int(port), 0):
                try:
                    self.control = start_control(
                        self.gateway.approvals, self.gateway.store,
                        state_dir=ctx.options.fiveplane_state_dir,
                        token=ctx.options.fiveplane_control_token or None,
                        host=host.strip("[]"), port=attempt, telemetry=self.telemetry,
                        metrics_token=ctx.options.fiveplane_metrics_token or None,
                        evidence=(EvidenceFinder(self._evidence_path)
                                  if self._evidence_path is not None else None))
                    break
                except OSError as e:  # another instance holds the port: take a free one
                    log.warning("control listener %s unavailable (%s)", listen, e)
            if self.control is not None:
                log.info("approvals console on %s", self.control.url)

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._rollbacks is not None:
            self._rollbacks.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.control is not None:
            stopping = self.control.stop()
            if inspect.isawaitable(stopping):
                self._stopping = asyncio.ensure_future(stopping)
        if self.gateway is not None:
            self.gateway.close()

    def gw(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("fiveplane is not configured")
        return self.gateway

    async def _watch_policy(self) -> None:
        path = self.gw().policy_path
        assert path is not None
        last = _mtime(path)
        while True:
            await asyncio.sleep(ctx.options.fiveplane_reload_interval)
            now = _mtime(path)
            if now != last:
                last = now
                self.gw().reload()

    async def _watch_kills(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.fiveplane_rollback_interval)
            try:
                await self.gw().rollback.run_killed()
            except Exception as e:  # keep polling: the next kill must still roll back
                log.error("rollback of killed sessions failed: %r", e)

    async def _sweep_streams(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            if len(self._streams) and self.gateway is not None:
                try:
                    self._cut_killed()
                except Exception as e:  # the sweeper must outlive any one bad stream
                    log.error("kill switch sweep failed: %r", e)

    def _cut_killed(self) -> None:
        """The kill switch on open streams: cut every stream of a killed session, with
        an evidence record each."""
        for doomed in self._streams.sweep(self.gw().store):
            flow, governor = doomed.handle
            response = replace(doomed.action, kind=Kind.RESPONSE, stop=StopPoint.RESPONSE_BODY)
            cut = self.gw().refuse(
                response, "session.killed",
                f"the session was killed by an operator: {doomed.reason}; its open stream "
                "is cut", outcome="cut")
            if governor is not None and governor.cut is None:
                governor.cut = cut      # whatever still arrives is dropped
            flow.metadata.setdefault(META, {})["cut"] = cut[0]
            log.info("kill switch: cut the stream of %s (decision %s)",
                     doomed.action.summary(), cut[0])
            _cut_upstream(flow)

    # --- network: the address actually connected to ------------------------------------

    async def _guarded_getaddrinfo(self, host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        infos = await self._resolve(host, port, *args, **kw)
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            for info in infos:
                address = str(info[4][0])
                blocked = self.gw().policy.network.address_verdict(address, int(port or 0),
                                                                   via=name)
                if blocked is not None:
                    self.gw().refuse(None, blocked.id, blocked.reason)
                    raise OSError(f"fiveplane: {blocked.reason}")
        except OSError:
            raise
        except Exception as e:  # refuse the connection rather than make it unchecked
            raise OSError(f"fiveplane: cannot check the resolved address: {e!r}") from e
        return infos

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        try:
            host, port = data.server.address or ("", 0)
            blocked = self.gw().policy.network.address_verdict(str(host), int(port))
            if blocked is not None:
                self.gw().refuse(None, blocked.id, blocked.reason)
                data.server.error = f"fiveplane: {blocked.reason}"
        except Exception as e:
            data.server.error = f"fiveplane: internal error, connection refused: {e!r}"

    async def _addresses(self, host: str, port: int) -> tuple[str, ...]:
        try:
            if parse_ip(host) is not None:
                return ()
        except HostError:
            return ()
        now = time.monotonic()
        cached = self._dns.get((host, port))
        if cached and cached[0] > now:
            return cached[1]
        try:
            infos = await asyncio.wait_for(self._resolve(host, port), DNS_TIMEOUT)
        except (OSError, TimeoutError):
            return ()
        found = tuple(sorted({str(i[4][0]) for i in infos}))
        if len(self._dns) > 4096:
            self._dns.clear()
        self._dns[(host, port)] = (now + 10.0, found)
        return found

    # --- stop points 1-3: connect and request ---------------------------------------------

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        # A declared oversized body is refused before it is read. mitmproxy only sends a
        # response once the whole request body has arrived (it would buffer all of it), so
        # the connection is closed at once; the reason is in the evidence log and proxy log.
        declared = flow.request.headers.get("content-length", "")
        limit = self.gw().policy.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            decision_id, _ = self.gw().refuse(
                None, "mediation.body_too_large",
                f"request body of {declared} bytes exceeds the {limit}-byte limit")
            log.warning("refused %s %s: declared body of %s bytes exceeds %s (decision %s)",
                        flow.request.method, flow.request.pretty_url, declared, limit,
                        decision_id)
            flow.metadata.setdefault(META, {})["decision_id"] = decision_id
            flow.kill()

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        headers = _header_pairs(flow.request.headers)
        result = await self.gw().settle(
            self.gw().connect(flow.request.host, flow.request.port, headers))
        flow.metadata[META] = {"connect": result.decision_id}
        if result.reply is not None:
            _respond(flow, result.reply)
            return
        # Requests inside the tunnel carry no Proxy-Authorization: they act with the
        # token the tunnel was opened with.
        token = token_from_headers(headers, self.gw().policy.identity)
        if isinstance(token, str):
            self._tunnel_tokens[flow.client_conn.id] = token

    def client_disconnected(self, client: Any) -> None:
        self._tunnel_tokens.pop(client.id, None)

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return  # already answered (e.g. a refused CONNECT)
        started = time.perf_counter()
        req = flow.request
        if ctx.options.fiveplane_test_faults and "x-fiveplane-test-fault" in req.headers:
            raise RuntimeError("injected test fault")
        view = RequestView(
            method=req.method, scheme=req.scheme, host=req.host, port=req.port,
            path=req.path,
            headers=_header_pairs(req.headers),
            body=req.raw_content or b"",
        )
        try:
            # Resolve the host as it is judged ("LOCALHOST." -> "localhost"): another
            # spelling may not resolve at all, and a decision without addresses cannot see
            # an internal destination.
            judged_host = normalize_host(req.host)
        except HostError:
            judged_host = req.host  # refused by the translation below
        addresses = await self._addresses(judged_host, req.port)
        result = await self.gw().settle(self.gw().request(
            view, addresses, connection_token=self._tunnel_tokens.get(flow.client_conn.id)))
        held = result.waits
        if held:
            # Held for a person or parked (defer, pause): this flow waits here, every other
            # flow keeps moving.
            result = await self.gw().resolve_hold(result, check=lambda: _gone(flow))
        self._remember(flow, result)
        metrics = self.telemetry.metrics if self.telemetry is not None else None
        if metrics is not None and not held:  # a person's wait is not proxy latency
            metrics.request_done(time.perf_counter() - started,
                                 "denied" if result.reply is not None else "forwarded")
        if result.reply is not None and result.action is not None \
                and ROLLBACK_KEY in result.action.extra:
            self.gw().rollback.cancel(result.action)  # journaled, then not sent after all
        if result.rollback is not None:  # the refusal answers once the session is undone
            await self.gw().rollback.run(result.rollback, {
                "kind": "refusal", "decision_id": result.decision_id,
                "rule_ids": list(result.decision.rule_ids)})
        if result.reply is not None:
            _respond(flow, result.reply)
            return
        for name in result.strip:  # agent tokens and credentials never reach the upstream
            req.headers.pop(name, None)
        if result.body is not None:  # the data plane redacted what the agent sent
            req.content = result.body
        if result.inject is not None:
            req.headers[result.inject[0]] = result.inject[1]
        if result.action is not None and result.action.host != req.host:
            # Connect to the host that was judged, not to another spelling of it (the Host
            # header is left as the client sent it).
            req.data.host = result.action.host
        if result.action is not None and result.action.kind is Kind.MCP:
            # Governed MCP responses are parsed event by event: ask for them uncompressed.
            req.headers["accept-encoding"] = "identity"

    def _remember(self, flow: http.HTTPFlow, result: RequestResult) -> None:
        meta = flow.metadata.setdefault(META, {})
        meta.update(decision_id=result.decision_id, verdict=result.decision.verdict.value,
                    rule_ids=list(result.decision.rule_ids))
        if result.forwarded and result.action is not None:
            self._actions[flow.id] = result.action

    # --- stop points 4-6: responses -------------------------------------------------------

    @fail_closed
    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        ctype = flow.response.headers.get("content-type", "").lower()
        action = self._actions.get(flow.id)
        sse = "text/event-stream" in ctype
        if action is None or action.kind is not Kind.MCP:
            if not sse:
                return  # buffered: the response hook scans it
            encoded = flow.response.headers.get("content-encoding", "identity").lower()
            if action is None or self.gw().policy.data is None or encoded not in (
                    "", "identity"):
                flow.response.stream = True  # never buffer a stream we do not scan
                if action is not None:
                    self._streams.add(flow.id, action, (flow, None))
                return
            scanner = StreamGovernor(self.gw(), action, sse=True)
            self._governors[flow.id] = scanner  # type: ignore[assignment]
            flow.response.stream = self._plain_stream(flow, scanner)
            self._streams.add(flow.id, action, (flow, scanner))
            return
        refused = self.gw().session_created(action, flow.response.headers.get("mcp-session-id"))
        if refused is not None:
            _respond(flow, refused)
            return
        if not sse:
            return
        governor = self.gw().governor(action)
        self._governors[flow.id] = governor
        flow.response.stream = self._stream_filter(flow, governor)
        self._streams.add(flow.id, action, (flow, governor))

    def _stream_filter(self, flow: http.HTTPFlow,
                       governor: ResponseGovernor) -> Callable[[bytes], list[bytes]]:
        encoded = flow.response is not None and flow.response.headers.get(
            "content-encoding", "identity").lower() not in ("", "identity")

        def filter_chunk(chunk: bytes) -> list[bytes]:
            # Runs synchronously inside mitmproxy's stream loop; never return b"".
            try:
                if encoded:
                    if governor.cut is None:
                        governor.cut = self.gw().refuse(
                            None, "mediation.encoded_stream",
                            "the server compressed an MCP event stream; it cannot be governed")
                        self._cut_soon(flow)
                        decision_id, decision = governor.cut
                        return [sse_error_event(governor.request.rpc_id, decision, decision_id)]
                    return []
                was_cut = governor.cut is not None
                out = governor.sse(chunk)
                if governor.answers:
                    self._answer_soon(flow, governor)
                if governor.cut is not None and not was_cut:
                    self._cut_soon(flow)
                return [b for b in out if b]
            except Exception as e:
                if governor.cut is not None:
                    return []
                governor.cut = self.gw().refuse(None, "addon.error",
                                               f"error while governing a stream: {e!r}")
                self._cut_soon(flow)
                decision_id, decision = governor.cut
                return [sse_error_event(governor.request.rpc_id, decision, decision_id)]

        return filter_chunk

    def _plain_stream(self, flow: http.HTTPFlow,
                      scanner: StreamGovernor) -> Callable[[bytes], list[bytes]]:
        def filter_chunk(chunk: bytes) -> list[bytes]:
            try:
                was_cut = scanner.cut is not None
                out = scanner(chunk)
                if scanner.cut is not None and not was_cut:
                    self._cut_soon(flow)
                return out
            except Exception as e:
                log.error("stream scan failed, cutting: %r", e)
                if scanner.cut is None:
                    scanner.cut = self.gw().refuse(None, "addon.error", repr(e))
                    self._cut_soon(flow)
                return []

        return filter_chunk

    def _answer_soon(self, flow: http.HTTPFlow, governor: ResponseGovernor) -> None:
        """Answer withheld server requests for the client (``proxy.mcp.answer``)."""
        answers, governor.answers = governor.answers, []
        verify = upstream_trust(ctx.options.ssl_verify_upstream_trusted_ca,
                                ctx.options.ssl_insecure)
        headers = dict(flow.request.headers.items())
        for rpc_id, decision_id, decision in answers:
            task = asyncio.get_running_loop().create_task(answer_server(
                self.gw(), governor.request, rpc_id, decision, decision_id,
                url=flow.request.url, headers=headers, verify=verify, resolve=self._addresses))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    def _cut_soon(self, flow: http.HTTPFlow) -> None:
        asyncio.get_running_loop().call_soon(_cut_upstream, flow)
        governor = self._governors.get(flow.id)
        metrics = self.telemetry.metrics if self.telemetry is not None else None
        if metrics is not None and governor is not None and governor.cut is not None:
            metrics.stream_cut(governor.cut[1].rule_ids)

    @fail_closed
    async def response(self, flow: http.HTTPFlow) -> None:
        action = self._actions.pop(flow.id, None)
        governor = self._governors.pop(flow.id, None)
        self._streams.discard(flow.id)
        resp = flow.response
        if governor is not None and governor.cut is not None:
            flow.metadata.setdefault(META, {})["cut"] = governor.cut[0]
        if action is not None and action.kind is Kind.HTTP and resp is not None:
            self.gw().completed(action, resp.status_code < 400)
        if action is None or governor is not None or resp is None:
            return
        if action.kind is not Kind.MCP:
            if ROLLBACK_KEY in action.extra:  # journal the undo from what came back
                body = b"" if resp.stream else (resp.get_content(strict=False) or b"")
                self.gw().rollback.journal(action, HttpResult(resp.status_code, body))
            self._govern_plain(flow, action)
            return
        if resp.status_code >= 300 or not resp.raw_content:
            return
        ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        governor = self.gw().governor(action)
        if ctype != "application/json":
            decision_id, decision = self.gw().refuse(
                action, "mediation.unparseable_response",
                f"MCP response with content type {ctype or 'none'!r} cannot be governed")
            _respond(flow, deny_reply(decision, decision_id, mcp=True, rpc_id=action.rpc_id))
            return
        new = governor.json_body(resp.get_content(strict=True) or b"")
        if new != resp.content:
            resp.content = new
        if governor.removed_tools:
            flow.metadata.setdefault(META, {})["removed_tools"] = governor.removed_tools

    def _govern_plain(self, flow: http.HTTPFlow, action: Action) -> None:
        resp = flow.response
        if resp is None or self.gw().policy.data is None or resp.stream:
            return
        ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        new, reply = govern_body(self.gw(), action, resp.get_content(strict=True) or b"", ctype)
        if reply is not None:
            _respond(flow, reply)
        elif new is not None:
            resp.content = new

    def error(self, flow: http.HTTPFlow) -> None:
        self._actions.pop(flow.id, None)
        self._governors.pop(flow.id, None)
        self._streams.discard(flow.id)

    # --- everything the proxy does not govern is refused ------------------------------

    def tcp_start(self, flow: Any) -> None:
        self._refuse_flow(flow, "raw TCP streams (non-HTTP traffic in a tunnel)")

    def udp_start(self, flow: Any) -> None:
        self._refuse_flow(flow, "UDP streams")

    def websocket_start(self, flow: Any) -> None:
        self._refuse_flow(flow, "WebSocket messages")

    def _refuse_flow(self, flow: Any, what: str) -> None:
        try:
            self.gw().refuse(None, "mediation.unsupported_protocol",
                            f"{what} cannot be adjudicated, so they are refused")
        finally:
            flow.kill()

    def deny_on_error(self, flow: http.HTTPFlow, hook: str, error: Exception) -> None:
        log.error("fiveplane %s hook failed, denying: %r", hook, error)
        try:
            decision_id, decision = self.gw().refuse(
                self._actions.get(flow.id), "addon.error",
                f"internal error in the {hook} hook, denied (fail closed): {error!r}")
            reply = deny_reply(decision, decision_id, mcp=False, rpc_id=None)
            if hook in ("request", "http_connect", "response", "requestheaders"):
                _respond(flow, reply)
            else:
                flow.kill()
        except Exception:
            flow.kill()


def _gone(flow: http.HTTPFlow) -> str | None:
    if not flow.client_conn.state & ConnectionState.CAN_READ:
        return "the client disconnected while the call was held"
    return None


def _header_pairs(headers: http.Headers) -> tuple[tuple[str, str], ...]:
    return tuple((k.lower(), v) for k, v in headers.items(multi=True))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns / 1e9
    except OSError:
        return -1.0


def _cut_upstream(flow: http.HTTPFlow) -> None:
    """Close the upstream of a stream at once (mitmproxy has no public API for it:
    issue #4711). Relies on Proxyserver internals, pinned by a test."""
    try:
        handler = ctx.master.addons.get("proxyserver").connections.get(flow.client_conn.id)
        io = handler and handler.transports.get(flow.server_conn)
        if io and io.handler:
            io.handler.cancel("fiveplane: stream cut")
    except Exception as e:
        log.warning("could not close upstream of cut stream: %r", e)
        flow.kill()


addons = [FiveplaneGate()]
