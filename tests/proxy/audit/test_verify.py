"""The tamper corpus: every kind of damage is detected and named, a clean log raises no alarm."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_kit import Chain, rechain, resign, with_member, write_log
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.audit import Damage, verify
from proxy.audit.verify import Notice

Make = Callable[..., Path]


def damage(path: Path, **kw: object) -> tuple[str, int, int | None]:
    report = verify(path, **kw)  # type: ignore[arg-type]
    assert report.damage is not None, report.summary()
    return report.damage.kind, report.damage.line, report.damage.seq


def test_clean_log_verifies(chain: Chain, tampered: Make) -> None:
    report = verify(tampered())
    assert report.ok, report.summary()
    assert (report.records, report.checkpoints, report.covered) == (35, 4, 35)
    assert report.closed and report.key_source == "keys-dir"
    assert report.warnings == []


# --- modified: a flipped byte in every field of a record ------------------------------------

RECORD_FIELDS = [
    # (member, nested) — nested members are searched from the start, top-level from the end
    ("time", True), ("id", True), ("stop", True), ("host", True), ("name", True),
    ("argument_hmacs", True), ("argument_names", True), ("principal", True),
    ("verdict", True), ("rule_ids", True), ("reason", True), ("basis", True),
    ("policy", True), ("outcome", True), ("latency_us", True), ("sealed", True),
    ("chain", False), ("instance", False), ("prev", False), ("seq", False),
    ("type", False), ("v", False), ("hash", False), ("body", False),
]


def flip_in_member(line: bytes, member: str, nested: bool) -> bytes:
    key = f'"{member}":'.encode()
    at = line.find(key) if nested else line.rfind(key)
    assert at >= 0, member
    pos = at + len(key)
    while line[pos:pos + 1] in b'"[{':
        pos += 1
    pos += 1 if line[pos + 1:pos + 2] not in b'",]}' else 0
    return line[:pos] + bytes([line[pos] ^ 0x01]) + line[pos + 1:]


@pytest.mark.parametrize(("member", "nested"), RECORD_FIELDS, ids=[f[0] for f in RECORD_FIELDS])
def test_flipped_byte_in_record_field_is_modified(chain: Chain, tampered: Make, member: str,
                                                  nested: bool) -> None:
    i = chain.record_index(1)  # seq 1: arguments, sealed values, a denial
    lines = list(chain.lines)
    assert member != "principal" or b'"principal"' in lines[i]
    lines[i] = flip_in_member(lines[i], member, nested)
    assert lines[i] != chain.lines[i]
    assert damage(tampered(lines)) == ("modified", i + 1, 1)


CHECKPOINT_FIELDS = ["chain", "instance", "prev_checkpoint", "root", "size", "time", "type",
                     "v", "sig"]


@pytest.mark.parametrize("member", [*CHECKPOINT_FIELDS, "key_id"])
def test_flipped_byte_in_checkpoint_field(chain: Chain, tampered: Make, member: str) -> None:
    i = chain.checkpoint_index(20)
    lines = list(chain.lines)
    lines[i] = flip_in_member(lines[i], member, False)
    kind, line, _ = damage(tampered(lines))
    expected = {"key_id": "wrong_key", "type": "modified"}.get(member, "forged_checkpoint")
    assert (kind, line) == (expected, i + 1)


def test_flipped_byte_in_header_is_detected(chain: Chain, tampered: Make) -> None:
    lines = list(chain.lines)
    lines[0] = flip_in_member(lines[0], "created", False)
    assert damage(tampered(lines))[:2] == ("modified", 1)


def test_rewritten_and_rehashed_record_is_modified(chain: Chain, tampered: Make) -> None:
    i = chain.record_index(14)
    lines = list(chain.lines)
    doc = json.loads(lines[i])
    doc["body"]["decision"]["verdict"] = "allow"
    lines[i] = with_member(lines[i], "body", doc["body"])
    assert damage(tampered(lines)) == ("modified", i + 1, 14)


def test_rechained_rewrite_is_caught_by_the_signed_root(chain: Chain, tampered: Make) -> None:
    """The attacker re-chains every record after the edit; only the signature catches it."""
    i = chain.record_index(14)
    lines = list(chain.lines)
    doc = json.loads(lines[i])
    doc["body"]["id"] = "0" * 32
    lines[i] = with_member(lines[i], "body", doc["body"])
    lines = rechain(lines)
    kind, line, seq = damage(tampered(lines))
    assert (kind, line, seq) == ("modified", chain.record_index(10) + 1, 10)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_bit_anywhere_is_detected(chain: Chain, tmp_path: Path,
                                              data: st.DataObject) -> None:
    blob = bytearray(b"".join(chain.lines))
    pos = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    blob[pos] ^= 1 << bit
    path = chain.write(tmp_path / "flip", [bytes(blob)])
    report = verify(path)
    assert not report.ok, f"flip at {pos} bit {bit} undetected"
    assert report.damage is not None and report.damage.kind in set(Damage)


# --- deleted, inserted, reordered --------------------------------------------------------------


def test_deleted_record(chain: Chain, tampered: Make) -> None:
    i = chain.record_index(14)
    lines = chain.lines[:i] + chain.lines[i + 1:]
    assert damage(tampered(lines)) == ("deleted", i + 1, 14)


def test_deleted_records_before_a_checkpoint(chain: Chain, tampered: Make) -> None:
    i = chain.record_index(19)
    lines = chain.lines[:i] + chain.lines[i + 1:]
    assert damage(tampered(lines)) == ("deleted", i + 1, 19)


def test_deleted_first_record(chain: Chain, tampered: Make) -> None:
    lines = chain.lines[:1] + chain.lines[2:]
    assert damage(tampered(lines)) == ("deleted", 2, 0)


def test_deleted_checkpoint(chain: Chain, tampered: Make) -> None:
    i = chain.checkpoint_index(20)
    lines = chain.lines[:i] + chain.lines[i + 1:]
    kind, line, _ = damage(tampered(lines))
    assert (kind, line) == ("deleted", chain.checkpoint_index(30))


def test_inserted_duplicate_record(chain: Chain, tampered: Make) -> None:
    i = chain.record_index(14)
    lines = [*chain.lines[:i + 1], chain.lines[i], *chain.lines[i + 1:]]
    assert damage(tampered(lines)) == ("inserted", i + 2, 15)


def test_inserted_forged_record_that_links(chain: Chain, tampered: Make) -> None:
    """A forged record with the right seq and prev: the real successor exposes it."""
    i = chain.record_index(14)
    forged = json.loads(chain.lines[i + 1])
    forged["body"]["id"] = "f" * 32
    forged["body"]["decision"]["verdict"] = "allow"
    line = with_member(chain.lines[i + 1], "body", forged["body"])
    lines = [*chain.lines[:i + 1], line, *chain.lines[i + 1:]]
    assert damage(tampered(lines)) == ("inserted", i + 2, 15)


def test_inserted_record_with_wrong_seq(chain: Chain, tampered: Make) -> None:
    i = chain.record_index(14)
    line = with_member(chain.lines[i], "seq", 999)
    lines = [*chain.lines[:i + 1], line, *chain.lines[i + 1:]]
    assert damage(tampered(lines)) == ("inserted", i + 2, 15)


def test_inserted_after_final_checkpoint(chain: Chain, tampered: Make) -> None:
    lines = [*chain.lines, chain.lines[chain.record_index(3)]]
    kind, line, _ = damage(tampered(lines))
    assert (kind, line) == ("inserted", len(lines))


def test_two_records_swapped(chain: Chain, tampered: Make) -> None:
    i = chain.record_index(14)
    lines = list(chain.lines)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    assert damage(tampered(lines)) == ("reordered", i + 1, 14)


def test_distant_records_swapped(chain: Chain, tampered: Make) -> None:
    i, j = chain.record_index(11), chain.record_index(17)
    lines = list(chain.lines)
    lines[i], lines[j] = lines[j], lines[i]
    assert damage(tampered(lines)) == ("reordered", i + 1, 11)


def test_records_swapped_across_a_checkpoint(chain: Chain, tampered: Make) -> None:
    i, j = chain.record_index(19), chain.record_index(20)
    lines = list(chain.lines)
    lines[i], lines[j] = lines[j], lines[i]
    assert damage(tampered(lines)) == ("reordered", i + 1, 19)


# --- truncated --------------------------------------------------------------------------------


def test_truncated_tail_is_detected_by_the_checkpoint_file(chain: Chain, tampered: Make) -> None:
    i = chain.record_index(31)
    kind, _, seq = damage(tampered(chain.lines[:i]))
    assert (kind, seq) == ("truncated", 31)


def test_truncated_tail_after_a_checkpoint(chain: Chain, tampered: Make) -> None:
    i = chain.checkpoint_index(30)
    assert damage(tampered(chain.lines[:i + 1])) == ("truncated", i + 2, 30)


def test_missing_final_checkpoint(chain: Chain, tampered: Make) -> None:
    kind, _, seq = damage(tampered(chain.lines[:-1]))
    assert (kind, seq) == ("truncated", 35)


def test_truncated_final_line(chain: Chain, tampered: Make) -> None:
    last = chain.lines[-1]
    lines = [*chain.lines[:-1], last[:len(last) // 2]]
    kind, line, seq = damage(tampered(lines))
    assert (kind, line, seq) == ("truncated", len(lines), 35)


def test_torn_line_after_a_crash_is_a_warning(chain: Chain, tampered: Make) -> None:
    """A crash mid-append: no signed checkpoint promises the torn record, so the intact
    prefix verifies and the torn tail is reported as crash truncation."""
    i = chain.record_index(33)
    lines = [*chain.lines[:i], chain.lines[i][:100]]
    side = [x for x in chain.sidecar if json.loads(x)["size"] <= 30]
    report = verify(tampered(lines, sidecar=side))
    assert report.ok, report.summary()
    kinds = {w.kind: w for w in report.warnings}
    assert kinds[Notice.TORN_TAIL.value].line == i + 1
    assert kinds[Notice.TORN_TAIL.value].seq == 33
    assert Notice.UNCOVERED.value in kinds
    assert report.records == 33 and report.covered == 30 and not report.closed


def test_cut_tail_with_cut_checkpoint_file_needs_a_witness(chain: Chain, tampered: Make,
                                                           tmp_path: Path) -> None:
    """If the attacker also cuts the checkpoint file, only a checkpoint kept elsewhere (an
    export shipped to a SIEM) reveals the truncation."""
    i = chain.record_index(31)
    side = [x for x in chain.sidecar if json.loads(x)["size"] <= 30]
    path = tampered(chain.lines[:i], sidecar=side)
    assert verify(path).ok  # indistinguishable from a crash without a witness
    witness = tmp_path / "siem.jsonl"
    witness.write_bytes(b"".join(chain.sidecar))
    kind, _, seq = damage(path, witnesses=[witness])
    assert (kind, seq) == ("truncated", 31)


# --- checkpoints and keys ------------------------------------------------------------------


def test_forged_checkpoint_root(chain: Chain, tampered: Make) -> None:
    i = chain.checkpoint_index(20)
    doc = json.loads(chain.lines[i])
    doc["root"] = "00" * 32
    lines = list(chain.lines)
    lines[i] = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert damage(tampered(lines))[:2] == ("forged_checkpoint", i + 1)


def test_forged_checkpoint_signature(chain: Chain, tampered: Make) -> None:
    i = chain.checkpoint_index(20)
    forger = Ed25519PrivateKey.generate()
    doc = json.loads(chain.lines[i])
    lines = list(chain.lines)
    lines[i] = resign(chain.lines[i], forger, key_id=doc["key_id"])  # claims the real key
    assert damage(tampered(lines))[:2] == ("forged_checkpoint", i + 1)


def test_checkpoint_signed_by_another_key(chain: Chain, tampered: Make) -> None:
    from proxy.audit.keys import key_id, raw_public

    forger = Ed25519PrivateKey.generate()
    i = chain.checkpoint_index(20)
    lines = list(chain.lines)
    lines[i] = resign(chain.lines[i], forger, key_id=key_id(raw_public(forger.public_key())))
    assert damage(tampered(lines))[:2] == ("wrong_key", i + 1)


def test_replaced_signing_key_whole_log(chain: Chain, tampered: Make) -> None:
    """The attacker re-keys everything: header, chain, checkpoints and checkpoint file are
    consistent — but not signed by the trusted key next to the log."""
    forger = Ed25519PrivateKey.generate()
    lines = rechain(chain.lines, forger, resign_checkpoints=True, new_header=True)
    side = [x for x in lines if b'"type":"checkpoint"' in x]
    path = tampered(lines, sidecar=side)
    assert verify(path, trusted_keys=[forger.public_key()]).ok  # self-consistent forgery
    assert damage(path)[:2] == ("wrong_key", 1)
    assert damage(path, trusted_keys=[chain.key.public_key()])[:2] == ("wrong_key", 1)


def test_replaced_key_file_too_needs_an_outside_key(chain: Chain, tampered: Make) -> None:
    from cryptography.hazmat.primitives import serialization

    forger = Ed25519PrivateKey.generate()
    lines = rechain(chain.lines, forger, resign_checkpoints=True, new_header=True)
    path = tampered(lines, sidecar=[x for x in lines if b'"type":"checkpoint"' in x])
    for pub in (path.parent / "keys").glob("*.pub"):
        pub.write_bytes(forger.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert verify(path).ok
    assert damage(path, trusted_keys=[chain.key.public_key()])[:2] == ("wrong_key", 1)


def test_untrusted_key_is_a_warning(chain: Chain, tmp_path: Path) -> None:
    path = chain.write(tmp_path / "nokeys")
    for pub in (tmp_path / "nokeys" / "keys").glob("*.pub"):
        pub.unlink()
    report = verify(path)
    assert report.ok and report.key_source == "log-header"
    assert [w.kind for w in report.warnings] == [Notice.UNTRUSTED_KEY.value]


# --- foreign records ------------------------------------------------------------------------


def test_record_copied_from_another_chain(chain: Chain, other_chain: Chain,
                                          tampered: Make) -> None:
    i = chain.record_index(14)
    foreign = other_chain.lines[other_chain.record_index(14)]
    lines = [*chain.lines[:i], foreign, *chain.lines[i:]]
    assert damage(tampered(lines)) == ("foreign_record", i + 1, 14)


def test_record_replaced_by_one_from_another_chain(chain: Chain, other_chain: Chain,
                                                   tampered: Make) -> None:
    i = chain.record_index(14)
    lines = list(chain.lines)
    lines[i] = other_chain.lines[other_chain.record_index(14)]
    assert damage(tampered(lines)) == ("foreign_record", i + 1, 14)


def test_checkpoint_copied_from_another_chain(chain: Chain, other_chain: Chain,
                                              tampered: Make) -> None:
    i = chain.checkpoint_index(20)
    lines = list(chain.lines)
    lines[i] = other_chain.lines[other_chain.checkpoint_index(20)]
    assert damage(tampered(lines))[:2] == ("foreign_record", i + 1)


def test_record_from_a_restarted_process_of_the_same_instance(chain: Chain, tmp_path: Path,
                                                              tampered: Make) -> None:
    """Same instance name and key, another chain (a restart): still foreign."""
    import shutil

    d = tmp_path / "restart"
    shutil.copytree(chain.directory / "keys", d / "keys")
    log = write_log(d, "tamper:1", 20, every=10)
    other = log.path.read_bytes().splitlines(keepends=True)
    i = chain.record_index(14)
    lines = list(chain.lines)
    lines[i] = other[15]
    assert damage(tampered(lines)) == ("foreign_record", i + 1, 14)
    lines = list(chain.lines)
    j = chain.checkpoint_index(10)
    lines[j] = other[11]  # a checkpoint of the other chain, signed with the same key
    assert damage(tampered(lines))[:2] == ("foreign_record", j + 1)


# --- a large clean log ------------------------------------------------------------------------


def test_hundred_thousand_records_verify_without_false_alarm(tmp_path: Path) -> None:
    start = time.perf_counter()
    log = write_log(tmp_path, "big:1", 100_000, every=1000)
    written = time.perf_counter() - start
    report = verify(log.path)
    assert report.ok, report.summary()
    assert report.warnings == []
    assert (report.records, report.covered, report.checkpoints) == (100_000, 100_000, 101)
    assert report.closed
    print(f"\n100k records: written in {written:.1f} s, verified in {report.elapsed:.2f} s "
          f"({100_000 / report.elapsed:,.0f} records/s)")


def test_signed_checkpoints_prove_inclusion_and_consistency(chain: Chain, tampered: Make) -> None:
    """What an auditor does without reading the whole log: check one record against a
    signed tree head, and that a later head extends an earlier one (RFC 9162)."""
    from proxy.audit import (
        consistency_proof,
        inclusion_proof,
        read_leaves,
        verify_consistency,
        verify_inclusion,
    )
    from proxy.audit.merkle import root

    path = tampered()
    leaves = read_leaves(path)
    assert len(leaves) == 35
    heads = {json.loads(x)["size"]: bytes.fromhex(json.loads(x)["root"]) for x in chain.sidecar}
    for size, head in heads.items():
        assert root(leaves[:size]) == head
    record = json.loads(chain.lines[chain.record_index(17)])
    leaf = bytes.fromhex(record["hash"])
    assert verify_inclusion(leaf, 17, 30, inclusion_proof(leaves, 17, 30), heads[30])
    assert verify_consistency(10, 30, heads[10], heads[30], consistency_proof(leaves, 10, 30))
    assert not verify_consistency(20, 30, heads[10], heads[30],
                                  consistency_proof(leaves, 20, 30))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_line_deleted_duplicated_or_moved_is_detected(chain: Chain, tmp_path: Path,
                                                          data: st.DataObject) -> None:
    lines = list(chain.lines)
    n = len(lines)
    op = data.draw(st.sampled_from(["delete", "duplicate", "swap", "move"]))
    i = data.draw(st.integers(0, n - 1))
    j = data.draw(st.integers(0, n - 1).filter(lambda x: x != i))
    if op == "delete":
        del lines[i]
    elif op == "duplicate":
        lines.insert(j, lines[i])
    elif op == "swap":
        lines[i], lines[j] = lines[j], lines[i]
    else:
        lines.insert(j, lines.pop(i))
    if lines == chain.lines:
        return
    report = verify(chain.write(tmp_path / "lines", lines))
    assert not report.ok, f"{op} {i} {j} undetected"
    assert report.damage is not None and report.damage.kind in set(Damage)
