"""kill -9 under load: what is on disk verifies, and every acknowledged record is there."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from proxy.audit import verify
from proxy.audit.cli import main as audit_main
from proxy.audit.verify import Notice

ROOT = Path(__file__).resolve().parents[3]

AGENT = textwrap.dedent("""
    import asyncio, sys
    from proxy.audit import AuditLog

    interval = float(sys.argv[2]) if len(sys.argv) > 2 else None
    log = AuditLog(sys.argv[1], "crash:1", checkpoint_every=500, checkpoint_seconds=0.05,
                   fsync_interval=interval)
    out = sys.stdout

    async def agent(k):
        i = 0
        while True:
            commit = log.append({"agent": k, "i": i, "pad": "x" * 300})
            await commit.wait()
            out.write(f"ACK {commit.seq} {commit.hash}\\n")
            out.flush()
            i += 1

    async def main():
        print(f"PATH {log.path}", flush=True)
        await asyncio.gather(*(agent(k) for k in range(64)))

    asyncio.run(main())
""")

ACK = re.compile(r"^ACK (\d+) ([0-9a-f]{64})$")


@pytest.mark.parametrize(("acks_before_kill", "durability"),
                         [(300, []), (3000, []), (3000, ["0.05"])],
                         ids=["300-fsync", "3000-fsync", "3000-batch"])
def test_kill_9_under_load(tmp_path: Path, acks_before_kill: int,
                           durability: list[str]) -> None:
    """Batch durability too: an acknowledged record was written, and a killed process
    loses nothing the kernel already holds."""
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "audit"), *durability],
                            stdout=subprocess.PIPE, env=env, cwd=ROOT)
    assert proc.stdout is not None
    acked: dict[int, str] = {}
    path = None
    deadline = time.monotonic() + 60
    try:
        while len(acked) < acks_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline().decode().strip()
            if not line:
                assert proc.poll() is None, "the agent process died on its own"
                continue
            if line.startswith("PATH "):
                path = Path(line[5:])
            elif m := ACK.match(line):
                acked[int(m[1])] = m[2]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        rest = proc.stdout.read().decode()
        proc.wait()
    for line in rest.splitlines():  # acks printed before the kill (a torn one is ignored)
        if m := ACK.match(line):
            acked[int(m[1])] = m[2]
    assert path is not None and len(acked) >= acks_before_kill

    report = verify(path)
    assert report.ok, report.summary()
    assert {w.kind for w in report.warnings} <= {Notice.TORN_TAIL.value, Notice.UNCOVERED.value}
    on_disk = {}
    for raw in path.read_bytes().split(b"\n"):
        try:
            doc = json.loads(raw)
        except ValueError:
            continue  # the torn tail, if any
        if doc.get("type") == "record":
            on_disk[doc["seq"]] = doc["hash"]
    missing = [seq for seq, h in acked.items() if on_disk.get(seq) != h]
    assert missing == [], f"{len(missing)} acknowledged records are not on disk"
    assert report.records >= max(acked) + 1
    assert audit_main(["audit", "verify", str(path)]) == 0
