"""Evidence substrate: a signed, hash-chained, Merkle-checkpointed audit log per process.

Public API::

    log = AuditLog(directory, instance)            # one chain per process, keys on first use
    commit = log.record(action, decision, outcome="forwarded", decision_id=..., ...)
    await commit.wait()                            # durable (group commit) or AuditError
    store = PolicyStore(directory / "policies"); store.put(policy.source)
    verify(path) -> VerifyReport                   # names the first damage
    explain(path, seq, store) -> Explanation       # re-adjudicates a record

See ``SCHEMA.md`` for the record format, ``envelope`` for the line format and hashing.
"""

from .envelope import canonical
from .explain import Explanation, explain, explain_all, find_record
from .keys import InstanceKeys, load_or_create, load_public_key, load_secret
from .merkle import (
    CompactTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from .policy_store import PolicyStore
from .schema import (
    SCHEMA_VERSION,
    Outcome,
    Sealer,
    action_from_body,
    action_from_data,
    action_to_data,
    build_body,
    encode_body,
)
from .verify import Damage, Finding, VerifyReport, log_files, read_leaves, verify
from .writer import AuditLog, Commit

__all__ = [
    "SCHEMA_VERSION",
    "AuditLog",
    "Commit",
    "CompactTree",
    "Damage",
    "Explanation",
    "Finding",
    "InstanceKeys",
    "Outcome",
    "PolicyStore",
    "Sealer",
    "VerifyReport",
    "action_from_body",
    "action_from_data",
    "action_to_data",
    "build_body",
    "canonical",
    "consistency_proof",
    "encode_body",
    "explain",
    "explain_all",
    "find_record",
    "inclusion_proof",
    "leaf_hash",
    "load_or_create",
    "load_public_key",
    "load_secret",
    "log_files",
    "read_leaves",
    "verify",
    "verify_consistency",
    "verify_inclusion",
]
