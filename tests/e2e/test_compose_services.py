"""The docker-compose example, without Docker: the same services (two proxy replicas sharing a
real redis-server, the MCP server, the HTTP upstream), started with the same command lines
(``tests/e2e/commands.py``) on loopback, governed by a loopback variant of
``policies/examples/compose.yaml``, driven by ``examples/agent.py``'s own flow through each
replica (the load balancer in front of them, HAProxy, is checked by ``tests/test_compose.py``).

Only the addresses change: the compose service names become 127.0.0.1, the fixed compose ports
become ephemeral ones and the egress subnet becomes 127.0.0.1/32. Every allow, deny and reason
of the policy is the compose policy's.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from clients import read_evidence
from commands import (
    REPO_ROOT,
    fiveplane_argv,
    http_upstream_argv,
    mcp_server_argv,
    redis_server_argv,
    replica_extra,
)

from proxy.policy import compile_file

pytestmark = pytest.mark.e2e

COMPOSE_POLICY = REPO_ROOT / "policies" / "examples" / "compose.yaml"
AGENT_PY = REPO_ROOT / "examples" / "agent.py"
UPSTREAM_READY = r"upstream listening on http://127\.0\.0\.1:(\d+)"
LOOPBACK = "127.0.0.1"
MCP_HOST, UPSTREAM_HOST = "mcp-server", "http-upstream"  # compose service names
EGRESS_CIDR = "172.30.20.0/24"
LISTED = ["echo", "get_customer", "list_tickets"]  # what the policy lets the agent see
EXPECTED_VERSION = {"legacy": "2025-11-25", "auto": "2026-07-28"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def load_agent() -> ModuleType:
    """``examples/agent.py`` as a module (``examples`` is not a package)."""
    spec = importlib.util.spec_from_file_location("fiveplane_example_agent", AGENT_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# the loopback variant of the compose policy
# --------------------------------------------------------------------------------------------


def compose_ports(doc: dict[str, Any]) -> dict[str, int]:
    """The upstream ports the compose policy uses, by service name."""
    ports = {MCP_HOST: urlsplit(doc["mcp_servers"]["crm"]["url"]).port}
    for dest in doc["network"]["allow"]:
        if dest["host"] == UPSTREAM_HOST:
            (ports[UPSTREAM_HOST],) = dest["ports"]
    assert set(ports) == {MCP_HOST, UPSTREAM_HOST} and all(ports.values()), ports
    return ports


def loopback_policy(doc: Any, hosts: dict[str, str], ports: dict[int, int],
                    cidrs: dict[str, str]) -> Any:
    """A copy of the policy document with hosts, ports, cidrs and server urls remapped."""

    def host(value: Any) -> Any:
        return [hosts.get(v, v) for v in value] if isinstance(value, list) else hosts.get(
            value, value)

    def port(value: Any) -> Any:
        return [ports.get(v, v) for v in value] if isinstance(value, list) else ports.get(
            value, value)

    def url(value: str) -> str:
        parts = urlsplit(value)
        netloc = f"{host(parts.hostname)}:{port(parts.port)}"
        return urlunsplit(parts._replace(netloc=netloc))

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "host":
                out[key] = host(value)
            elif key in ("port", "ports"):
                out[key] = port(value)
            elif key == "cidr":
                out[key] = cidrs.get(value, value)
            elif key == "url":
                out[key] = url(value)
            else:
                out[key] = walk(value)
        return out

    return walk(copy.deepcopy(doc))


# --------------------------------------------------------------------------------------------
# the three services
# --------------------------------------------------------------------------------------------


sys.path.insert(0, str(REPO_ROOT / "tests" / "proxy" / "state"))
from redis_fixture import RedisServer, have_redis  # noqa: E402

REPLICAS = ("proxy-a", "proxy-b")


@pytest.fixture
def redis(tmp_path: Path) -> Any:
    why = have_redis()
    if why:
        pytest.fail(why)         # .ci/run installs redis-server: its absence is a failure
    server = RedisServer(tmp_path / "redis", aof=True).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def compose_stack(tmp_path: Path, mcp_server, proxy_process, proxy_certs,
                  redis: RedisServer) -> dict[str, Any]:
    """mcp-server, http-upstream, redis and the two replicas on loopback, as compose runs
    them."""
    mcp = mcp_server.start(name="crm")
    upstream = proxy_process.start(http_upstream_argv(0, host=LOOPBACK), UPSTREAM_READY)

    doc = yaml.safe_load(COMPOSE_POLICY.read_text())
    compose = compose_ports(doc)
    variant = loopback_policy(
        doc,
        hosts={MCP_HOST: LOOPBACK, UPSTREAM_HOST: LOOPBACK},
        ports={compose[MCP_HOST]: mcp.port, compose[UPSTREAM_HOST]: upstream.port},
        cidrs={EGRESS_CIDR: f"{LOOPBACK}/32"},
    )
    text = yaml.safe_dump(variant, sort_keys=False)
    for gone in (MCP_HOST, UPSTREAM_HOST, EGRESS_CIDR):
        assert gone not in text, f"{gone} left in the loopback policy:\n{text}"
    policy = tmp_path / "compose-loopback.yaml"
    policy.write_text(text)
    compile_file(policy)  # fails loudly here rather than as a proxy that never starts

    state = tmp_path / "state"        # one state directory, as the shared compose volume
    replicas = {name: proxy_process.start_fiveplane(
        policy, state_dir=state, extra=replica_extra(redis.url, name)) for name in REPLICAS}

    # exactly the command lines of tests/e2e/commands.py (and so of docker-compose.yml)
    assert mcp.process.argv == mcp_server_argv(0, calls_log=mcp.calls_log, name="crm")
    assert upstream.process.argv == http_upstream_argv(0, host=LOOPBACK)
    for name, proxy in replicas.items():
        assert proxy.process.argv == fiveplane_argv(policy, "127.0.0.1:0", proxy_certs, state,
                                                    extra=replica_extra(redis.url, name))
    assert redis.proc is not None and redis.proc.args[:len(redis_server_argv(
        redis.port, host=LOOPBACK, binary=redis.proc.args[0]))] == redis_server_argv(
        redis.port, host=LOOPBACK, binary=redis.proc.args[0])
    return {
        "mcp": mcp,
        "upstream": upstream,
        "replicas": replicas,
        "proxy": replicas["proxy-a"],
        "policy": variant,
        "evidence": state,
        "mcp_url": f"http://{LOOPBACK}:{mcp.port}/mcp",
        "http_url": f"http://{LOOPBACK}:{upstream.port}/status",
        # not in network.allow; on loopback, so nothing could leave the machine even if the
        # proxy let it through (it must not: the CONNECT is refused before any lookup)
        "denied_url": f"https://localhost:{_free_port()}/",
    }


def _reason(doc: dict[str, Any], rule_id: str) -> str:
    (rule,) = [r for r in doc["rules"] if r["id"] == rule_id]
    return rule["reason"]


def _evidence(state: Path) -> dict[str, dict[str, Any]]:
    return {r["decision_id"]: r for r in read_evidence(state)}


def _check_report(report: Any, stack: dict[str, Any], mode: str) -> None:
    assert report.as_expected, report.to_dict()
    assert report.protocol_version == EXPECTED_VERSION[mode]
    # delete_all (denied) and refund (no rule: default deny) are hidden from the listing
    assert report.tools == LISTED

    allowed = report.allowed_call
    assert (allowed.action, allowed.allowed, allowed.ok) == ("tools/call get_customer", True, True)
    assert allowed.result["id"] == "c-1"
    assert allowed.result["name"] == "Jane Doe"

    denied = report.denied_call
    assert (denied.action, denied.allowed, denied.ok) == ("tools/call delete_all", False, False)
    assert denied.rule_ids == ["crm-no-delete-all"]
    assert denied.reason == _reason(stack["policy"], "crm-no-delete-all")
    assert denied.decision_id

    get = report.http_get
    assert (get.allowed, get.ok, get.status) == (True, True, 200)
    assert get.result == {"ok": True, "path": "/status", "method": "GET"}

    host = report.denied_host
    assert (host.allowed, host.ok, host.status) == (False, False, 403)

    # the upstream saw the allowed call and never the denied one
    tools_called = [c["tool"] for c in stack["mcp"].calls()]
    assert "delete_all" not in tools_called
    assert tools_called.count("get_customer") >= 1

    # the proxy recorded the denials with the rule that decided them
    records = _evidence(stack["evidence"])
    record = records[denied.decision_id]
    assert record["decision"]["rule_ids"] == ["crm-no-delete-all"]
    assert record["outcome"] == "denied"
    denied_port = urlsplit(stack["denied_url"]).port
    refusals = [
        r for r in records.values()
        if r["decision"]["rule_ids"] == ["network.default"]
        and r.get("action", {}).get("host") == "localhost"
        and r.get("action", {}).get("port") == denied_port
    ]
    assert refusals and all(r["outcome"] == "denied" for r in refusals)
    log = stack["proxy"].output()
    assert f"server connect localhost:{denied_port}" not in log
    assert f"server connect 127.0.0.1:{denied_port}" not in log


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "replica"), [("auto", "proxy-a"), ("legacy", "proxy-b")])
def test_agent_flow_through_compose_policy(compose_stack, mode, replica):
    agent = load_agent()
    proxy = compose_stack["replicas"][replica]
    config = agent.AgentConfig(
        mcp_url=compose_stack["mcp_url"],
        http_url=compose_stack["http_url"],
        denied_url=compose_stack["denied_url"],
        proxy=proxy.url,
        ca_file=str(proxy.ca_file),
        mode=mode,
    )
    report = agent.run(config)
    _check_report(report, compose_stack, mode)
    # the replica that served the agent wrote the evidence, in its own chain
    chains = {p.name.split("-2")[0] for p in (compose_stack["evidence"] / "audit").glob(
        "audit-*.jsonl")}
    assert chains == {f"audit-{name}" for name in REPLICAS}
    (own,) = (compose_stack["evidence"] / "audit").glob(f"audit-{replica}-*.jsonl")
    assert report.denied_call.decision_id in own.read_text()


def test_agent_process_as_compose_runs_it(compose_stack, tmp_path):
    """``python examples/agent.py`` configured the compose way: HTTP(S)_PROXY + SSL_CERT_FILE,
    waiting for the CA file; its exit code and JSON report say the policy held."""
    proxy = compose_stack["proxy"]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({
        "HTTP_PROXY": proxy.url,
        "HTTPS_PROXY": proxy.url,
        "SSL_CERT_FILE": str(proxy.ca_file),
        # would bypass the proxy for a client that trusted the environment; the agent does not
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    proc = subprocess.run(
        [
            sys.executable, str(AGENT_PY), "--json", "--wait", "10",
            "--mcp-url", compose_stack["mcp_url"],
            "--http-url", compose_stack["http_url"],
            "--denied-url", compose_stack["denied_url"],
        ],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["as_expected"] is True
    assert report["proxy"] == proxy.url
    assert report["tools"] == LISTED
    assert report["allowed_call"]["ok"] is True
    assert report["denied_call"]["allowed"] is False
    assert report["denied_call"]["rule_ids"] == ["crm-no-delete-all"]
    assert report["http_get"]["status"] == 200
    assert report["denied_host"]["allowed"] is False
    assert "delete_all" not in [c["tool"] for c in compose_stack["mcp"].calls()]


def test_agent_import_has_no_side_effects():
    agent = load_agent()
    cfg = agent.AgentConfig.from_env(
        {"https_proxy": "http://p:1", "SSL_CERT_FILE": "/ca.pem"}, mode="legacy"
    )
    assert (cfg.proxy, cfg.ca_file, cfg.mode) == ("http://p:1", "/ca.pem", "legacy")
    assert cfg.mcp_url == "http://mcp-server:8000/mcp"
