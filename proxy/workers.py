"""``fiveplane run --workers N``: N proxy processes on one listening port.

The supervisor (this module; it never imports mitmproxy) reserves HOST:PORT with a bound,
non-listening ``SO_REUSEPORT`` socket (so port 0 becomes one concrete port and another
program cannot take it meanwhile), then starts N ``fiveplane run`` worker processes with
the same arguments plus:

* ``--listen HOST:PORT --reuse-port``: every worker listens on the same port with
  ``SO_REUSEPORT`` (``addons/reuseport.py``); the kernel spreads connections over them.
* ``--instance NAME-wI``: its own evidence chain (``audit-NAME-wI-*.jsonl`` in the shared
  state directory; ``fiveplane audit verify DIR`` checks every chain of a directory) and
  its own signing key, stable across restarts.
* ``--control``: worker 0 serves the approvals console and control API on the given
  address, the others none (``off``). Every worker reads the same approvals and state, so
  one console sees and decides every held call.
* ``--shared-state``: the SQLite state file is used by several processes (each cached read
  checks for other processes' writes first); with ``--state redis://`` nothing changes.

State must be shared: ``--state memory:`` is refused. ``--record`` is refused (one flow
file cannot take several writers).

Lifecycle: the supervisor prints one ``listening on`` banner once every worker is ready,
forwards each worker's further output prefixed ``[wI]``, and forwards SIGTERM/SIGINT to
every worker (each shuts down cleanly: ``done`` hooks close the evidence chain); workers
still running after ``STOP_SECONDS`` are killed. A worker that exits on its own is not
restarted: the supervisor stops the others and exits 1, so the service manager above it
(systemd, compose ``restart:``) sees the failure. Workers die with the supervisor even if
it is killed (``PR_SET_PDEATHSIG``, Linux).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

STOP_SECONDS = 10.0
READY_SECONDS = 60.0
_READY = re.compile(r"listening on (http://\S+)")
_CONSOLE = re.compile(r"^\s+console\s+(\S+)")
_BANNER_REST = re.compile(r"^\s+(policy|evidence|trust|console|agents)\s")


class WorkersError(Exception):
    """A ``--workers`` setup that cannot work (message for the user)."""


def check(n: int, state: str, record: str | None) -> None:
    if n < 1:
        raise WorkersError(f"--workers must be at least 1, got {n}")
    if n > 1 and state.strip().startswith("memory:"):
        raise WorkersError("--workers needs state the workers share: the default SQLite "
                           "file in --state-dir (one machine) or --state redis://HOST:PORT/DB,"
                           " not memory:")
    if n > 1 and record:
        raise WorkersError("--record cannot be used with --workers (one flow file, several "
                           "writers): record with a single process")


def reserve(host: str, port: int) -> socket.socket:
    """A bound, non-listening ``SO_REUSEPORT`` socket on HOST:PORT (port 0: a free one).
    Connections only go to listening sockets, so it takes none of the traffic."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise WorkersError(f"cannot listen on {host}:{port}: {e}") from None
    return s


def worker_argv(run_argv: Sequence[str], index: int, *, host: str, port: int,
                instance: str, control: str) -> list[str]:
    """The worker's command line: the supervisor's ``run`` arguments, then overrides
    (argparse keeps the last value of an option)."""
    name = instance or os.uname().nodename
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [sys.executable, "-m", "proxy", *run_argv,
            "--workers", "1", "--listen", listen, "--reuse-port", "--shared-state",
            "--instance", f"{name}-w{index}",
            "--control", control if index == 0 else "off"]


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, run_argv: Sequence[str], n: int, *, host: str, port: int,
                 instance: str, control: str, version: str, state_dir: str,
                 ca: str) -> None:
        self.run_argv = list(run_argv)
        self.n = n
        self.host, self.port = host, port
        self.instance, self.control = instance, control
        self.version, self.state_dir, self.ca = version, state_dir, ca
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ready: list[threading.Event] = []
        self.console = "off"
        self._stop = threading.Event()
        self._out = threading.Lock()

    def _say(self, text: str) -> None:
        with self._out:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()

    def _pump(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        ready = self.ready[index]
        banner = False
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if not ready.is_set() and _READY.search(line):
                banner = True                            # the supervisor's banner says it
                continue
            if banner and _BANNER_REST.match(line):
                if index == 0 and (m := _CONSOLE.match(line)):
                    self.console = m.group(1)
                if line.lstrip().startswith("agents"):   # the banner's last line
                    banner = False
                    ready.set()
                continue
            self._say(f"[w{index}] {line}")

    def _signal(self, signum: int, frame: object) -> None:
        self._stop.set()

    def _terminate(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _dead(self) -> tuple[int, subprocess.Popen[bytes]] | None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                return i, proc
        return None

    def run(self) -> int:
        reserved = reserve(self.host, self.port)
        self.port = reserved.getsockname()[1]
        previous = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])   # `proxy` and `addons` live here
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
        try:
            for i in range(self.n):
                argv = worker_argv(self.run_argv, i, host=self.host, port=self.port,
                                   instance=self.instance, control=self.control)
                self.procs.append(subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
                    preexec_fn=_die_with_parent))
                self.ready.append(threading.Event())
            for i, proc in enumerate(self.procs):
                threading.Thread(target=self._pump, args=(i, proc), daemon=True,
                                 name=f"fiveplane-worker-{i}-output").start()
            deadline = time.monotonic() + READY_SECONDS
            while not all(r.is_set() for r in self.ready):
                if self._stop.is_set():
                    return 0
                if (dead := self._dead()) is not None:
                    self._say(f"fiveplane: worker {dead[0]} exited with status "
                              f"{dead[1].returncode} before it was ready; stopping")
                    return 1
                if time.monotonic() > deadline:
                    self._say(f"fiveplane: workers not ready after {READY_SECONDS:g} s; "
                              "stopping")
                    return 1
                self._stop.wait(0.05)
            self._banner()
            while not self._stop.wait(0.2):
                if (dead := self._dead()) is not None:
                    self._say(f"fiveplane: worker {dead[0]} (pid {dead[1].pid}) exited with "
                              f"status {dead[1].returncode}; stopping the other workers")
                    return 1
            return 0
        finally:
            self._terminate()
            reserved.close()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _banner(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{host}:{self.port}"
        audit = Path(self.state_dir) / "audit"
        pids = ", ".join(str(p.pid) for p in self.procs)
        self._say(
            f"fiveplane {self.version}: listening on {url} with {self.n} workers "
            f"(pids {pids})\n"
            f"  evidence  {audit.resolve()}  (one chain per worker: "
            f"fiveplane audit verify {audit})\n"
            f"  trust     {self.ca}\n"
            f"  console   {self.console} (worker 0; token in "
            f"{Path(self.state_dir) / 'control.token'})\n"
            f"  agents    export HTTP_PROXY={url} HTTPS_PROXY={url} SSL_CERT_FILE={self.ca}")
