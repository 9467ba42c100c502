"""docker-compose.yml, the Dockerfile, deploy/haproxy.cfg and policies/examples/compose.yaml agree
with each other and with the command lines the e2e tests run (tests/e2e/commands.py): two proxy
replicas behind one load-balanced address, sharing Redis. No Docker engine needed; when a
compose client is installed, ``config -q`` validates the file as well."""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.cli import CA_FILE
from proxy.policy import compile_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests" / "e2e") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from commands import (  # noqa: E402
    HTTP_UPSTREAM_SCRIPT,
    MCP_SERVER_SCRIPT,
    fiveplane_argv,
    http_upstream_argv,
    mcp_server_argv,
    redis_server_argv,
    replica_extra,
)

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
APP = PurePosixPath("/app")  # WORKDIR of the image: the repository root
PYTHONS = ("python", "python3", "/usr/local/bin/python", "/usr/local/bin/python3")

REPLICAS = ("proxy-a", "proxy-b")
FIVEPLANE_SERVICES = {*REPLICAS, "mcp-server", "http-upstream", "agent"}   # the project image
SERVICES = {"proxy", "redis", *FIVEPLANE_SERVICES}
PROXY_PORT, MCP_PORT, UPSTREAM_PORT, REDIS_PORT = 8080, 8000, 8081, 6379
REDIS_URL = f"redis://redis:{REDIS_PORT}/0"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
POLICY_IN_CONTAINER = APP / "policies" / "examples" / "compose.yaml"
CERTS_IN_CONTAINER = APP / "certs"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def command(service: dict[str, Any]) -> list[str]:
    """The service's command as argv (entrypoint + command; strings are shell-split)."""
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if value is None:
            continue
        parts += shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    return parts


def python_of(argv: list[str]) -> str:
    """The interpreter of a containerized command (must be the image's python)."""
    assert argv and argv[0] in PYTHONS, argv
    return argv[0]


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


def networks_of(service: dict[str, Any]) -> set[str]:
    nets = service.get("networks", [])
    return set(nets) if isinstance(nets, list | dict) else set()


