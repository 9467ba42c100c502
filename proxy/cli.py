"""The ``fiveplane`` command: run | check | ca.

Exit codes: 0 ok, 1 error, 3 invalid policy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from importlib import resources
from pathlib import Path

from . import __version__
from .audit import cli as audit_cli
from .control import cli as control_cli
from .errors import PolicyError
from .identity import cli as token_cli
from .mcp import pins_cli, wrap_cli
from .policy import compile_file
from .replay import cli as replay_cli

EXIT_OK, EXIT_ERROR, EXIT_INVALID = 0, 1, 3
CA_FILE = "mitmproxy-ca-cert.pem"


def default_policy() -> str:
    local = Path("policies/default.yaml")
    if local.is_file():
        return str(local)
    return str(resources.files("proxy").joinpath("data/default.yaml"))


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fiveplane", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fiveplane {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the proxy")
    run.add_argument("--policy", default=None, help="policy YAML (default: policies/default.yaml)")
    run.add_argument("--listen", type=_listen, default=("127.0.0.1", 8080),
                     help="HOST:PORT to listen on (default 127.0.0.1:8080; port 0 = any free)")
    run.add_argument("--certs", default="certs", help="CA directory (created on first run)")
    run.add_argument("--state-dir", default=".fiveplane", help="evidence and state directory")
    run.add_argument("--state", default="",
                     help="session state store: a SQLite path (default STATE_DIR/state.sqlite)"
                          ", memory: or redis://HOST:PORT/DB (shared by several proxies)")
    run.add_argument("--upstream-ca", default=None,
                     help="extra CA bundle trusted for upstream TLS (e.g. a private CA)")
    run.add_argument("--instance", default="", help="instance name in evidence records")
    run.add_argument("--reload-interval", type=float, default=1.0,
                     help="seconds between policy file checks (0 = no hot reload)")
    run.add_argument("--control", default="127.0.0.1:8081",
                     help="HOST:PORT of the approvals console and control API, or off")
    run.add_argument("--control-token", default="",
                     help="control API token (default: generated in STATE_DIR/control.token)")
    run.add_argument("--record", metavar="FILE", default=None,
                     help="write every flow and its decisions to this mitmproxy flow file "
                          "(secrets redacted; a leading + appends)")
    run.add_argument("--record-secrets", action="store_true",
                     help="keep credentials and secrets in the recording (needed to replay "
                          "identity decisions)")
    run.add_argument("--audit-durability", default="fsync", metavar="fsync|batch[:S]",
                     help="fsync: every decision's record is fsynced before it is acted on "
                          "(default); batch: written before, fsynced within S seconds "
                          "(default 0.05): faster, but a machine crash can lose the last "
                          "records")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     default="info", help="log level (default info; -v means debug)")
    run.add_argument("--log-format", choices=["text", "json"], default="text",
                     help="log lines for a terminal (text) or a log pipeline (json: one "
                          "object per line)")
    run.add_argument("--decision-log", choices=["on", "off"], default="on",
                     help="log one line per decision other than allow (default on)")
    run.add_argument("--metrics", choices=["on", "off"], default="on",
                     help="Prometheus metrics at /metrics on the control listener")
    run.add_argument("--metrics-token", default="",
                     help="bearer token /metrics requires (default: none, loopback only)")
    run.add_argument("--otel", action="store_true",
                     help="export an OpenTelemetry span per decision (needs the otel extra)")
    run.add_argument("--workers", type=int, default=1,
                     help="proxy processes sharing the listening port (SO_REUSEPORT) and the "
                          "state (SQLite in STATE_DIR or --state redis://); default 1")
    run.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--shared-state", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--test-faults", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("-v", "--verbose", action="store_true")

    check = sub.add_parser("check", help="compile policies and report every error")
    check.add_argument("policies", nargs="+")
    check.add_argument("--format", choices=["text", "json"], default="text")

    ca = sub.add_parser("ca", help="print the path of the CA certificate agents must trust")
    ca.add_argument("--certs", default="certs")
    token_cli.add_parser(sub)
    audit_cli.add_parser(sub)
    replay_cli.add_parser(sub)
    control_cli.add_parser(sub)
    wrap_cli.add_parser(sub)
    pins_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command == "check":
        return cmd_check(args.policies, args.format)
    if args.command == "ca":
        return cmd_ca(Path(args.certs))
    if args.command == "token":
        return token_cli.run(args)
    if args.command == "audit":
        return audit_cli.run(args)
    if args.command in ("replay", "test"):
        return replay_cli.run(args)
    if args.command in control_cli.COMMANDS:
        return control_cli.run(args)
    if args.command == "wrap":
        return wrap_cli.run(args)
    if args.command == "pins":
        return pins_cli.run(args)
    return cmd_run(args)


def cmd_check(paths: list[str], fmt: str) -> int:
    results = []
    status = EXIT_OK
    for path in paths:
        try:
            policy = compile_file(path, resolve_secrets=False)
        except PolicyError as e:
            status = EXIT_INVALID
            results.append({"file": path, "ok": False, "issues": [i.to_dict() for i in e.issues]})
            if fmt == "text":
                for issue in e.issues:
                    print(issue)
            continue
        results.append({"file": path, "ok": True, "name": policy.name,
                        "rules": len(policy.rules), "version": policy.version})
        if fmt == "text":
            print(f"{path}: ok — policy `{policy.name}`, {len(policy.rules)} rules, "
                  f"version {policy.short_version}")
    if fmt == "json":
        print(json.dumps(results, indent=2))
    return status


def ensure_ca(certs: Path) -> Path:
    from mitmproxy import certs as mcerts

    certs.mkdir(parents=True, exist_ok=True)
    mcerts.CertStore.from_store(str(certs), "mitmproxy", 2048)
    return certs.resolve() / CA_FILE


def _metrics_url(gate: object, args: argparse.Namespace) -> str:
    control = getattr(gate, "control", None)
    if control is None or args.metrics == "off":
        return "off"
    return control.url + "/metrics" + (" (bearer token)" if args.metrics_token else "")


def cmd_ca(certs: Path) -> int:
    print(ensure_ca(certs))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .errors import GovernanceError

    policy = args.policy or default_policy()
    try:
        compiled = compile_file(policy)
    except PolicyError as e:
        print(e, file=sys.stderr)
        return EXIT_INVALID
    from .observe.logs import configure_logging

    configure_logging("debug" if args.verbose else args.log_level, args.log_format)
    if args.workers != 1:
        return _supervise(args, compiled.version)
    try:
        return asyncio.run(_serve(args, policy, compiled.version))
    except (GovernanceError, OSError) as e:
        print(f"fiveplane: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


def _supervise(args: argparse.Namespace, version: str) -> int:
    from .workers import Supervisor, WorkersError, check

    try:
        check(args.workers, args.state, args.record)
        certs = Path(args.certs)
        ensure_ca(certs)      # once, before the workers race to create it
        host, port = args.listen
        return Supervisor(args.argv, args.workers, host=host, port=port,
                          instance=args.instance, control=args.control,
                          version=__version__, state_dir=args.state_dir,
                          ca=str(certs.resolve() / CA_FILE)).run()
    except WorkersError as e:
        print(f"fiveplane: {e}", file=sys.stderr)
        return EXIT_INVALID


async def _serve(args: argparse.Namespace, policy: str, version: str) -> int:
    from mitmproxy import exceptions
    from mitmproxy.options import Options
    from mitmproxy.tools.dump import DumpMaster

    from addons.fiveplane_gate import FiveplaneGate

    host, port = args.listen
    certs = Path(args.certs)
    certs.mkdir(parents=True, exist_ok=True)
    if args.reuse_port:
        from addons import reuseport

        reuseport.enable()
    opts = Options(listen_host=host, listen_port=port, mode=["regular"], confdir=str(certs))
    master = DumpMaster(opts, with_termlog=False, with_dumper=False)
    gate = FiveplaneGate()
    if args.record:
        from addons.fiveplane_recorder import FiveplaneRecorder

        recorder = FiveplaneRecorder()
        master.addons.add(recorder.tap, gate, recorder)  # the tap sees flows before the gate
    else:
        master.addons.add(gate)
    settings: dict[str, object] = {
        "connection_strategy": "lazy",   # no upstream byte before the first request is allowed
        "http3": False,
        "fiveplane_state_dir": args.state_dir,
        "fiveplane_instance": args.instance,
        "fiveplane_state": args.state,
        "fiveplane_shared_state": args.shared_state,
        "fiveplane_control": args.control,
        "fiveplane_control_token": args.control_token,
        "fiveplane_reload_interval": args.reload_interval,
        "fiveplane_test_faults": args.test_faults,
        "fiveplane_audit_durability": args.audit_durability,
        "fiveplane_metrics": args.metrics == "on",
        "fiveplane_metrics_token": args.metrics_token,
        "fiveplane_decision_log": args.decision_log == "on",
        "fiveplane_otel": args.otel,
        "fiveplane_policy": policy,
    }
    if args.upstream_ca:
        settings["ssl_verify_upstream_trusted_ca"] = args.upstream_ca
    if args.record:
        settings["fiveplane_record"] = args.record
        settings["fiveplane_record_secrets"] = args.record_secrets
    try:
        master.options.update(**settings)
    except exceptions.OptionsError as e:
        print(f"fiveplane: {e}", file=sys.stderr)
        return EXIT_INVALID
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # a clean stop (``done`` hooks close the evidence chain): ``--workers`` forwards
        # these, and a container's PID 1 ignores SIGTERM without a handler
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, master.shutdown)
    task = asyncio.create_task(master.run())
    proxyserver = master.addons.get("proxyserver")
    for _ in range(200):
        if proxyserver.listen_addrs() or task.done():
            break
        await asyncio.sleep(0.05)
    if task.done():
        await task
        return EXIT_ERROR
    bound_host, bound_port = proxyserver.listen_addrs()[0][:2]
    url = f"http://{bound_host}:{bound_port}"
    ca = certs.resolve() / CA_FILE
    print(f"fiveplane {__version__}: listening on {url}\n"
          f"  policy    {policy} (version {version.split(':', 1)[1][:12]})\n"
          f"  evidence  {Path(args.state_dir).resolve() / 'audit'}"
          f"  (fiveplane audit verify {Path(args.state_dir) / 'audit'})\n"
          f"  trust     {ca}\n"
          f"  console   {gate.control.url if gate.control else 'off'}"
          f" (token in {Path(args.state_dir) / 'control.token'})\n"
          f"  activity  {gate.control.url + '/activity' if gate.control else 'off'}\n"
          f"  metrics   {_metrics_url(gate, args)}\n"
          f"  agents    export HTTP_PROXY={url} HTTPS_PROXY={url} SSL_CERT_FILE={ca}",
          flush=True)
    await task
    return EXIT_OK
