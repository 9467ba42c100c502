"""Data-plane detector benchmark: fiveplane's ``Scanner`` vs. ``detect-secrets``.

    .venv/bin/python tests/benchmarks/dlp_bench.py [--quick] [--profile] [--markdown FILE]

Builds a deterministic mixed JSON corpus (one JSON document per line: MCP tool results with
prose, customer rows, search results, logs, code, file listings, config dumps) sprinkled
with secrets and PII, then measures, in the same run and on the same text:

* ``Scanner.scan`` over the whole corpus (all built-in detectors, and secrets only), CPU
  seconds of this process, best of N;
* ``detect-secrets`` (its default plugin set) through ``SecretsCollection.scan_file`` on the
  corpus written to a file, which is its normal line-by-line path; and its ad-hoc
  ``scan_line`` API on a sample (it re-initialises filters per line, so it is far slower);
* a 100 MB body streamed through ``StreamScanner`` in 64 KiB chunks, in a child process
  that generates the chunks on the fly: throughput, tracemalloc peak, and peak RSS compared
  with a child that generates the same chunks without scanning.

Target: >= 50 MB/s per core for ``Scanner.scan`` and faster than detect-secrets. Needs
``pip install detect-secrets`` (benchmark only, not a runtime dependency); without it that
row is skipped. When the target is missed the scan is profiled (cProfile) and the top
functions are printed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy.dlp import compile_detectors  # noqa: E402
from proxy.dlp.detectors import luhn_valid  # noqa: E402

TARGET_MBPS = 50.0

# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will can more other its into only new some could time these two may then do first "
    "any my now such like our over man me even most made after also did many before must "
    "through back years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year "
    "off come since against go came right used take three customer account order shipped "
    "pending invoice total amount status delivered returned support ticket issue resolved "
    "priority payment refund transaction balance created updated description summary result "
    "error warning request response user admin project repository branch commit merge file "
    "function class method service deploy cluster region bucket object policy role access "
    "config setting value parameter query report dashboard metric latency throughput build"
)
WORDS = _WORDS.split()
FIRST = "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia".split()  # noqa: SIM905
LAST = "Smith Jones Brown Garcia Miller Davis Lopez Wilson Moore Taylor Lee Clark".split()  # noqa: SIM905
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "acme.io", "shop.example"]
TLDS_URL = ["https://docs.example.com/", "https://www.example.org/blog/", "https://api.acme.io/v2/"]


def _luhn_card(r: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for d in string.digits:
        if luhn_valid(body + d):
            return body + d
    raise AssertionError


def _iban(r: random.Random) -> str:
    bban = "".join(r.choice(string.digits) for _ in range(18))
    for cd in range(100):
        cand = f"DE{cd:02d}{bban}"
        moved = cand[4:] + cand[:4]
        if int("".join(str(int(c, 36)) for c in moved)) % 97 == 1:
            return cand
    raise AssertionError


def _b64(r: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def _secret(r: random.Random) -> tuple[str, str]:
    """A (kind, text) pair with a realistic secret or PII item embedded in prose."""
    k = r.randrange(14)
    if k == 0:
        return (
            "aws",
            f"export AWS_ACCESS_KEY_ID=AKIA{_b64(r, 16, string.ascii_uppercase + '234567')}",
        )
    if k == 1:
        return (
            "aws",
            f"aws_secret_access_key = {_b64(r, 40, string.ascii_letters + string.digits + '/+')}",
        )
    if k == 2:
        return "github", f"use token ghp_{_b64(r, 36)} for the api"
    if k == 3:
        return "jwt", (
            "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
            f"{_b64(r, 60, string.ascii_letters + string.digits + '_-')}."
            f"{_b64(r, 43, string.ascii_letters + string.digits + '_-')}"
        )
    if k == 4:
        body = "\n".join(_b64(r, 64, string.ascii_letters + string.digits + "+/") for _ in range(8))
        return "pem", f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    if k == 5:
        return (
            "slack",
            f"xoxb-{r.randrange(10**11, 10**12)}-{r.randrange(10**12, 10**13)}-{_b64(r, 24)}",
        )
    if k == 6:
        return "stripe", f"stripe key sk_live_{_b64(r, 24)}"
    if k == 7:
        return (
            "password",
            f"DB_PASSWORD={_b64(r, 14, string.ascii_letters + string.digits + '!#%')}",
        )
    if k == 8:
        return (
            "email",
            f"contact {r.choice(FIRST).lower()}.{r.choice(LAST).lower()}@{r.choice(DOMAINS)}",
        )
    if k == 9:
        return "phone", f"call +1 415 {r.randrange(200, 999)} {r.randrange(1000, 9999)}"
    if k == 10:
        prefix = r.choice(["4", "51", "37", "6011"])
        if prefix == "37":  # Amex: 15 digits, 4-6-5
            card = _luhn_card(r, prefix, 15)
            return "card", f"card {card[:4]} {card[4:10]} {card[10:]}"
        card = _luhn_card(r, prefix, 16)
        if r.random() < 0.3:
            return "card", f"card number {card}"
        return "card", "card " + r.choice([" ", "-"]).join(card[i : i + 4] for i in range(0, 16, 4))
    if k == 11:
        return "iban", f"wire to {_iban(r)}"
    if k == 12:
        return "ssn", f"ssn {r.randrange(100, 665)}-{r.randrange(10, 99)}-{r.randrange(1000, 9999)}"
    return (
        "openai",
        f"OPENAI_API_KEY=sk-proj-{_b64(r, 56, string.ascii_letters + string.digits + '_-')}",
    )


def _prose(r: random.Random, n: int) -> str:
    words = [r.choice(WORDS) for _ in range(n)]
    for i in range(0, n, r.randrange(8, 16)):
        words[i] = words[i].capitalize()
        if i:
            words[i - 1] += "."
    return " ".join(words) + "."


def _doc(r: random.Random, i: int, secrets_out: list[str]) -> dict[str, object]:
    def maybe_secret(text: str) -> str:
        if r.random() < 0.08:
            kind, s = _secret(r)
            secrets_out.append(kind)
            cut = r.randrange(len(text) + 1)
            return f"{text[:cut]} {s} {text[cut:]}"
        return text

    kind = r.randrange(7)
    ts = 1_700_000_000 + r.randrange(10**7)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    if kind == 0:
        result: object = {
            "content": [{"type": "text", "text": maybe_secret(_prose(r, r.randrange(30, 250)))}],
            "isError": False,
        }
        return {"jsonrpc": "2.0", "id": i, "result": result}
    if kind == 1:
        rows = []
        for _ in range(r.randrange(1, 8)):
            f, last = r.choice(FIRST), r.choice(LAST)
            rows.append(
                {
                    "id": f"{r.getrandbits(128):032x}",
                    "name": f"{f} {last}",
                    "plan": r.choice(["free", "pro", "enterprise"]),
                    "created_at": iso,
                    "last_seen_ms": ts * 1000 + r.randrange(1000),
                    "orders": r.randrange(200),
                    "balance": round(r.random() * 5000, 2),
                    "country": r.choice(["US", "DE", "FR", "GB"]),
                    "note": maybe_secret(_prose(r, r.randrange(3, 20))),
                }
            )
        return {"jsonrpc": "2.0", "id": i, "result": {"structuredContent": {"rows": rows}}}
    if kind == 2:
        hits = [
            {
                "title": _prose(r, 6)[:-1],
                "url": r.choice(TLDS_URL) + "-".join(r.choice(WORDS) for _ in range(3)),
                "snippet": maybe_secret(_prose(r, r.randrange(15, 40))),
                "score": round(r.random(), 4),
            }
            for _ in range(r.randrange(3, 8))
        ]
        return {"query": " ".join(r.choice(WORDS) for _ in range(4)), "hits": hits}
    if kind == 3:
        lines = [
            f"{iso} {r.choice(['INFO', 'WARN', 'ERROR', 'DEBUG'])} [{r.choice(WORDS)}] "
            f"req={r.getrandbits(64):016x} "
            f"ip=10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(256)} "
            f"{maybe_secret(_prose(r, r.randrange(5, 15)))} latency_ms={r.randrange(1, 900)}"
            for _ in range(r.randrange(3, 12))
        ]
        return {"tool": "read_logs", "lines": lines}
    if kind == 4:
        name = "_".join(r.choice(WORDS) for _ in range(2))
        code = (
            f"def {name}(self, {r.choice(WORDS)}_id: int) -> dict:\n"
            f'    """{_prose(r, 10)}"""\n'
            f'    result = self.client.get(f"/v1/{r.choice(WORDS)}/{{{r.choice(WORDS)}_id}}",'
            f" timeout=30)\n"
            f"    if result.status_code != 200:\n        raise RuntimeError(result.text)\n"
            f'    return {{"{r.choice(WORDS)}": result.json()["{r.choice(WORDS)}"],'
            f' "count": {r.randrange(100)}}}\n'
        )
        return {
            "path": f"src/{r.choice(WORDS)}/{name}.py",
            "language": "python",
            "content": maybe_secret(code),
        }
    if kind == 5:
        files = [
            {
                "path": "/".join(r.choice(WORDS) for _ in range(r.randrange(2, 5)))
                + r.choice([".py", ".md", ".json", ".ts"]),
                "size": r.randrange(10**6),
                "sha256": f"{r.getrandbits(256):064x}",
                "modified": iso,
            }
            for _ in range(r.randrange(3, 10))
        ]
        return {"tool": "list_files", "files": files}
    cfg = {
        f"{r.choice(WORDS)}_{r.choice(WORDS)}": r.choice(
            [r.randrange(1000), _prose(r, 3), True, None]
        )
        for _ in range(r.randrange(4, 12))
    }
    cfg["description"] = maybe_secret(_prose(r, 12))
    return {"tool": "get_config", "service": r.choice(WORDS), "config": cfg}


def build_corpus(size: int, seed: int = 20260728) -> tuple[str, dict[str, int]]:
    r = random.Random(seed)
    lines: list[str] = []
    planted: list[str] = []
    total = 0
    i = 0
    while total < size:
        i += 1
        line = json.dumps(_doc(r, i, planted))
        lines.append(line)
        total += len(line) + 1
    counts: dict[str, int] = {}
    for k in planted:
        counts[k] = counts.get(k, 0) + 1
    return "\n".join(lines) + "\n", counts


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def cpu_best(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t0)
    return best, result


def bench_detect_secrets(corpus: str, sample_lines: int) -> list[tuple[str, float, int, int]]:
    try:
        from detect_secrets import SecretsCollection
        from detect_secrets.core.scan import scan_line
        from detect_secrets.settings import default_settings
    except ImportError:
        return []
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "corpus.jsonl")
        Path(path).write_text(corpus, encoding="utf-8")
        with default_settings():
            secrets = SecretsCollection()
            t0 = time.process_time()
            secrets.scan_file(path)
            dt = time.process_time() - t0
            n = sum(len(v) for _, v in secrets.data.items())
            rows.append(("detect-secrets scan_file (default plugins)", dt, len(corpus.encode()), n))
            if sample_lines:
                lines = corpus.splitlines()[:sample_lines]
                sample = "\n".join(lines)
                t0 = time.process_time()
                n = sum(1 for line in lines for _ in scan_line(line))
                dt = time.process_time() - t0
                rows.append(
                    (
                        f"detect-secrets scan_line (first {len(lines)} lines)",
                        dt,
                        len(sample.encode()),
                        n,
                    )
                )
    return rows


STREAM_CHILD = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests/benchmarks")
from dlp_bench import build_corpus
from proxy.dlp import StreamScanner, compile_detectors
total, scan = int(sys.argv[2]), sys.argv[3] == "scan"
base = build_corpus(1 << 20, seed=int(sys.argv[4]))[0].encode()
chunk_size = 64 * 1024
sc = compile_detectors(["secrets", "pii"])


def stream():
    ss = StreamScanner(sc, {d: "redact" for d in sc.detectors})
    sent = out = held = i = 0
    while sent < total:
        off = (i * chunk_size) % (len(base) - chunk_size)     # cycle through the corpus
        chunk = base[off:off + chunk_size]
        i += 1
        sent += len(chunk)
        if scan:
            out += sum(len(b) for b in ss.feed(chunk).emit)
            held = max(held, ss.held)
    if scan:
        out += sum(len(b) for b in ss.finish().emit)
    return ss, sent, out, held


t0 = time.process_time()
ss, sent, out, held = stream()                 # timed run, no tracing
cpu = time.process_time() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()                            # second run: Python allocations traced
stream()
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({"sent": sent, "out": out, "cpu": cpu, "peak": peak, "rss": rss,
                  "findings": sum(ss.counts.values()), "held": held, "window": sc.window}))
"""


