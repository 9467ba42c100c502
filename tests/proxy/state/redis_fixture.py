"""A real ``redis-server`` for the Redis state tests (not a test module).

Every test that needs Redis starts its own server on 127.0.0.1 with a random free port
(never 6379), no RDB snapshots and (unless asked) no AOF, waits until it answers ``PING``
and kills it at teardown. ``RedisServer`` can also stop, pause (SIGSTOP: a "slow" Redis)
and restart the server on the same port, with the same data directory.

The module doubles as the worker process of the cross-process budget test::

    python redis_fixture.py budget-worker REDIS_URL PREFIX

reads one JSON command per line (``{"budget", "calls", "threads", "amount", "limit",
"start_at", "racy"}``), makes ``calls`` consume calls from ``threads`` threads that all
start at wall-clock ``start_at``, and prints ``{"passed": N, "errors": N}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_E2E = str(Path(__file__).resolve().parents[2] / "e2e")
if _E2E not in sys.path:
    sys.path.insert(0, _E2E)

from commands import redis_server_argv  # noqa: E402

REDIS_SERVER = shutil.which("redis-server")


def have_redis() -> str | None:
    """Why the Redis tests cannot run here, or ``None`` when they can."""
    if REDIS_SERVER is None:
        return "no redis-server on PATH (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the `redis` package is not installed (pip install redis)"
    return None


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL the server when the process that started
    it dies (the starting thread, in fact: start servers from the main thread), so a
    killed test run leaves no redis-server behind."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
            c.sendall(b"PING\r\n")
            return c.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (this test's own)."""

    def __init__(self, workdir: Path, *, aof: bool = False, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.workdir = workdir
        self.aof = aof
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 5) -> RedisServer:
        for _ in range(attempts):
            # the command line of docker-compose.yml's redis service, on loopback
            args = redis_server_argv(
                self.port, host="127.0.0.1", aof=self.aof, binary=REDIS_SERVER,
                extra=["--daemonize", "no", "--dir", str(self.workdir),
                       "--logfile", str(self.workdir / "redis.log")])
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break                               # e.g. the port was taken meanwhile
                if ping(self.port):
                    return self
                time.sleep(0.005)
            self.kill()
            if self.proc is not None and self.proc.returncode not in (None, 0):
                self.port = free_port()                 # try another port
        raise RuntimeError(f"redis-server did not start (see {self.workdir / 'redis.log'})")

    def kill(self) -> None:
        """SIGKILL, as a crash would (nothing more is written)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)       # in case it was paused
            proc.kill()
        proc.wait(timeout=10)

    def restart(self) -> RedisServer:
        """Kill it and start it again on the same port (same data directory)."""
        self.kill()
        return self.start()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def client(self):  # -> redis.Redis (imported lazily)
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """This test's own redis-server (skipped when Redis is not available)."""
    why = have_redis()
    if why:
        pytest.skip(why)
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.kill()


# --- the cross-process budget worker ------------------------------------------------------


def _budget_worker(url: str, prefix: str) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from proxy.state import MAX_AMOUNT, BudgetKey, BudgetResult, StateError
    from proxy.state.redis_store import RedisStore

    store = RedisStore(url, prefix=prefix, timeout=2.0)

    def racy_consume(key: BudgetKey, amount: float, limit: float, now: float) -> BudgetResult:
        used = store.budget_used(key, None, now)       # read ...
        time.sleep(0.0002)
        if used + amount > limit:
            return BudgetResult(False, used, used, limit)
        return store.consume(key, amount, MAX_AMOUNT, None, now)   # ... then write: racy

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        cmd = json.loads(line)
        key = BudgetKey.global_(cmd["budget"])
        threads = cmd["threads"]
        counts = [[0, 0] for _ in range(threads)]
        per = [cmd["calls"] // threads + (i < cmd["calls"] % threads) for i in range(threads)]

        def run(i: int, cmd: dict = cmd, key: BudgetKey = key, per: list[int] = per,
                counts: list[list[int]] = counts) -> None:
            delay = cmd["start_at"] - time.time()
            if delay > 0:
                time.sleep(delay)
            for _ in range(per[i]):
                try:
                    if cmd.get("racy"):
                        r = racy_consume(key, cmd["amount"], cmd["limit"], time.time())
                    else:
                        r = store.consume(key, cmd["amount"], cmd["limit"], None, time.time())
                    counts[i][0] += r.ok
                except StateError:
                    counts[i][1] += 1

        pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        print(json.dumps({"passed": sum(c[0] for c in counts),
                          "errors": sum(c[1] for c in counts)}), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "budget-worker":
        sys.exit(_budget_worker(sys.argv[2], sys.argv[3]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
