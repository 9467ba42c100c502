"""``fiveplane replay`` and ``fiveplane test``.

    fiveplane replay CAPTURE --policy P [--format table|json] [--expect FILE]
    fiveplane replay CAPTURE --policy NEW --against OLD [--format table|json]
    fiveplane replay CAPTURE --live PROXY_URL [--ca FILE] [--concurrency N]
    fiveplane test [PATHS...] [--format text|json] [--strict]

Exit codes: 0 ok; 1 an expectation or a policy test failed; 2 unusable input (capture,
expectations, arguments); 3 a policy does not compile; 4 the capture had entries that
could not be read (everything else was replayed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO

from ..errors import PolicyError
from ..policy import CompiledPolicy, compile_file
from .capture import CaptureError, CaptureNote, read_capture
from .engine import DEFAULT_WINDOW, Change, replay, what_if
from .expect import ExpectationError, check_rows, load_expectations
from .live import LiveResult, live_replay
from .output import MAX_NOTES, JsonReport, TableReport, write_changes
from .policytest import discover, run_suites

__all__ = ["add_parser", "main", "run"]

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INVALID, EXIT_PARTIAL = 0, 1, 2, 3, 4


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rp = subparsers.add_parser(
        "replay", help="adjudicate a recorded capture offline, compare policies, or resend it",
        description="Replay a mitmproxy flow file or a HAR file against a policy.")
    rp.add_argument("capture", help="mitmproxy flow file (mitmdump -w, --record) or HAR file")
    rp.add_argument("--policy", help="the policy to adjudicate with")
    rp.add_argument("--against", metavar="OLD_POLICY",
                    help="list only the actions whose decision differs from OLD_POLICY's")
    rp.add_argument("--format", choices=["table", "json"], default="table")
    rp.add_argument("--expect", metavar="FILE",
                    help="YAML expectations; exit 1 when one fails")
    rp.add_argument("--window", type=int, default=DEFAULT_WINDOW, metavar="N",
                    help=f"flows held to restore request order (default {DEFAULT_WINDOW})")
    rp.add_argument("--live", metavar="PROXY_URL",
                    help="resend the requests through a running proxy instead")
    rp.add_argument("--ca", metavar="FILE", help="with --live: CA file the client trusts")
    rp.add_argument("--concurrency", type=int, default=1, metavar="N",
                    help="with --live: requests in flight (default 1)")
    rp.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="with --live: per-request timeout in seconds (default 10)")

    tp = subparsers.add_parser("test", help="run policy test suites",
                               description="Run YAML policy test suites "
                                           "(default: policies/tests/*.yaml).")
    tp.add_argument("paths", nargs="*", help="suite files or directories")
    tp.add_argument("--format", choices=["text", "json"], default="text")
    tp.add_argument("--strict", action="store_true",
                    help="cases that cannot be evaluated yet count as failures")


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "test":
            return cmd_test(args.paths, args.format, args.strict)
        return cmd_replay(args)
    except BrokenPipeError:  # `fiveplane replay big.flows | head`
        sys.stderr.close()
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fiveplane")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


def _err(message: str) -> None:
    print(f"fiveplane: {message}", file=sys.stderr)


def _policy(path: str) -> CompiledPolicy | None:
    try:
        return compile_file(path)
    except PolicyError as e:
        print(e, file=sys.stderr)
        return None


# --- replay ---------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    if args.live:
        if args.policy or args.against or args.expect:
            _err("--live resends the capture; it takes no --policy, --against or --expect")
            return EXIT_INPUT
        return _live(args, out)
    if not args.policy:
        _err("replay needs --policy (or --live PROXY_URL)")
        return EXIT_INPUT
    if args.against and args.expect:
        _err("--expect checks one policy's decisions; it cannot be combined with --against")
        return EXIT_INPUT
    policy = _policy(args.policy)
    if policy is None:
        return EXIT_INVALID
    expectations = []
    if args.expect:
        try:
            expectations = load_expectations(args.expect)
        except ExpectationError as e:
            for p in e.problems:
                print(p, file=sys.stderr)
            return EXIT_INPUT
    try:
        items = read_capture(args.capture)
    except CaptureError as e:
        _err(str(e))
        return EXIT_INPUT
    if args.against:
        old = _policy(args.against)
        if old is None:
            return EXIT_INVALID
        return _what_if(args, items, policy, old, out)
    report = JsonReport(out) if args.format == "json" else TableReport(out)
    for item in replay(items, policy, window=args.window):
        if isinstance(item, CaptureNote):
            report.note(item)
        else:
            report.row(item)
            check_rows(expectations, item)
    report.finish(expectations)
    if any(not e.ok for e in expectations):
        return EXIT_FAILED
    return EXIT_PARTIAL if report.summary.errors else EXIT_OK


def _what_if(args: argparse.Namespace, items: object, new: CompiledPolicy,
             old: CompiledPolicy, out: IO[str]) -> int:
    notes: list[CaptureNote] = []
    errors = 0

    def changes() -> object:
        nonlocal errors
        for item in what_if(items, new, old, window=args.window):  # type: ignore[arg-type]
            if isinstance(item, Change):
                yield item
            else:
                errors += item.error
                if len(notes) < MAX_NOTES:
                    notes.append(item)

    header = {"new": f"{args.policy} ({new.short_version})",
              "old": f"{args.against} ({old.short_version})"}
    write_changes(out, changes(), notes, args.format, header)  # type: ignore[arg-type]
    return EXIT_PARTIAL if errors else EXIT_OK


def _live(args: argparse.Namespace, out: IO[str]) -> int:
    try:
        items = read_capture(args.capture)
    except CaptureError as e:
        _err(str(e))
        return EXIT_INPUT
    errors = 0

    def show(result: LiveResult | CaptureNote) -> None:
        nonlocal errors
        if isinstance(result, CaptureNote):
            errors += result.error
            if args.format == "table":
                out.write(f"{'!' if result.error else '-'} {result}\n")
            return
        if args.format == "table":
            status = result.status if result.status is not None else result.error
            out.write(f"{result.index:>7}  {result.method:<7} {result.url}  -> {status}  "
                      f"({result.elapsed * 1000:.1f} ms)\n")

    summary = live_replay(items, args.live, ca=args.ca, concurrency=args.concurrency,
                          timeout=args.timeout, on_result=show)
    if args.format == "json":
        out.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    else:
        by_status = ", ".join(f"{k}: {v}" for k, v in sorted(summary.by_status.items()))
        out.write(f"\nsent {summary.sent} requests in {summary.elapsed:.2f} s "
                  f"({summary.rate:.1f} requests/s); {summary.errors} errors; "
                  f"{summary.skipped} not resent (CONNECT, TCP, UDP)\n"
                  f"  by status: {by_status or '-'}\n"
                  f"  latency: p50 {summary.percentile(50) * 1000:.1f} ms, "
                  f"p95 {summary.percentile(95) * 1000:.1f} ms\n")
    if summary.errors:
        return EXIT_FAILED
    return EXIT_PARTIAL if errors else EXIT_OK


# --- test -----------------------------------------------------------------------------------


def cmd_test(paths: list[str], fmt: str = "text", strict: bool = False,
             out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    files = discover(paths)
    if not files:
        _err("no test suites found" + (" (looked for policies/tests/*.yaml)" if not paths
                                       else ""))
        return EXIT_FAILED
    missing = [f for f in files if not Path(f).is_file()]
    results = run_suites([f for f in files if f not in missing])
    counts = {"pass": 0, "fail": 0, "skip": 0, "error": len(missing)}
    for r in results:
        counts[r.status] += 1
    if fmt == "json":
        doc = {"results": [r.to_dict() for r in results],
               "missing": [str(f) for f in missing], "summary": counts}
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        for f in missing:
            out.write(f"ERROR {f}: no such test suite\n")
        for r in results:
            label = {"pass": "PASS", "fail": "FAIL", "skip": "NOT EVALUATED",
                     "error": "ERROR"}[r.status]
            text = f"{label} {r.where}"
            if r.name:
                text += f" {r.name}"
            if r.detail:
                text += f": {r.detail}"
            out.write(text + "\n")
            for note in r.notes:
                out.write(f"    note: {note}\n")
        out.write(f"\n{counts['pass']} passed, {counts['fail']} failed, "
                  f"{counts['error']} errors, {counts['skip']} not evaluated\n")
    failed = counts["fail"] + counts["error"] + (counts["skip"] if strict else 0)
    return EXIT_FAILED if failed else EXIT_OK
