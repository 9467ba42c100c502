"""Explain a recorded decision by deciding it again.

Why: "Evidence Sufficiency" means a record is enough to recompute its decision. ``explain``
rebuilds the recorded ``Action`` (opening the sealed argument values with the instance's
audit secret), fetches the recorded policy version from the ``PolicyStore``, compiles it,
asks a fresh ``Adjudicator`` and compares verdict and rule ids with the record. A mismatch
means the record, the store or the engine changed since — each is worth an auditor's
attention. Records the adjudicator never decided (mediation refusals, notes) are skipped,
and say why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..action import Action, Kind
from ..decision import Decision, Verdict
from ..engine import Adjudicator
from ..errors import AuditError, PolicyError
from ..narrow import narrow
from ..policy import compile_text
from . import envelope
from .keys import InstanceKeys, load_secret, safe_name
from .policy_store import PolicyStore
from .schema import Sealer, action_from_body, unseal_body


@dataclass
class Explanation:
    seq: int
    line: int
    status: str                          # match | mismatch | skipped | error
    record: dict[str, Any]               # the record body
    recorded: dict[str, Any]             # {"verdict", "rule_ids", "reason"}
    recomputed: dict[str, Any] | None = None
    action: Action | None = None
    diff: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def matches(self) -> bool | None:
        """True / False when re-adjudicated (or when the inputs are gone), None if skipped."""
        return {"match": True, "mismatch": False}.get(self.status)

    def __str__(self) -> str:
        rec = self.recorded
        lines = [f"seq {self.seq} (line {self.line}): {self.status.upper()}"]
        if self.action is not None:
            lines.append(f"  action      {self.action.summary()}  as {self.action.principal}")
        lines.append(f"  policy      {self.record.get('policy', '?')}")
        lines.append(f"  recorded    {rec.get('verdict')} by {', '.join(rec.get('rule_ids', ()))}"
                     f" — {rec.get('reason', '')}")
        if self.recomputed is not None:
            new = self.recomputed
            lines.append(f"  recomputed  {new['verdict']} by {', '.join(new['rule_ids'])} — "
                         f"{new['reason']}")
        lines.extend(f"  differs     {d}" for d in self.diff)
        if self.reason:
            lines.append(f"  note        {self.reason}")
        return "\n".join(lines)


class _Context:
    """What explaining needs once per log: chain identity, key, store, compiled policies."""

    def __init__(self, log_path: Path, policy_store: PolicyStore | str | Path,
                 key: InstanceKeys | bytes | None) -> None:
        with open(log_path, "rb") as f:
            header = json.loads(f.readline())
        self.chain = str(header["chain"])
        self.instance = str(header["instance"])
        self.middle = envelope.chain_middle(self.chain, self.instance)
        if key is None:
            secret = log_path.parent / "keys" / f"{safe_name(self.instance)}.secret"
            key = load_secret(secret) if secret.is_file() else None
        self.sealer = Sealer(key, self.chain) if key is not None else None
        self.store = policy_store if isinstance(policy_store, PolicyStore) else PolicyStore(
            policy_store)
        self.adjudicators: dict[str, Adjudicator | str] = {}

    def adjudicator(self, version: str) -> Adjudicator | str:
        """The adjudicator of ``version``, or why there is none."""
        if version not in self.adjudicators:
            try:
                policy = compile_text(self.store.get(version), f"<policy {version[:19]}>",
                                      offline=True)
                self.adjudicators[version] = Adjudicator(policy)
            except AuditError as e:
                self.adjudicators[version] = str(e)
            except PolicyError as e:
                self.adjudicators[version] = f"the stored policy does not compile: {e}"
        return self.adjudicators[version]


def _explain(ctx: _Context, lineno: int, line: bytes) -> Explanation:
    doc = json.loads(line)
    body: dict[str, Any] = doc.get("body") or {}
    decision = body.get("decision") or {}
    recorded = {"verdict": decision.get("verdict"), "rule_ids": list(decision.get("rule_ids", ())),
                "reason": decision.get("reason", "")}
    out = Explanation(int(doc.get("seq", -1)), lineno, "skipped", body, recorded)
    cut = envelope.split_last(line, envelope.HASH_MEMBER)
    if cut is None or envelope.sha256_hex(b"\x00" + cut[0]) != cut[1]:
        out.status, out.reason = "error", "the record does not match its hash: run audit verify"
        return out
    if doc.get("type") != "record":
        out.reason = f"a {doc.get('type')} line, not a decision"
        return out
    if body.get("basis") == "refused" or body.get("action") is None:
        out.reason = ("refused by mediation before or outside the adjudicator "
                      f"({', '.join(recorded['rule_ids'])}): nothing to re-decide")
        return out
    try:
        out.action = action_from_body(body, ctx.sealer)
    except (AuditError, KeyError, ValueError, TypeError) as e:
        out.status, out.reason = "error", f"the action cannot be rebuilt: {e}"
        return out
    version = str(body.get("policy", ""))
    adjudicator = ctx.adjudicator(version)
    if isinstance(adjudicator, str):
        out.status, out.reason = "mismatch", f"policy {version}: {adjudicator}"
        out.diff.append("the recorded policy version cannot be recovered from the store")
        return out
    new = adjudicator.decide(out.action)
    out.recomputed = {"verdict": new.verdict.value, "rule_ids": list(new.rule_ids),
                      "reason": new.reason}
    if new.verdict.value != recorded["verdict"]:
        out.diff.append(f"verdict: recorded {recorded['verdict']}, recomputed "
                        f"{new.verdict.value}")
    if list(new.rule_ids) != recorded["rule_ids"]:
        out.diff.append(f"rule ids: recorded {recorded['rule_ids']}, recomputed "
                        f"{list(new.rule_ids)}")
    if body.get("narrowed") is not None and new.verdict is Verdict.NARROW and not out.diff:
        out.diff.extend(_narrowed_diff(body, out.action, new, adjudicator, ctx.sealer))
    out.diff.extend(_shadow_diff(body.get("shadow"), out.action, adjudicator))
    out.status = "mismatch" if out.diff else "match"
    return out


def _shadow_diff(recorded: Any, action: Action, adjudicator: Adjudicator) -> list[str]:
    """The would-be decision of the policy's shadow rules, decided again."""
    got = adjudicator.shadow(action) if adjudicator.shadowing else None
    if got is None:
        return [] if recorded is None else ["shadow: recorded, but no shadow rule matches now"]
    would, matched = got
    if recorded is None:
        return [f"shadow: none recorded, but {', '.join(matched)} match now"]
    if (recorded.get("verdict"), recorded.get("rule_ids")) != (would.verdict.value,
                                                               list(would.rule_ids)):
        return [f"shadow: recorded {recorded.get('verdict')} by "
                f"{', '.join(recorded.get('rule_ids', ()))}, recomputed {would.verdict.value} "
                f"by {', '.join(would.rule_ids)}"]
    return []