def bench_stream(total: int) -> dict[str, dict[str, float]]:
    res = {}
    for mode in ("baseline", "scan"):
        proc = subprocess.run(
            [sys.executable, "-c", STREAM_CHILD, str(ROOT), str(total), mode, "7"],
            capture_output=True,
            text=True,
            check=True,
        )
        res[mode] = json.loads(proc.stdout)
    return res


def profile_scan(scanner, corpus: str) -> str:  # type: ignore[no-untyped-def]
    prof = cProfile.Profile()
    prof.enable()
    scanner.scan(corpus)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    return buf.getvalue()


def pass_breakdown(scanner, corpus: str, repeat: int) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    raw = corpus.encode("ascii", "replace")
    n = len(corpus)
    rows = []
    for name, p in (
        ("token pass (T)", scanner._rare),
        ("e-mail pass (E)", scanner._email),
        ("keyword pass (K)", scanner._kw),
    ):
        if p is not None:
            dt, _ = cpu_best(lambda p=p: scanner._marker_pass(p, corpus, raw, 0, n, []), repeat)
            rows.append((name, dt))
    if scanner._num is not None:
        dt, _ = cpu_best(lambda: scanner._number_pass(corpus, raw, 0, n, []), repeat)
        rows.append(("number pass (N)", dt))
    dt, _ = cpu_best(lambda: corpus.encode("ascii", "replace"), repeat)
    rows.append(("encode to ASCII bytes", dt))
    return rows


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = [
        "| "
        + " | ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
        )
        + " |"
        for row in cells
    ]
    out.insert(
        1,
        "| "
        + " | ".join(
            "-" * widths[0] if i == 0 else "-" * (widths[i] - 1) + ":" for i in range(len(headers))
        )
        + " |",
    )
    return "\n".join(out)


