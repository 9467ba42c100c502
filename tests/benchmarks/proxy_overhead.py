"""Per-request latency and throughput: direct vs. bare ``mitmdump`` vs. ``fiveplane run``.

Four request series, each on its own keep-alive ``httpx.Client`` (sequential, one
connection to the proxy or upstream):

* ``http``      plain ``GET /bench`` to a local HTTP upstream (``http_upstream.py``);
* ``https``     ``GET /bench`` to a local HTTPS upstream with its own CA, intercepted
                (the proxy terminates TLS with its CA and verifies the upstream's);
* ``mcp-2026``  ``tools/call echo`` as one stateless 2026-07-28 JSON-RPC POST
                (``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name`` headers, ``_meta``);
* ``mcp-2025``  ``tools/call echo`` in a 2025-11-25 session (``initialize`` handshake
                first, then ``Mcp-Session-Id`` on every call),

against the real e2e MCP server with ``--json-response`` (each call is one POST answered
with one JSON body). Targets: direct (no proxy); bare ``mitmdump`` (no addon,
``connection_strategy=lazy`` and ``http3=false`` as fiveplane sets them, ``flow_detail=0``
because fiveplane runs mitmproxy without the flow dumper); the same mitmdump with an
addon of empty hooks (diagnostic: mitmproxy's cost of one more addon);
``python -m proxy run`` with a policy that allows exactly these calls (checked: other
calls are refused); and the same with every plane on (``every_plane``: a verified
3-block delegation chain on every request, the data plane scanning request and response
bodies; checked: no token and a body carrying a secret are refused). The audit log's
durable commit is on in both fiveplane configurations.

100 warm-up requests per series (``--quick`` 40), then N timed requests (1,000; ``--quick``
100) in 10 rounds of N/10; in every round each scenario runs its targets back to back, the target
order rotating per round, so slow phases of a noisy machine hit all targets. Every
response is checked (status and body) outside the timed window. Besides latency, the CPU
time each proxy process spends on the timed requests is read from
``/proc/PID/task/*/schedstat``. When fiveplane misses its target (or with ``profile=True``)
fiveplane is run once more under cProfile and the breakdown is added to the report.

All processes are started here in their own process groups and killed on exit, Ctrl-C
(SIGINT/SIGTERM) or error.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    E2E_DIR,
    REPO_ROOT,
    Section,
    ensure_paths,
    fmt,
    md_table,
    percentile,
    verdict,
)

ensure_paths()

import httpx  # noqa: E402
from clients import JSONRPC_ACCEPT, legacy_handshake, modern_request  # noqa: E402

MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))
UPSTREAM_READY = r"upstream listening on https?://127\.0\.0\.1:(\d+)"
MCP_READY = r"MCP server listening on http://127\.0\.0\.1:(\d+)/mcp"
MITMDUMP_READY = r"HTTP\(S\) proxy listening at 127\.0\.0\.1:(\d+)\."
FIVEPLANE_READY = r"listening on http://127\.0\.0\.1:(\d+)"
READY_TIMEOUT = 60.0

FULL_N = 1_000
QUICK_N = 100
WARMUP = 100
QUICK_WARMUP = 40
ROUNDS = 10
TARGET_RATIO = 1.10
LEGACY_VERSION = "2025-11-25"
ECHO_TEXT = "fiveplane-bench"
KEEP_ALIVE_S = 600.0

NOOP = "noop-addon"
CF = "contextforge"
ALL = "fiveplane-all"
TARGETS = ("direct", "mitmdump", NOOP, "fiveplane", ALL)
FIVEPLANES = ("fiveplane", ALL)
TARGET_LABEL = {"direct": "direct", "mitmdump": "mitmdump", NOOP: "mitmdump + no-op addon",
                "fiveplane": "fiveplane", ALL: "fiveplane, every plane on",
                CF: "IBM ContextForge (gateway)"}
CF_FULL_N = 200             # ContextForge answers in tens of ms: fewer requests
CF_QUICK_N = 50
CF_WARMUP = 20
SCENARIOS = ("http", "https", "mcp-2026", "mcp-2025")
SCENARIO_LABEL = {
    "http": "HTTP GET (plain upstream)",
    "https": "HTTPS GET (TLS upstream, intercepted)",
    "mcp-2026": "MCP tools/call, 2026-07-28 stateless",
    "mcp-2025": "MCP tools/call, 2025-11-25 session",
}


# --- processes -----------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


@dataclass
class Proc:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class Processes:
    """Starts children in their own process groups; ``stop_all`` kills every group."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        atexit.register(self.stop_all)

    def start(self, name: str, argv: Sequence[str], ready: str) -> Proc:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=fh,
                stderr=subprocess.STDOUT, env=_child_env(), cwd=str(REPO_ROOT),
                start_new_session=True,
            )
        p = Proc(name, [str(a) for a in argv], proc, log)
        self.procs.append(p)
        pattern = re.compile(ready)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            m = pattern.search(p.output())
            if m:
                p.port = int(m.group(1))
                return p
            if proc.poll() is not None or time.monotonic() > deadline:
                p.stop()
                raise RuntimeError(f"{name} did not start ({p.argv!r}, exit "
                                   f"{proc.returncode}):\n{p.output()[-4000:]}")
            time.sleep(0.02)

    def start_env(self, name: str, argv: Sequence[Any], env: dict[str, str],
                  cwd: Path | None = None) -> Proc:
        """Start with an explicit environment and no ready line (the caller polls)."""
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=fh,
                stderr=subprocess.STDOUT, env=env, cwd=str(cwd or REPO_ROOT),
                start_new_session=True,
            )
        p = Proc(name, [str(a) for a in argv], proc, log)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- requests ------------------------------------------------------------------------


