"""End-to-end fixtures: real MCP server processes, HTTP(S) upstreams, proxy processes.

Fixtures (see the docstrings below):

* ``test_ca`` (session)       -> ``TestCA`` for upstream TLS (``.ca_pem``)
* ``proxy_certs`` (session)   -> ``Path`` confdir holding a pre-generated mitmproxy CA
                                 (``mitmproxy-ca.pem`` + ``mitmproxy-ca-cert.pem`` ...)
* ``mcp_server`` (function)   -> factory
                                 ``start(json_response=False, name="crm") -> McpServerHandle``
* ``http_upstream`` / ``https_upstream`` (function) -> running ``Upstream``
* ``proxy_process`` (function) -> factory ``start(argv, ready_regex) -> ProxyHandle`` with
  ``.start_mitmdump(confdir=None, upstream_ca=None, scripts=())`` and
  ``.start_fiveplane(policy_path, certs_dir=None, state_dir=None, upstream_ca=None, extra=())``

Every process is started in its own process group with stdout+stderr going to a file under the
test's tmp dir (nothing can block on a full pipe) and the whole group is killed at teardown,
also when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent.parent
SERVERS_DIR = E2E_DIR / "servers"
if str(E2E_DIR) not in sys.path:  # make `clients` / `servers.*` importable in any import mode
    sys.path.insert(0, str(E2E_DIR))

from commands import fiveplane_argv, mcp_server_argv  # noqa: E402
from servers.http_upstream import TestCA, Upstream  # noqa: E402

MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))
MITMDUMP_READY = r"HTTP\(S\) proxy listening at 127\.0\.0\.1:(\d+)\."
FIVEPLANE_READY = r"listening on http://127\.0\.0\.1:(\d+)"
MCP_SERVER_READY = r"MCP server listening on http://127\.0\.0\.1:(\d+)/mcp"
MITM_CA_CERT = "mitmproxy-ca-cert.pem"
READY_TIMEOUT = 30.0

_PROXY_ENV_VARS = {
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "ws_proxy",
    "wss_proxy",
}


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (prefer ``--port 0`` + ready lines)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until ``host:port`` accepts TCP connections; ``TimeoutError`` otherwise."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as e:
            last = e
            time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} not accepting connections after {timeout}s ({last})")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: no proxy variables, unbuffered Python output."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_ENV_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# managed processes
# --------------------------------------------------------------------------------------------


@dataclass
class ManagedProcess:
    """A child process in its own process group, output captured in ``log_path``."""

    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL after ``timeout``; idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        # the leader may be gone while children of the group survive: always SIGKILL the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        return self.proc.returncode


class ProcessLauncher:
    """Starts processes, waits for a ready line, and stops everything it started."""

    def __init__(self, log_dir: Path, label: str) -> None:
        self.log_dir = log_dir
        self.label = label
        self._procs: list[ManagedProcess] = []

    def launch(
        self,
        argv: Sequence[str],
        ready_regex: str,
        *,
        timeout: float = READY_TIMEOUT,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> ManagedProcess:
        argv = [str(a) for a in argv]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{self.label}-{len(self._procs)}-{Path(argv[0]).name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(env),
                cwd=str(cwd or REPO_ROOT),
                start_new_session=True,  # own process group -> killpg at teardown
            )
        mp = ManagedProcess(argv, proc, log_path)
        self._procs.append(mp)
        pattern = re.compile(ready_regex)
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(mp.output())
            if m:
                mp.port = int(m.group(1))
                return mp
            if proc.poll() is not None:
                mp.stop()
                raise RuntimeError(
                    f"{argv!r} exited with {proc.returncode} before ready "
                    f"(/{ready_regex}/):\n{mp.output()}"
                )
            if time.monotonic() > deadline:
                mp.stop()
                raise TimeoutError(
                    f"{argv!r} not ready after {timeout}s (/{ready_regex}/):\n{mp.output()}"
                )
            time.sleep(0.02)

    def stop_all(self) -> None:
        for mp in reversed(self._procs):
            mp.stop()
        self._procs.clear()


# --------------------------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """Throwaway upstream CA + leaf (SAN localhost, 127.0.0.1); ``.ca_pem`` is the CA file."""
    return TestCA(tmp_path_factory.mktemp("upstream-ca"))


@pytest.fixture(scope="session")
def proxy_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mitmproxy confdir with a CA generated once per session (``mitmproxy-ca-cert.pem`` is the
    file clients trust). Pass it as ``--set confdir=`` / ``--certs``."""
    from mitmproxy import certs

    d = tmp_path_factory.mktemp("proxy-certs")
    certs.CertStore.create_store(d, "mitmproxy", 2048)
    assert (d / MITM_CA_CERT).exists()
    return d


# --------------------------------------------------------------------------------------------
# MCP server
# --------------------------------------------------------------------------------------------


@dataclass
class McpServerHandle:
    url: str  # http://127.0.0.1:PORT/mcp
    port: int
    calls_log: Path
    process: ManagedProcess = field(repr=False)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    def calls(self) -> list[dict]:
        """Tool invocations the server received so far (one dict per call)."""
        try:
            text = self.calls_log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def output(self) -> str:
        return self.process.output()

    def stop(self) -> None:
        self.process.stop()


