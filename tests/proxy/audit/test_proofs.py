"""Offline proofs: `audit prove` / `check-proof` / `consistency` against real logs, with the
forgeries an auditor must catch."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from audit_kit import Chain, rechain, resign, with_member, write_log
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit import proofs
from proxy.audit.cli import main
from proxy.audit.keys import load_public_key


def pub_of(d: Path) -> Path:
    return next((d / "keys").glob("*.pub"))


def prove(chain: Chain, seq: int) -> dict:
    return proofs.prove_inclusion(chain.path, seq)


def check(proof: dict, chain: Chain, **kw: object) -> proofs.ProofCheck:
    return proofs.check(proof, [load_public_key(pub_of(chain.directory))], **kw)  # type: ignore[arg-type]


def test_every_record_has_an_inclusion_proof_under_the_newest_checkpoint(chain: Chain) -> None:
    for seq in range(35):
        proof = prove(chain, seq)
        assert proof["tree_size"] == 35 and json.loads(proof["checkpoint"])["final"]
        result = check(proof, chain)
        assert result.ok, result
        assert f"record {seq} (decision " in result.detail
        assert result.key_source == "trusted" and not result.warnings


def test_cli_prove_and_check_proof(chain: Chain, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    decision_id = json.loads(chain.lines[chain.record_index(7)])["body"]["id"]
    out = tmp_path / "proof.json"
    assert main(["audit", "prove", str(chain.directory), decision_id, "-o", str(out)]) == 0
    assert json.loads(out.read_text())["leaf_index"] == 7
    assert main(["audit", "check-proof", str(out), "--key", str(pub_of(chain.directory))]) == 0
    assert f"ok: record 7 (decision {decision_id})" in capsys.readouterr().out
    # without a key it still checks, but says whose key it trusted
    assert main(["audit", "check-proof", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["key_source"] == "log-header" and report["warnings"]
    assert main(["audit", "prove", str(chain.path), "3"]) == 0
    assert json.loads(capsys.readouterr().out)["leaf_index"] == 3
    # usage errors
    assert main(["audit", "prove", str(chain.path), "999"]) == 2
    assert main(["audit", "prove", str(chain.path), "no-such-decision"]) == 2
    assert main(["audit", "prove", str(chain.path)]) == 2
    (tmp_path / "junk.json").write_text("not json")
    assert main(["audit", "check-proof", str(tmp_path / "junk.json")]) == 2


def test_a_changed_record_or_path_does_not_prove(chain: Chain, other_chain: Chain) -> None:
    proof = prove(chain, 12)
    # the record rewritten (and re-hashed, as anyone can) is not the one the root covers
    rewritten = with_member(proof["record"].encode(), "body",
                            {**json.loads(proof["record"])["body"], "outcome": "refused"})
    bad = {**proof, "record": rewritten.decode().rstrip("\n")}
    result = check(bad, chain)
    assert not result.ok and "is not in that log" in result.detail
    # the record's bytes changed without re-hashing
    flipped = proof["record"].replace('"outcome":"', '"outcome":"x', 1)
    assert "does not match its own hash" in check({**proof, "record": flipped}, chain).detail
    # one node of the audit path changed
    path = list(proof["audit_path"])
    path[1] = "00" * 32
    assert "does not lead" in check({**proof, "audit_path": path}, chain).detail
    # another position claimed
    assert "do not match" in check({**proof, "leaf_index": 13}, chain).detail
    # a checkpoint re-signed by someone else, claiming another root
    forged_cp = resign(proof["checkpoint"].encode(), Ed25519PrivateKey.generate())
    assert "signature" in check({**proof, "checkpoint": forged_cp.decode().strip()},
                                chain).detail
    # a checkpoint signed with the right key for another chain (say, after a restart)
    other = prove(other_chain, 3)
    key_id = json.loads(proof["checkpoint"])["key_id"]
    moved = resign(other["checkpoint"].encode(), chain.key, key_id=key_id)
    assert "not to the header's chain" in check({**proof, "checkpoint": moved.decode().strip()},
                                                chain).detail
    # the whole proof of another instance, checked against this instance's key
    assert "not to the trusted key" in check(other, chain).detail
    assert not check({**proof, "v": 2}, chain).ok
    assert not check({**proof, "audit_path": ["zz"]}, chain).ok


def test_a_record_not_yet_signed_cannot_be_proven(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path, "open:1", 12, every=10, close=False)
    try:
        assert main(["audit", "prove", str(log.path), "9"]) == 0
        assert json.loads(capsys.readouterr().out)["tree_size"] == 10
        assert main(["audit", "prove", str(log.path), "11"]) == 2
        assert "not covered by a signed checkpoint yet" in capsys.readouterr().err
    finally:
        log.close()


def test_consistency_of_a_kept_checkpoint(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path, "grow:1", 23, every=10, close=False)
    kept = tmp_path / "kept.ckpt"
    log.flush(10)
    # flush() waits for the records; the checkpoint line that signs them is written by the
    # writer thread just after, so wait for it (a loaded machine can take a moment)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        path = log.checkpoint_path
        lines = path.read_text().splitlines() if path.exists() else []
        if lines and json.loads(lines[-1])["size"] == 20:
            break
        time.sleep(0.01)
    shutil.copy(log.checkpoint_path, kept)    # what the auditor took away: size 20
    assert json.loads(kept.read_text().splitlines()[-1])["size"] == 20
    for i in range(40):
        log.append({"more": i})
    log.close()
    assert main(["audit", "consistency", str(kept), str(tmp_path)]) == 0
    assert "the checkpoint for 63 records extends the one for 20" in capsys.readouterr().out
    proof_file = tmp_path / "consistency.json"
    assert main(["audit", "prove", str(tmp_path), "--since", str(kept), "-o",
                 str(proof_file)]) == 0
    key = str(pub_of(tmp_path))
    assert main(["audit", "check-proof", str(proof_file), "--key", key, "--old",
                 str(kept)]) == 0
    capsys.readouterr()
    # a proof from another starting point is refused when the auditor names theirs
    first = tmp_path / "first.ckpt"
    first.write_text(kept.read_text().splitlines()[0] + "\n")
    assert main(["audit", "check-proof", str(proof_file), "--key", key, "--old",
                 str(first)]) == 1
    assert "another checkpoint than the one you kept" in capsys.readouterr().out
    # an older kept checkpoint works as well (and so does a kept proof)
    assert main(["audit", "consistency", str(first), str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    assert main(["audit", "consistency", str(proof_file), str(tmp_path)]) == 0


def test_history_rewritten_with_the_key_breaks_consistency(
        chain: Chain, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Even whoever holds the signing key cannot rewrite records an auditor already holds a
    checkpoint for: the re-signed log verifies on its own, consistency does not."""
    kept = tmp_path / "kept.ckpt"
    kept.write_bytes(chain.lines[chain.checkpoint_index(20)])
    lines = list(chain.lines)
    i = chain.record_index(4)
    doc = json.loads(lines[i])
    lines[i] = with_member(lines[i], "body", {**doc["body"], "outcome": "refused"})
    forged = rechain(lines, chain.key, resign_checkpoints=True)
    target = chain.write(tmp_path / "forged", forged, keep_sidecar=False)
    assert main(["audit", "verify", str(target)]) == 0  # self-consistent ...
    capsys.readouterr()
    assert main(["audit", "consistency", str(kept), str(target)]) == 1  # ... but not with it
    out = capsys.readouterr().out
    assert "FAILED" in out and "does not extend the one for 20" in out
    # a log of another chain cannot be checked against it at all
    assert main(["audit", "consistency", str(kept), str(write_log(
        tmp_path / "x", "x:1", 3).path)]) == 2


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 60), st.integers(1, 9), st.data())
def test_proofs_hold_for_any_log_shape(n: int, every: int, data: st.DataObject) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        log = write_log(directory, "shape:1", n, every=every, close=False)
        log.close()
        key = [load_public_key(pub_of(directory))]
        seq = data.draw(st.integers(0, n - 1))
        assert proofs.check(proofs.prove_inclusion(log.path, seq), key).ok
        all_cps = [raw for raw in log.path.read_bytes().splitlines()
                   if b'"type":"checkpoint"' in raw]
        old = data.draw(st.sampled_from(all_cps))
        result = proofs.check(proofs.prove_consistency(log.path, old), key, expected_old=old)
        assert result.ok, result
