"""``fiveplane pins``: list | diff | approve | forget — the operator's side of tool pinning.

    fiveplane pins list    [--state-dir D | --state SPEC] [--format text|json]
    fiveplane pins diff    SERVER [--state-dir D | --state SPEC] [--format text|json]
    fiveplane pins approve SERVER DIGEST [--by NAME] [--state-dir D | --state SPEC]
    fiveplane pins forget  SERVER [--state-dir D | --state SPEC]

SERVER is the stable identity (``https://host:443/mcp``, ``stdio:<server-id>``) as ``list``
shows it. ``approve`` takes the pending digest ``diff`` shows (or at least 8 of its hex
digits): those definitions become the pin and calls to the server proceed. Approving the
*pinned* digest rejects the change instead (calls proceed against the old definitions;
the server will be flagged again if it keeps serving the new ones). ``forget`` drops the
pin: the next ``tools/list`` pins on first sight.

Register with ``add_parser(subparsers)``, dispatch ``args.command == "pins"`` to
``run(args)``. Exit codes: 0 ok, 1 error, 2 ``diff``: nothing pending.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_NOTHING = 0, 1, 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    pins = subparsers.add_parser("pins", help="pinned MCP tool definitions: list, diff, "
                                 "approve, forget")
    configure(pins)
    return pins


def configure(pins: argparse.ArgumentParser) -> None:
    sub = pins.add_subparsers(dest="pins_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", default=".fiveplane", help="state directory")
        p.add_argument("--state", default="",
                       help="state store (default STATE_DIR/state.sqlite)")

    ls = sub.add_parser("list", help="every pinned server and its status")
    common(ls)
    ls.add_argument("--format", choices=["text", "json"], default="text")

    diff = sub.add_parser("diff", help="pinned vs pending definitions of a server")
    diff.add_argument("server")
    common(diff)
    diff.add_argument("--format", choices=["text", "json"], default="text")

    ap = sub.add_parser("approve", help="approve the pending definitions of a server")
    ap.add_argument("server")
    ap.add_argument("digest", help="the pending digest (from `pins diff`), or a prefix")
    ap.add_argument("--by", default=None, help="who approves (default: $USER)")
    common(ap)

    fg = sub.add_parser("forget", help="drop a server's pin (re-pinned on the next list)")
    fg.add_argument("server")
    common(fg)


def run(args: argparse.Namespace) -> int:
    from ..state import StateError, open_store
    from .pins import PinBook

    try:
        store = open_store(args.state or Path(args.state_dir) / "state.sqlite", shared=True)
    except StateError as e:
        print(f"fiveplane pins: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        book = PinBook(store)
        command = args.pins_command
        if command == "list":
            return _list(book, args.format)
        if command == "diff":
            return _diff(book, args.server, args.format)
        if command == "approve":
            import getpass

            by = args.by or getpass.getuser()
            rec = book.approve(args.server, args.digest, by=by)
            print(f"{args.server}: {rec.status}, definitions {rec.digest} "
                  f"(approved by {rec.approved_by or by})")
            return EXIT_OK
        if not book.forget(args.server):
            raise KeyError(args.server)
        print(f"{args.server}: pin dropped")
        return EXIT_OK
    except KeyError as e:
        print(f"fiveplane pins: no pin for server {e.args[0]}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, StateError) as e:
        print(f"fiveplane pins {args.pins_command}: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        store.close()


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _list(book: Any, fmt: str) -> int:
    records = book.list()
    if fmt == "json":
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return EXIT_OK
    if not records:
        print("no pinned servers")
    for r in records:
        line = f"{r.status:8} {r.server}  {r.digest[:19]}  pinned {_when(r.pinned_at)}"
        if r.approved_by:
            line += f" by {r.approved_by}"
        if r.pending_digest:
            line += f"\n         pending {r.pending_digest[:19]} since {_when(r.pending_since)}"
        if r.relist:
            line += f"\n         must re-list since {_when(r.relist_since)}"
        print(line)
    return EXIT_OK


def _diff(book: Any, server: str, fmt: str) -> int:
    rec = book.get(server)
    if rec is None:
        raise KeyError(server)
    diffs = book.diff(server)
    if fmt == "json":
        print(json.dumps({"server": server, "pinned": rec.digest,
                          "pending": rec.pending_digest,
                          "changes": [d.to_dict() for d in diffs]}, indent=2, default=str))
        return EXIT_OK if rec.pending_digest else EXIT_NOTHING
    if rec.pending_digest is None:
        print(f"{server}: nothing pending (pinned {rec.digest})")
        return EXIT_NOTHING
    print(f"{server}\n  pinned  {rec.digest}\n  pending {rec.pending_digest} "
          f"(since {_when(rec.pending_since)})\n")
    for d in diffs:
        print(d.render())
    print(f"\napprove: fiveplane pins approve {server} {rec.pending_digest}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fiveplane pins", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