@dataclass
class Series:
    scenario: str
    target: str
    client: httpx.Client
    send: Callable[[int], httpx.Response]
    check: Callable[[httpx.Response], str | None]     # None = fine, else what is wrong
    latencies_ns: list[int] = field(default_factory=list)
    sent: int = 0
    proxy_pid: int | None = None      # whose CPU time to charge to this series
    proxy_cpu_ns: int = 0

    def run(self, count: int, timed: bool) -> None:
        cpu0 = proxy_cpu_ns(self.proxy_pid) if timed and self.proxy_pid else 0
        self._run(count, timed)
        if timed and self.proxy_pid:
            self.proxy_cpu_ns += proxy_cpu_ns(self.proxy_pid) - cpu0

    def _run(self, count: int, timed: bool) -> None:
        pc = time.perf_counter_ns
        send, check, lat = self.send, self.check, self.latencies_ns
        for _ in range(count):
            i = self.sent
            self.sent += 1
            t0 = pc()
            resp = send(i)
            t1 = pc()
            problem = check(resp)
            if problem is not None:
                raise AssertionError(f"{self.scenario} via {self.target}, request {i}: {problem}")
            if timed:
                lat.append(t1 - t0)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def proxy_cpu_ns(pid: int) -> int:
    """CPU time (ns) used so far by all threads of ``pid`` and of its descendant processes
    (ContextForge runs worker pools; the proxies have none) — scheduler accounting: exact,
    unlike the 10 ms ticks of /proc/PID/stat."""
    total = 0
    for p in _descendants(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int((task / "schedstat").read_text().split()[0])
    return total


def _check_http(resp: httpx.Response) -> str | None:
    if resp.status_code != 200:
        return f"status {resp.status_code}: {resp.text[:300]}"
    if resp.json().get("path") != "/bench":
        return f"unexpected body {resp.text[:300]}"
    return None


def _check_echo(resp: httpx.Response) -> str | None:
    if resp.status_code != 200:
        return f"status {resp.status_code}: {resp.text[:300]}"
    if not resp.headers.get("content-type", "").startswith("application/json"):
        return f"content type {resp.headers.get('content-type')!r}: {resp.text[:300]}"
    msg = resp.json()
    try:
        text = msg["result"]["content"][0]["text"]
    except (KeyError, IndexError, TypeError):
        return f"not an echo result: {resp.text[:300]}"
    return None if text == ECHO_TEXT else f"echoed {text!r}"


def _bodies(count: int, legacy: bool, tool: str = "echo") -> list[bytes]:
    """Pre-encoded tools/call bodies with distinct ids (built before timing)."""
    params = {"name": tool, "arguments": {"text": ECHO_TEXT}}
    out = []
    for i in range(count):
        if legacy:
            body: dict[str, Any] = {"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                                    "params": params}
        else:
            body, _ = modern_request("tools/call", params, id=i + 1)
        out.append(json.dumps(body).encode())
    return out


def make_series(scenario: str, target: str, proxy_url: str | None, upstream_url: str,
                mcp_url: str, total: int, tool: str = "echo",
                client_headers: dict[str, str] | None = None, *, https_url: str = "",
                verify: Any = True, proxy_headers: dict[str, str] | None = None) -> Series:
    """``verify``: the CA file the client trusts for HTTPS (the proxy's CA through a proxy,
    the upstream's CA direct); ``proxy_headers``: sent to the proxy (on CONNECT and with
    every plain-HTTP request), e.g. ``Proxy-Authorization`` carrying a delegation token."""
    # httpx drops idle keep-alive connections after 5 s by default; the interleaved
    # rounds idle each client longer than that.
    proxy: Any = proxy_url
    if proxy_url and proxy_headers:
        proxy = httpx.Proxy(proxy_url, headers=proxy_headers)
    client = httpx.Client(proxy=proxy, trust_env=False, timeout=30.0, verify=verify,
                          limits=httpx.Limits(keepalive_expiry=KEEP_ALIVE_S),
                          headers=client_headers)
    if scenario in ("http", "https"):
        url = (https_url if scenario == "https" else upstream_url) + "/bench"
        get = client.get
        return Series(scenario, target, client, lambda _i: get(url), _check_http)
    post = client.post
    base = {"Content-Type": "application/json", "Accept": JSONRPC_ACCEPT}
    if scenario == "mcp-2026":
        _, headers = modern_request("tools/call", {"name": tool, "arguments": {}})
        headers = {**base, **headers}
        bodies = _bodies(total, legacy=False, tool=tool)
    else:
        session = legacy_handshake(client, mcp_url, protocol_version=LEGACY_VERSION,
                                   client_name=f"bench-{target}")
        headers = {**base, "Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY_VERSION}
        bodies = _bodies(total, legacy=True, tool=tool)
    return Series(scenario, target, client,
                  lambda i: post(mcp_url, content=bodies[i], headers=headers), _check_echo)


# --- policy --------------------------------------------------------------------------


def write_policy(path: Path, upstream_port: int, mcp_port: int, https_port: int,
                 extra: str = "") -> None:
    ports = f"{upstream_port}, {https_port}, {mcp_port}"
    path.write_text(f"""\
version: 1
name: bench-proxy-overhead
description: Allows exactly the benchmark calls; everything else is denied.
defaults:
  effect: deny
network:
  allow:
    - {{id: bench-loopback, host: 127.0.0.1, ports: [{ports}], schemes: [http, https]}}
  allow_internal:
    - {{id: bench-loopback, cidr: 127.0.0.1/32, ports: [{ports}]}}
mcp_servers:
  bench:
    url: http://127.0.0.1:{mcp_port}/mcp
rules:
  - id: bench-echo
    match: {{server: bench, tool: echo}}
    effect: allow
  - id: bench-get
    match: {{host: 127.0.0.1, port: {upstream_port}, method: GET, path: /bench}}
    effect: allow
  - id: bench-get-tls
    match: {{scheme: https, host: 127.0.0.1, port: {https_port}, method: GET, path: /bench}}
    effect: allow
{extra}""")


CHAIN = (("alice", "human"), ("planner", "agent"), ("worker", "agent"))


def every_plane(work: Path, upstream_port: int, mcp_port: int, https_port: int
                ) -> tuple[str, str]:
    """The policy sections that turn every plane on, and the token to present: a trusted
    root key; a delegation chain alice (human) -> planner -> worker, each block granting
    exactly the benchmark calls (so the identity plane verifies and intersects three
    blocks per request); the data plane scanning requests and responses with every
    built-in detector (secrets deny on the way out, redact on the way back). The audit
    log's durable commit is always on."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from proxy.identity import attenuate, mint
    from proxy.identity.keys import public_pem

    root = Ed25519PrivateKey.generate()
    pub = work / "root.pub"
    pub.write_bytes(public_pem(root.public_key()))
    grants = [{"server": "bench", "tool": "echo"},
              {"host": "127.0.0.1", "port": upstream_port, "method": "GET", "path": "/bench"},
              {"scheme": "https", "host": "127.0.0.1", "port": https_port, "method": "GET",
               "path": "/bench"}]
    now = time.time()
    token = mint(root, CHAIN[0], grants, 24 * 3600, now)
    for principal in CHAIN[1:]:
        token = attenuate(token, principal, grants, 24 * 3600, now)
    extra = f"""\
identity:
  trusted_roots:
    - {{name: bench, key_file: {pub}}}
  anonymous: deny
data:
  detect: [secrets, pii]
  requests: {{secrets: deny, pii: redact}}
  responses: {{secrets: redact, pii: redact}}
"""
    return extra, token.to_text()


def _sanity_every_plane(proxy_url: str, upstream_url: str, mcp_url: str,
                        token: str) -> list[str]:
    """The every-plane fiveplane must verify the chain and scan: no token is refused, a
    request carrying a secret is refused by the data plane, and the plain checks hold
    with a valid token."""
    problems = []
    with httpx.Client(proxy=proxy_url, trust_env=False, timeout=30.0) as c:
        r = c.get(upstream_url + "/bench")
        if r.status_code == 200:
            problems.append("GET /bench without a token via fiveplane-all -> 200, expected a "
                            "refusal (identity.anonymous)")
    auth = {"Proxy-Authorization": f"Bearer {token}"}
    with httpx.Client(proxy=httpx.Proxy(proxy_url, headers=auth), trust_env=False,
                      timeout=30.0) as c:
        secret = "ghp_" + "Zq8mWv3Ls0Kd7Rt2Yx5Bn1Hc4Jp6Gf9Ta2Eu"
        r = c.post(upstream_url + "/bench", content=f"token={secret}".encode())
        if r.status_code != 403 or "data.secrets" not in r.text:
            problems.append(f"POST with a GitHub token via fiveplane-all -> {r.status_code} "
                            f"{r.text[:200]}, expected a data.secrets refusal")
    problems += _sanity_fiveplane(proxy_url, upstream_url, mcp_url, auth)
    return problems


def _sanity_fiveplane(proxy_url: str, upstream_url: str, mcp_url: str,
                      proxy_headers: dict[str, str] | None = None) -> list[str]:
    """fiveplane must really govern: calls outside the policy are refused."""
    problems = []
    proxy: Any = httpx.Proxy(proxy_url, headers=proxy_headers) if proxy_headers else proxy_url
    with httpx.Client(proxy=proxy, trust_env=False, timeout=30.0) as c:
        r = c.get(upstream_url + "/other")
        if r.status_code != 403:
            problems.append(f"GET /other via fiveplane -> {r.status_code}, expected 403")
        body, headers = modern_request("tools/call", {"name": "delete_all",
                                                      "arguments": {"confirm": True}})
        r = c.post(mcp_url, json=body,
                   headers={"Content-Type": "application/json", "Accept": JSONRPC_ACCEPT,
                            **headers})
        if "error" not in r.json() or r.json()["error"].get("code") != -32003:
            problems.append(f"tools/call delete_all via fiveplane not denied: {r.text[:200]}")
    return problems


# --- profiling: where does fiveplane's extra time go? -----------------------------------

IDLE_FUNCS = ("<method 'poll' of 'select.epoll' objects>", "<method 'select' of")
PROFILE_REQUESTS = 600      # per scenario
HOOKS = ("requestheaders", "request", "responseheaders", "response")
CORE_FUNCS = ("request", "adjudicate", "_recorded", "translate_request", "json_body", "decide",
              "write", "make_record", "loads_strict", "decode_body", "refuse", "_addresses")

ProfileKey = tuple[str, int, str]
ProfileStats = dict[ProfileKey, tuple[int, int, float, float, Any]]


def _where(filename: str) -> str:
    f = filename.replace(str(REPO_ROOT) + "/", "")
    f = re.sub(r".*/site-packages/", "", f)
    return re.sub(r".*/lib/python3\.\d+/", "<stdlib>/", f)


def _group(filename: str) -> str:
    f = _where(filename)
    if f.startswith(("proxy/", "addons/")):
        return "fiveplane (proxy/, addons/)"
    if f.startswith("mitmproxy/"):
        return "mitmproxy"
    if f.startswith("<stdlib>/asyncio/") or "_asyncio" in f:
        return "asyncio"
    if f.startswith("<stdlib>/") or f == "~":
        return "stdlib and builtins"
    return "other packages"


def _label(key: ProfileKey) -> str:
    filename, line, func = key
    return f"`{func}` ({_where(filename)}:{line})" if line else f"`{func}`"


def profile_fiveplane(procs: Processes, work: Path, five_argv: list[Any], upstream_url: str,
                      mcp_url: str, cpu_us_per_req: float, log: Callable[[str], None],
                      **series_kw: Any) -> str:
    """Run fiveplane under ``python -m cProfile``, drive every scenario through it, stop it
    with SIGINT; markdown breakdown. cProfile inflates absolute times, so shares of the
    profiled busy time are converted to µs with the CPU per request measured without the
    profiler (``cpu_us_per_req``)."""
    import pstats

    log("  proxy: profiling the fiveplane process")
    out = work / "fiveplane.prof"
    proc = procs.start("fiveplane-cprofile", [sys.executable, "-m", "cProfile", "-o", out,
                                              *five_argv], FIVEPLANE_READY)
    url = f"http://127.0.0.1:{proc.port}"
    n = 0
    for sc in SCENARIOS:
        s = make_series(sc, "fiveplane-cprofile", url, upstream_url, mcp_url, PROFILE_REQUESTS,
                        **series_kw)
        try:
            s.run(PROFILE_REQUESTS, timed=False)
            n += PROFILE_REQUESTS
        finally:
            s.client.close()
    proc.proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.proc.wait(timeout=60)
    if not out.exists():
        return f"(no profile written; fiveplane output:\n{proc.output()[-2000:]})"
    raw: ProfileStats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    busy = {k: v for k, v in raw.items() if not k[2].startswith(IDLE_FUNCS)}
    total = sum(v[2] for v in busy.values())

    def share(t: float) -> str:
        return fmt(100 * t / total, 1) + " %"

    def est(t: float) -> str:
        return fmt(cpu_us_per_req * t / total, 0)

    groups: dict[str, float] = {}
    for key, v in busy.items():
        groups[_group(key[0])] = groups.get(_group(key[0]), 0.0) + v[2]
    lines = [
        f"Profile of the fiveplane process (cProfile, wall-clock timer; {n:,} requests, "
        f"{PROFILE_REQUESTS} per scenario; idle epoll time excluded). \"≈ µs/req\" = share "
        f"of profiled busy time x the {cpu_us_per_req:,.0f} µs CPU per request fiveplane used "
        "without the profiler (mean over the scenarios):", "",
        md_table(["own time in", "share", "≈ µs/req"],
                 [[g, share(t), est(t)] for g, t in sorted(groups.items(), key=lambda kv: -kv[1])])]

    rows = []
    for key, v in sorted(busy.items(), key=lambda kv: -kv[1][3]):
        where = _where(key[0])
        if ((where.startswith("addons/") and key[2] in (*HOOKS, "wrapper"))
                or (where.startswith("proxy/") and key[2] in CORE_FUNCS)):
            rows.append([_label(key), f"{v[1] / n:.2f}", share(v[3]), est(v[3])])
    lines += ["", "fiveplane's hooks and core functions, incl. callees (`wrapper` = the four "
              "flow hooks through `fail_closed`, i.e. everything fiveplane does per request):", "",
              md_table(["function", "calls / req", "share", "≈ µs/req"], rows)]
    top = sorted(busy.items(), key=lambda kv: -kv[1][2])
    rows = [[_label(k), f"{v[1] / n:.2f}", share(v[2]), share(v[3])] for k, v in top
            if _where(k[0]).startswith(("proxy/", "addons/"))][:15]
    lines += ["", "fiveplane functions by own time:", "",
              md_table(["function", "calls / req", "own", "incl. callees"], rows)]
    rows = [[_label(k), f"{v[1] / n:.2f}", share(v[2])] for k, v in top[:12]]
    lines += ["", "whole process, top functions by own time:", "",
              md_table(["function", "calls / req", "own"], rows)]
    return "\n".join(lines)


# --- the benchmark -------------------------------------------------------------------


def _stats(lat_ns: list[int]) -> dict[str, float]:
    s = sorted(lat_ns)
    return {
        "n": len(s),
        "p50": percentile(s, 50) / 1e6,
        "p90": percentile(s, 90) / 1e6,
        "p99": percentile(s, 99) / 1e6,
        "rps": len(s) / (sum(s) / 1e9),
    }


def _p50(s: Series) -> float:
    return percentile(sorted(s.latencies_ns), 50)


def _evidence_timing(state_dir: Path) -> dict[str, tuple[int, float, float]]:
    """Per action kind and scheme (or MCP method): (records, p50 adjudication µs, p50
    decide + build the record µs), from the evidence records under ``state_dir``."""
    from clients import read_evidence

    by: dict[str, tuple[list[float], list[float]]] = {}
    for rec in read_evidence(state_dir):
        latency = rec.get("latency_us") or {}
        if "adjudication" not in latency:
            continue
        action = rec.get("action") or {}
        key = f"{action.get('kind', '-')} {action.get('mcp_method') or action.get('scheme', '')}"
        adj, tot = by.setdefault(key.strip(), ([], []))
        adj.append(latency["adjudication"])
        tot.append(latency["total"])
    return {k: (len(a), percentile(sorted(a), 50), percentile(sorted(t), 50))
            for k, (a, t) in by.items()}


def run(quick: bool = False, log: Callable[[str], None] = print,
        profile: bool | None = None, contextforge: bool = True) -> Section:
    """``profile``: True always, False never, None (default) when the target is missed.
    ``contextforge``: also measure the MCP scenarios through IBM ContextForge (its peer
    venv must exist, see ``peers.py``)."""
    import peers

    n = QUICK_N if quick else FULL_N
    warmup = QUICK_WARMUP if quick else WARMUP
    per_round = n // ROUNDS
    cf_n = CF_QUICK_N if quick else CF_FULL_N
    section = Section("Proxy overhead: direct vs. bare mitmdump vs. fiveplane"
                      + (" (and IBM ContextForge)" if contextforge else ""))
    gw = None
    evidence: dict[str, dict[str, tuple[int, float, float]]] = {}
    cf_note = "" if contextforge else "not run (`--no-contextforge`)"
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    tmp = tempfile.TemporaryDirectory(prefix="fiveplane-bench-")
    work = Path(tmp.name)
    procs = Processes(work)
    series: list[Series] = []
    profile_md = None
    try:
        confdir = work / "certs"
        from mitmproxy import certs
        certs.CertStore.create_store(confdir, "mitmproxy", 2048)

        py = sys.executable
        upstream = procs.start("http-upstream", [py, E2E_DIR / "servers" / "http_upstream.py",
                                                 "--port", "0"], UPSTREAM_READY)
        mcp = procs.start("mcp-server", [py, BENCH_DIR / "mcp_server_bench.py", "--port",
                                         "0", "--json-response", "--name", "bench"], MCP_READY)
        tls_dir = work / "upstream-tls"
        tls_upstream = procs.start("https-upstream", [
            py, E2E_DIR / "servers" / "http_upstream.py", "--port", "0", "--tls-dir", tls_dir],
            UPSTREAM_READY)
        upstream_ca = tls_dir / "ca.pem"
        upstream_url = f"http://127.0.0.1:{upstream.port}"
        https_url = f"https://127.0.0.1:{tls_upstream.port}"
        mcp_url = f"http://127.0.0.1:{mcp.port}/mcp"
        policy = work / "policy.yaml"
        write_policy(policy, upstream.port, mcp.port, tls_upstream.port)
        policy_all = work / "policy-every-plane.yaml"
        extra, token = every_plane(work, upstream.port, mcp.port, tls_upstream.port)
        write_policy(policy_all, upstream.port, mcp.port, tls_upstream.port, extra)
        mitm_argv: list[Any] = [
            MITMDUMP, "--listen-host", "127.0.0.1", "-p", "0",
            "--set", f"confdir={confdir}", "--set", "connection_strategy=lazy",
            "--set", "http3=false", "--set", "flow_detail=0",
            "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]

        def five_argv(tag: str, pol: Path = policy) -> list[Any]:
            return ["-m", "proxy", "run", "--policy", pol, "--listen", "127.0.0.1:0",
                    "--certs", confdir, "--state-dir", work / f"fiveplane-{tag}",
                    "--reload-interval", "0", "--upstream-ca", upstream_ca]

        proxies = {
            "mitmdump": procs.start("mitmdump", mitm_argv, MITMDUMP_READY),
            **({} if quick else {NOOP: procs.start(  # the diagnostic is left out of --quick
                "mitmdump-noop", [*mitm_argv, "-s", BENCH_DIR / "noop_addon.py"],
                MITMDUMP_READY)}),
            "fiveplane": procs.start("fiveplane", [py, *five_argv("state")], FIVEPLANE_READY),
            ALL: procs.start("fiveplane-all", [py, *five_argv("all", policy_all)],
                             FIVEPLANE_READY),
        }
        log(f"  proxy: upstream :{upstream.port}, TLS upstream :{tls_upstream.port}, MCP "
            f"server :{mcp.port}, " + ", ".join(f"{k} :{v.port}" for k, v in proxies.items()))

        five_url = f"http://127.0.0.1:{proxies['fiveplane'].port}"
        problems = _sanity_fiveplane(five_url, upstream_url, mcp_url)
        problems += _sanity_every_plane(f"http://127.0.0.1:{proxies[ALL].port}", upstream_url,
                                        mcp_url, token)
        if problems:
            raise AssertionError("fiveplane does not govern as expected: " + "; ".join(problems))
        import ssl
        proxy_ca = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))
        direct_ca = ssl.create_default_context(cafile=str(upstream_ca))
        token_auth = {"Proxy-Authorization": f"Bearer {token}"}

        if contextforge:
            from contextforge import sanity as cf_sanity
            from contextforge import start as cf_start
            cf_py = peers.python("contextforge")
            if cf_py is None:
                cf_note = f"not run: {peers.missing_reason('contextforge')}"
            else:
                try:
                    gw = cf_start(procs, work, cf_py, mcp.port, _child_env(), log)
                    bad = cf_sanity(gw, JSONRPC_ACCEPT)
                    if bad:
                        raise RuntimeError("; ".join(bad))
                except RuntimeError as e:
                    cf_note = f"could not run: {e}"
                    gw = None
                    log(f"  proxy: ContextForge {cf_note[:300]}")

        def targets_for(sc: str) -> tuple[str, ...]:
            ts = tuple(t for t in TARGETS if t == "direct" or t in proxies)
            return (*ts, CF) if gw is not None and sc.startswith("mcp") else ts

        table: dict[tuple[str, str], Series] = {}
        for sc in SCENARIOS:
            for t in targets_for(sc):
                if t == CF:
                    assert gw is not None
                    s = make_series(sc, t, None, upstream_url, gw.url, CF_WARMUP + cf_n,
                                    tool=gw.tool, client_headers=gw.headers)
                    s.proxy_pid = gw.pid
                else:
                    proxy = proxies.get(t)
                    s = make_series(sc, t, proxy and f"http://127.0.0.1:{proxy.port}",
                                    upstream_url, mcp_url, warmup + n, https_url=https_url,
                                    verify=proxy_ca if proxy else direct_ca,
                                    proxy_headers=token_auth if t == ALL else None)
                    s.proxy_pid = proxy and proxy.proc.pid
                table[(sc, t)] = s
                series.append(s)
        for s in series:
            s.run(CF_WARMUP if s.target == CF else warmup, timed=False)
        log(f"  proxy: warm-up done ({warmup} requests x {len(series)} series"
            + (f", {CF_WARMUP} for ContextForge" if gw else "") + ")")

        for rnd in range(ROUNDS):
            for sc in SCENARIOS:
                ts = targets_for(sc)
                k = rnd % len(ts)
                for t in ts[k:] + ts[:k]:
                    gc.collect()
                    gc.disable()
                    try:
                        table[(sc, t)].run(cf_n // ROUNDS if t == CF else per_round,
                                           timed=True)
                    finally:
                        gc.enable()
            log(f"  proxy: round {rnd + 1}/{ROUNDS} done")

        for p in (upstream, tls_upstream, mcp, *proxies.values()):
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} died during the run:\n{p.output()[-3000:]}")
        for s in series:
            s.client.close()
        for proxy in proxies.values():
            proxy.stop()     # flushes the audit logs before they are read
        evidence = {TARGET_LABEL[t]: _evidence_timing(work / f"fiveplane-{tag}")
                    for t, tag in (("fiveplane", "state"), (ALL, "all"))}
        missed = [sc for sc in SCENARIOS if _p50(table[(sc, "fiveplane")])
                  > TARGET_RATIO * _p50(table[(sc, "mitmdump")])]
        if profile or (profile is None and missed):
            if missed and profile is None:
                log(f"  proxy: target missed ({', '.join(missed)})")
            five_series = [table[(sc, "fiveplane")] for sc in SCENARIOS]
            cpu_per_req = (sum(x.proxy_cpu_ns for x in five_series) / 1e3
                           / sum(len(x.latencies_ns) for x in five_series))
            profile_md = profile_fiveplane(procs, work, five_argv("profile"), upstream_url,
                                           mcp_url, cpu_per_req, log, https_url=https_url,
                                           verify=proxy_ca)
    finally:
        for s in series:
            s.client.close()
        procs.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        tmp.cleanup()

    rows = []
    summary = []
    peer_rows = []
    for sc in SCENARIOS:
        ts = [t for t in (*TARGETS, CF) if (sc, t) in table]
        st = {t: _stats(table[(sc, t)].latencies_ns) for t in ts}
        cpu = {t: table[(sc, t)].proxy_cpu_ns / 1e3 / max(1, len(table[(sc, t)].latencies_ns))
               for t in ts}
        if CF in st:
            c, f = st[CF], st["fiveplane"]
            peer_rows.append([SCENARIO_LABEL[sc], f"{c['n']:,} / {f['n']:,}", fmt(c["p50"], 3),
                              fmt(f["p50"], 3), f"**{c['p50'] / f['p50']:,.1f}x**",
                              fmt(c["p99"], 3), fmt(f["p99"], 3), fmt(c["rps"], 0),
                              fmt(f["rps"], 0), fmt(cpu[CF], 0), fmt(cpu["fiveplane"], 0)])
        for t in ts:
            added = st[t]["p50"] - st["direct"]["p50"]
            ratio = st[t]["p50"] / st["mitmdump"]["p50"]
            rows.append([SCENARIO_LABEL[sc] if t == "direct" else "", TARGET_LABEL[t],
                         f"{st[t]['n']:,}", fmt(st[t]["p50"], 3), fmt(st[t]["p90"], 3),
                         fmt(st[t]["p99"], 3), fmt(st[t]["rps"], 0),
                         "" if t == "direct" else f"{added:+.3f}",
                         "" if t == "direct" else f"{ratio:.3f}",
                         "" if t == "direct" else fmt(cpu[t], 0)])
        m, d = st["mitmdump"], st["direct"]
        for t in FIVEPLANES:
            f = st[t]
            ratio = f["p50"] / m["p50"]
            ok = ratio <= TARGET_RATIO
            if not ok:
                section.missed.append(f"{sc}: {TARGET_LABEL[t]} / mitmdump p50 {ratio:.3f} > "
                                      f"{TARGET_RATIO}")
            section.data.setdefault("p50_ratio", {})[(sc, t)] = ratio
            summary.append([SCENARIO_LABEL[sc] if t == "fiveplane" else "", TARGET_LABEL[t],
                            f"**{ratio:.3f}**", f"{f['p90'] / m['p90']:.3f}",
                            f"{f['p50'] - m['p50']:+.3f}", f"{f['p50'] - d['p50']:+.3f}",
                            f"{cpu[t] / cpu['mitmdump']:.3f}",
                            f"{cpu[t] - cpu['mitmdump']:+,.0f}",
                            f"{cpu[NOOP] - cpu['mitmdump']:+,.0f}" if NOOP in cpu else "-",
                            f"≤ {TARGET_RATIO:.2f}: {verdict(ok)}"])
    section.add(md_table(
        ["scenario", "target", "requests", "p50 ms", "p90 ms", "p99 ms", "req/s",
         "p50 added ms vs direct", "p50 / mitmdump", "proxy CPU µs/req"],
        rows, align=["l", "l"] + ["r"] * 8))
    section.add("fiveplane vs. bare mitmdump (same run):\n\n" + md_table(
        ["scenario", "fiveplane", "p50 ratio", "p90 ratio", "p50 added ms vs mitmdump",
         "p50 added ms vs direct", "proxy CPU ratio", "proxy CPU added µs/req",
         "of which: no-op hooks µs/req", "target (p50 ratio)"], summary,
        align=["l", "l"] + ["r"] * 7 + ["l"]))
    if contextforge:
        if peer_rows:
            assert gw is not None
            section.data["contextforge"] = {"version": gw.version, "startup_s": gw.startup_s}
            section.add(
                f"Peer gateway, same run: IBM ContextForge {gw.version} vs. fiveplane, MCP "
                "`tools/call echo` (ContextForge: virtual server exposing only the echo tool = "
                "the allow rule; fiveplane: the bench policy):\n\n" + md_table(
                    ["scenario", "requests CF / fiveplane", "ContextForge p50 ms",
                     "fiveplane p50 ms", "p50 ratio CF / fiveplane", "ContextForge p99 ms",
                     "fiveplane p99 ms", "ContextForge req/s", "fiveplane req/s",
                     "ContextForge CPU µs/req (process tree)", "fiveplane CPU µs/req"],
                    peer_rows, align=["l"] + ["r"] * 10)
                + f"\n\n- ContextForge: {cf_n} timed requests per scenario ({ROUNDS} rounds, "
                f"rotating with the other targets), {CF_WARMUP} warm-up; a *reverse* gateway: "
                "the client talks MCP to `/servers/<id>/mcp` with an admin JWT, ContextForge "
                "calls the same MCP server; SQLite in the run's temp dir, in-memory cache (no "
                "Redis), stateful sessions on, rate limiting off (default: HTTP 429 after 100 "
                f"MCP requests per minute); started in {gw.startup_s:.0f} s (migrations, "
                "worker pools)")
        else:
            section.add(f"IBM ContextForge: {cf_note}")
    ev_rows = [[who if i == 0 else "", k, f"{c:,}", fmt(a, 1), fmt(t, 1)]
               for who, by in evidence.items()
               for i, (k, (c, a, t)) in enumerate(sorted(by.items()))]
    if ev_rows:
        section.add("Inside fiveplane, from its evidence logs (all decisions of the run, incl. "
                    "warm-up and the sanity checks; `total` = from the session context to the "
                    "record queued, without waiting for the fsync):\n\n" + md_table(
                        ["fiveplane", "action", "decisions", "p50 adjudication µs",
                         "p50 total µs"], ev_rows, align=["l", "l", "r", "r", "r"]))
    section.add(
        f"- {n:,} timed requests per row ({ROUNDS} rounds x {per_round}, target order "
        f"rotating), {warmup} warm-up requests per series; sequential on one keep-alive "
        "httpx client per series, so req/s = 1 / mean latency\n"
        "- mitmdump: `--set connection_strategy=lazy --set http3=false --set flow_detail=0`; "
        "fiveplane: `python -m proxy run --reload-interval 0 --upstream-ca CA` (lazy, no "
        "HTTP/3, no dumper), the bench policy: network allow list + one allow rule per call, "
        "audit log with its durable commit (every decision fsynced before the request is "
        "forwarded)\n"
        f"- `{TARGET_LABEL[ALL]}`: the same policy plus `identity` (a trusted Ed25519 root, "
        "`anonymous: deny`; the client presents a 3-block delegation token alice (human) → "
        "planner → worker in `Proxy-Authorization: Bearer`, verified and intersected per "
        "request; the HTTPS tunnel acts with the token it was opened with) and `data` "
        "(`detect: [secrets, pii]`, requests: secrets deny / pii redact, responses: redact: "
        "every request body and every response body is scanned); checked before timing: no "
        "token is refused, a body carrying a GitHub token is refused by the data plane\n"
        "- HTTPS GET: the upstream has its own CA (tests/e2e/servers/http_upstream.py "
        "`--tls-dir`), given to mitmdump (`ssl_verify_upstream_trusted_ca`) and fiveplane "
        "(`--upstream-ca`); clients trust the proxy's CA (direct: the upstream's); one "
        "CONNECT tunnel per client, kept alive, so the timed requests are inside the tunnel\n"
        f"- `{TARGET_LABEL[NOOP]}` (diagnostic): the same mitmdump with "
        "tests/benchmarks/noop_addon.py, empty async hooks where fiveplane has hooks: the cost "
        "of mitmproxy dispatching one more addon, without any fiveplane code\n"
        "- MCP server: tests/e2e/servers/mcp_server.py `--json-response` run through "
        "tests/benchmarks/mcp_server_bench.py (TCP_NODELAY on its listening socket, else "
        "every response waits ~40 ms for Nagle/delayed ACK; keep-alive 600 s); clients: "
        "keep-alive expiry 600 s\n"
        "- proxy CPU µs/req: CPU time of the proxy process (all threads, "
        "/proc/PID/task/*/schedstat) over the timed chunks of the series / requests")
    if profile_md:
        section.add(profile_md)
    return section


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="cProfile the fiveplane process after the run (default: on a miss)")
    p.add_argument("--contextforge", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure IBM ContextForge (its peer venv, see peers.py)")
    args = p.parse_args(argv)
    print(run(args.quick, profile=args.profile, contextforge=args.contextforge).markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
