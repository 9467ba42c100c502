"""Offline proofs against signed checkpoints: inclusion of one record, consistency of two
tree heads (RFC 9162 §2.1.3 / §2.1.4).

Why self-contained documents: an auditor given a proof should need nothing but the
instance's public key — not the log, not the proxy. A proof carries the exact lines it
is about (header, record, checkpoints) so every hash is recomputed from bytes, never
taken from a field the prover filled in::

    {"type": "inclusion_proof", "v": 1, "header": "<header line>",
     "record": "<record line>", "checkpoint": "<checkpoint line>",
     "leaf_index": 17, "tree_size": 1000, "audit_path": ["<hex>", ...]}

    {"type": "consistency_proof", "v": 1, "header": "<header line>",
     "old": "<checkpoint line>", "new": "<checkpoint line>", "proof": ["<hex>", ...]}

``check`` verifies: the checkpoint signatures (Ed25519, under the trusted key or, lacking
one, the header's key — reported), that every line belongs to the header's chain, the
record's own hash, and the audit path / consistency path to the signed roots.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import AuditError
from . import envelope
from .keys import key_id, raw_public, verify_signature
from .merkle import consistency_proof, inclusion_proof, root_from_inclusion, verify_consistency

VERSION = 1
INCLUSION = "inclusion_proof"
CONSISTENCY = "consistency_proof"


@dataclass
class _Log:
    """What a proof needs from one chain file, read in one pass."""

    header: bytes
    leaves: list[bytes] = field(default_factory=list)
    checkpoints: list[tuple[int, bytes]] = field(default_factory=list)  # (size, line)


def _read(path: Path) -> _Log:
    with open(path, "rb") as f:
        header = f.readline()
        if not header.endswith(b"\n"):
            raise AuditError(f"{path} has no complete header line")
        log = _Log(header[:-1])
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # a torn tail: nothing after it is durable
            line = raw[:-1]
            got = envelope.record_position(line)
            if got is not None:
                if got[0] != len(log.leaves):
                    raise AuditError(f"{path}: seq {got[0]} where seq {len(log.leaves)} "
                                     "belongs; run `fiveplane audit verify`")
                log.leaves.append(bytes.fromhex(got[2].decode()))
            elif line.startswith(b"{") and b'"type":"checkpoint"' in line:
                size = json.loads(line).get("size")
                if isinstance(size, int):
                    log.checkpoints.append((size, line))
    return log


def _record_line(path: Path, seq: int) -> bytes:
    with open(path, "rb") as f:
        for raw in f:
            got = envelope.record_position(raw.rstrip(b"\n"))
            if got is not None and got[0] == seq:
                return raw.rstrip(b"\n")
    raise AuditError(f"no record {seq} in {path}")


def prove_inclusion(path: str | Path, seq: int) -> dict[str, Any]:
    """An inclusion proof of record ``seq`` against the newest checkpoint covering it."""
    path = Path(path)
    log = _read(path)
    covering = [(size, line) for size, line in log.checkpoints if size > seq]
    if seq >= len(log.leaves):
        raise AuditError(f"no record {seq} in {path} ({len(log.leaves)} records)")
    if not covering:
        raise AuditError(f"record {seq} is not covered by a signed checkpoint yet (the "
                         "writer signs one every few seconds and on close): try again later")
    size, checkpoint = max(covering, key=lambda c: c[0])
    return {
        "type": INCLUSION, "v": VERSION,
        "header": log.header.decode("ascii"),
        "record": _record_line(path, seq).decode("ascii"),
        "checkpoint": checkpoint.decode("ascii"),
        "leaf_index": seq, "tree_size": size,
        "audit_path": [h.hex() for h in inclusion_proof(log.leaves, seq, size)],
    }


def prove_consistency(path: str | Path, old_checkpoint: bytes) -> dict[str, Any]:
    """A consistency proof from ``old_checkpoint`` (a line kept by the auditor) to the
    newest checkpoint of the chain file ``path``."""
    path = Path(path)
    old = _doc(old_checkpoint, "the old checkpoint")
    log = _read(path)
    head = _doc(log.header, "the header")
    if old.get("chain") != head.get("chain"):
        raise AuditError(f"the old checkpoint is of chain {old.get('chain')!r}, {path} is "
                         f"chain {head.get('chain')!r}")
    if not log.checkpoints:
        raise AuditError(f"{path} holds no signed checkpoint yet")
    size, new = log.checkpoints[-1]
    old_size = old.get("size")
    if not isinstance(old_size, int) or not 0 <= old_size <= size:
        raise AuditError(f"the old checkpoint covers {old_size} records, but the newest "
                         f"checkpoint of {path} covers {size}: the log does not extend it")
    return {
        "type": CONSISTENCY, "v": VERSION,
        "header": log.header.decode("ascii"),
        "old": old_checkpoint.decode("ascii"), "new": new.decode("ascii"),
        "proof": [h.hex() for h in consistency_proof(log.leaves, old_size, size)],
    }


# --- checking ---------------------------------------------------------------------------------


@dataclass
class ProofCheck:
    ok: bool
    kind: str
    detail: str
    key_id: str = ""
    key_source: str = ""          # trusted | log-header
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{'ok' if self.ok else 'FAILED'}: {self.detail}"]
        if self.key_id:
            lines.append(f"  key {self.key_id} ({self.key_source})")
        lines.extend(f"  warning {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "kind": self.kind, "detail": self.detail,
                "key_id": self.key_id, "key_source": self.key_source,
                "warnings": self.warnings}


class _Bad(Exception):
    pass


def _doc(line: bytes | str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError as e:
        raise AuditError(f"{what} is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise AuditError(f"{what} is not a JSON object")
    return doc


def _line(proof: dict[str, Any], name: str) -> bytes:
    value = proof.get(name)
    if not isinstance(value, str) or "\n" in value:
        raise _Bad(f"the proof has no `{name}` line")
    try:
        return value.encode("ascii")
    except UnicodeEncodeError as e:
        raise _Bad(f"the `{name}` line is not canonical ASCII JSON") from e


def _hashes(proof: dict[str, Any], name: str) -> list[bytes]:
    value = proof.get(name)
    if not isinstance(value, list):
        raise _Bad(f"the proof has no `{name}` list")
    try:
        out = [bytes.fromhex(h) for h in value]
    except (TypeError, ValueError) as e:
        raise _Bad(f"`{name}` holds a value that is not a hex hash") from e
    if any(len(h) != 32 for h in out):
        raise _Bad(f"`{name}` holds a value that is not a SHA-256 hash")
    return out


class _Checker:
    def __init__(self, proof: dict[str, Any], trusted: Sequence[Ed25519PublicKey]) -> None:
        self.proof = proof
        self.trusted = {key_id(raw_public(k)): k for k in trusted}
        self.result = ProofCheck(False, str(proof.get("type", "")), "")

    def header(self) -> dict[str, Any]:
        line = _line(self.proof, "header")
        doc = self._parse(line, "header")
        try:
            pub_raw = base64.b64decode(str(doc["key"]), validate=True)
            public = Ed25519PublicKey.from_public_bytes(pub_raw)
        except (KeyError, ValueError, binascii.Error) as e:
            raise _Bad(f"the header's key is not valid: {e}") from e
        claimed = key_id(pub_raw)
        if doc.get("type") != "header" or doc.get("key_id") != claimed:
            raise _Bad("the header is not a header line, or its key_id is not its key")
        self.result.key_id = claimed
        if self.trusted:
            if claimed not in self.trusted:
                raise _Bad(f"the chain is keyed to {claimed}, not to the trusted key "
                           f"({', '.join(sorted(self.trusted))})")
            self.result.key_source = "trusted"
        else:
            self.result.key_source = "log-header"
            self.result.warnings.append(
                "no trusted public key given (--key): only the chain's own key was checked, "
                "so this proves consistency with itself, not who signed it")
        self.public = public
        self.head = doc
        return doc

    def _parse(self, line: bytes, what: str) -> dict[str, Any]:
        try:
            return _doc(line, f"the {what} line")
        except AuditError as e:
            raise _Bad(str(e)) from e

    def checkpoint(self, name: str) -> tuple[dict[str, Any], bytes]:
        """A signed checkpoint of the header's chain: (document, root)."""
        line = _line(self.proof, name)
        doc = self._parse(line, name)
        cut = envelope.split_last(line, envelope.SIG_MEMBER)
        if doc.get("type") != "checkpoint" or cut is None:
            raise _Bad(f"`{name}` is not a signed checkpoint line")
        unsigned, sig_b64 = cut
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (ValueError, binascii.Error):
            sig = b""
        if doc.get("key_id") != self.result.key_id or not verify_signature(
                self.public, sig, envelope.signature_message(unsigned)):
            raise _Bad(f"the signature of the `{name}` checkpoint does not verify under "
                       f"{self.result.key_id}")
        self._same_chain(doc, name)
        try:
            root = bytes.fromhex(str(doc["root"]))
            size = doc["size"]
        except (KeyError, ValueError) as e:
            raise _Bad(f"the `{name}` checkpoint is malformed: {e}") from e
        if not isinstance(size, int) or size < 0 or len(root) != 32:
            raise _Bad(f"the `{name}` checkpoint is malformed")
        return doc, root

    def _same_chain(self, doc: dict[str, Any], what: str) -> None:
        if (doc.get("chain"), doc.get("instance")) != (self.head.get("chain"),
                                                       self.head.get("instance")):
            raise _Bad(f"the {what} belongs to chain {doc.get('chain')!r}, not to the "
                       f"header's chain {self.head.get('chain')!r}")

    def inclusion(self) -> str:
        self.header()
        cp, root = self.checkpoint("checkpoint")
        line = _line(self.proof, "record")
        doc = self._parse(line, "record")
        self._same_chain(doc, "record")
        cut = envelope.split_last(line, envelope.HASH_MEMBER)
        pos = envelope.record_position(line)
        if cut is None or pos is None:
            raise _Bad("`record` is not a record line")
        leaf = hashlib.sha256(b"\x00" + cut[0]).digest()
        if leaf.hex() != cut[1]:
            raise _Bad("the record does not match its own hash (its content was changed)")
        index, size = self.proof.get("leaf_index"), self.proof.get("tree_size")
        if index != pos[0] or size != cp["size"]:
            raise _Bad(f"leaf_index {index} / tree_size {size} do not match the record's seq "
                       f"{pos[0]} / the checkpoint's size {cp['size']}")
        path = _hashes(self.proof, "audit_path")
        if root_from_inclusion(leaf, pos[0], cp["size"], path) != root:
            raise _Bad(f"the audit path does not lead from record {pos[0]} to the signed root "
                       f"of the checkpoint for {cp['size']:,} records: the record is not in "
                       "that log")
        body = doc.get("body") if isinstance(doc.get("body"), dict) else {}
        ident = f" (decision {body['id']})" if isinstance(body.get("id"), str) else ""
        return (f"record {pos[0]}{ident} is in chain {self.head.get('chain')} of "
                f"{self.head.get('instance')}, under the checkpoint signed for "
                f"{cp['size']:,} records")

    def consistency(self, expected_old: bytes | None) -> str:
        self.header()
        old, old_root = self.checkpoint("old")
        new, new_root = self.checkpoint("new")
        if expected_old is not None and _line(self.proof, "old") != expected_old:
            raise _Bad("the proof starts from another checkpoint than the one you kept")
        path = _hashes(self.proof, "proof")
        if not verify_consistency(old["size"], new["size"], old_root, new_root, path):
            raise _Bad(f"the checkpoint for {new['size']:,} records does not extend the one "
                       f"for {old['size']:,}: records before seq {old['size']} were changed, "
                       "removed or reordered")
        return (f"chain {self.head.get('chain')} of {self.head.get('instance')}: the "
                f"checkpoint for {new['size']:,} records extends the one for "
                f"{old['size']:,} (the first {old['size']:,} records are unchanged)")