def run(quick: bool = False, log: Any = None, profile: bool = False,
        tiny: bool = False) -> Any:
    """The DLP section of the benchmark report (``run.py``); ``tiny``: a 1 MB corpus, a
    4 MB stream and no ``scan_line`` sample (``run.py --quick``)."""
    from common import Section

    section = Section("DLP: detector throughput vs. detect-secrets")
    lines: list[str] = []
    mb = 1 if tiny else (2 if quick else 10)
    stream_mb = 4 if tiny else (20 if quick else 100)
    ok, figures = _report(mb, stream_mb, 9 if tiny else (3 if quick else 5),  # best of
                          0 if tiny else (2000 if quick else 5000), profile,
                          lambda m="": lines.append(m),
                          log or (lambda m: print(m, file=sys.stderr)))
    section.add("\n".join(lines))
    section.data.update(figures)
    if not ok:
        section.missed.append(f"DLP Scanner.scan {figures['mbps']:.1f} < {TARGET_MBPS:.0f} MB/s")
    return section


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 MB corpus, 20 MB stream")
    ap.add_argument("--profile", action="store_true", help="always print a cProfile breakdown")
    ap.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = ap.parse_args()
    report: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        report.append(s)

    say("# fiveplane DLP benchmark")
    say()
    say(
        f"- machine: {platform.machine()} {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    say(f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    ok, _ = _report(2 if args.quick else 10, 20 if args.quick else 100,
                    3 if args.quick else 5, 2000 if args.quick else 5000, args.profile, say,
                    lambda m: print(m, file=sys.stderr, flush=True))
    if args.markdown:
        args.markdown.write_text("\n".join(report) + "\n", encoding="utf-8")
    return 0 if ok else 1


