"""The verifier: checks chain, signatures and Merkle roots, and names the first damage.

Why names matter: "the log does not verify" is not something an auditor can act on;
"record 4,711 (line 4,713) was deleted" or "checkpoint at line 9,000 is signed by another
key" is. Damage kinds:

===================  =========================================================================
``modified``         a line does not match its own hash (a flipped byte in any field), a
                     record was rewritten and re-hashed (the next record no longer links), or
                     a rewrite was re-chained (a correctly signed root no longer matches)
``deleted``          records (or a checkpoint) are missing: the chain skips sequence numbers
``inserted``         a line that does not belong: a duplicate, a forged record, data after
                     the final checkpoint
``reordered``        records are all present but out of order
``truncated``        the tail is missing: a signed checkpoint (in the checkpoint file or
                     given as a witness) covers more records than the log holds, or the
                     final checkpoint is gone
``forged_checkpoint`` a checkpoint whose signature does not verify under the chain's key
``wrong_key``        the header or a checkpoint names a key other than the trusted one
``foreign_record``   a record or checkpoint of another chain (other ``chain``/``instance``)
===================  =========================================================================

Crash policy: a proxy killed mid-write leaves at most one torn final line, and records after
the last checkpoint that no signature covers yet. Both are *warnings*, not damage: the report
is ``ok`` when everything before them verifies, because every acknowledged record was fsynced
before it was acknowledged and therefore lies before the torn bytes. They become
``truncated`` damage only when a signed checkpoint promises more than the log holds.

Speed: record lines are checked by position (see ``envelope``): one SHA-256 and a few slice
comparisons per record, no JSON parsing, so verification runs at ≥ 100,000 records/s. JSON
is parsed only for headers, checkpoints, notes and when something is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import AuditError
from . import envelope
from .keys import key_id, load_public_key, raw_public, safe_name, verify_signature
from .merkle import CompactTree

_sha256 = hashlib.sha256
_SEQ = envelope.SEQ_MEMBER
_REC_TAIL = envelope.RECORD_TAIL[:-1]
LOOKAHEAD = 1_000_000


class Damage(StrEnum):
    MODIFIED = "modified"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    FORGED_CHECKPOINT = "forged_checkpoint"
    WRONG_KEY = "wrong_key"
    FOREIGN_RECORD = "foreign_record"


class Notice(StrEnum):
    """Warnings that do not fail verification."""

    TORN_TAIL = "truncated"           # crash truncation: torn final line
    UNCOVERED = "uncovered"           # records after the last checkpoint
    UNTRUSTED_KEY = "untrusted_key"   # no key from outside the log
    NO_CHECKPOINT_FILE = "no_checkpoint_file"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    line: int              # 1-based line in the log (0: not tied to a line)
    seq: int | None        # sequence number at that position
    detail: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "log"
        if self.seq is not None:
            where += f" (seq {self.seq})"
        return f"{self.kind} at {where}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "line": self.line, "seq": self.seq, "detail": self.detail}


@dataclass
class VerifyReport:
    path: Path
    damage: Finding | None = None
    warnings: list[Finding] = field(default_factory=list)
    records: int = 0             # records verified intact (before any damage)
    checkpoints: int = 0         # checkpoints verified
    covered: int = 0             # records covered by the last verified checkpoint
    closed: bool = False         # ends with a verified final checkpoint
    chain: str = ""
    instance: str = ""
    key_id: str = ""
    key_source: str = ""         # trusted | keys-dir | log-header
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.damage is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "ok": self.ok,
            "damage": self.damage.to_dict() if self.damage else None,
            "warnings": [w.to_dict() for w in self.warnings], "records": self.records,
            "checkpoints": self.checkpoints, "covered": self.covered, "closed": self.closed,
            "chain": self.chain, "instance": self.instance, "key_id": self.key_id,
            "key_source": self.key_source, "elapsed_s": round(self.elapsed, 3),
        }

    def summary(self) -> str:
        head = (f"{self.path}: {'ok' if self.ok else 'DAMAGED'} — {self.records:,} records, "
                f"{self.checkpoints:,} checkpoints, {self.covered:,} covered by a signature, "
                f"{'closed' if self.closed else 'not closed'}; key {self.key_id} "
                f"({self.key_source})")
        lines = [head]
        if self.damage:
            lines.append(f"  DAMAGE {self.damage}")
        lines.extend(f"  warning {w}" for w in self.warnings)
        return "\n".join(lines)


@dataclass(slots=True)
class _Rec:
    line: int
    seq: int
    prev: bytes
    hash: bytes


class _Stop(Exception):
    def __init__(self, finding: Finding) -> None:
        self.finding = finding


def _trusted(keys: Sequence[Ed25519PublicKey | bytes | str | Path]) -> dict[str, Ed25519PublicKey]:
    out: dict[str, Ed25519PublicKey] = {}
    for k in keys:
        pub = k if isinstance(k, Ed25519PublicKey) else load_public_key(k)
        out[key_id(raw_public(pub))] = pub
    return out


class _Verifier:
    def __init__(self, path: Path, trusted_keys: Sequence[Any] | None,
                 witnesses: Sequence[Path]) -> None:
        self.path = path
        self.report = VerifyReport(path)
        self.trusted_keys = trusted_keys
        self.witnesses = witnesses
        self.tree = CompactTree()
        self.seq = 0
        self.prev = b""
        self.header_hash = b""
        self.cp_prev = ""
        self.cp_size = -1
        self.cp_line = 0
        self.final = False
        self.cp_lines: dict[bytes, int] = {}        # checkpoint line → line number
        self.recent: deque[_Rec] = deque(maxlen=4096)
        self.torn: Finding | None = None
        self.lines = 1                              # complete lines read
        self.since_cp: list[int] = []               # line numbers of records after the last cp
        self.middle = b""
        self.public: Ed25519PublicKey | None = None

    # --- entry -------------------------------------------------------------------------------

    def run(self) -> VerifyReport:
        start = time.perf_counter()
        try:
            with open(self.path, "rb") as f:
                self._header(f)
                self._body(f)
            self._witnesses()
            self._tail_notices()
        except _Stop as stop:
            self.report.damage = stop.finding
        self.report.records = self.seq if self.report.damage is None else self.report.records
        self.report.covered = max(self.cp_size, 0)
        self.report.closed = self.final and self.report.damage is None
        self.report.elapsed = time.perf_counter() - start
        return self.report

    def _damage(self, kind: Damage, line: int, seq: int | None, detail: str) -> _Stop:
        self.report.records = self.seq
        return _Stop(Finding(kind.value, line, seq, detail))

    # --- header and keys ----------------------------------------------------------------------

    def _header(self, f: IO[bytes]) -> None:
        raw = f.readline()
        if not raw:
            raise self._damage(Damage.TRUNCATED, 1, None, "the log is empty (no header)")
        if not raw.endswith(b"\n"):
            raise self._damage(Damage.TRUNCATED, 1, None, "the header line is incomplete")
        try:
            doc = json.loads(raw)
            if doc.get("type") != "header" or doc.get("v") != envelope.VERSION:
                raise ValueError("not a v1 header")
            chain, instance = str(doc["chain"]), str(doc["instance"])
            pub_raw = base64.b64decode(doc["key"], validate=True)
            public = Ed25519PublicKey.from_public_bytes(pub_raw)
            claimed = str(doc["key_id"])
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
            raise self._damage(Damage.MODIFIED, 1, None, f"the header is not valid: {e}") from e
        if key_id(pub_raw) != claimed:
            raise self._damage(Damage.MODIFIED, 1, None,
                               "the header's key_id is not the fingerprint of its key")
        r = self.report
        r.chain, r.instance, r.key_id = chain, instance, claimed
        trusted = self._trust(instance)
        if trusted is not None:
            if claimed not in trusted:
                raise self._damage(Damage.WRONG_KEY, 1, None,
                                   f"the log is keyed to {claimed}, which is not the trusted "
                                   f"key ({', '.join(sorted(trusted))})")
        else:
            r.warnings.append(Finding(Notice.UNTRUSTED_KEY.value, 1, None,
                                      "no trusted public key (pass --key, or keep keys/ next "
                                      "to the log): only the log's own key was checked"))
        self.public = public
        self.header_hash = envelope.sha256_hex(raw[:-1]).encode()
        self.prev = self.header_hash
        self.cp_prev = self.header_hash.decode()
        self.middle = envelope.chain_middle(chain, instance)

    def _trust(self, instance: str) -> dict[str, Ed25519PublicKey] | None:
        try:
            if self.trusted_keys is not None:
                self.report.key_source = "trusted"
                return _trusted(self.trusted_keys)
            pub = self.path.parent / "keys" / f"{safe_name(instance)}.pub"
            if pub.is_file():
                self.report.key_source = "keys-dir"
                return _trusted([pub])
        except (OSError, ValueError, AuditError) as e:
            raise self._damage(Damage.WRONG_KEY, 1, None, f"cannot load the trusted key: {e}") \
                from e
        self.report.key_source = "log-header"
        return None

    # --- lines --------------------------------------------------------------------------------

    def _body(self, f: IO[bytes]) -> None:
        sha = _sha256
        middle = self.middle
        mlen = len(middle)
        tree_append = self.tree.append
        recent = self.recent
        since_cp = self.since_cp
        hs = envelope.HASH_SUFFIX_LEN
        rec_tail = _REC_TAIL
        lt = len(rec_tail)
        hash_member = envelope.HASH_MEMBER
        lineno = 1
        seq, prev = self.seq, self.prev
        for raw in f:
            lineno += 1
            n = len(raw) - 1
            end = n - hs
            # fast path: a record that links, read by position (``envelope.record_position``)
            if raw.endswith(rec_tail, 0, end) and raw[n:] == b"\n" and not self.final:
                t = end - lt
                i = raw.rfind(_SEQ, 0, t)
                if (raw[i - 65 - mlen:i - 1] == middle + prev
                        and raw[i + 7:t] == str(seq).encode()
                        and raw[end:end + 9] == hash_member and raw[n - 2:n] == b'"}'):
                    leaf = sha(b"\x00" + raw[:end] + b"}").digest()
                    h = leaf.hex().encode()
                    if h == raw[end + 9:n - 2]:
                        tree_append(leaf)
                        recent.append(_Rec(lineno, seq, prev, h))
                        since_cp.append(lineno)
                        prev = h
                        seq += 1
                        continue
            self.seq, self.prev = seq, prev
            if raw[n:] != b"\n":
                self._torn(lineno, raw)
                return
            self._slow(f, lineno, raw[:n])
            seq, prev = self.seq, self.prev
        self.seq, self.prev = seq, prev
        self.lines = lineno

    def _slow(self, f: IO[bytes], lineno: int, line: bytes) -> None:
        seq = self.seq
        if self.final:
            raise self._damage(Damage.INSERTED, lineno, None,
                               "data after the final checkpoint (the log was closed)")
        try:
            doc = json.loads(line)
        except ValueError as e:
            raise self._damage(Damage.MODIFIED, lineno, seq, f"the line is not valid JSON: {e}") \
                from e
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "checkpoint":
            self._checkpoint(lineno, line, doc)
            return
        if kind == "header":
            raise self._damage(Damage.INSERTED, lineno, None, "a second header")
        if kind not in ("record", "note"):
            raise self._damage(Damage.MODIFIED, lineno, seq, f"unknown line type {kind!r}")
        cut = envelope.split_last(line, envelope.HASH_MEMBER)
        if cut is None:
            raise self._damage(Damage.MODIFIED, lineno, seq, "the record has no trailing hash")
        unhashed, claimed = cut
        leaf = _sha256(b"\x00" + unhashed).digest()
        h = leaf.hex().encode()
        if h != claimed.encode():
            raise self._damage(Damage.MODIFIED, lineno, seq,
                               "the record does not match its hash (its content was changed)")
        if doc.get("chain") != self.report.chain or doc.get("instance") != self.report.instance:
            raise self._damage(Damage.FOREIGN_RECORD, lineno, seq,
                               f"the record belongs to chain {doc.get('chain')!r} of instance "
                               f"{doc.get('instance')!r}, not to this chain")
        rseq, rprev = doc.get("seq"), str(doc.get("prev", "")).encode()
        if rseq == seq and rprev == self.prev and envelope.record_position(line) is not None:
            self.tree.append(leaf)
            self.recent.append(_Rec(lineno, seq, self.prev, h))
            self.since_cp.append(lineno)
            self.prev = h
            self.seq += 1
            return
        if not isinstance(rseq, int):
            raise self._damage(Damage.MODIFIED, lineno, seq, "the record has no valid seq")
        raise self._diagnose(f, _Rec(lineno, rseq, rprev, h))

    def _torn(self, lineno: int, raw: bytes) -> None:
        if self.final:
            raise self._damage(Damage.INSERTED, lineno, None,
                               "data after the final checkpoint (the log was closed)")
        self.torn = Finding(Notice.TORN_TAIL.value, lineno, self.seq,
                            f"the final line is incomplete ({len(raw)} bytes, no newline): a "
                            f"write torn by a crash; the {self.seq:,} records before it verify")

    # --- chain breaks -------------------------------------------------------------------------

    def _diagnose(self, f: IO[bytes], r: _Rec) -> _Stop:
        e, p = self.seq, self.prev
        a = self.recent[-1] if self.recent else None
        ahead: list[_Rec] = []
        for lineno, raw in enumerate(f, r.line + 1):
            if len(ahead) >= LOOKAHEAD or not raw.endswith(b"\n"):
                break
            got = envelope.record_position(raw[:-1])
            if got is not None and raw[got[3] - len(self.middle) + 9:got[3] + 9] == self.middle:
                ahead.append(_Rec(lineno, got[0], got[1], got[2]))
        nxt = ahead[0] if ahead else None
        first = next((x.line for x in self.recent if x.hash == r.hash), None)
        if first is not None:
            return self._damage(Damage.INSERTED, r.line, e, f"a duplicate of line {first}")
        if r.seq == e:
            if nxt and nxt.seq == e and nxt.prev == p:
                return self._damage(Damage.INSERTED, r.line, e,
                                    "a record that does not link to the chain; the next record "
                                    "continues from the one before it")
            if nxt and nxt.seq == e + 1 and nxt.prev == r.hash:
                if a is None:
                    return self._damage(Damage.MODIFIED, 1, None,
                                        "the header was changed: record 0 does not link to it")
                return self._damage(Damage.MODIFIED, a.line, a.seq,
                                    "the record was rewritten and re-hashed: the next record's "
                                    "prev no longer matches it")
            return self._damage(Damage.MODIFIED, r.line, e,
                                "the record's prev does not link to the previous record")
        if r.seq < e:
            before = self.recent[-2].hash if len(self.recent) >= 2 else self.header_hash
            if a is not None and r.seq == a.seq and r.prev == before:
                return self._damage(Damage.INSERTED, a.line, a.seq,
                                    f"the record at line {a.line} does not belong: line "
                                    f"{r.line} carries the same seq and links where it stood")
            return self._damage(Damage.INSERTED, r.line, e,
                                f"a record with seq {r.seq} where seq {e} belongs")
        # r.seq > e: records are missing here; are they somewhere later?
        if any(x.seq == r.seq - 1 and x.hash == r.prev for x in ahead):
            return self._damage(Damage.REORDERED, r.line, e,
                                f"seq {r.seq} stands where seq {e} belongs; its predecessor "
                                "appears later in the log")
        if nxt and nxt.seq == e and nxt.prev == p:
            return self._damage(Damage.INSERTED, r.line, e,
                                "a record that does not link to the chain; the next record "
                                "continues from the one before it")
        later = next((x for x in ahead if x.seq == e), None)
        if later is not None:
            return self._damage(Damage.REORDERED, r.line, e,
                                f"seq {r.seq} stands where seq {e} belongs; seq {e} appears "
                                f"at line {later.line}")
        missing = f"seq {e}" if r.seq == e + 1 else f"seq {e}..{r.seq - 1}"
        return self._damage(Damage.DELETED, r.line, e,
                            f"{missing} missing: the chain jumps to seq {r.seq}")

    # --- checkpoints --------------------------------------------------------------------------

    def _check_signed(self, line: bytes, doc: dict[str, Any], where: str,
                      lineno: int) -> bytes:
        """Signature, key and chain of one checkpoint line; returns its root."""
        seq = self.seq if where == "log" else None
        cut = envelope.split_last(line, envelope.SIG_MEMBER)
        if cut is None:
            raise self._damage(Damage.FORGED_CHECKPOINT, lineno, seq,
                               f"checkpoint without a signature ({where})")
        unsigned, sig_b64 = cut
        if doc.get("key_id") != self.report.key_id:
            if doc.get("chain") != self.report.chain:
                raise self._damage(Damage.FOREIGN_RECORD, lineno, seq,
                                   f"a checkpoint of chain {doc.get('chain')!r} ({where})")
            raise self._damage(Damage.WRONG_KEY, lineno, seq,
                               f"checkpoint signed by {doc.get('key_id')!r}, but the chain's "
                               f"key is {self.report.key_id} ({where})")
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (ValueError, binascii.Error):
            sig = b""
        assert self.public is not None
        if not verify_signature(self.public, sig, envelope.signature_message(unsigned)):
            raise self._damage(Damage.FORGED_CHECKPOINT, lineno, seq,
                               f"the checkpoint's signature does not verify ({where})")
        if doc.get("chain") != self.report.chain or doc.get("instance") != self.report.instance:
            raise self._damage(Damage.FOREIGN_RECORD, lineno, seq,
                               f"a checkpoint of chain {doc.get('chain')!r} ({where})")
        try:
            root = bytes.fromhex(str(doc["root"]))
            if not isinstance(doc["size"], int) or doc["size"] < 0:
                raise ValueError("bad size")
        except (KeyError, ValueError) as e:
            raise self._damage(Damage.FORGED_CHECKPOINT, lineno, seq,
                               f"malformed checkpoint ({where}): {e}") from e
        return root

    def _checkpoint(self, lineno: int, line: bytes, doc: dict[str, Any]) -> None:
        root = self._check_signed(line, doc, "log", lineno)
        digest = envelope.sha256_hex(line)
        if doc.get("prev_checkpoint") != self.cp_prev:
            if line in self.cp_lines:
                raise self._damage(Damage.INSERTED, lineno, self.seq,
                                   f"a copy of the checkpoint at line {self.cp_lines[line]}")
            raise self._damage(Damage.DELETED, lineno, self.seq,
                               "a checkpoint before this one is missing (prev_checkpoint "
                               "does not match the previous checkpoint)")
        size = doc["size"]
        if size > self.seq:
            raise self._damage(Damage.DELETED, lineno, self.seq,
                               f"the checkpoint covers {size:,} records but only {self.seq:,} "
                               f"precede it: seq {self.seq}..{size - 1} missing")
        if size < self.seq:
            index = size - max(self.cp_size, 0)
            extra = self.since_cp[index] if 0 <= index < len(self.since_cp) else lineno
            raise self._damage(Damage.INSERTED, extra, size,
                               f"the checkpoint at line {lineno} covers {size:,} records but "
                               f"{self.seq:,} precede it")
        if self.tree.root() != root:
            first = self.since_cp[0] if self.since_cp else lineno
            raise self._damage(Damage.MODIFIED, first, max(self.cp_size, 0),
                               f"records seq {max(self.cp_size, 0)}..{size - 1} (lines {first}.."
                               f"{lineno - 1}) were rewritten and re-chained: the signed Merkle "
                               f"root of the checkpoint at line {lineno} does not match them")
        self.cp_prev = digest
        self.cp_size = size
        self.cp_line = lineno
        self.cp_lines[line] = lineno
        self.final = doc.get("final") is True
        self.report.checkpoints += 1
        self.since_cp.clear()

    # --- the end of the log -------------------------------------------------------------------

    def _witnesses(self) -> None:
        """Signed checkpoints kept elsewhere (the sidecar file, exports) that the log must hold."""
        sources = list(self.witnesses)
        sidecar = self.path.with_suffix(".ckpt")
        if sidecar.is_file():
            sources.insert(0, sidecar)
        elif not self.witnesses:
            self.report.warnings.append(Finding(
                Notice.NO_CHECKPOINT_FILE.value, 0, None,
                f"no checkpoint file {sidecar.name}: a cut tail cannot be told from a crash"))
        for source in sources:
            for lineno, raw in enumerate(source.read_bytes().split(b"\n"), 1):
                if not raw.strip():
                    continue
                try:
                    doc = json.loads(raw)
                except ValueError:
                    continue  # a torn line of the sidecar itself
                if not isinstance(doc, dict) or doc.get("type") != "checkpoint":
                    continue
                self._witness(raw, doc, source, lineno)

    def _witness(self, line: bytes, doc: dict[str, Any], source: Path, lineno: int) -> None:
        if line in self.cp_lines:
            return
        try:
            self._check_signed(line, doc, f"{source.name} line {lineno}", 0)
        except _Stop:
            if doc.get("chain") != self.report.chain:
                return  # a witness file may hold checkpoints of several chains
            raise
        size = doc["size"]
        end = self.lines + 1 if self.torn is None else self.torn.line
        if size > self.seq:
            raise self._damage(Damage.TRUNCATED, end, self.seq,
                               f"the tail was cut: a checkpoint signed for {size:,} records "
                               f"({source.name} line {lineno}) but the log holds {self.seq:,}")
        if doc.get("final") is True and not self.final:
            raise self._damage(Damage.TRUNCATED, end, self.seq,
                               f"the final checkpoint ({source.name} line {lineno}) is missing "
                               "from the log: its tail was cut")
        raise self._damage(Damage.DELETED, 0, size,
                           f"the checkpoint for {size:,} records ({source.name} line {lineno}) "
                           "is missing from the log")

    def _tail_notices(self) -> None:
        if self.torn is not None:
            self.report.warnings.append(self.torn)
        uncovered = self.seq - max(self.cp_size, 0)
        if uncovered > 0:
            self.report.warnings.append(Finding(
                Notice.UNCOVERED.value, 0, max(self.cp_size, 0),
                f"{uncovered:,} records after the last checkpoint are chained but not yet "
                "covered by a signature (log still open, or not closed cleanly)"))


def verify(path: str | Path, trusted_keys: Sequence[Any] | None = None, *,
           witnesses: Iterable[str | Path] = ()) -> VerifyReport:
    """Verify one chain file.

    ``trusted_keys``: Ed25519 public keys (objects, PEM files or bytes) the chain must be
    signed with; default: ``keys/<instance>.pub`` next to the log, else only the log's own
    key (reported as a warning). ``witnesses``: files of checkpoint lines obtained elsewhere
    (e.g. from a SIEM export) that the log must still contain.
    """
    return _Verifier(Path(path), trusted_keys, [Path(w) for w in witnesses]).run()


def log_files(path: str | Path) -> list[Path]:
    """The chain files of a directory (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        return sorted(x for x in p.glob("audit-*.jsonl") if x.is_file())
    return [p]


def read_leaves(path: str | Path) -> list[bytes]:
    """The Merkle leaf hashes of a log, in order (no verification: run ``verify`` first)."""
    leaves: list[bytes] = []
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            got = envelope.record_position(raw[:-1])
            if got is not None:
                leaves.append(bytes.fromhex(got[2].decode()))
    return leaves
