"""The audit writer: one hash chain per process, durable group commit, fail closed.

Why group commit: an fsync costs milliseconds, a decision microseconds. Callers append and
get a ``Commit`` at once; one background thread takes everything pending, writes it with a
single ``write``, fsyncs once, and only then resolves the batch's commits. The gateway acts
on a decision only after its commit resolved (``await commit.wait()`` on the event loop,
which is never blocked), so every action the proxy took has a durable record, and a crash
loses only decisions nobody acted on.

Why fail closed and self-healing: a failed write or fsync fails the commits of that batch
with ``AuditError`` (the gateway denies them); the writer rolls its chain state back to the
last durable record, truncates the partial bytes away, and retries with the next batch, so
the log recovers by itself once the disk is writable again. The first batch written after
an outage starts with a ``note`` record that says how many decisions could not be recorded.

Durability ``batch`` (opt-in, ``fsync_interval``): a batch's commits resolve once it is
written (in the page cache: it survives a crash of the proxy, not of the machine), and the
log is fsynced at most ``fsync_interval`` s later, and always before a checkpoint is
acknowledged or copied to the sidecar. A failed background fsync fails the next batch
(fail closed) until an fsync succeeds again. The default fsyncs every batch before its
commits resolve.

Checkpoints (signed tree heads) are written after every ``checkpoint_every`` records, every
``checkpoint_seconds`` while records are not yet covered (the writer thread's own timer,
not traffic), and once more with ``final: true`` on ``close()``. Each checkpoint is also
appended to a sidecar ``.ckpt`` file after the log is durable, so a verifier can tell a
truncated log (the sidecar promises more) from a crashed one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import select
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..action import Action, StopPoint
from ..decision import Decision
from ..errors import AuditError
from . import envelope
from .keys import InstanceKeys, load_or_create, safe_name
from .merkle import CompactTree
from .schema import Sealer, encode_body

log = logging.getLogger("fiveplane.audit")

MAX_BATCH = 8192
MAX_COMMIT_DELAY = 0.002
DEFAULT_BATCH_INTERVAL = 0.05
_sha256 = hashlib.sha256


def parse_durability(text: str) -> float | None:
    """``fsync`` (None: fsync before acting) or ``batch[:SECONDS]`` (the fsync interval)."""
    mode, _, interval = text.strip().partition(":")
    if mode == "fsync" and not interval:
        return None
    if mode == "batch":
        try:
            seconds = float(interval) if interval else DEFAULT_BATCH_INTERVAL
        except ValueError:
            seconds = -1.0
        if 0 < seconds <= 60:
            return seconds
    raise ValueError(f"audit durability must be `fsync`, `batch` or `batch:SECONDS` "
                     f"(0 < SECONDS <= 60), not {text!r}")


class Commit:
    """The durability promise of one appended record.

    ``done`` turns true once the record is durable (``error`` is None, ``seq`` and ``hash``
    are set) or could not be written (``error`` is the ``AuditError``).
    """

    __slots__ = ("_event", "_lock", "_waiters", "done", "error", "hash", "seq")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None
        self._event: threading.Event | None = None
        self.done = False
        self.error: AuditError | None = None
        self.seq: int | None = None
        self.hash: str | None = None

    @classmethod
    def durable(cls) -> Commit:
        """An already-durable commit (for sinks that write synchronously)."""
        commit = cls(threading.Lock())
        commit.done = True
        return commit

    @classmethod
    def failed(cls, error: AuditError) -> Commit:
        commit = cls(threading.Lock())
        commit.done, commit.error = True, error
        return commit

    @property
    def ok(self) -> bool:
        return self.done and self.error is None

    def _raise(self) -> None:
        if self.error is not None:
            raise AuditError(str(self.error)) from self.error

    async def wait(self) -> None:
        """Await durability without blocking the event loop; raises ``AuditError``."""
        if not self.done:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            with self._lock:
                pending = not self.done
                if pending:
                    if self._waiters is None:
                        self._waiters = []
                    self._waiters.append((loop, future))
            if pending:
                await future
        self._raise()

    def wait_sync(self, timeout: float | None = None) -> None:
        """Block until durable; raises ``AuditError`` on failure or after ``timeout`` s."""
        if not self.done:
            with self._lock:
                if not self.done and self._event is None:
                    self._event = threading.Event()
                event = self._event
            if event is not None and not event.wait(timeout):
                raise AuditError(f"the audit record was not durable within {timeout} s")
        self._raise()


def _wake(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _resolve(lock: threading.Lock, commits: Sequence[Commit], error: AuditError | None) -> None:
    events: list[threading.Event] = []
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    with lock:
        for c in commits:
            c.error = error
            c.done = True
            if c._event is not None:
                events.append(c._event)
            if c._waiters:
                for loop, future in c._waiters:
                    by_loop.setdefault(loop, []).append(future)
                c._waiters = None
    for event in events:
        event.set()
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_wake, futures)


def new_chain_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def log_paths(directory: Path, instance: str, chain: str) -> tuple[Path, Path]:
    stem = f"audit-{safe_name(instance)}-{chain}"
    return directory / f"{stem}.jsonl", directory / f"{stem}.ckpt"


class AuditLog:
    """Append-only, hash-chained, checkpointed evidence log of one proxy process."""

    def __init__(self, directory: str | Path, instance: str, key_path: str | Path | None = None,
                 checkpoint_every: int = 1000, checkpoint_seconds: float = 5.0, *,
                 fsync: bool = True, fsync_interval: float | None = None) -> None:
        if checkpoint_every < 1 or checkpoint_seconds <= 0:
            raise ValueError("checkpoint_every must be ≥ 1 and checkpoint_seconds > 0")
        if fsync_interval is not None and not fsync_interval > 0:
            raise ValueError("fsync_interval must be > 0 (or None: fsync every batch)")
        self.directory = Path(directory)
        self.instance = instance
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self._fsync = fsync
        self.fsync_interval = fsync_interval
        self.keys: InstanceKeys = load_or_create(
            key_path or self.directory / "keys" / f"{safe_name(instance)}.key", instance)
        self.chain = new_chain_id()
        self.path, self.checkpoint_path = log_paths(self.directory, instance, self.chain)
        self.sealer = Sealer(self.keys, self.chain)
        header = envelope.header_line(self.chain, instance, self.keys.public_raw,
                                      self.keys.key_id, round(time.time(), 6))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.path, flags, 0o600)
            try:
                self._ck_fd = os.open(self.checkpoint_path, flags, 0o600)
            except OSError:
                os.close(self._fd)
                raise
            _write_all(self._fd, header)
            os.fsync(self._fd)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise AuditError(f"cannot create audit log in {self.directory}: {e}") from e
        header_hash = envelope.sha256_hex(header[:-1])
        self._middle = envelope.chain_middle(self.chain, instance)
        # chain state (writer thread only), rolled back to the last durable batch on failure
        self._seq = 0
        self._durable = 0
        self._prev = header_hash
        self._tree = CompactTree()
        self._cp_prev = header_hash
        self._cp_size = 0             # records covered by the last checkpoint
        self._cp_final = False
        self._offset = len(header)    # durable end of the log
        self._dirty = False           # bytes beyond ``_offset`` may exist: truncate first
        self._ck_offset = 0
        self._ck_dirty = False
        self._ck_pending: list[bytes] = []
        self._outage: dict[str, Any] | None = None
        self._unsynced = False        # batch durability: written bytes not yet fsynced
        self._sync_deadline = 0.0
        self._sync_error: OSError | None = None
        self.last_error: AuditError | None = None
        # telemetry: called on the writer thread after each batch with (records, seconds
        # for write + fsync, the batch's error or None); must be cheap and never raise
        self.on_batch: Callable[[int, float, AuditError | None], None] | None = None
        # shared state (under ``_cond``)
        self._cond = threading.Condition(threading.Lock())
        # The idle writer sleeps on a pipe, not on ``_cond``: see ``_wake``.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller = select.poll()
        self._poller.register(self._wake_r, select.POLLIN)
        self._state_lock = threading.Lock()
        self._pending: list[tuple[bytes, Commit, str]] = []
        self._idle = False
        self._gap = 1.0               # mean seconds between appends (EWMA)
        self._last_append = time.monotonic()
        self._io = 0.001              # mean seconds per batch write + fsync (EWMA)
        self._closing = False
        self._closed = False
        self._last_commit: Commit | None = None
        self._deadline = time.monotonic() + checkpoint_seconds
        self._thread = threading.Thread(target=self._run, name=f"fiveplane-audit-{self.chain}",
                                        daemon=True)
        self._thread.start()

    # --- appending ----------------------------------------------------------------------------

    def append(self, fields: Mapping[str, Any], *, kind: str = "record") -> Commit:
        """Queue one record body (a JSON object; ``time`` is added if missing).
        ``kind``: ``record`` (a decision) or ``note`` (an event of the log itself)."""
        if kind not in envelope.TAILS:
            raise ValueError(f"unknown record kind {kind!r}")
        if "time" not in fields:
            fields = {**fields, "time": round(time.time(), 6)}
        try:
            body = envelope.canonical(fields)
        except (TypeError, ValueError, RecursionError) as e:
            return Commit.failed(AuditError(f"the evidence record cannot be encoded: {e!r}"))
        if not body.startswith(b"{"):
            return Commit.failed(AuditError("an evidence record body must be a JSON object"))
        return self._enqueue(body, kind)

    def _enqueue(self, body: bytes, kind: str) -> Commit:
        commit = Commit(self._state_lock)
        with self._cond:
            if self._closing:
                return Commit.failed(AuditError(f"the audit log {self.path} is closed"))
            now = time.monotonic()
            self._gap = 0.9 * self._gap + 0.1 * min(now - self._last_append, 1.0)
            self._last_append = now
            self._pending.append((body, commit, kind))
            self._last_commit = commit
            wake, self._idle = self._idle, False
        if wake:
            self._wake()
        return commit

    def _wake(self) -> None:
        """Wake the idle writer thread. Through a pipe because ``os.write`` drops the GIL
        before the syscall that wakes it: when the wake-up preempts the caller (no idle
        core), the writer takes the GIL and starts on the batch at once. A
        ``Condition.notify`` wakes it while the caller still holds the GIL: the writer
        stalls on the GIL and the caller waits in the run queue. Measured at load average
        6-8 on 2 cores: p50 13 µs but mean 0.26-0.6 ms per notify, a third of the
        gateway's in-process time per request (tests/benchmarks/README.md)."""
        with contextlib.suppress(OSError):   # a full pipe: a wake-up is already pending
            os.write(self._wake_w, b"\0")

    def record(self, action: Action | None, decision: Decision, *, outcome: str,
               decision_id: str, enforced: Decision | None = None, adjudicated: bool = True,
               stop: StopPoint | str | None = None, approver: Any = None,
               adjudication_us: float = 0.0, total_us: float = 0.0,
               capabilities: Sequence[str] = (), state: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None,
               narrowed: Mapping[str, Any] | None = None,
               shadow: Mapping[str, Any] | None = None) -> Commit:
        """Build a schema-v1 evidence record for one decision and append it. Never raises:
        a record that cannot be built is a failed ``Commit`` (the caller denies)."""
        try:
            body = encode_body(
                self.sealer, action, decision, decision_id=decision_id, outcome=outcome,
                enforced=enforced, adjudicated=adjudicated, stop=stop, approver=approver,
                adjudication_us=adjudication_us, total_us=total_us, capabilities=capabilities,
                state=state, extra=extra, time=time.time(), narrowed=narrowed, shadow=shadow)
        except Exception as e:
            return Commit.failed(AuditError(f"the evidence record cannot be built: {e!r}"))
        return self._enqueue(body, "record")

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Records durably written so far (notes included)."""
        return self._durable

    @property
    def healthy(self) -> bool:
        return not self._dirty and self._outage is None and self._sync_error is None

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything appended so far is durable (or failed)."""
        with self._cond:
            last = self._last_commit
        if last is not None:
            with contextlib.suppress(AuditError):
                last.wait_sync(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is pending and a final checkpoint, then stop the writer."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("audit writer did not stop within %s s", timeout)
            return
        for fd in (self._fd, self._ck_fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._closed = True

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            while True:
                with self._cond:
                    self._idle = False
                    if self._pending or self._closing:
                        break
                    timeout = None
                    now = time.monotonic()
                    if self._seq != self._cp_size:
                        timeout = self._deadline - now
                    if self._unsynced:
                        due = self._sync_deadline - now
                        timeout = due if timeout is None else min(timeout, due)
                    if timeout is not None and timeout <= 0:
                        break
                # Drain wake-ups already consumed before going idle (not after waking: the
                # writer then keeps the GIL and starts on the batch at once). A byte still
                # on its way only makes the next sleep return early.
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
                with self._cond:
                    if self._pending or self._closing:
                        continue
                    self._idle = True
                self._poller.poll(None if timeout is None else timeout * 1000)
            with self._cond:
                delay = self._commit_delay() if self._pending and not self._closing else 0.0
            if delay:
                time.sleep(delay)  # releases the GIL: appenders fill the batch meanwhile
            with self._cond:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                closing = self._closing and not self._pending
            started = time.monotonic()
            try:
                self._write_batch(batch, closing)
            except Exception as e:  # never let the thread die with commits unresolved
                log.exception("audit writer failed")
                _resolve(self._state_lock, [c for _, c, _ in batch],
                         AuditError(f"audit writer error: {e!r}"))
            if batch:
                took = time.monotonic() - started
                self._io = 0.8 * self._io + 0.2 * took
                if self.on_batch is not None:
                    with contextlib.suppress(Exception):
                        self.on_batch(len(batch), took, batch[0][1].error)
            if self._unsynced and time.monotonic() >= self._sync_deadline:
                self._sync()  # after the batch's commits resolved: they never wait for it
            if closing:
                return

    def _commit_delay(self) -> float:
        """How long to let a batch fill before writing it (under ``_cond``).

        Without a delay, the writer wakes at the first GIL release after an append and
        writes batches of one record while dozens are on their way, so every record pays a
        whole write + fsync + wake-up. When records arrive faster than a write takes (mean gap
        well under the mean write time), wait about one write time: the batch then holds
        what would have queued behind the write anyway. A lone caller (gaps longer than a
        write) is never delayed."""
        if len(self._pending) >= MAX_BATCH or self._gap * 4 > self._io:
            return 0.0
        return min(self._io, MAX_COMMIT_DELAY)

    def _checkpoint(self, final: bool) -> bytes:
        unsigned = envelope.checkpoint_unsigned(
            chain=self.chain, instance=self.instance, key_id=self.keys.key_id,
            prev_checkpoint=self._cp_prev, root=self._tree.root(), size=self._seq,
            time=round(time.time(), 6), final=final)
        sig = self.keys.sign(envelope.signature_message(unsigned))
        line = envelope.seal_line(unsigned, envelope.SIG_MEMBER,
                                  base64.b64encode(sig).decode("ascii"))
        self._cp_prev = envelope.sha256_hex(line[:-1])
        self._cp_size = self._seq
        self._cp_final = final
        self._deadline = time.monotonic() + self.checkpoint_seconds
        return line

    def _append_line(self, body: bytes, kind: str, chunks: list[bytes]) -> str:
        unhashed = envelope.unhashed_record(body, self._middle, self._prev, self._seq, kind)
        leaf = _sha256(b"\x00" + unhashed).digest()
        digest = leaf.hex()
        chunks.append(envelope.seal_line(unhashed, envelope.HASH_MEMBER, digest))
        self._tree.append(leaf)
        self._prev = digest
        self._seq += 1
        return digest

    def _write_batch(self, batch: list[tuple[bytes, Commit, str]], closing: bool) -> None:
        saved = (self._seq, self._prev, self._tree.copy(), self._cp_prev, self._cp_size,
                 self._cp_final)
        try:
            data, done, checkpoints = self._chain(batch, closing)
            if not data:
                return
            if self._dirty:
                os.ftruncate(self._fd, self._offset)
                os.fsync(self._fd)
                self._dirty = False
            if self._sync_error is not None:
                os.fsync(self._fd)  # nothing new is acknowledged while the disk fails fsync
                self._sync_error = None
            _write_all(self._fd, data)
            if self._fsync and (self.fsync_interval is None or checkpoints):
                os.fsync(self._fd)
                self._unsynced = False
            elif self._fsync and not self._unsynced:
                self._unsynced = True
                self._sync_deadline = time.monotonic() + self.fsync_interval
        except Exception as e:
            self._fail(batch, saved, e)
            return
        self._offset += len(data)
        self._durable = self._seq
        if self._outage is not None and batch:
            log.warning("audit log %s is writable again after %d failed records", self.path,
                        self._outage["failed_records"])
            self._outage = None
        for commit, seq, digest in done:
            commit.seq, commit.hash = seq, digest
        _resolve(self._state_lock, [c for c, _, _ in done], None)
        if checkpoints or self._ck_pending:
            self._write_sidecar(checkpoints)

    def _chain(self, batch: list[tuple[bytes, Commit, str]],
               closing: bool) -> tuple[bytes, list[tuple[Commit, int, str]], list[bytes]]:
        """Chain the batch (and any checkpoint due) into the bytes to write."""
        chunks: list[bytes] = []
        checkpoints: list[bytes] = []
        every = self.checkpoint_every
        if batch and self._outage is not None:
            note = {**self._outage, "event": "audit_unavailable", "time": round(time.time(), 6)}
            self._append_line(envelope.canonical(note), "note", chunks)
        done: list[tuple[Commit, int, str]] = []
        for body, commit, kind in batch:
            seq = self._seq
            done.append((commit, seq, self._append_line(body, kind, chunks)))
            if self._seq % every == 0:
                line = self._checkpoint(final=False)
                chunks.append(line)
                checkpoints.append(line)
        due = self._seq != self._cp_size and time.monotonic() >= self._deadline
        if (closing and not (self._cp_final and self._cp_size == self._seq)) or due:
            line = self._checkpoint(final=closing)
            chunks.append(line)
            checkpoints.append(line)
        return b"".join(chunks), done, checkpoints

    def _sync(self) -> None:
        """Batch durability: fsync what was written (and acknowledged) since the last one."""
        try:
            os.fsync(self._fd)
        except OSError as e:
            self._sync_error = e
            self._sync_deadline = time.monotonic() + max(self.fsync_interval or 0.0, 1.0)
            self.last_error = AuditError(f"the audit log {self.path} cannot be synced: {e}")
            log.error("%s; records already acted on may be lost if the machine fails; new "
                      "decisions are denied until it syncs again", self.last_error)
            return
        self._unsynced = False
        self._sync_error = None

    def _fail(self, batch: list[tuple[bytes, Commit, str]], saved: tuple[Any, ...],
              e: Exception) -> None:
        """Roll the chain back to the last durable record, drop partial bytes, deny the
        batch, and remember the outage for the note written once the log recovers."""
        (self._seq, self._prev, self._tree, self._cp_prev, self._cp_size,
         self._cp_final) = saved
        self._deadline = time.monotonic() + min(0.5, self.checkpoint_seconds)  # back off
        self._dirty = True
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._offset)
        if isinstance(e, OSError):
            error = AuditError(f"the audit log {self.path} cannot be written: {e}")
        else:
            log.exception("audit writer error")
            error = AuditError(f"audit writer error: {e!r}")
        self.last_error = error
        now = round(time.time(), 6)
        outage = self._outage or {"failed_records": 0, "first_failure": now}
        outage["failed_records"] += len(batch)
        outage["last_failure"] = now
        outage["error"] = str(e)
        self._outage = outage
        if batch:
            log.error("%s; %d decisions denied", error, len(batch))
        _resolve(self._state_lock, [c for _, c, _ in batch], error)

    def _write_sidecar(self, lines: list[bytes]) -> None:
        """Best effort: the log is already durable; a sidecar failure only delays it."""
        self._ck_pending.extend(lines)
        data = b"".join(self._ck_pending)
        try:
            if self._ck_dirty:
                os.ftruncate(self._ck_fd, self._ck_offset)
                self._ck_dirty = False
            _write_all(self._ck_fd, data)
            if self._fsync:
                os.fsync(self._ck_fd)
        except OSError as e:
            self._ck_dirty = True
            log.error("checkpoint file %s cannot be written (will retry): %s",
                      self.checkpoint_path, e)
            return
        self._ck_offset += len(data)
        self._ck_pending.clear()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
