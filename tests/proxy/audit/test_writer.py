"""The writer: durable group commit, ordering, checkpoints, keys, and fail-closed recovery."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.audit import AuditLog, Commit, verify
from proxy.audit.keys import load_or_create
from proxy.errors import AuditError


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_bytes().splitlines()]


def records(path: Path) -> list[dict[str, Any]]:
    return [d for d in read(path) if d["type"] == "record"]


def test_many_concurrent_appends_become_durable_in_order(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path, "group:1")
    fsyncs = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        if fd == log._fd:
            fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def agent(k: int) -> list[tuple[int, int]]:
        seen = []
        for i in range(20):
            commit = log.append({"agent": k, "i": i})
            await commit.wait()
            assert commit.done and commit.ok and commit.error is None
            assert commit.seq is not None
            seen.append((i, commit.seq))
        return seen

    async def main() -> list[list[tuple[int, int]]]:
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        results = await asyncio.gather(*(agent(k) for k in range(200)))
        stop.set()
        await tick
        return list(results)

    results = asyncio.run(main())
    log.close()
    seqs = sorted(seq for r in results for _, seq in r)
    assert seqs == list(range(4000))
    for r in results:  # each agent's records are in the order it appended them
        assert [seq for _, seq in r] == sorted(seq for _, seq in r)
    on_disk = records(log.path)
    assert [d["seq"] for d in on_disk] == list(range(4000))
    by_seq = {d["seq"]: (d["body"]["agent"], d["body"]["i"]) for d in on_disk}
    for k, r in enumerate(results):
        assert all(by_seq[seq] == (k, i) for i, seq in r)
    assert len(fsyncs) < 4000 / 10, f"{len(fsyncs)} fsyncs: no group commit"
    assert ticks > 100  # the event loop kept running while commits were pending
    assert verify(log.path).ok


def test_commit_hash_is_the_line_hash(tmp_path: Path) -> None:
    with AuditLog(tmp_path, "h:1") as log:
        commits = [log.append({"n": i}) for i in range(5)]
        for c in commits:
            c.wait_sync(5)
    lines = records(log.path)
    assert [c.hash for c in commits] == [d["hash"] for d in lines]
    assert [c.seq for c in commits] == [0, 1, 2, 3, 4]
    assert lines[1]["prev"] == lines[0]["hash"]


def test_wait_sync_from_threads(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "threads:1")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(100):
                log.append({"t": k, "i": i}).wait_sync(10)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert errors == []
    assert len(records(log.path)) == 800
    assert verify(log.path).ok


def test_checkpoints_every_n_records_and_on_close(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "cp:1", checkpoint_every=4, checkpoint_seconds=3600)
    for i in range(10):
        log.append({"i": i})
    log.close()
    cps = [d for d in read(log.path) if d["type"] == "checkpoint"]
    assert [(c["size"], c.get("final", False)) for c in cps] == [(4, False), (8, False),
                                                                 (10, True)]
    assert all(c["key_id"] == log.keys.key_id for c in cps)
    assert log.checkpoint_path.read_bytes() == b"".join(
        x + b"\n" for x in log.path.read_bytes().splitlines() if b'"type":"checkpoint"' in x)


def test_checkpoint_timer_runs_without_traffic(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "timer:1", checkpoint_every=1000, checkpoint_seconds=0.2)
    for i in range(3):
        log.append({"i": i}).wait_sync(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        cps = [d for d in read(log.path) if d["type"] == "checkpoint"]
        if cps:
            break
        time.sleep(0.05)
    assert [(c["size"], c.get("final", False)) for c in cps] == [(3, False)]
    time.sleep(0.5)  # no new records: no new checkpoint
    assert len([d for d in read(log.path) if d["type"] == "checkpoint"]) == 1
    report = verify(log.path)
    assert report.ok and report.covered == 3 and report.warnings == []
    log.close()


def test_close_without_records_still_seals(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "empty:1")
    log.close()
    report = verify(log.path)
    assert report.ok and report.closed and report.records == 0


def test_append_after_close_fails(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "closed:1")
    log.close()
    commit = log.append({"late": True})
    assert commit.done and isinstance(commit.error, AuditError)
    with pytest.raises(AuditError, match="closed"):
        commit.wait_sync(1)


def test_unencodable_record_fails_only_its_commit(tmp_path: Path) -> None:
    with AuditLog(tmp_path, "enc:1") as log:
        bad = log.append({"x": float("nan")})
        good = log.append({"x": 1})
        with pytest.raises(AuditError, match="cannot be encoded"):
            bad.wait_sync(5)
        good.wait_sync(5)


def test_files_and_keys(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", "host.example:4242")
    log.close()
    assert "host.example_4242" in log.path.name and log.chain in log.path.name
    keys = tmp_path / "audit" / "keys"
    key_file = log.keys.key_path
    assert key_file.parent == keys
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.keys.secret_path.stat().st_mode) == 0o600
    assert log.keys.public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    header = read(log.path)[0]
    assert header["type"] == "header" and header["key_id"] == log.keys.key_id
    # the same instance reuses its key; a second process gets its own chain file
    again = AuditLog(tmp_path / "audit", "host.example:4242")
    again.close()
    assert again.keys.key_id == log.keys.key_id and again.path != log.path
    other = load_or_create(keys / "other.key", "other")
    assert other.key_id != log.keys.key_id


def test_explicit_key_path(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "logs", "k:1", key_path=tmp_path / "vault" / "signing.key")
    log.close()
    assert (tmp_path / "vault" / "signing.pub").is_file()
    assert verify(log.path, trusted_keys=[tmp_path / "vault" / "signing.pub"]).ok


# --- fail closed ------------------------------------------------------------------------------


class DiskFull:
    """Fail ``os.write`` / ``os.fsync`` on one fd with ENOSPC while switched on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fd: int, *, on: str = "write",
                 partial: bool = False) -> None:
        self.fd, self.on, self.partial, self.active = fd, on, partial, False
        self.hits = 0
        real_write, real_fsync = os.write, os.fsync

        def write(fd: int, data: Any) -> int:
            if self.active and fd == self.fd and self.on == "write":
                self.hits += 1
                if self.partial and len(data) > 1:
                    real_write(fd, bytes(data[:len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if self.active and fd == self.fd and self.on == "fsync":
                self.hits += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(("on", "partial"), [("write", False), ("write", True),
                                             ("fsync", False)])
def test_disk_full_fails_commits_then_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               on: str, partial: bool) -> None:
    log = AuditLog(tmp_path, "full:1", checkpoint_every=3)
    disk = DiskFull(monkeypatch, log._fd, on=on, partial=partial)
    first = [log.append({"phase": "before", "i": i}) for i in range(4)]
    for c in first:
        c.wait_sync(5)
    disk.active = True

    async def during() -> list[Commit]:
        commits = [log.append({"phase": "during", "i": i}) for i in range(5)]
        for c in commits:
            with pytest.raises(AuditError, match="No space left on device"):
                await c.wait()
        return commits

    failed = asyncio.run(during())
    assert all(c.done and not c.ok and c.seq is None for c in failed)
    assert disk.hits >= 1 and not log.healthy
    disk.active = False
    after = [log.append({"phase": "after", "i": i}) for i in range(4)]
    for c in after:
        c.wait_sync(5)
    assert log.healthy
    log.close()
    report = verify(log.path)
    assert report.ok, report.summary()
    assert report.warnings == []
    lines = read(log.path)
    phases = [d["body"].get("phase") for d in lines if d["type"] == "record"]
    assert phases == ["before"] * 4 + ["after"] * 4  # nothing of the failed batch survived
    notes = [d for d in lines if d["type"] == "note"]
    assert len(notes) == 1 and notes[0]["body"]["event"] == "audit_unavailable"
    assert notes[0]["body"]["failed_records"] == 5
    assert "No space left" in notes[0]["body"]["error"]
    assert [c.seq for c in after] == [5, 6, 7, 8]  # seq 4 is the note


def test_checkpoint_file_failure_does_not_fail_commits(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path, "side:1", checkpoint_every=2)
    disk = DiskFull(monkeypatch, log._ck_fd, on="write", partial=True)
    disk.active = True
    for i in range(4):
        log.append({"i": i}).wait_sync(5)
    disk.active = False
    for i in range(2):
        log.append({"i": i}).wait_sync(5)
    log.close()
    assert disk.hits >= 1
    assert verify(log.path).ok
    sizes = [json.loads(x)["size"] for x in log.checkpoint_path.read_bytes().splitlines()]
    assert sizes == [2, 4, 6, 6]


# --- batch durability -------------------------------------------------------------------------


class FsyncLog:
    """Every fsync of one fd, with the file's size at that moment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fd: int) -> None:
        self.sizes: list[int] = []
        self.fd = fd
        real = os.fsync

        def fsync(fd: int) -> None:
            if fd == self.fd:
                self.sizes.append(os.fstat(fd).st_size)
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def test_batch_durability_acknowledges_before_fsync_and_syncs_within_the_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path, "batch:1", checkpoint_every=1000, checkpoint_seconds=3600,
                   fsync_interval=1.0)
    syncs = FsyncLog(monkeypatch, log._fd)
    commits = [log.append({"i": i}) for i in range(5)]
    for c in commits:
        c.wait_sync(5)
    written = log.path.stat().st_size
    assert all(c.ok for c in commits) and syncs.sizes == []  # acknowledged, not yet synced
    deadline = time.monotonic() + 5
    while not syncs.sizes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert syncs.sizes and syncs.sizes[0] >= written         # synced within the interval
    time.sleep(0.5)
    assert len(syncs.sizes) == 1                               # nothing new: no more fsyncs
    log.close()
    assert verify(log.path).ok and verify(log.path).closed
    assert syncs.sizes[-1] == log.path.stat().st_size         # the final checkpoint is synced


def test_batch_durability_syncs_every_checkpoint_before_the_sidecar(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path, "batch:2", checkpoint_every=3, checkpoint_seconds=3600,
                   fsync_interval=60)
    syncs = FsyncLog(monkeypatch, log._fd)
    for i in range(7):
        log.append({"i": i}).wait_sync(5)
    log.flush(5)
    sidecar = [json.loads(x) for x in log.checkpoint_path.read_bytes().splitlines()]
    assert [c["size"] for c in sidecar] == [3, 6]
    # each checkpoint in the sidecar was durable in the log before it was copied there
    lines = log.path.read_bytes().splitlines(keepends=True)
    ends = [sum(len(x) for x in lines[:i + 1]) for i, x in enumerate(lines)
            if b'"type":"checkpoint"' in x]
    assert all(any(size >= end for size in syncs.sizes) for end in ends), (ends, syncs.sizes)
    log.close()


def test_batch_durability_fails_closed_while_fsync_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(tmp_path, "batch:3", checkpoint_seconds=3600, fsync_interval=0.05)
    disk = DiskFull(monkeypatch, log._fd, on="fsync")
    disk.active = True
    log.append({"i": 0}).wait_sync(5)          # written: acknowledged
    deadline = time.monotonic() + 5
    while log.healthy and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not log.healthy and "cannot be synced" in str(log.last_error)
    with pytest.raises(AuditError, match="No space left on device"):
        log.append({"i": 1}).wait_sync(5)      # nothing new until the disk syncs again
    disk.active = False
    log.append({"i": 2}).wait_sync(5)
    assert log.healthy
    log.close()
    report = verify(log.path)
    assert report.ok, report.summary()
    assert [d["body"].get("i") for d in read(log.path) if d["type"] in ("record", "note")] == \
        [0, None, 2]                           # the note tells of the denied record


def test_durability_option_values() -> None:
    from proxy.audit.writer import parse_durability

    assert parse_durability("fsync") is None
    assert parse_durability("batch") == 0.05
    assert parse_durability("batch:0.2") == 0.2
    for bad in ("", "fsync:1", "batch:0", "batch:x", "batch:61", "async"):
        with pytest.raises(ValueError, match="audit durability"):
            parse_durability(bad)
    with pytest.raises(ValueError):
        AuditLog("/nonexistent", "x", fsync_interval=0)
