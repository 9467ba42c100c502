"""``fiveplane token``: keygen | mint | attenuate | seal | inspect.

Register with ``add_parser(subparsers)`` and dispatch ``args.command == "token"`` to
``run(args)``. Exit codes: 0 ok, 1 error (bad input, unreadable file), 3 the token does
not verify (``inspect``).

A token carries its holder's attenuation secret: pass tokens as a file or on stdin
(``-``) rather than on the command line, and ``--out`` writes them with mode 0600.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..policy import loader
from .errors import IdentityError
from .keys import key_id_text, keygen, load_private_key, load_public_key
from .mint import attenuate, inspect, mint, seal_token
from .token import KINDS, Token, time_text

EXIT_OK, EXIT_ERROR, EXIT_INVALID = 0, 1, 3
_LITERAL = re.compile(r"fp[0-9]{1,4}\.")   # a token given on the command line, not a file


class CliError(Exception):
    pass


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    token = subparsers.add_parser("token", help="delegation tokens: keygen, mint, attenuate, "
                                  "seal, inspect")
    sub = token.add_subparsers(dest="token_command", required=True)

    kg = sub.add_parser("keygen", help="write a root key pair (NAME.key, NAME.pub)")
    kg.add_argument("--out", required=True, help="directory for the key files")
    kg.add_argument("--name", default="root", help="file name stem (default: root)")
    kg.add_argument("--force", action="store_true", help="overwrite existing files")

    def block_args(p: argparse.ArgumentParser, kind_default: str) -> None:
        p.add_argument("--principal", required=True, help="principal id of the new block")
        p.add_argument("--kind", choices=KINDS, default=kind_default)
        p.add_argument("--cap", action="append", default=[], metavar="GRANT",
                       help="a grant (a policy rule's match mapping) as JSON or YAML, or a "
                            "list of them; repeatable")
        p.add_argument("--caps-file", help="YAML/JSON file with a list of grants")
        p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
        p.add_argument("--not-before", type=int, default=None, help="unix seconds (default now)")
        p.add_argument("--now", type=float, default=None, help=argparse.SUPPRESS)
        p.add_argument("--seal", action="store_true",
                       help="seal the token: it verifies but cannot be attenuated further")
        p.add_argument("--out", help="write the token to this file (mode 0600) instead of stdout")

    mt = sub.add_parser("mint", help="mint a root-signed token")
    mt.add_argument("--root-key", required=True, help="root private key (PEM file)")
    block_args(mt, "human")

    at = sub.add_parser("attenuate", help="append a narrower block (needs only the token)")
    at.add_argument("token", help="the token, a file holding it, or - for stdin")
    block_args(at, "agent")
    at.epilog = "Without --cap the new block copies the previous block's capabilities."

    sl = sub.add_parser("seal", help="seal a token (no further attenuation)")
    sl.add_argument("token", help="the token, a file holding it, or - for stdin")
    sl.add_argument("--out")

    ins = sub.add_parser("inspect", help="show the chain, capabilities, expiry, verification")
    ins.add_argument("token", help="the token, a file holding it, or - for stdin")
    ins.add_argument("--root", action="append", default=[], metavar="[NAME=]PUB",
                     help="trusted root public key (PEM file); repeatable")
    ins.add_argument("--at", type=float, default=None, help="check validity at this unix time")
    ins.add_argument("--format", choices=["text", "json"], default="text")
    return token


def run(args: argparse.Namespace) -> int:
    try:
        command = args.token_command
        if command == "keygen":
            return _keygen(args)
        if command == "mint":
            return _mint(args)
        if command == "attenuate":
            return _attenuate(args)
        if command == "seal":
            return _emit(seal_token(_read_token(args.token)), args.out)
        return _inspect(args)
    except (CliError, ValueError, IdentityError, OSError) as e:
        print(f"fiveplane token {args.token_command}: {e}", file=sys.stderr)
        return EXIT_ERROR


# --- helpers ----------------------------------------------------------------------------


def _token_text(value: str) -> str:
    """A token given literally, as a file, or ``-`` (stdin)."""
    if value == "-":
        return sys.stdin.read().strip()
    if _LITERAL.match(value):
        return value.strip()
    return Path(value).read_text("utf-8").strip()


def _read_token(value: str) -> Token:
    return Token.from_text(_token_text(value))


def _grants(text: str, where: str) -> list[dict[str, Any]]:
    doc, issues = loader.parse_text(text, where)
    if issues:
        raise CliError("; ".join(i.message for i in issues))
    plain = json.loads(json.dumps(doc))
    if isinstance(plain, dict):
        return [plain]
    if isinstance(plain, list) and all(isinstance(g, dict) for g in plain):
        return plain
    raise CliError(f"{where}: a grant is a mapping (or a list of mappings), e.g. "
                   "'{server: crm, tool: refund, args: {amount: {le: 100}}}'")


def _capabilities(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    caps: list[dict[str, Any]] = []
    for i, text in enumerate(args.cap):
        caps.extend(_grants(text, f"--cap #{i + 1}"))
    if args.caps_file:
        caps.extend(_grants(Path(args.caps_file).read_text("utf-8"), args.caps_file))
    if not args.cap and not args.caps_file:
        return None
    return caps


def _emit(token: Token, out: str | None) -> int:
    text = token.to_text()
    if out:
        path = Path(out)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(f"wrote {path} ({len(text)} characters, depth {token.depth})", file=sys.stderr)
    else:
        print(text)
    return EXIT_OK


# --- commands ----------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{args.name}.key", out / f"{args.name}.pub"
    for p in (private_path, public_path):
        if p.exists() and not args.force:
            raise CliError(f"{p} exists (use --force to overwrite)")
    private_pem, public_pem = keygen()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(private_path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(public_pem)
    print(f"private key: {private_path} (keep it secret; mints tokens)")
    print(f"public key:  {public_path} (put it in the policy's identity.trusted_roots)")
    print(f"key id:      {key_id_text(load_public_key(public_pem))}")
    return EXIT_OK


def _mint(args: argparse.Namespace) -> int:
    caps = _capabilities(args)
    if caps is None:
        raise CliError("give the root block's capabilities with --cap or --caps-file")
    root = load_private_key(Path(args.root_key).read_bytes())
    token = mint(root, (args.principal, args.kind), caps, args.ttl, args.now,
                 not_before=args.not_before, seal=args.seal)
    return _emit(token, args.out)


def _attenuate(args: argparse.Namespace) -> int:
    token = attenuate(_read_token(args.token), (args.principal, args.kind),
                      _capabilities(args), args.ttl, args.now, not_before=args.not_before,
                      seal=args.seal)
    return _emit(token, args.out)


def _roots(values: list[str]) -> dict[str, Ed25519PublicKey]:
    roots: dict[str, Ed25519PublicKey] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep:
            name, file = Path(value).stem, value
        roots[name] = load_public_key(Path(file).read_bytes())
    return roots


def _inspect(args: argparse.Namespace) -> int:
    text = _token_text(args.token)
    now = time.time() if args.at is None else args.at
    report = inspect(text, _roots(args.root), now)
    ok = report["verification"]["ok"]
    if args.format == "json":
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(render(report, now))
    return EXIT_OK if ok else EXIT_INVALID


def render(report: dict[str, Any], now: float) -> str:
    lines = []
    if "blocks" in report:
        lines.append(f"token fp{report['format']} · depth {report['depth']} · root key id "
                     f"{report['root_key_id']} · {'sealed' if report['sealed'] else 'attenuable'}"
                     f" · {report['length']} characters · digest {report['digest'][:16]}")
        for block in report["blocks"]:
            if "error" in block:
                lines.append(f"  block {block['index']}: {block['error']}")
                continue
            p = block["principal"]
            lines.append(f"  block {block['index']}  {p['kind']} `{p['id']}`  "
                         f"valid {block['valid']}")
            for i, caps in enumerate(block["summary"]):
                mark = "!" if i in block.get("not_within_parent", ()) else " "
                lines.append(f"        {mark} {caps}")
            if not block["summary"]:
                lines.append("          (no capabilities: admits nothing)")
            if block.get("not_within_parent"):
                lines.append("          ! not provably within the previous block: only the "
                             "intersection applies")
    eff = report.get("effective")
    if eff:
        state = ("valid now" if eff["valid_now"] else
                 "expired" if now >= eff["not_after"] else "not yet valid")
        lines.append(f"effective: {time_text(eff['not_before'])} .. {eff['until']} ({state}"
                     + (f", expires in {eff['expires_in']} s)" if eff["valid_now"] else ")"))
        lines.append("effective capabilities: an action must be admitted by every block above")
    ver = report["verification"]
    if ver["ok"]:
        lines.append(f"verification: ok — root `{ver['root']}`, principal {ver['principal']}")
    else:
        lines.append(f"verification: FAILED [{ver['code']}] {ver['message']}")
    return "\n".join(lines)