def _report(corpus_mb: int, stream_mb: int, repeat: int, sample_lines: int, profile: bool,
            say: Any, log: Any) -> tuple[bool, dict[str, float]]:
    size = corpus_mb * 1024 * 1024
    stream_total = stream_mb * 1024 * 1024
    log("  dlp: building corpus ...")
    corpus, planted = build_corpus(size)
    nbytes = len(corpus.encode())
    say(
        f"- corpus: {nbytes / 1e6:.1f} MB, {corpus.count(chr(10)):,} JSON documents, planted "
        f"secrets/PII: {sum(planted.values())} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(planted.items()))})"
    )
    say("- times are CPU seconds of one process (best of several runs); MB = 10^6 bytes")
    say()

    all_sc = compile_detectors(["secrets", "pii"])
    sec_sc = compile_detectors(["secrets"])
    rows: list[list[object]] = []
    dt_all, found_all = cpu_best(lambda: all_sc.scan(corpus), repeat)
    dt_sec, found_sec = cpu_best(lambda: sec_sc.scan(corpus), repeat)
    rows.append(
        [
            "fiveplane Scanner.scan (secrets + pii, 19 detectors)",
            f"{dt_all:.3f}",
            f"{nbytes / dt_all / 1e6:.1f}",
            len(found_all),
        ]
    )  # type: ignore[arg-type]
    rows.append(
        [
            "fiveplane Scanner.scan (secrets, 14 detectors)",
            f"{dt_sec:.3f}",
            f"{nbytes / dt_sec / 1e6:.1f}",
            len(found_sec),
        ]
    )  # type: ignore[arg-type]
    log("  dlp: running detect-secrets ...")
    ds = bench_detect_secrets(corpus, sample_lines)
    for name, dt, n, count in ds:
        rows.append([name, f"{dt:.3f}", f"{n / dt / 1e6:.2f}", count])
    say(md_table(["scanner", "CPU s", "MB/s", "findings"], rows))
    say()
    mbps = nbytes / dt_all / 1e6
    if ds:
        ds_mbps = ds[0][2] / ds[0][1] / 1e6
        say(
            f"- fiveplane (all detectors) vs detect-secrets scan_file: **{mbps / ds_mbps:.0f}x** "
            f"faster ({mbps:.1f} vs {ds_mbps:.2f} MB/s)"
        )
    else:
        say("- detect-secrets not installed: `pip install detect-secrets` for the comparison")
    ok = mbps >= TARGET_MBPS
    say(
        f"- target >= {TARGET_MBPS:.0f} MB/s per core: **{'PASS' if ok else 'MISS'}** "
        f"({mbps:.1f} MB/s)"
    )
    by_kind: dict[str, int] = {}
    for f in found_all:  # type: ignore[union-attr]
        by_kind[f.detector] = by_kind.get(f.detector, 0) + 1
    say("- findings by detector: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())))
    say()
    say("Where the time goes (each pass alone, same corpus):")
    say()
    say(
        md_table(
            ["pass", "CPU s", "MB/s"],
            [
                [name, f"{dt:.3f}", f"{nbytes / dt / 1e6:.0f}"]
                for name, dt in pass_breakdown(all_sc, corpus, repeat)
            ],
        )
    )
    say()

    log("  dlp: streaming ...")
    st = bench_stream(stream_total)
    base, scan = st["baseline"], st["scan"]
    say(
        f"Streaming {scan['sent'] / 1e6:.0f} MB (the corpus, cycled) through StreamScanner "
        "(raw mode, 64 KiB chunks, all detectors, redact), in a child process:"
    )
    say()
    say(
        md_table(
            ["measure", "value"],
            [
                ["throughput", f"{scan['sent'] / scan['cpu'] / 1e6:.1f} MB/s"],
                ["bytes out / in", f"{scan['out']:,} / {scan['sent']:,}"],
                ["findings (redacted)", f"{scan['findings']:,}"],
                ["tracemalloc peak (separate run)", f"{scan['peak'] / 1024:.0f} KiB"],
                ["peak RSS, scanning child", f"{scan['rss'] / 2**20:.1f} MiB"],
                ["peak RSS, same child without scanning", f"{base['rss'] / 2**20:.1f} MiB"],
                ["RSS attributable to scanning", f"{(scan['rss'] - base['rss']) / 2**20:.1f} MiB"],
                [
                    "most characters held back at once",
                    f"{scan['held']:,} (overlap = window {scan['window']:,} + < 1 chunk)",
                ],
            ],
        )
    )
    say()
    if profile or not ok:
        say("cProfile of one Scanner.scan over the corpus (by own time):")
        say()
        say("```")
        say(profile_scan(all_sc, corpus).strip())
        say("```")
    figures = {"mbps": mbps, "stream_mbps": scan["sent"] / scan["cpu"] / 1e6}
    if ds:
        figures["detect_secrets_mbps"] = ds[0][2] / ds[0][1] / 1e6
    return ok, figures


if __name__ == "__main__":
    raise SystemExit(main())