def _narrowed_diff(body: Mapping[str, Any], action: Action, decision: Decision,
                   adjudicator: Adjudicator, sealer: Sealer | None) -> list[str]:
    """Narrow the recorded call again and compare with the narrowed form it recorded (names
    only: values stay sealed)."""
    try:
        sealed = unseal_body(body, sealer).get("narrowed") or {}
    except AuditError as e:
        return [f"the narrowed form cannot be opened: {e}"]
    recorded = dict(sealed.get("arguments") or {})
    fields = None
    if action.kind is Kind.HTTP:  # the body fields as sent: the narrowed ones put back
        fields = {k: v for k, v in recorded.items()
                  if k not in body["narrowed"].get("changed", ())}
        fields.update(sealed.get("before") or {})
    again = narrow(action, decision, adjudicator.policy.narrowings, adjudicator.decide, fields)
    differs = sorted(k for k in {*recorded, *again.after}
                     if json.dumps(recorded.get(k), sort_keys=True)
                     != json.dumps(again.after.get(k), sort_keys=True))
    if differs:
        return [f"narrowed form: recomputed values differ for {', '.join(differs)}"]
    return []


def _records(log_path: Path) -> Iterator[tuple[int, bytes]]:
    with open(log_path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return
            got = envelope.record_position(raw[:-1])
            if got is not None:
                yield lineno, raw[:-1]


def find_record(log_path: str | Path, ref: int | str) -> tuple[int, bytes]:
    """(line number, line) of the record with seq ``ref`` (int or digits) or decision id."""
    log_path = Path(log_path)
    by_seq = isinstance(ref, int) or str(ref).isdigit()
    needle = b'"id":' + envelope.canonical(str(ref))
    with open(log_path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip(b"\n")
            if by_seq:
                got = envelope.record_position(line)
                if got is not None and got[0] == int(ref):
                    return lineno, line
            elif needle in line:
                doc = json.loads(line)
                if (doc.get("body") or {}).get("id") == ref:
                    return lineno, line
    raise AuditError(f"no record {ref} in {log_path}")


def explain(log_path: str | Path, seq: int | str, policy_store: PolicyStore | str | Path,
            key: InstanceKeys | bytes | None = None) -> Explanation:
    """Re-adjudicate one record (by seq or decision id).

    ``key``: the instance's audit secret (32 bytes) or its ``InstanceKeys``; default: the
    ``keys/<instance>.secret`` file next to the log.
    """
    log_path = Path(log_path)
    ctx = _Context(log_path, policy_store, key)
    lineno, line = find_record(log_path, seq)
    return _explain(ctx, lineno, line)


def explain_all(log_path: str | Path, policy_store: PolicyStore | str | Path,
                key: InstanceKeys | bytes | None = None) -> Iterator[Explanation]:
    """Re-adjudicate every record of a log, compiling each policy version once."""
    log_path = Path(log_path)
    ctx = _Context(log_path, policy_store, key)
    for lineno, line in _records(log_path):
        yield _explain(ctx, lineno, line)


def tally(explanations: Iterator[Explanation] | list[Explanation]) -> Mapping[str, int]:
    counts = {"match": 0, "mismatch": 0, "skipped": 0, "error": 0}
    for e in explanations:
        counts[e.status] += 1
    return counts