def subnet(compose: dict[str, Any], name: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    (config,) = compose["networks"][name]["ipam"]["config"]
    return ipaddress.ip_network(config["subnet"])


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of every short- or long-syntax volume."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            source, target = parts[0], parts[1]
            out.append((source, target, len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((v.get("source", ""), v["target"], bool(v.get("read_only"))))
    return out


def repo_path(service: dict[str, Any], container_path: PurePosixPath) -> Path:
    """Where a container path of ``service`` comes from in this checkout: a bind mount of the
    service, else the copy of the repository the image holds at /app."""
    best: tuple[int, Path] | None = None
    for source, target, _ in mounts(service):
        t = PurePosixPath(target)
        if source.startswith((".", "/")) and container_path.is_relative_to(t):
            candidate = (ROOT / source).resolve() / container_path.relative_to(t)
            if best is None or len(t.parts) > best[0]:
                best = (len(t.parts), candidate)
    if best is not None:
        return best[1]
    assert container_path.is_relative_to(APP), container_path
    return ROOT / container_path.relative_to(APP)


def healthcheck_port(service: dict[str, Any]) -> int | None:
    test = service.get("healthcheck", {}).get("test")
    text = " ".join(test) if isinstance(test, list) else str(test or "")
    for port in (PROXY_PORT, MCP_PORT, UPSTREAM_PORT):
        if f", {port})" in text or f":{port}" in text or str(port) in text.split():
            return port
    return None


@pytest.fixture(scope="module")
def policy_doc(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    path = repo_path(services["proxy-a"], PurePosixPath(flag(command(services["proxy-a"]),
                                                             "--policy")))
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------------------------
# structure
# --------------------------------------------------------------------------------------------


def test_services_exist(services):
    assert set(services) == SERVICES


def test_networks(compose, services):
    assert networks_of(services["agent"]) == {"agents"}  # the agent reaches the proxies only
    assert networks_of(services["proxy"]) == {"agents"}  # the load balancer: no way out
    for name in REPLICAS:
        assert networks_of(services[name]) == {"agents", "egress", "state"}, name
    assert networks_of(services["mcp-server"]) == {"egress"}
    assert networks_of(services["http-upstream"]) == {"egress"}
    assert networks_of(services["redis"]) == {"state"}   # only the replicas reach Redis
    nets = compose["networks"]
    assert set(nets) == {"agents", "egress", "state"}
    assert nets["agents"]["internal"] is True
    assert nets["state"]["internal"] is True
    assert not nets["egress"].get("internal", False)
    subnets = [subnet(compose, n) for n in ("agents", "egress", "state")]
    assert all(n.is_private for n in subnets)
    assert not any(a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1:])


def test_nothing_published_and_no_privileges(services):
    for name, service in services.items():
        assert "ports" not in service, f"{name} publishes ports"
        assert not service.get("privileged"), name
        assert service.get("network_mode") is None, name


# --------------------------------------------------------------------------------------------
# the commands are the e2e tests' commands
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_command_is_fiveplane_argv(services, name):
    argv = command(services[name])
    state = flag(argv, "--state-dir")
    assert argv == fiveplane_argv(
        POLICY_IN_CONTAINER, f"0.0.0.0:{PROXY_PORT}", CERTS_IN_CONTAINER, state,
        python=python_of(argv), extra=replica_extra(REDIS_URL, name),
    )
    # certs and state live in named volumes, shared by the replicas (one CA; every chain
    # side by side in one audit directory, each named after its --instance)
    targets = {target: source for source, target, _ in mounts(services[name])}
    assert targets[str(CERTS_IN_CONTAINER)] == "fiveplane-certs"
    assert targets[state] == "fiveplane-state"
    assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_replicas_differ_only_in_their_instance(services):
    a, b = (command(services[n]) for n in REPLICAS)
    assert [x for x in a if x != "proxy-a"] == [x for x in b if x != "proxy-b"]
    assert mounts(services["proxy-a"]) == mounts(services["proxy-b"])
    # proxy-a creates the CA in the shared volume; proxy-b starts after it
    assert services["proxy-b"]["depends_on"]["proxy-a"]["condition"] == "service_healthy"


def test_redis_command_is_e2e_argv_and_durable(services, compose):
    redis = services["redis"]
    argv = command(redis)
    assert argv == redis_server_argv(REDIS_PORT, host="0.0.0.0", aof=True)
    # every acknowledged budget charge or approval is on disk before Redis answers
    assert flag(argv, "--appendonly") == "yes" and flag(argv, "--appendfsync") == "always"
    assert flag(argv, "--maxmemory-policy") == "noeviction"
    (data,) = [(s, t) for s, t, _ in mounts(redis) if t == "/data"]
    assert data[0] in compose["volumes"]
    assert redis["image"].startswith("redis:") and not redis["image"].endswith(":latest")
    test = redis["healthcheck"]["test"]
    assert test[:2] == ["CMD", "redis-cli"] and str(REDIS_PORT) in test and "ping" in test


def haproxy_config() -> dict[str, list[list[str]]]:
    """deploy/haproxy.cfg as {section header: [directive words, ...]}."""
    sections: dict[str, list[list[str]]] = {}
    current = None
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        words = line.split()
        if not raw[0].isspace():
            current = " ".join(words)
            sections[current] = []
        else:
            assert current is not None, raw
            sections[current].append(words)
    return sections


def test_the_one_address_balances_the_replicas(services):
    lb = services["proxy"]
    assert lb["image"].startswith("haproxy:") and not lb["image"].endswith(":latest")
    (cfg,) = [(s, t, ro) for s, t, ro in mounts(lb) if t.endswith("/haproxy.cfg")]
    assert (ROOT / cfg[0]).resolve() == HAPROXY_CFG and cfg[2]
    conf = haproxy_config()
    assert ["mode", "tcp"] in conf["defaults"]   # CONNECT tunnels pass unchanged
    assert ["bind", f":{PROXY_PORT}"] in conf["frontend proxy"]
    backend = conf["backend replicas"]
    servers = [w for w in backend if w[0] == "server"]
    assert [(w[1], w[2]) for w in servers] == [(n, f"{n}:{PROXY_PORT}") for n in REPLICAS]
    assert any(w[0] == "default-server" and "check" in w for w in backend)
    # a held call keeps its connection silent until a person decides: the timeouts outlast
    # the approval timeout (the policy's, default 300 s)
    timeouts = {w[1]: w[2] for w in conf["defaults"] if w[0] == "timeout"}
    for side in ("client", "server"):
        assert int(timeouts[side].rstrip("s")) > 300, timeouts
    for name in REPLICAS:
        assert lb["depends_on"][name]["condition"] == "service_healthy"


def test_mcp_server_command_is_e2e_argv(services):
    argv = command(services["mcp-server"])
    assert argv == mcp_server_argv(
        MCP_PORT, host="0.0.0.0", name="crm", python=python_of(argv), root=APP
    )
    assert (ROOT / MCP_SERVER_SCRIPT).is_file()


def test_http_upstream_command_is_e2e_argv(services):
    argv = command(services["http-upstream"])
    assert argv == http_upstream_argv(UPSTREAM_PORT, host="0.0.0.0", python=python_of(argv),
                                      root=APP)
    assert (ROOT / HTTP_UPSTREAM_SCRIPT).is_file()


def test_agent_command(services):
    agent = services["agent"]
    argv = command(agent)
    python_of(argv)
    script = repo_path(agent, PurePosixPath(argv[1]))
    assert script == ROOT / "examples" / "agent.py" and script.is_file()
    assert urlsplit(flag(argv, "--mcp-url")) == urlsplit(f"http://mcp-server:{MCP_PORT}/mcp")
    http = urlsplit(flag(argv, "--http-url"))
    assert (http.scheme, http.hostname, http.port) == ("http", "http-upstream", UPSTREAM_PORT)
    denied = urlsplit(flag(argv, "--denied-url"))
    assert denied.hostname not in SERVICES


# --------------------------------------------------------------------------------------------
# the policy matches the compose network
# --------------------------------------------------------------------------------------------


def test_policy_exists_and_compiles(services):
    path = repo_path(services["proxy"], POLICY_IN_CONTAINER)
    assert path == ROOT / "policies" / "examples" / "compose.yaml"
    assert path.is_file()
    compiled = compile_file(path)
    crm = compiled.server_at("http", "mcp-server", MCP_PORT, "/mcp")
    assert crm is not None and crm.name == "crm"


def test_policy_allows_exactly_the_egress_subnet(compose, policy_doc):
    internal = policy_doc["network"]["allow_internal"]
    assert [ipaddress.ip_network(i["cidr"]) for i in internal] == [subnet(compose, "egress")]
    (only,) = internal
    assert sorted(only["ports"]) == sorted([MCP_PORT, UPSTREAM_PORT])

    # and the compiled network plane agrees, address by address
    network = compile_file(ROOT / "policies" / "examples" / "compose.yaml").network
    egress, agents = subnet(compose, "egress"), subnet(compose, "agents")
    upstream_ip, agent_ip = str(egress.network_address + 5), str(agents.network_address + 5)
    assert network.address_verdict(upstream_ip, MCP_PORT) is None
    assert network.address_verdict(upstream_ip, UPSTREAM_PORT) is None
    assert network.address_verdict(upstream_ip, PROXY_PORT) is not None  # the proxy itself
    assert network.address_verdict(upstream_ip, 22) is not None
    assert network.address_verdict(agent_ip, MCP_PORT) is not None  # the agents' network
    assert network.address_verdict(str(egress.broadcast_address + 1), MCP_PORT) is not None


def test_policy_hosts_and_ports_are_the_services(policy_doc):
    allow = {d["host"]: d["ports"] for d in policy_doc["network"]["allow"]}
    assert allow == {"mcp-server": [MCP_PORT], "http-upstream": [UPSTREAM_PORT]}
    assert policy_doc["mcp_servers"]["crm"]["url"] == f"http://mcp-server:{MCP_PORT}/mcp"
    rules = {r["id"]: r for r in policy_doc["rules"]}
    allowed_tools = {
        tool
        for r in rules.values()
        if r["effect"] == "allow" and r["match"].get("server") == "crm"
        for tool in r["match"].get("tool", [])
    }
    assert allowed_tools == {"echo", "get_customer", "list_tickets"}
    (deny,) = [r for r in rules.values() if r["match"].get("tool") == "delete_all"]
    assert deny["effect"] == "deny" and deny["reason"]
    (get,) = [r for r in rules.values() if r["match"].get("host") == "http-upstream"]
    assert (get["effect"], get["match"]["method"], get["match"]["port"]) == (
        "allow", "GET", UPSTREAM_PORT)


# --------------------------------------------------------------------------------------------
# ports, proxy settings, CA sharing, healthchecks
# --------------------------------------------------------------------------------------------


def test_agent_uses_the_proxy_and_its_ca(compose, services):
    agent, proxy = services["agent"], services["proxy"]
    env = agent["environment"]
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    assert env["HTTP_PROXY"] == env["HTTPS_PROXY"] == f"http://proxy:{PROXY_PORT}"
    assert "NO_PROXY" not in env and "no_proxy" not in env
    proxy = services["proxy-a"]               # the replicas behind `proxy` make the CA
    listen = flag(command(proxy), "--listen")
    assert listen == f"0.0.0.0:{PROXY_PORT}"

    # SSL_CERT_FILE is the proxy's CA file, through the same named volume, read-only
    ca = PurePosixPath(env["SSL_CERT_FILE"])
    assert ca.name == CA_FILE
    (agent_mount,) = [(s, t, ro) for s, t, ro in mounts(agent) if ca.is_relative_to(t)]
    source, _, read_only = agent_mount
    assert read_only
    proxy_certs = flag(command(proxy), "--certs")
    assert (source, proxy_certs) in {(s, t) for s, t, _ in mounts(proxy)}
    assert source in compose["volumes"]  # a named volume, not a host directory
    # the agent runs as another user than the proxy: the CA key (0600) stays unreadable
    assert agent.get("user") not in (None, "", "0", "root", "0:0")
    assert agent["depends_on"]["proxy"]["condition"] == "service_healthy"


def test_healthchecks_use_the_service_ports(services):
    for name in ("proxy", *REPLICAS):
        assert healthcheck_port(services[name]) == PROXY_PORT, name
    assert healthcheck_port(services["mcp-server"]) == MCP_PORT
    assert healthcheck_port(services["http-upstream"]) == UPSTREAM_PORT
    for name in ("mcp-server", "http-upstream"):
        assert services["proxy-a"]["depends_on"][name]["condition"] == "service_healthy"


def test_all_services_share_one_image(services):
    # every service but the two well-kept third-party ones (load balancer, Redis)
    images = {s.get("image") for n, s in services.items() if n in FIVEPLANE_SERVICES}
    assert len(images) == 1
    for name, service in services.items():
        if name not in FIVEPLANE_SERVICES:
            assert "build" not in service, name
            continue
        build = service.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context", ".")
        assert (ROOT / context).resolve() == ROOT


def test_dockerfile_copies_sources_but_no_ca():
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.12-slim"
    assert any("pip install -e '.[test]'" in line for line in lines)
    copied = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    sources = {src.rstrip("/") for srcs in copied for src in srcs}
    assert {"proxy", "addons", "policies", "tests", "examples", "pyproject.toml"} <= sources
    # never the whole context (a local certs/ or .venv/ would be baked in) nor a CA
    assert not sources & {".", "certs", ".venv", ".fiveplane"}
    assert not any("mitmproxy-ca" in line for line in lines)


# --------------------------------------------------------------------------------------------
# the real compose client, when there is one (it needs no engine for `config`)
# --------------------------------------------------------------------------------------------


def _compose_client() -> list[str] | None:
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for argv in candidates:
        try:
            probe = subprocess.run([*argv, "version"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return argv
    return None


def test_compose_file_is_valid_for_the_compose_client():
    client = _compose_client()
    if client is not None:  # no compose client on this machine: only the checks above ran
        result = subprocess.run(
            [*client, "-f", str(COMPOSE_FILE), "config", "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