class McpServerFactory:
    def __init__(self, launcher: ProcessLauncher, tmp_dir: Path) -> None:
        self._launcher = launcher
        self._tmp = tmp_dir
        self._n = 0

    def start(
        self,
        json_response: bool = False,
        name: str = "crm",
        extra_args: Sequence[str] = (),
    ) -> McpServerHandle:
        self._n += 1
        calls_log = self._tmp / f"mcp-calls-{name}-{self._n}.jsonl"
        calls_log.touch()
        argv = mcp_server_argv(
            0, calls_log=calls_log, name=name, json_response=json_response, extra=extra_args
        )
        mp = self._launcher.launch(argv, MCP_SERVER_READY)
        return McpServerHandle(
            url=f"http://127.0.0.1:{mp.port}/mcp", port=mp.port, calls_log=calls_log, process=mp
        )

    __call__ = start


@pytest.fixture
def mcp_server(tmp_path: Path) -> Iterator[McpServerFactory]:
    """Factory: ``mcp_server.start(json_response=False, name="crm") -> McpServerHandle``
    (``url``, ``port``, ``calls()``, ``output()``, ``stop()``); killed at teardown."""
    launcher = ProcessLauncher(tmp_path / "logs", "mcp")
    try:
        yield McpServerFactory(launcher, tmp_path)
    finally:
        launcher.stop_all()


# --------------------------------------------------------------------------------------------
# HTTP(S) upstreams
# --------------------------------------------------------------------------------------------


@pytest.fixture
def http_upstream() -> Iterator[Upstream]:
    """Plain HTTP upstream on 127.0.0.1:0 recording ``.hits``."""
    with Upstream() as up:
        yield up


@pytest.fixture
def https_upstream(test_ca: TestCA) -> Iterator[Upstream]:
    """HTTPS upstream with a cert from ``test_ca`` (trust ``test_ca.ca_pem``)."""
    with Upstream(tls=True, ca=test_ca) as up:
        yield up


# --------------------------------------------------------------------------------------------
# proxies
# --------------------------------------------------------------------------------------------


@dataclass
class ProxyHandle:
    url: str  # http://127.0.0.1:PORT (use as the client's proxy)
    port: int
    process: ManagedProcess = field(repr=False)
    ca_file: Path | None = None  # the interception CA clients must trust

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    def output(self) -> str:
        return self.process.output()

    def stop(self) -> None:
        self.process.stop()


class ProxyFactory:
    def __init__(self, launcher: ProcessLauncher, tmp_dir: Path, certs_dir: Path) -> None:
        self._launcher = launcher
        self._tmp = tmp_dir
        self.certs_dir = certs_dir

    def start(
        self,
        argv: Sequence[str],
        ready_regex: str,
        *,
        ca_file: str | Path | None = None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = READY_TIMEOUT,
    ) -> ProxyHandle:
        """Run ``argv``; ready when a line matches ``ready_regex`` (group 1 = port)."""
        mp = self._launcher.launch(argv, ready_regex, env=env, cwd=cwd, timeout=timeout)
        return ProxyHandle(
            url=f"http://127.0.0.1:{mp.port}",
            port=mp.port,
            process=mp,
            ca_file=Path(ca_file) if ca_file else None,
        )

    __call__ = start

    def start_mitmdump(
        self,
        confdir: str | Path | None = None,
        upstream_ca: str | Path | None = None,
        scripts: Sequence[str | Path] = (),
        extra: Sequence[str] = (),
    ) -> ProxyHandle:
        """Bare ``mitmdump`` on 127.0.0.1:0 (``confdir`` defaults to the session
        ``proxy_certs``)."""
        confdir = Path(confdir) if confdir else self.certs_dir
        argv = [
            MITMDUMP,
            "--listen-host",
            "127.0.0.1",
            "-p",
            "0",
            "--set",
            f"confdir={confdir}",
        ]
        if upstream_ca:
            argv += ["--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
        for s in scripts:
            argv += ["-s", str(s)]
        argv += list(extra)
        return self.start(argv, MITMDUMP_READY, ca_file=confdir / MITM_CA_CERT)

    def start_fiveplane(
        self,
        policy_path: str | Path,
        certs_dir: str | Path | None = None,
        state_dir: str | Path | None = None,
        upstream_ca: str | Path | None = None,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> ProxyHandle:
        """``python -m proxy run --policy P --listen 127.0.0.1:0 --certs C --state-dir S ...``."""
        certs = Path(certs_dir) if certs_dir else self.certs_dir
        if state_dir is None:
            state_dir = self._tmp / "fiveplane-state"
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        argv = fiveplane_argv(
            policy_path, "127.0.0.1:0", certs, state_dir, upstream_ca=upstream_ca or None,
            extra=extra,
        )
        return self.start(argv, FIVEPLANE_READY, ca_file=certs / MITM_CA_CERT, env=env)


@pytest.fixture
def proxy_process(tmp_path: Path, proxy_certs: Path) -> Iterator[ProxyFactory]:
    """Factory: ``proxy_process.start(argv, ready_regex) -> ProxyHandle`` plus
    ``.start_mitmdump(...)`` / ``.start_fiveplane(...)``; process groups killed at teardown."""
    launcher = ProcessLauncher(tmp_path / "logs", "proxy")
    try:
        yield ProxyFactory(launcher, tmp_path, proxy_certs)
    finally:
        launcher.stop_all()


@pytest.fixture
def mitmdump(proxy_process: ProxyFactory, test_ca: TestCA) -> ProxyHandle:
    """A bare mitmdump trusting ``test_ca`` upstream (shortcut for tests)."""
    return proxy_process.start_mitmdump(upstream_ca=test_ca.ca_pem)
