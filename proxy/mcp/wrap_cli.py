"""``fiveplane wrap``: run a stdio MCP server behind the same policy, adjudicator, session
state and evidence log as the proxy.

    fiveplane wrap --server-id ID [--policy P] [--state-dir D] [--state SPEC] \\
        [--session NAME] [--instance NAME] [-v] -- <server command> [args...]

Point the agent's MCP configuration at this command instead of the server's. The wrapper:

* reads the agent's JSON-RPC on stdin and writes only JSON-RPC lines to stdout (anything
  else this process might print goes to stderr: file descriptor 1 is redirected there);
* runs the server with the same environment, minus ``FIVEPLANE_TOKEN``; the server's stderr
  is ours;
* records every decision in STATE_DIR/audit (its own signed chain, like a proxy process)
  and keeps session state, pins and bindings in STATE_DIR/state.sqlite (shared mode);
* acts as the principal of ``FIVEPLANE_TOKEN`` when the policy has an ``identity`` section
  (else anonymous); ``--session`` or ``FIVEPLANE_SESSION`` names the session (shared with
  HTTP traffic that sends ``X-Fiveplane-Session``), else each run is its own session;
* forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the server, closes the
  server's stdin at EOF on its own, and exits like the server did (same code, or killed by
  the same signal).

Register with ``add_parser(subparsers)`` and dispatch ``args.command == "wrap"`` to
``run(args)``; ``python -m proxy.mcp.wrap_cli`` runs it stand-alone. Exit codes of the
wrapper itself (before the server runs): 1 error, 3 invalid policy.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

EXIT_ERROR, EXIT_INVALID = 1, 3
FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("wrap", help="run a stdio MCP server behind the policy",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-id", required=True,
                   help="stable name of the wrapped server (pins and rules use it; never "
                        "derived from the command line)")
    p.add_argument("--policy", default=None, help="policy YAML (default: policies/default.yaml)")
    p.add_argument("--state-dir", default=".fiveplane", help="evidence and state directory")
    p.add_argument("--state", default="",
                   help="session state store: a SQLite path (default STATE_DIR/state.sqlite) "
                        "or memory:")
    p.add_argument("--session", default=None,
                   help="session id (default: $FIVEPLANE_SESSION, else one per run)")
    p.add_argument("--instance", default="", help="instance name in evidence records")
    p.add_argument("-v", "--verbose", action="store_true", help="log each refusal (stderr)")
    # not `command`: the top-level parser's subcommand lives in args.command
    p.add_argument("server_command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS]",
                   help="the server command and its arguments, after --")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fiveplane wrap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..audit import AuditLog, PolicyStore
    from ..cli import default_policy
    from ..errors import AuditError, PolicyError
    from ..gateway import Gateway
    from ..policy import compile_file
    from ..state import StateError, open_store
    from .config import McpConfig
    from .guard import McpGuard
    from .stdio import SESSION_ENV, TOKEN_ENV, StdioRelay, check_server_id, child_env, for_stdio

    command = list(args.server_command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("fiveplane wrap: give the server command after --", file=sys.stderr)
        return EXIT_ERROR
    try:
        server_id = check_server_id(args.server_id)
    except ValueError as e:
        print(f"fiveplane wrap: {e}", file=sys.stderr)
        return EXIT_ERROR
    # stdout carries MCP only: keep a private handle on it and send fd 1 to stderr, so
    # nothing else (a library's print, a warning) can ever reach the agent's JSON-RPC stream.
    mcp_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    mcp_in = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="fiveplane wrap: %(levelname)s %(message)s")
    policy_path = args.policy or default_policy()
    try:
        policy = for_stdio(compile_file(policy_path))
    except PolicyError as e:
        print(e, file=sys.stderr)
        return EXIT_INVALID
    state = Path(args.state_dir)
    # Each wrapper process writes its own evidence chain next to the proxy's (STATE_DIR/audit,
    # `fiveplane audit verify` reads them all) and shares the session state file with it.
    instance = args.instance or f"{os.uname().nodename}-{os.getpid()}-wrap-{server_id}"
    try:
        audit = AuditLog(state / "audit", instance)
        policies = PolicyStore(state / "audit" / "policies")
        store = open_store(args.state or state / "state.sqlite", shared=True)
        gateway = Gateway(policy, audit, instance=instance, store=store, policies=policies)
    except (AuditError, StateError) as e:
        print(f"fiveplane wrap: {e}", file=sys.stderr)
        return EXIT_ERROR
    mcp_config = getattr(policy, "mcp", None)
    guard = McpGuard(mcp_config if isinstance(mcp_config, McpConfig) else McpConfig(), store)
    relay = StdioRelay(gateway, server_id, guard=guard, token=os.environ.get(TOKEN_ENV),
                       session=args.session or os.environ.get(SESSION_ENV))
    previous = _forward_signals(relay)
    try:
        status = relay.run(command, mcp_in, mcp_out, env=child_env())
    except OSError as e:
        print(f"fiveplane wrap: cannot start {command[0]!r}: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        gateway.close()
    return _exit_like(status)


def _forward_signals(relay: Any) -> dict[int, Any]:
    previous: dict[int, Any] = {}

    def forward(signum: int, frame: Any) -> None:
        proc = getattr(relay, "proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signum)

    for name in FORWARDED:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, forward)
    return previous


def _exit_like(status: int) -> int:
    """Exit as the server did: its code, or die of the signal that killed it."""
    if status >= 0:
        return status
    sig = -status
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return 128 + sig


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
