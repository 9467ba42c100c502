"""``fiveplane approvals list|show|approve|deny`` and ``fiveplane sessions list|kill``: the
control API from the command line.

Register with ``add_parser(subparsers)`` and dispatch ``args.command in COMMANDS`` to
``run(args)``. The API is found at ``--control URL`` (else ``FIVEPLANE_CONTROL_URL``, else
http://127.0.0.1:8081); the token is ``--token``, else ``FIVEPLANE_CONTROL_TOKEN``, else
the token file ``<--state-dir>/control.token`` (default state dir ``.fiveplane``, as for
``fiveplane run``). Exit codes: 0 ok, 1 error (unreachable, refused, not found).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .auth import TOKEN_ENV, TOKEN_FILE, first_token
from .client import DEFAULT_URL, ControlClient, ControlError

EXIT_OK, EXIT_ERROR = 0, 1
COMMANDS = frozenset({"approvals", "sessions"})
URL_ENV = "FIVEPLANE_CONTROL_URL"
STATUSES = ("pending", "approved", "denied", "expired", "cancelled", "all")


def add_parser(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--control", default=None, metavar="URL",
                        help=f"control API URL (default ${URL_ENV} or {DEFAULT_URL})")
    common.add_argument("--token", default=None,
                        help=f"control token (default ${TOKEN_ENV}, else the token file in "
                             "--state-dir)")
    common.add_argument("--state-dir", default=".fiveplane",
                        help=f"where `fiveplane run` keeps {TOKEN_FILE} (default .fiveplane)")
    common.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)

    ap = subparsers.add_parser("approvals", help="list, approve and deny held calls")
    asub = ap.add_subparsers(dest="approvals_command", required=True)
    ls = asub.add_parser("list", parents=[common], help="list approval requests")
    ls.add_argument("--status", choices=STATUSES, default="pending")
    ls.add_argument("--format", choices=["text", "json"], default="text")
    show = asub.add_parser("show", parents=[common], help="show one request as JSON")
    show.add_argument("id")
    for verb in ("approve", "deny"):
        p = asub.add_parser(verb, parents=[common], help=f"{verb} a pending request")
        p.add_argument("id")
        p.add_argument("--reason", "--note", dest="reason", default="",
                       help="a note recorded with the decision")

    sp = subparsers.add_parser("sessions", help="list sessions, kill one (kill switch)")
    ssub = sp.add_subparsers(dest="sessions_command", required=True)
    sl = ssub.add_parser("list", parents=[common], help="list sessions")
    sl.add_argument("--active-within", type=float, default=None, metavar="SECONDS",
                    help="only sessions active in the last SECONDS (killed ones always)")
    sl.add_argument("--format", choices=["text", "json"], default="text")
    sk = ssub.add_parser("kill", parents=[common],
                         help="kill a session: its further calls are denied, held calls "
                              "released as denied")
    sk.add_argument("id")
    sk.add_argument("--reason", default="", help="recorded, and told to the agent")


def resolve_token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env
    return first_token(Path(args.state_dir) / TOKEN_FILE)


def run(args: argparse.Namespace) -> int:
    command = args.command
    verb = getattr(args, f"{command}_command", "")
    url = args.control or os.environ.get(URL_ENV) or DEFAULT_URL
    token = resolve_token(args)
    if not token:
        print(f"fiveplane {command} {verb}: no control token: pass --token, set {TOKEN_ENV}, "
              f"or point --state-dir at the proxy's state directory", file=sys.stderr)
        return EXIT_ERROR
    try:
        with ControlClient(url, token, timeout=args.timeout) as client:
            if command == "approvals":
                return _approvals(client, args, verb)
            return _sessions(client, args, verb)
    except ControlError as e:
        where = f" (HTTP {e.status})" if e.status else ""
        print(f"fiveplane {command} {verb}: {e.message}{where}", file=sys.stderr)
        return EXIT_ERROR


def _approvals(client: ControlClient, args: argparse.Namespace, verb: str) -> int:
    if verb == "list":
        found = client.approvals(None if args.status == "all" else args.status)
        if args.format == "json":
            print(json.dumps(found, indent=2, ensure_ascii=False))
            return EXIT_OK
        label = "" if args.status == "all" else f" {args.status}"
        print(f"{len(found)}{label} approval request{'s' if len(found) != 1 else ''}")
        for r in found:
            print(_approval_text(r))
        return EXIT_OK
    if verb == "show":
        print(json.dumps(client.approval(args.id), indent=2, ensure_ascii=False))
        return EXIT_OK
    decided = (client.approve if verb == "approve" else client.deny)(args.id, args.reason)
    note = f" ({decided['note']})" if decided.get("note") else ""
    print(f"{decided['id']}: {decided['status']} by {decided['approver']}{note}")
    return EXIT_OK


def _sessions(client: ControlClient, args: argparse.Namespace, verb: str) -> int:
    if verb == "list":
        found = client.sessions(args.active_within)
        if args.format == "json":
            print(json.dumps(found, indent=2, ensure_ascii=False))
            return EXIT_OK
        print(f"{len(found)} session{'s' if len(found) != 1 else ''}")
        now = time.time()
        for s in found:
            state = f"killed: {s['killed']}" if s.get("killed") else "active"
            principal = (s.get("principal") or "-")[:16]
            print(f"{s['session']}  principal {principal}  last seen "
                  f"{_ago(now - float(s['last_seen']))}  held {s.get('held', 0)}  {state}")
        return EXIT_OK
    result = client.kill(args.id, args.reason)
    cancelled = result.get("cancelled") or []
    print(f"{result['session']}: killed ({result.get('killed')}); "
          f"{len(cancelled)} held call{'s' if len(cancelled) != 1 else ''} released as denied")
    return EXIT_OK


def _approval_text(r: dict[str, Any]) -> str:
    chain = " → ".join(f"{p['kind']}:{p['id']}" for p in r.get("principal", []))
    a = r.get("action", {})
    what = a.get("summary") or a.get("name") or ""
    left = r.get("time_left") or 0.0
    status = r["status"]
    if status == "pending":
        status = f"pending, {_duration(left)} left"
    elif r.get("approver"):
        status = f"{status} by {r['approver']}" + (" (used)" if r.get("consumed_at") else "")
    lines = [f"{r['id']}  {status}",
             f"    principal  {chain}",
             f"    call       {what}",
             f"    rule       {', '.join(r.get('rule_ids', [])) or '-'}: {r.get('reason', '')}"]
    shown = a.get("arguments", a.get("body"))
    if shown is not None:
        text = json.dumps(shown, ensure_ascii=False, separators=(", ", ": "))
        lines.append(f"    arguments  {text if len(text) <= 300 else text[:300] + '…'}")
    if r.get("note"):
        lines.append(f"    note       {r['note']}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    m, s = divmod(int(max(0.0, seconds)), 60)
    return f"{m}m {s:02d}s" if m else f"{s}s"


def _ago(seconds: float) -> str:
    return f"{_duration(seconds)} ago"
