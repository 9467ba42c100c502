"""The evidence log under the real proxy: a full disk denies governed calls with a clear
reason and the proxy serves again once space is back (no restart); kill -9 under load
leaves a log that verifies and holds every call a client saw complete; offline proofs of
what the running proxy wrote."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import assert_reconstructable, http_client, read_evidence

from proxy.audit.verify import Notice, log_files, verify

pytestmark = pytest.mark.e2e

POLICY = """
version: 1
name: audit-e2e
network:
  allow_internal: [{{cidr: 127.0.0.1/32, ports: [{port}]}}]
rules:
  - {{id: items, match: {{host: 127.0.0.1, port: {port}, method: GET, path: "/item/**"}},
     effect: allow}}
"""


def fiveplane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "audit", *args],
                          capture_output=True, text=True, timeout=120)


def start(tmp_path: Path, proxy_process, upstream, state: Path, *extra: str):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(port=upstream.port))
    return proxy_process.start_fiveplane(policy, state_dir=state,
                                         extra=["--control", "off", "--state", "memory:",
                                                *extra])


# --- disk full ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the audit directory: a disk that really fills up (ENOSPC)."""
    mountpoint = tmp_path / "state" / "audit"
    mountpoint.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "fiveplane-audit",
                           str(mountpoint)], capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (needs CAP_SYS_ADMIN): {done.stderr}"
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = directory / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        try:
            while True:
                f.write(b"\0")
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def test_a_full_disk_denies_governed_calls_and_the_proxy_recovers(
        tmp_path: Path, small_disk: Path, proxy_process, http_upstream) -> None:
    state = small_disk.parent
    proxy = start(tmp_path, proxy_process, http_upstream, state)
    with http_client(proxy.url) as c:
        assert c.get(http_upstream.url_for("/item/before")).status_code == 200
        filler = fill(small_disk)
        # The log's last file-system page still has room for a record or two: calls pass
        # until it is used up, then every call is denied.
        for i in range(20):
            first = c.get(http_upstream.url_for(f"/item/slack-{i}"))
            if first.status_code != 200:
                break
        assert first.status_code == 403 and i < 10, (i, first.text)
        hits = len(http_upstream.hits)
        for i in range(3):
            denied = c.get(http_upstream.url_for(f"/item/full-{i}"))
            assert denied.status_code == 403, denied.text
            body = denied.json()
            assert body["rule_ids"] == ["audit.unavailable"], body
            assert "could not be recorded" in body["error"], body
            assert "No space left on device" in body["reason"], body
        assert len(http_upstream.hits) == hits            # nothing reached the upstream
        output = proxy.output()
        assert "cannot be written" in output and "No space left on device" in output
        assert "decisions denied" in output

        filler.unlink()                                   # the disk has room again
        deadline = time.monotonic() + 10
        while True:
            again = c.get(http_upstream.url_for("/item/after"))
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert again.status_code == 200, again.text
        assert [h.path for h in http_upstream.hits[hits:]][-1] == "/item/after"
        assert proxy.proc.poll() is None                  # the same process, never restarted
    assert "writable again" in proxy.output()

    [path] = log_files(small_disk)
    report = verify(path)
    assert report.ok, report.summary()
    done = fiveplane("verify", str(small_disk))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(raw) for raw in path.read_text().splitlines()]
    notes = [doc["body"] for doc in lines if doc["type"] == "note"]
    assert [n["event"] for n in notes] == ["audit_unavailable"]
    assert notes[0]["failed_records"] >= 3 and "No space left" in notes[0]["error"]
    paths = [r["action"].get("path") for r in read_evidence(state)]
    assert "/item/before" in paths and "/item/after" in paths
    assert not any(p and p.startswith("/item/full-") for p in paths)
    assert_reconstructable(state)


# --- kill -9 under load ------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["fsync", "batch"])
def test_kill_9_under_load_keeps_every_completed_call(tmp_path: Path, proxy_process,
                                                      http_upstream, durability: str) -> None:
    """With either durability: a killed proxy loses no record of a call it let through
    (``batch`` only gives up records on a machine crash, which a test cannot stage)."""
    state = tmp_path / "state"
    proxy = start(tmp_path, proxy_process, http_upstream, state,
                  "--audit-durability", durability)
    completed: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def agent(k: int) -> None:
        with http_client(proxy.url, timeout=5.0) as c:
            i = 0
            while not stop.is_set():
                path = f"/item/{k}-{i}"
                i += 1
                try:
                    r = c.get(http_upstream.url_for(path))
                except Exception:
                    continue  # in flight when the proxy died: not completed
                if r.status_code == 200 and r.json().get("path") == path:
                    with lock:
                        completed.add(path)

    threads = [threading.Thread(target=agent, args=(k,), daemon=True) for k in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(completed) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proxy.proc.pid, signal.SIGKILL)               # in the middle of the load
    proxy.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(completed) >= 300, len(completed)

    audit = state / "audit"
    [path] = log_files(audit)
    report = verify(path)
    assert report.ok, report.summary()
    assert not report.closed                              # no final checkpoint: it was killed
    assert {w.kind for w in report.warnings} <= {Notice.TORN_TAIL.value,
                                                 Notice.UNCOVERED.value}
    done = fiveplane("verify", str(audit))
    assert done.returncode == 0, done.stdout + done.stderr
    forwarded = {r["action"].get("path") for r in read_evidence(state)
                 if r["outcome"] == "forwarded"}
    missing = sorted(completed - forwarded)
    assert missing == [], f"{len(missing)} completed calls have no record: {missing[:5]}"


# --- proofs of a live log ----------------------------------------------------------------------


def test_proofs_of_what_the_proxy_recorded(tmp_path: Path, proxy_process,
                                           http_upstream) -> None:
    """An auditor keeps a checkpoint and one record's proof while the proxy runs; later the
    log still extends the kept checkpoint, and the proof checks with the public key alone."""
    state = tmp_path / "state"
    proxy = start(tmp_path, proxy_process, http_upstream, state)
    audit = state / "audit"
    with http_client(proxy.url) as c:
        for i in range(5):
            assert c.get(http_upstream.url_for(f"/item/{i}")).status_code == 200
        denied = c.get(http_upstream.url_for("/other"))
        assert denied.status_code == 403
    decision_id = denied.json()["decision_id"]
    [path] = log_files(audit)
    kept = tmp_path / "kept.ckpt"
    deadline = time.monotonic() + 20                      # a checkpoint every 5 s
    while time.monotonic() < deadline:
        ckpt = path.with_suffix(".ckpt")
        if ckpt.exists() and ckpt.read_bytes().count(b"\n") and json.loads(
                ckpt.read_bytes().splitlines()[-1])["size"] >= 6:
            kept.write_bytes(ckpt.read_bytes())
            break
        time.sleep(0.2)
    assert kept.exists(), "no checkpoint covered the records within 20 s"
    proof = tmp_path / "proof.json"
    done = fiveplane("prove", str(audit), decision_id, "-o", str(proof))
    assert done.returncode == 0, done.stderr
    with http_client(proxy.url) as c:
        for i in range(5, 10):
            assert c.get(http_upstream.url_for(f"/item/{i}")).status_code == 200
    proxy.stop()                                          # a clean stop: final checkpoint
    pub = next((audit / "keys").glob("*.pub"))
    done = fiveplane("check-proof", str(proof), "--key", str(pub))
    assert done.returncode == 0 and f"(decision {decision_id})" in done.stdout, done
    done = fiveplane("consistency", str(kept), str(audit))
    assert done.returncode == 0 and "extends the one for" in done.stdout, done
