"""Replay at scale: a capture of 100,000 flows streams through with bounded memory.

    .venv/bin/python tests/benchmarks/replay_bench.py [--flows N] [--quick] [--keep DIR]

Writes synthetic captures (a mitmproxy flow file and a HAR 1.2 file; MCP calls allowed
and denied, an SSE response with a server notification the policy denies, plain HTTP,
CONNECT), then runs ``python -m proxy.replay replay CAPTURE --policy P --format json``
in a child process per capture and size, and reports wall time, flows/s, actions and
the child's peak RSS (its own ``VmHWM``). The same capture at 1/10 of the size shows that
memory does not grow with the capture. A what-if (``--against``) on the largest flow
file is timed too. Markdown on stdout, progress on stderr. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

POLICY = """\
version: 1
name: replay-bench
defaults: {effect: deny}
network:
  allow: [{host: "*"}]
  deny: [{id: paste, host: pastebin.com}]
mcp_servers:
  crm: {url: "https://crm.example.com/mcp"}
rules:
  - {id: crm-read, match: {server: crm, tool: [get_customer, echo]}, effect: allow}
  - {id: refund-small, match: {server: crm, tool: refund, args: {amount: {le: 100}}},
     effect: allow}
  - {id: no-bulk, match: {server: crm, tool: "delete_*"}, effect: deny}
  - {id: no-logs, match: {server: crm, mcp_method: notifications/message}, effect: deny}
  - {id: api-read, match: {host: api.example.com, method: GET, path: "/v1/**"}, effect: allow}
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _calls(i: int) -> tuple[str, dict[str, Any]]:
    kinds = [("get_customer", {"customer_id": f"c-{i}"}), ("echo", {"text": "x" * 200}),
             ("refund", {"customer_id": f"c-{i}", "amount": i % 300}),
             ("delete_all", {"confirm": True})]
    return kinds[i % len(kinds)]


def _sse(i: int) -> bytes:
    note = {"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": "info", "data": f"working on {i}"}}
    result = {"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text",
                                                                "text": "done"}]}}
    return b"".join(b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n"
                    for m in (note, result))


def write_flows(path: Path, n: int) -> None:
    """Flow states are made once per kind with mitmproxy and varied per flow (fast)."""
    from mitmproxy import http
    from mitmproxy.io import tnetstring
    from mitmproxy.test import tflow, tutils

    def mcp_state(sse: bool) -> dict[str, Any]:
        req = tutils.treq(method=b"POST", scheme=b"https", host="crm.example.com", port=443,
                          path=b"/mcp", headers=http.Headers(content_type="application/json"),
                          content=b"{}")
        ctype = "text/event-stream" if sse else "application/json"
        resp = tutils.tresp(headers=http.Headers(content_type=ctype), content=b"{}")
        return tflow.tflow(req=req, resp=resp).get_state()

    json_state, sse_state = mcp_state(False), mcp_state(True)
    get = tflow.tflow(req=tutils.treq(method=b"GET", scheme=b"https", host="api.example.com",
                                      port=443, path=b"/v1/items", content=b""),
                      resp=True).get_state()
    connect = tflow.tflow(req=tutils.treq(method=b"CONNECT", host="crm.example.com",
                                          port=443, path=b"", content=b"")).get_state()
    t0 = 1_700_000_000.0
    with path.open("wb") as fo:
        for i in range(n):
            k = i % 10
            if k == 9:
                state = connect
            elif k == 8:
                state = get
            else:
                state = sse_state if k == 7 else json_state
                name, args = _calls(i)
                body = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                        "params": {"name": name, "arguments": args}}
                state["request"]["content"] = json.dumps(body).encode()
                result = {"jsonrpc": "2.0", "id": i, "result": {"content": []}}
                state["response"]["content"] = (_sse(i) if k == 7
                                                else json.dumps(result).encode())
            state["id"] = f"flow-{i}"
            state["request"]["timestamp_start"] = t0 + i * 0.01
            if state.get("response"):
                state["response"]["timestamp_end"] = t0 + i * 0.01 + 0.005
            fo.write(tnetstring.dumps(state))


def write_har(path: Path, n: int) -> None:
    from proxy.replay.har import HarWriter, har_entry

    t0 = 1_700_000_000.0
    json_ct = [("Content-Type", "application/json")]
    with path.open("w") as fo:
        writer = HarWriter(fo, creator="replay-bench")
        for i in range(n):
            if i % 10 == 8:
                writer.add(har_entry(started=t0 + i * 0.01, method="GET",
                                     url="https://api.example.com/v1/items", status=200,
                                     response_body=b'{"items": []}', mime_type="application/json"))
                continue
            name, args = _calls(i)
            body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                               "params": {"name": name, "arguments": args}}).encode()
            sse = i % 10 == 7
            writer.add(har_entry(
                started=t0 + i * 0.01, method="POST", url="https://crm.example.com/mcp",
                headers=json_ct, body=body, status=200,
                response_headers=[("Content-Type", "text/event-stream" if sse
                                   else "application/json")],
                response_body=_sse(i) if sse else b'{"jsonrpc": "2.0", "id": %d, "result": {}}'
                % i, mime_type="text/event-stream" if sse else "application/json", time_ms=5))
        writer.close()


