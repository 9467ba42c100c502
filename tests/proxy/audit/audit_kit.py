"""Helpers for the audit tests: real logs written by the real writer, and a forger's toolkit.

The forger rebuilds lines with the same envelope functions the writer uses, so a tampered
log is exactly what an attacker with the format (but without the instance key) could write.
"""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from proxy import testing
from proxy.action import Action
from proxy.audit import AuditLog, PolicyStore, envelope
from proxy.audit.keys import key_id, raw_public
from proxy.audit.merkle import CompactTree, leaf_hash
from proxy.engine import Adjudicator
from proxy.principal import Link, Principal, PrincipalKind

POLICY = """
version: 1
name: audit-test
defaults: {effect: deny}
network:
  allow: [{host: crm.example.com}, {host: api.example.com}]
mcp_servers:
  crm: {url: "https://crm.example.com/mcp"}
rules:
  - id: crm-read
    match: {server: crm, tool: "get_*"}
    effect: allow
  - id: refund-cap
    match: {server: crm, tool: refund, args: {amount: {gt: 100}}}
    effect: deny
  - id: refund-ok
    match: {server: crm, tool: refund}
    effect: allow
  - id: refund-approval
    match: {server: crm, tool: refund, args: {amount: {gt: 50}}}
    effect: escalate
"""

PRINCIPAL = Principal((Link("alice@example.com", PrincipalKind.HUMAN),
                       Link("planner", PrincipalKind.AGENT),
                       Link("executor-7", PrincipalKind.AGENT)))


def sample_actions() -> list[Action]:
    return [
        testing.mcp_call("get_customer", id=42, principal=PRINCIPAL),
        testing.mcp_call("refund", amount=500, to="DE89370400440532013000"),
        testing.mcp_call("refund", amount=75.5, to="DE89370400440532013000"),
        testing.mcp_call("refund", amount=20),
        testing.mcp_call("refund", amount="500"),
        testing.mcp_call("refund", amount=float("nan")),
        testing.mcp_call("refund"),
        testing.mcp_call("delete_customer", id=1),
        testing.http_request("GET", "api.example.com", "/v1/items"),
        testing.http_request("POST", "evil.example.com", "/exfil"),
    ]


def write_log(directory: Path, instance: str, n: int, *, every: int = 10,
              close: bool = True, seconds: float = 3600.0) -> AuditLog:
    """``n`` real decisions through the real writer."""
    policy = testing.policy(POLICY)
    adjudicator = Adjudicator(policy)
    PolicyStore(directory / "policies").put(policy.source)
    log = AuditLog(directory, instance, checkpoint_every=every, checkpoint_seconds=seconds)
    actions = sample_actions()
    commits = []
    for i in range(n):
        action = actions[i % len(actions)]
        decision = adjudicator.decide(action)
        commits.append(log.record(
            action, decision, outcome="forwarded" if decision.allowed else "denied",
            decision_id=uuid.uuid4().hex, adjudication_us=3.0, total_us=9.5))
    for c in commits:
        c.wait_sync(10)
    if close:
        log.close()
    return log


@dataclass
class Chain:
    """A closed log of 35 records (checkpoints at 10, 20, 30 and a final one at 35)."""

    directory: Path
    path: Path
    lines: list[bytes]          # with newlines
    sidecar: list[bytes]
    key: Ed25519PrivateKey

    def record_index(self, seq: int) -> int:
        """0-based index in ``lines`` of record ``seq`` (line number = index + 1)."""
        for i, line in enumerate(self.lines):
            got = envelope.record_position(line.rstrip(b"\n"))
            if got is not None and got[0] == seq:
                return i
        raise KeyError(seq)

    def checkpoint_index(self, size: int, *, final: bool = False) -> int:
        for i, line in enumerate(self.lines):
            doc = json.loads(line)
            if doc.get("type") == "checkpoint" and doc["size"] == size and \
                    bool(doc.get("final")) == final:
                return i
        raise KeyError(size)

    def write(self, target: Path, lines: list[bytes] | None = None, *,
              sidecar: list[bytes] | None = None, keep_sidecar: bool = True) -> Path:
        """Write (tampered) lines as a log in ``target`` with the same keys/ directory."""
        target.mkdir(parents=True, exist_ok=True)
        if not (target / "keys").exists():
            shutil.copytree(self.directory / "keys", target / "keys")
        if (self.directory / "policies").exists() and not (target / "policies").exists():
            shutil.copytree(self.directory / "policies", target / "policies")
        path = target / self.path.name
        path.write_bytes(b"".join(self.lines if lines is None else lines))
        side = path.with_suffix(".ckpt")
        if keep_sidecar:
            side.write_bytes(b"".join(self.sidecar if sidecar is None else sidecar))
        elif side.exists():
            side.unlink()
        return path


def rehash(line: bytes) -> bytes:
    """Recompute a record line's own hash (what an attacker can always do)."""
    unhashed, _ = envelope.split_last(line.rstrip(b"\n"), envelope.HASH_MEMBER)  # type: ignore[misc]
    return envelope.seal_line(unhashed, envelope.HASH_MEMBER, leaf_hash(unhashed).hex())


def with_member(line: bytes, name: str, value: object) -> bytes:
    """Set a top-level member of a record line and re-hash it."""
    doc = json.loads(line)
    doc.pop("hash")
    doc[name] = value
    unhashed = envelope.canonical(doc)
    return envelope.seal_line(unhashed, envelope.HASH_MEMBER, leaf_hash(unhashed).hex())


def resign(line: bytes, key: Ed25519PrivateKey, **changes: object) -> bytes:
    """Re-sign a checkpoint line with ``key`` (after applying ``changes``)."""
    doc = json.loads(line)
    doc.pop("sig")
    doc.update(changes)
    unsigned = envelope.canonical(doc)
    sig = key.sign(envelope.signature_message(unsigned))
    return envelope.seal_line(unsigned, envelope.SIG_MEMBER, base64.b64encode(sig).decode())


def rechain(lines: list[bytes], key: Ed25519PrivateKey | None = None, *,
            resign_checkpoints: bool = False, new_header: bool = False) -> list[bytes]:
    """Rebuild every prev/hash (and optionally header and checkpoint signatures) so that the
    chain is internally consistent again: the strongest forgery without the instance key."""
    out: list[bytes] = []
    tree = CompactTree()
    header = json.loads(lines[0])
    if new_header:
        assert key is not None
        pub = raw_public(key.public_key())
        header["key"] = base64.b64encode(pub).decode()
        header["key_id"] = key_id(pub)
    head = envelope.canonical(header) + b"\n"
    out.append(head)
    prev = envelope.sha256_hex(head[:-1])
    cp_prev = prev
    seq = 0
    for line in lines[1:]:
        doc = json.loads(line)
        if doc["type"] in ("record", "note"):
            doc.pop("hash")
            doc["prev"], doc["seq"] = prev, seq
            unhashed = envelope.canonical(doc)
            leaf = leaf_hash(unhashed)
            tree.append(leaf)
            prev = leaf.hex()
            seq += 1
            out.append(envelope.seal_line(unhashed, envelope.HASH_MEMBER, prev))
        elif doc["type"] == "checkpoint" and resign_checkpoints:
            assert key is not None
            signed = resign(line, key, prev_checkpoint=cp_prev, root=tree.root().hex(),
                            size=seq, key_id=header["key_id"])
            cp_prev = envelope.sha256_hex(signed[:-1])
            out.append(signed)
        else:
            out.append(line)
    return out
