"""``fiveplane audit``: verify | explain | show | tail | export | prove | check-proof |
consistency.

Exit codes: 0 ok, 1 damage found or a decision does not re-adjudicate, 2 usage (bad
arguments, no such log or record). Defaults follow the layout ``AuditLog`` writes: keys in
``keys/`` and policies in ``policies/`` next to the log; LOG may be a chain file or the
audit directory (verify/export/explain --all: every chain in it; show/tail/explain and
prove with a seq number: the newest chain; prove with a decision id or --since, and
consistency: the chain the id or checkpoint belongs to).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ..errors import AuditError
from . import envelope, proofs
from .explain import explain, explain_all, find_record
from .keys import load_public_key, load_secret, safe_name
from .schema import public_body
from .verify import log_files, verify

EXIT_OK, EXIT_DAMAGE, EXIT_USAGE = 0, 1, 2


class _Usage(Exception):
    pass


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``audit`` and its commands on the ``fiveplane`` sub-parsers."""
    audit = subparsers.add_parser("audit", help="verify, explain, show and export evidence logs",
                                  description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = audit.add_subparsers(dest="audit_command", required=True)

    v = sub.add_parser("verify", help="check chain, signatures and Merkle roots")
    v.add_argument("log", help="chain file or audit directory")
    v.add_argument("--key", action="append", default=None, metavar="PUB",
                   help="trusted Ed25519 public key (PEM); repeatable "
                        "(default: keys/<instance>.pub next to the log)")
    v.add_argument("--checkpoints", action="append", default=[], metavar="FILE",
                   help="checkpoints kept elsewhere (e.g. an export) the log must contain")
    v.add_argument("--json", action="store_true")

    e = sub.add_parser("explain", help="re-adjudicate a record with its recorded policy")
    e.add_argument("log")
    e.add_argument("record", nargs="?", help="seq number or decision id")
    e.add_argument("--all", action="store_true", help="re-adjudicate every record")
    e.add_argument("--policies", default=None, help="policy store (default: policies/ next "
                                                    "to the log)")
    e.add_argument("--secret", default=None, help="audit secret file (default: "
                                                  "keys/<instance>.secret next to the log)")
    e.add_argument("-v", "--verbose", action="store_true", help="with --all: print every record")
    e.add_argument("--json", action="store_true")

    s = sub.add_parser("show", help="print records readably")
    s.add_argument("log")
    s.add_argument("--seq", default=None, help="only this seq number or decision id")
    s.add_argument("--json", action="store_true")

    t = sub.add_parser("tail", help="print the last records, one per line")
    t.add_argument("log")
    t.add_argument("-n", type=int, default=20)
    t.add_argument("--follow", "-f", action="store_true")
    t.add_argument("--json", action="store_true")

    x = sub.add_parser("export", help="records for a SIEM, without the sealed argument values")
    x.add_argument("log")
    x.add_argument("--format", choices=["jsonl"], default="jsonl")
    x.add_argument("-o", "--output", default="-")
    x.add_argument("--records-only", action="store_true", help="leave out header and checkpoints")

    p = sub.add_parser("prove", help="an offline proof: a record is in the log (inclusion), "
                                     "or the log extends a checkpoint kept earlier "
                                     "(--since: consistency)")
    p.add_argument("log", help="chain file or audit directory")
    p.add_argument("record", nargs="?", help="seq number or decision id")
    p.add_argument("--since", metavar="CHECKPOINT", default=None,
                   help="a checkpoint kept earlier (a checkpoint line, .ckpt file, export or "
                        "proof; the last checkpoint in it): prove the log extends it")
    p.add_argument("-o", "--output", default="-")

    c = sub.add_parser("check-proof", help="verify a proof offline, without the log")
    c.add_argument("proof", help="proof file (JSON) from `audit prove`")
    c.add_argument("--key", action="append", default=None, metavar="PUB",
                   help="trusted Ed25519 public key (PEM); repeatable")
    c.add_argument("--old", metavar="CHECKPOINT", default=None,
                   help="the checkpoint you kept: a consistency proof must start from it")
    c.add_argument("--json", action="store_true")

    k = sub.add_parser("consistency", help="check that a log extends a checkpoint kept "
                                           "earlier (prove --since + check-proof in one)")
    k.add_argument("old", metavar="CHECKPOINT", help="the checkpoint kept earlier")
    k.add_argument("log", help="chain file or audit directory (the chain of CHECKPOINT)")
    k.add_argument("--key", action="append", default=None, metavar="PUB",
                   help="trusted Ed25519 public key (PEM); repeatable (default: "
                        "keys/<instance>.pub next to the log)")
    k.add_argument("--json", action="store_true")
    return audit


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    command = {"verify": _verify, "explain": _explain, "show": _show, "tail": _tail,
               "export": _export, "prove": _prove, "check-proof": _check_proof,
               "consistency": _consistency}[args.audit_command]
    try:
        return command(args, out)
    except (_Usage, AuditError, OSError) as e:
        print(f"fiveplane audit: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # pragma: no cover - `| head`
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fiveplane")
    add_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    return run(args)


# --- helpers ----------------------------------------------------------------------------------


def _logs(path: str) -> list[Path]:
    p = Path(path)
    if not p.exists():
        raise _Usage(f"no such log: {path}")
    logs = log_files(p)
    if not logs:
        raise _Usage(f"no audit logs (audit-*.jsonl) in {path}")
    return logs


def _newest(path: str) -> Path:
    return max(_logs(path), key=lambda p: (p.stat().st_mtime_ns, p.name))


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return
            try:
                yield lineno, json.loads(raw)
            except ValueError:
                continue


def _when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _what(body: dict[str, Any]) -> str:
    a = body.get("action")
    if not isinstance(a, dict):
        return "(no action: refused before one existed)"
    if a.get("kind") in ("mcp", "mcp_server"):
        what = f"{a.get('mcp_method', '')} {a.get('name', '')}".strip()
        return f"MCP {what} on {a.get('server') or a.get('target', '')}"
    if a.get("kind") == "connect":
        return f"CONNECT {a.get('host')}:{a.get('port')}"
    return f"{a.get('method', '')} {a.get('target', '')}".strip()


def _one_line(doc: dict[str, Any]) -> str:
    kind = doc.get("type")
    if kind == "checkpoint":
        final = " final" if doc.get("final") else ""
        return (f"{_when(doc.get('time'))}  checkpoint{final}  size {doc.get('size')}  "
                f"root {str(doc.get('root', ''))[:16]}…")
    if kind == "header":
        return f"{_when(doc.get('created'))}  chain {doc.get('chain')} of {doc.get('instance')}"
    body = doc.get("body") or {}
    if kind == "note":
        return f"{_when(body.get('time'))}  #{doc.get('seq')}  note  {json.dumps(body)}"
    d = body.get("decision") or {}
    rules = ",".join(d.get("rule_ids", ())) or "-"
    return (f"{_when(body.get('time'))}  #{doc.get('seq')}  {body.get('outcome', '?'):<9}  "
            f"{d.get('verdict', '?'):<8}  {rules}  {_what(body)}")


def _block(doc: dict[str, Any]) -> str:
    if doc.get("type") != "record":
        return _one_line(doc)
    body = doc.get("body") or {}
    d = body.get("decision") or {}
    a = body.get("action") if isinstance(body.get("action"), dict) else {}
    principal = body.get("principal") or []
    lines = [
        f"seq {doc.get('seq')}  {_when(body.get('time'))}  {body.get('stop') or '-'}  "
        f"{body.get('outcome')}",
        f"  action     {_what(body)}",
    ]
    if a and a.get("argument_names"):
        lines.append(f"  arguments  {', '.join(a['argument_names'])}  (values sealed; HMACs "
                     "recorded)")
    if principal:
        chain = " → ".join(f"{p.get('id')} ({p.get('kind')})" for p in principal)
        lines.append(f"  principal  {chain}")
    if body.get("session"):
        lines.append(f"  session    {body['session']}")
    lines.append(f"  decision   {d.get('verdict')} by {', '.join(d.get('rule_ids', ()))} — "
                 f"{d.get('reason', '')}")
    if body.get("enforced"):
        en = body["enforced"]
        lines.append(f"  enforced   {en.get('verdict')} — {en.get('reason', '')}")
    if d.get("errors"):
        lines.append(f"  errors     {'; '.join(d['errors'])}")
    if body.get("approver") is not None:
        lines.append(f"  approver   {body['approver']}")
    lat = body.get("latency_us") or {}
    lines.append(f"  policy     {body.get('policy')}  ({body.get('basis')}; "
                 f"{lat.get('adjudication')} µs adjudication, {lat.get('total')} µs total)")
    lines.append(f"  id         {body.get('id')}  hash {str(doc.get('hash', ''))[:16]}…")
    return "\n".join(lines)


# --- commands ---------------------------------------------------------------------------------


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    for path in [*(args.key or ()), *args.checkpoints]:
        if not Path(path).is_file():
            raise _Usage(f"no such file: {path}")
    status = EXIT_OK
    reports = []
    for path in _logs(args.log):
        report = verify(path, args.key, witnesses=args.checkpoints)
        reports.append(report.to_dict())
        if not report.ok:
            status = EXIT_DAMAGE
        if not args.json:
            print(report.summary(), file=out)
    if args.json:
        print(json.dumps(reports, indent=2), file=out)
    return status


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    if args.all == (args.record is not None):
        raise _Usage("explain needs a RECORD (seq or decision id) or --all, not both")
    logs = _logs(args.log) if args.all else [_newest(args.log)]
    status = EXIT_OK
    for path in logs:
        store = Path(args.policies) if args.policies else path.parent / "policies"
        secret = load_secret(args.secret) if args.secret else None
        if not args.all:
            e = explain(path, args.record, store, secret)
            print(json.dumps(_explanation_dict(e)) if args.json else str(e), file=out)
            return EXIT_DAMAGE if e.status in ("mismatch", "error") else EXIT_OK
        counts = {"match": 0, "mismatch": 0, "skipped": 0, "error": 0}
        for e in explain_all(path, store, secret):
            counts[e.status] += 1
            if args.json:
                print(json.dumps(_explanation_dict(e)), file=out)
            elif args.verbose or e.status in ("mismatch", "error"):
                print(e, file=out)
        bad = counts["mismatch"] + counts["error"]
        if bad:
            status = EXIT_DAMAGE
        if not args.json:
            print(f"{path}: {counts['match'] + bad} re-adjudicated, {counts['mismatch']} "
                  f"mismatches, {counts['error']} errors, {counts['skipped']} skipped "
                  "(refusals and notes)", file=out)
    return status


def _explanation_dict(e: Any) -> dict[str, Any]:
    return {"seq": e.seq, "line": e.line, "status": e.status, "matches": e.matches,
            "recorded": e.recorded, "recomputed": e.recomputed, "diff": e.diff,
            "reason": e.reason}


def _show(args: argparse.Namespace, out: TextIO) -> int:
    path = _newest(args.log)
    found = False
    for _, doc in _lines(path):
        if args.seq is not None:
            body = doc.get("body") or {}
            if str(doc.get("seq")) != args.seq and body.get("id") != args.seq:
                continue
            if doc.get("type") not in ("record", "note"):
                continue
        found = True
        if args.json:
            print(json.dumps(_public(doc)), file=out)
        else:
            print(_block(doc), file=out)
    if args.seq is not None and not found:
        raise _Usage(f"no record {args.seq} in {path}")
    return EXIT_OK


def _tail(args: argparse.Namespace, out: TextIO) -> int:
    path = _newest(args.log)
    last: list[dict[str, Any]] = []
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            offset += len(raw)
            try:
                last.append(json.loads(raw))
            except ValueError:
                continue
            if len(last) > max(args.n, 0):
                last.pop(0)
    for doc in last:
        print(json.dumps(_public(doc)) if args.json else _one_line(doc), file=out, flush=True)
    if not args.follow:
        return EXIT_OK
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            buf = b""
            while True:
                chunk = f.read()
                if not chunk:
                    time.sleep(0.5)
                    continue
                buf += chunk
                *done, buf = buf.split(b"\n")
                for raw in done:
                    try:
                        doc = json.loads(raw)
                    except ValueError:
                        continue
                    print(json.dumps(_public(doc)) if args.json else _one_line(doc), file=out,
                          flush=True)
    except KeyboardInterrupt:
        return EXIT_OK


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    if doc.get("type") in ("record", "note"):
        return {**doc, "body": public_body(doc.get("body") or {})}
    return doc


def _export(args: argparse.Namespace, out: TextIO) -> int:
    """One JSON object per line: records flattened for a SIEM (no sealed values); header and
    checkpoint lines verbatim, so they can later serve as ``verify --checkpoints`` witnesses."""
    sink = out if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for path in _logs(args.log):
            with open(path, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break
                    doc = json.loads(raw)
                    kind = doc.get("type")
                    if kind in ("header", "checkpoint"):
                        if not args.records_only:
                            sink.write(raw.decode("ascii"))
                        continue
                    body = public_body(doc.get("body") or {})
                    flat = {**body, "type": kind, "seq": doc.get("seq"),
                            "chain": doc.get("chain"), "instance": doc.get("instance"),
                            "prev": doc.get("prev"), "hash": doc.get("hash"),
                            "schema": doc.get("v")}
                    sink.write(envelope.canonical(flat).decode("ascii") + "\n")
    finally:
        if sink is not out:
            sink.close()
    return EXIT_OK


def _chain_of(path: str, chain: str) -> Path:
    for log in _logs(path):
        with open(log, "rb") as f:
            try:
                if json.loads(f.readline()).get("chain") == chain:
                    return log
            except ValueError:
                continue
    raise _Usage(f"no log of chain {chain!r} in {path}")


def _keys(paths: list[str] | None) -> list[Any]:
    keys = []
    for path in paths or ():
        if not Path(path).is_file():
            raise _Usage(f"no such file: {path}")
        keys.append(load_public_key(path))
    return keys


def _prove(args: argparse.Namespace, out: TextIO) -> int:
    if (args.record is None) == (args.since is None):
        raise _Usage("prove needs a RECORD (seq or decision id) or --since CHECKPOINT")
    if args.since is not None:
        old = proofs.kept_checkpoint(args.since)
        path = _chain_of(args.log, str(json.loads(old).get("chain")))
    elif str(args.record).isdigit():
        path = _newest(args.log)
    else:  # a decision id names its chain
        path = next((p for p in _logs(args.log) if _has_record(p, args.record)), None)
        if path is None:
            raise _Usage(f"no record {args.record} in {args.log}")
    report = verify(path)
    if not report.ok:
        print(f"fiveplane audit: will not prove from a damaged log:\n{report.summary()}",
              file=sys.stderr)
        return EXIT_DAMAGE
    if args.since is not None:
        proof = proofs.prove_consistency(path, old)
    else:
        _, line = find_record(path, args.record)
        seq = envelope.record_position(line)
        assert seq is not None
        proof = proofs.prove_inclusion(path, seq[0])
    text = json.dumps(proof, indent=2) + "\n"
    if args.output == "-":
        out.write(text)
    else:
        Path(args.output).write_text(text, encoding="ascii")
    return EXIT_OK


def _has_record(path: Path, ref: str) -> bool:
    try:
        find_record(path, ref)
    except AuditError:
        return False
    return True


def _check_proof(args: argparse.Namespace, out: TextIO) -> int:
    try:
        proof = json.loads(Path(args.proof).read_bytes())
    except ValueError as e:
        raise _Usage(f"{args.proof} is not a JSON proof: {e}") from e
    if not isinstance(proof, dict):
        raise _Usage(f"{args.proof} is not a JSON proof")
    expected = proofs.kept_checkpoint(args.old) if args.old else None
    result = proofs.check(proof, _keys(args.key), expected_old=expected)
    print(json.dumps(result.to_dict()) if args.json else str(result), file=out)
    return EXIT_OK if result.ok else EXIT_DAMAGE


def _consistency(args: argparse.Namespace, out: TextIO) -> int:
    old = proofs.kept_checkpoint(args.old)
    path = _chain_of(args.log, str(json.loads(old).get("chain")))
    keys = _keys(args.key)
    if not keys:
        instance = str(json.loads(old).get("instance"))
        default = path.parent / "keys" / f"{safe_name(instance)}.pub"
        if default.is_file():
            keys = [load_public_key(default)]
    try:
        result = proofs.check(proofs.prove_consistency(path, old), keys, expected_old=old)
    except AuditError as e:
        result = proofs.ProofCheck(False, proofs.CONSISTENCY, str(e))
    print(json.dumps(result.to_dict()) if args.json else str(result), file=out)
    return EXIT_OK if result.ok else EXIT_DAMAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