def check(proof: dict[str, Any], trusted: Sequence[Ed25519PublicKey] = (), *,
          expected_old: bytes | None = None) -> ProofCheck:
    """Verify an inclusion or consistency proof offline. ``expected_old``: the checkpoint
    line the auditor kept, which a consistency proof must start from."""
    checker = _Checker(proof, trusted)
    try:
        if proof.get("v") != VERSION:
            raise _Bad(f"unknown proof version {proof.get('v')!r}")
        if proof.get("type") == INCLUSION:
            detail = checker.inclusion()
        elif proof.get("type") == CONSISTENCY:
            detail = checker.consistency(expected_old)
        else:
            raise _Bad(f"unknown proof type {proof.get('type')!r}")
    except _Bad as e:
        checker.result.detail = str(e)
        return checker.result
    checker.result.ok = True
    checker.result.detail = detail
    return checker.result


def kept_checkpoint(path: str | Path) -> bytes:
    """The checkpoint line an auditor kept: a file holding checkpoint lines (a ``.ckpt``
    file, an export, one line saved by hand: the last one counts) or a proof (its newest
    checkpoint)."""
    data = Path(path).read_bytes()
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("type") in (INCLUSION, CONSISTENCY):
        line = doc.get("checkpoint" if doc["type"] == INCLUSION else "new")
        if isinstance(line, str):
            return line.encode("ascii")
    last: bytes | None = None
    for raw in data.split(b"\n"):
        raw = raw.strip()
        if raw.startswith(b"{") and b'"type":"checkpoint"' in raw:
            last = raw
    if last is None:
        raise AuditError(f"no checkpoint line in {path}")
    return last