# The child reports its own high-water mark: VmHWM belongs to the address space made
# at exec, while ru_maxrss from wait4 also counts the parent's image the child was forked
# from (here, a parent that has just written a large capture).
_MEASURED = ("import sys, runpy; sys.argv = sys.argv[1:]; code = 0\n"
             "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
             "except SystemExit as e:\n    code = e.code or 0\n"
             "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
             "print('VMHWM', hwm[0] if hwm else -1, file=sys.stderr)\n"
             "sys.exit(code)\n")


def run_child(argv: list[str]) -> dict[str, Any]:
    """Run ``python -m MODULE ARGS`` (argv[1:] = ["-m", MODULE, ...]) with stdout to a
    file; wall time and the child's own peak RSS."""
    assert argv[1] == "-m"
    measured = [argv[0], "-c", _MEASURED, *argv[2:]]
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(measured, stdout=out, stderr=subprocess.PIPE, cwd=REPO_ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err = proc.stderr.read().decode() if proc.stderr else ""
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        data = out.read()
    hwm = [line.split()[1] for line in err.splitlines() if line.startswith("VMHWM ")]
    rss_mb = int(hwm[-1]) / 1024 if hwm and int(hwm[-1]) > 0 else usage.ru_maxrss / 1024
    return {"code": proc.returncode, "wall": wall, "rss_mb": rss_mb, "stdout": data,
            "stderr": err}


def replay(capture: Path, policy: Path, *extra: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "proxy.replay", "replay", str(capture), "--policy",
            str(policy), "--format", "json", *extra]
    got = run_child(argv)
    if got["code"] not in (0, 4):
        raise SystemExit(f"replay failed ({got['code']}): {got['stderr']}")
    doc = json.loads(got["stdout"])
    got["summary"] = doc.get("summary") or {"actions": doc.get("changed", 0)}
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="10,000 flows")
    ap.add_argument("--keep", type=Path, help="write the captures here and keep them")
    args = ap.parse_args(argv)
    n = 10_000 if args.quick else args.flows
    sizes = sorted({max(1, n // 10), n})
    work = args.keep or Path(tempfile.mkdtemp(prefix="fiveplane-replay-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    policy = work / "policy.yaml"
    policy.write_text(POLICY)
    tighter = work / "tighter.yaml"
    tighter.write_text(POLICY.replace("[get_customer, echo]", "[get_customer]"))

    baseline = run_child([sys.executable, "-m", "proxy.replay", "test", "--format", "json",
                          str(policy)])  # imports everything, reads no capture
    rows = []
    for size in sizes:
        for fmt, writer, suffix in (("flow file", write_flows, "flows"),
                                    ("HAR 1.2", write_har, "har")):
            path = work / f"capture-{size}.{suffix}"
            log(f"writing {size:,} flows as {fmt} ...")
            start = time.perf_counter()
            writer(path, size)
            log(f"  {path.stat().st_size / 1e6:,.1f} MB in {time.perf_counter() - start:.1f} s;"
                " replaying ...")
            got = replay(path, policy)
            rows.append((fmt, size, path.stat().st_size / 1e6, got))
    big = work / f"capture-{n}.flows"
    log("what-if on the largest flow file ...")
    whatif = replay(big, tighter, "--against", str(policy))

    print("# fiveplane replay: streaming a large capture\n")
    print(f"`{' '.join([Path(sys.executable).name, *sys.argv])}` on {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}\n")
    print("| capture | flows | file MB | actions | wall s | flows/s | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for fmt, size, mb, got in rows:
        s = got["summary"]
        print(f"| {fmt} | {size:,} | {mb:,.1f} | {s['actions']:,} | {got['wall']:.1f} | "
              f"{size / got['wall']:,.0f} | {got['rss_mb']:.0f} |")
    print(f"\nBaseline (interpreter + imports, no capture): peak RSS "
          f"{baseline['rss_mb']:.0f} MB.")
    print(f"What-if (`--against`, two policies in one pass) on {n:,} flows: "
          f"{whatif['wall']:.1f} s, {whatif['summary']['actions']:,} changed actions, "
          f"peak RSS {whatif['rss_mb']:.0f} MB.")
    print(f"\nCaptures in {work}" + ("" if args.keep else " (temporary)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
