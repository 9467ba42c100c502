"""Evidence record schema v1: what one decision leaves behind, and how to rebuild it.

A record line is ``{"body": BODY, "chain", "instance", "prev", "seq", "type", "v", "hash"}``
(see ``envelope``); this module owns BODY, the part the gateway knows:

==============  ==========================================================================
``time``        decision time, Unix seconds (float, µs precision)
``id``          decision id (the one shown in denials)
``stop``        stop point (``connect`` … ``session_end``) or null
``action``      the action without argument values: ``kind`` (the protocol), ``stop``,
                ``scheme``, ``host``, ``port``, ``target``, ``method``, ``path``,
                ``server``, ``mcp_method``, ``name`` (tool / prompt / resource),
                ``rpc_id``, ``addresses``, ``argument_names`` and ``argument_hmacs``
                (name → hex HMAC-SHA256 of the value's canonical JSON under the
                instance's HMAC key); null when the refusal came before an action
``principal``   the delegation chain, ``[{"id", "kind"}, …]`` root first, or null
``capabilities`` optional: digests of the capability sets of the chain
``session``     optional session id
``decision``    ``verdict``, ``rule_ids``, ``reason``, ``plane``, ``directives``?,
                ``errors``? — what the adjudicator (or the refusing stop point) decided
``enforced``    optional: the decision actually enforced when it differs (an
                unrealized primitive enforced as deny)
``basis``       ``adjudicated`` (re-decidable from the policy) or ``refused`` (decided by
                mediation before/outside the adjudicator: unparseable input, addon error)
``policy``      the policy version (``sha256:<hex>`` of the YAML text; see PolicyStore)
``outcome``     forwarded | denied | refused | held | redacted | cut | compensated |
                compensation_failed | uncompensable (the last three: rollback, with
                ``extra.rollback`` saying which compensation, step and trigger)
``approver``    optional: who approved (escalations)
``latency_us``  ``{"adjudication", "total"}`` in µs
``sealed``      optional: base64(nonce ‖ AES-256-GCM ciphertext) of
                ``{"arguments", "extra", "state", "narrowed"}`` — the raw values the adjudicator
                needs to re-decide; AAD = ``fiveplane-audit-v1|<chain>|<id>``.
                Never exported; only ``audit explain`` opens it, with the instance key.
``extra``       optional: caller metadata (e.g. removed tools; ``approval``; ``trace``:
                the agent's W3C trace context, see SCHEMA.md; ``parked``
                ``{"first", "previous", "waited_seconds"}`` linking a parked call's
                re-decision or denial to its first decision), not used to re-decide
``narrowed``    optional (``narrow`` decisions): ``{"v": 1, "rule_ids", "changed",
                "argument_names", "argument_hmacs", "before_hmacs"}`` — the narrowed form
                as forwarded (names and HMACs as for ``action``), the names whose value
                changed and the HMACs of their values as sent; the values themselves are
                sealed as ``narrowed: {"arguments", "before"}``; absent when the
                narrowing could not be applied (denied: see ``enforced``)
``shadow``      optional: ``{"verdict", "rule_ids", "reason", "matched"}`` — what the
                policy would have decided with its ``mode: shadow`` rules enforced, and
                which shadow rules matched; not enforced
==============  ==========================================================================

Why values are never written raw: evidence outlives the secrets in it. HMACs still answer
"was the same IBAN sent twice / anywhere else in the log" for whoever holds the HMAC key,
and the sealed envelope keeps the exact inputs recoverable for re-adjudication by whoever
holds the audit secret, without turning the log into a copy of every secret it saw.

``action_to_data``/``action_from_data`` are the lossless form of an ``Action``
(``action_from_data(action_to_data(a)) == a``); the record splits that form into the
public ``action``/``principal``/``session`` members and the sealed values, and
``action_from_body`` joins them again. ``encode_body`` writes BODY as canonical JSON bytes
straight from the ``Action`` and ``Decision`` (the hot path); ``build_body`` is the same as
data.
"""

from __future__ import annotations

import base64
import hmac
import json
import json.encoder
import os
from collections.abc import Mapping, Sequence
from enum import StrEnum
from hashlib import sha256
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..action import Action, Kind, StopPoint
from ..decision import Decision, Directive, Plane, Verdict
from ..errors import AuditError
from ..identity.errors import IdentityError
from ..identity.verify import chain_from_data, chain_to_data, rejected
from ..principal import Link, Principal, PrincipalKind
from .envelope import canonical, compact_encoder
from .keys import InstanceKeys, derive

SCHEMA_VERSION = 1
_SEALED_KEYS = ("arguments", "extra", "state", "narrowed")
NARROWED_VERSION = 1
_OPTIONAL_STR = ("method", "path", "server", "mcp_method", "name", "session")


class Outcome(StrEnum):
    """How the proxy realized the decision on the live flow."""

    FORWARDED = "forwarded"
    DENIED = "denied"
    REFUSED = "refused"
    HELD = "held"
    REDACTED = "redacted"
    CUT = "cut"
    COMPENSATED = "compensated"                   # a compensating call succeeded
    COMPENSATION_FAILED = "compensation_failed"   # refused, unreachable, or it failed
    UNCOMPENSABLE = "uncompensable"               # a call whose undo cannot be journaled


# --- Action <-> data (lossless) -------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def principal_to_data(principal: Principal) -> Any:
    """The chain of ids and kinds; for a verified token also its blocks (capabilities and
    validity, no signatures or proof), for a refused one the refusal — what re-deciding
    the action needs."""
    links = [{"id": link.id, "kind": link.kind.value} for link in principal.chain]
    verified = getattr(principal, "verified", None)
    if verified is not None:
        return {"chain": links, "token": chain_to_data(verified)}
    error = getattr(principal, "error", None)
    if error is not None:
        return {"chain": links, "refused": {"code": error.code, "message": error.message}}
    return links


def principal_from_data(data: Any) -> Principal:
    if isinstance(data, Mapping):
        if "token" in data:
            return chain_from_data(data["token"]).principal
        if "refused" in data:
            return rejected(IdentityError(data["refused"]["code"], data["refused"]["message"]))
        data = data["chain"]
    return Principal(tuple(Link(str(x["id"]), PrincipalKind(x["kind"])) for x in data))


def action_to_data(action: Action) -> dict[str, Any]:
    """Every field of ``action`` as JSON data; default values are omitted."""
    d: dict[str, Any] = {
        "kind": action.kind.value, "stop": action.stop.value, "scheme": action.scheme,
        "host": action.host, "port": action.port,
    }
    for key in _OPTIONAL_STR:
        value = getattr(action, key)
        if value:
            d[key] = value
    if action.rpc_id is not None:
        d["rpc_id"] = action.rpc_id
    if action.addresses:
        d["addresses"] = list(action.addresses)
    if action.arguments:
        d["arguments"] = _plain(action.arguments)
    if action.extra:
        d["extra"] = _plain(action.extra)
    if action.at:
        d["at"] = action.at
    if action.marks:
        d["marks"] = dict(action.marks)
    if action.tainted:
        d["tainted"] = sorted(action.tainted)
    d["principal"] = principal_to_data(action.principal)
    return d


def action_from_data(data: Mapping[str, Any]) -> Action:
    """Rebuild the ``Action`` written by ``action_to_data``."""
    kwargs: dict[str, Any] = {key: data[key] for key in _OPTIONAL_STR if key in data}
    if "rpc_id" in data:
        kwargs["rpc_id"] = data["rpc_id"]
    if "addresses" in data:
        kwargs["addresses"] = tuple(data["addresses"])
    if "arguments" in data:
        kwargs["arguments"] = dict(data["arguments"])
    if "extra" in data:
        kwargs["extra"] = dict(data["extra"])
    if "principal" in data:
        kwargs["principal"] = principal_from_data(data["principal"])
    if "at" in data:
        kwargs["at"] = float(data["at"])
    if "marks" in data:
        kwargs["marks"] = {str(k): float(v) for k, v in data["marks"].items()}
    if "tainted" in data:
        kwargs["tainted"] = frozenset(data["tainted"])
    return Action(Kind(data["kind"]), StopPoint(data["stop"]), str(data["scheme"]),
                  str(data["host"]), int(data["port"]), **kwargs)


def decision_to_data(decision: Decision) -> dict[str, Any]:
    d = decision.to_dict()
    d.pop("policy_version", None)  # the record's top-level ``policy``
    return d


def decision_from_data(data: Mapping[str, Any], policy_version: str) -> Decision:
    return Decision(
        Verdict(data["verdict"]), tuple(data.get("rule_ids", ())), str(data.get("reason", "")),
        policy_version, Plane(data.get("plane", Plane.ENDPOINT.value)),
        tuple(Directive(Plane(x["plane"]), x["kind"], x.get("params", {}))
              for x in data.get("directives", ())),
        tuple(data.get("errors", ())),
    )


# --- keyed digests and the sealed envelope --------------------------------------------------


def _unsupported(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} values cannot be recorded")


# NaN and ±Infinity are allowed inside values: they are exactly what a type-confusion attack
# sends, and the sealed envelope must give them back unchanged.
_value_encode = compact_encoder(sort_keys=True, ensure_ascii=True, allow_nan=True,
                                default=_unsupported)
_seal_encode = compact_encoder(sort_keys=False, ensure_ascii=False, allow_nan=True,
                               default=_unsupported)
_ascii_string = json.encoder.encode_basestring_ascii


def value_bytes(value: Any) -> bytes:
    """The canonical JSON of one argument value (the input of its HMAC)."""
    kind = type(value)
    if kind is str:
        return _ascii_string(value).encode("ascii")
    if kind is int:
        return int.__repr__(value).encode("ascii")
    return _value_encode(value).encode("ascii")


class Sealer:
    """The instance's keyed primitives for one chain: value HMACs and the AES-GCM envelope."""

    def __init__(self, secret_or_keys: InstanceKeys | bytes, chain: str) -> None:
        if isinstance(secret_or_keys, InstanceKeys):
            hmac_key, seal_key = secret_or_keys.hmac_key, secret_or_keys.seal_key
        else:
            hmac_key = derive(secret_or_keys, "argument-hmac")
            seal_key = derive(secret_or_keys, "argument-seal")
        # RFC 2104 with the padded-key states hashed once: per value only two hash copies
        # (``hmac.new(...).copy()`` costs twice as much on the hot path).
        self._inner = sha256(bytes(b ^ 0x36 for b in hmac_key.ljust(64, b"\0")))
        self._outer = sha256(bytes(b ^ 0x5C for b in hmac_key.ljust(64, b"\0")))
        self._aead = AESGCM(seal_key)
        self._aad = f"fiveplane-audit-v1|{chain}|".encode()

    def digest(self, value: Any) -> str:
        """Hex HMAC-SHA256 of the value's canonical JSON under the instance's HMAC key."""
        return self.digest_bytes(value_bytes(value))

    def digest_bytes(self, data: bytes) -> str:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def _associated(self, record_id: str) -> bytes:
        """AES-GCM associated data: binds a sealed envelope to its chain and record."""
        return self._aad + record_id.encode("utf-8", "surrogatepass")

    def seal(self, record_id: str, payload: Mapping[str, Any]) -> str:
        return self.seal_bytes(record_id, _seal_encode(payload).encode("utf-8", "surrogatepass"))

    def seal_bytes(self, record_id: str, plain: bytes) -> str:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, plain, self._associated(record_id))
        return base64.b64encode(nonce + ct).decode("ascii")

    def open(self, record_id: str, blob: str) -> dict[str, Any]:
        try:
            raw = base64.b64decode(blob, validate=True)
            plain = self._aead.decrypt(raw[:12], raw[12:], self._associated(record_id))
        except (InvalidTag, ValueError) as e:
            raise AuditError("the sealed arguments cannot be opened with this key "
                             "(wrong key, or the record was altered)") from e
        data = json.loads(plain.decode("utf-8", "surrogatepass"))
        if not isinstance(data, dict):
            raise AuditError("the sealed arguments are not an object")
        return data


# --- building and reading record bodies -----------------------------------------------------


class _IdentityCache:
    """Canonical bytes of immutable objects the hot path sees again and again (the
    adjudicator returns the same precompiled ``Decision`` objects; most actions share a
    principal), keyed by identity: no hashing, no comparison."""

    def __init__(self, make: Any, limit: int = 4096) -> None:
        self._make = make
        self._limit = limit
        self._items: dict[int, tuple[Any, bytes]] = {}

    def __call__(self, obj: Any) -> bytes:
        hit = self._items.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        data = canonical(self._make(obj))
        if len(self._items) >= self._limit:
            self._items.clear()
        self._items[id(obj)] = (obj, data)
        return data


_decision_json = _IdentityCache(decision_to_data)
_principal_json = _IdentityCache(principal_to_data)
_policy_json = _IdentityCache(lambda decision: decision.policy_version)


def _string(value: str) -> bytes:
    return _ascii_string(value).encode("ascii")


def _number(value: float) -> bytes:
    """A number exactly as the canonical encoder writes it."""
    kind = type(value)
    if kind is float:
        if value - value == 0.0:  # finite: NaN and ±Infinity give NaN here
            return float.__repr__(value).encode("ascii")
        raise ValueError(f"{value} is not a JSON number")
    if kind is int:
        return int.__repr__(value).encode("ascii")
    return canonical(value)


def _scalar(value: Any) -> bytes:
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is int:
        return int.__repr__(value).encode("ascii")
    return canonical(value)


def _action_json(action: Action, names: list[str] | None, hmacs: list[str] | None) -> bytes:
    """The public ``action`` member, members in sorted key order (see ``encode_body``)."""
    parts = []
    add = parts.append
    if action.addresses:
        add(b'"addresses":' + canonical(list(action.addresses)))
    if names is not None and hmacs is not None:
        quoted = [_string(n) for n in names]
        add(b'"argument_hmacs":{' + b",".join(
            [q + b':"' + h.encode("ascii") + b'"' for q, h in zip(quoted, hmacs, strict=True)])
            + b"}")
        add(b'"argument_names":[' + b",".join(quoted) + b"]")
    if action.at:
        add(b'"at":' + _scalar(action.at))
    add(b'"host":' + _string(action.host))
    add(b'"kind":' + _string(action.kind.value))
    if action.marks:  # the session context the decision saw (labels and their times)
        add(b'"marks":' + canonical(dict(action.marks)))
    if action.mcp_method:
        add(b'"mcp_method":' + _string(action.mcp_method))
    if action.method:
        add(b'"method":' + _string(action.method))
    if action.name:
        add(b'"name":' + _string(action.name))
    if action.path:
        add(b'"path":' + _string(action.path))
    add(b'"port":' + _scalar(action.port))
    if action.rpc_id is not None:
        add(b'"rpc_id":' + _scalar(action.rpc_id))
    add(b'"scheme":' + _string(action.scheme))
    if action.server:
        add(b'"server":' + _string(action.server))
    add(b'"stop":' + _string(action.stop.value))
    if action.tainted:
        add(b'"tainted":' + canonical(sorted(action.tainted)))
    add(b'"target":' + _string(action.target))
    return b"{" + b",".join(parts) + b"}"


def encode_body(
    sealer: Sealer, action: Action | None, decision: Decision, *, decision_id: str,
    outcome: str, enforced: Decision | None = None, adjudicated: bool = True,
    stop: StopPoint | str | None = None, approver: Any = None, adjudication_us: float = 0.0,
    total_us: float = 0.0, capabilities: Sequence[str] = (),
    state: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
    time: float | None = None, narrowed: Mapping[str, Any] | None = None,
    shadow: Mapping[str, Any] | None = None,
) -> bytes:
    """The BODY of one evidence record (schema v1) as canonical JSON bytes.

    Why assembled by hand: the members are written in sorted key order from parts that are
    each canonical (decision and principal bytes are cached per object; argument values
    are serialized once and serve both their HMAC and the sealed envelope), which halves
    the serialization cost of the hot path. The result is byte-identical to
    ``canonical(json.loads(result))`` (a property test holds it to that)."""
    parts: list[bytes] = []
    add = parts.append
    sealed: list[bytes] = []
    action_json = b"null"
    principal = b"null"
    session = ""
    if action is not None:
        arguments = action.arguments
        names = hmacs = None
        if arguments:
            names = sorted(arguments)
            values = [value_bytes(arguments[name]) for name in names]
            digest = sealer.digest_bytes
            hmacs = [digest(v) for v in values]
            sealed.append(b'"arguments":{' + b",".join(
                [_string(n) + b":" + v for n, v in zip(names, values, strict=True)]) + b"}")
        if action.extra:
            sealed.append(b'"extra":' + _seal_encode(action.extra).encode("utf-8",
                                                                           "surrogatepass"))
        action_json = _action_json(action, names, hmacs)
        principal = _principal_json(action.principal)
        session = action.session
        if stop is None:
            stop = action.stop.value
    if state:
        sealed.append(b'"state":' + _seal_encode(state).encode("utf-8", "surrogatepass"))
    narrowed_json = None
    if narrowed is not None:
        narrowed_json, plain_narrowed = _narrowed_member(sealer, narrowed)
        sealed.append(b'"narrowed":' + _seal_encode(plain_narrowed).encode("utf-8",
                                                                           "surrogatepass"))
    # members in sorted key order
    add(b'"action":' + action_json)
    if approver is not None:
        add(b'"approver":' + canonical(approver))
    add(b'"basis":"adjudicated"' if adjudicated else b'"basis":"refused"')
    if capabilities:
        add(b'"capabilities":' + canonical(list(capabilities)))
    add(b'"decision":' + _decision_json(decision))
    if enforced is not None and enforced is not decision and enforced != decision:
        add(b'"enforced":' + _decision_json(enforced))
    if extra:
        add(b'"extra":' + canonical(_plain(extra)))
    add(b'"id":' + _string(decision_id))
    add(b'"latency_us":{"adjudication":' + _number(round(adjudication_us, 1)) +
        b',"total":' + _number(round(total_us, 1)) + b"}")
    if narrowed_json is not None:
        add(b'"narrowed":' + narrowed_json)
    add(b'"outcome":' + _string(str(outcome)))
    add(b'"policy":' + _policy_json(decision))
    add(b'"principal":' + principal)
    if sealed:
        plain = b"{" + b",".join(sealed) + b"}"
        add(b'"sealed":"' + sealer.seal_bytes(decision_id, plain).encode("ascii") + b'"')
    if session:
        add(b'"session":' + _string(session))
    if shadow is not None:
        add(b'"shadow":' + canonical(_plain(shadow)))
    add(b'"stop":' + (b"null" if stop is None else _string(str(stop))))
    if time is not None:
        add(b'"time":' + _number(round(time, 6)))
    return b"{" + b",".join(parts) + b"}"


def _narrowed_member(sealer: Sealer, narrowed: Mapping[str, Any]
                     ) -> tuple[bytes, dict[str, Any]]:
    """The public ``narrowed`` member (names and HMACs, never values) and what is sealed."""
    after = dict(narrowed.get("arguments") or {})
    before = dict(narrowed.get("before") or {})
    public = {
        "v": NARROWED_VERSION,
        "rule_ids": list(narrowed.get("rule_ids", ())),
        "changed": sorted(narrowed.get("changed", ())),
        "argument_names": sorted(after),
        "argument_hmacs": {k: sealer.digest(v) for k, v in after.items()},
        "before_hmacs": {k: sealer.digest(v) for k, v in before.items()},
    }
    return canonical(public), {"arguments": after, "before": before}


def build_body(sealer: Sealer, action: Action | None, decision: Decision,
               **fields: Any) -> dict[str, Any]:
    """The BODY of one evidence record (schema v1) as data; see ``encode_body``."""
    body: dict[str, Any] = json.loads(encode_body(sealer, action, decision, **fields))
    return body


def action_from_body(body: Mapping[str, Any], sealer: Sealer | None) -> Action:
    """Rebuild the recorded ``Action``; argument values need the sealer (the instance key)."""
    public = body.get("action")
    if not isinstance(public, Mapping):
        raise AuditError("the record carries no action (refused before one existed)")
    data: dict[str, Any] = {k: v for k, v in public.items()
                            if k not in ("argument_names", "argument_hmacs", "target")}
    if body.get("principal") is not None:
        data["principal"] = body["principal"]
    if body.get("session"):
        data["session"] = body["session"]
    sealed = unseal_body(body, sealer)
    for key in ("arguments", "extra"):
        if key in sealed:
            data[key] = sealed[key]
    names = public.get("argument_names")
    if names is not None:
        if sealer is None:
            raise AuditError("argument values are sealed: the audit key is needed")
        args = sealed.get("arguments", {})
        if sorted(args) != list(names):
            raise AuditError("sealed arguments do not match the recorded argument names")
        hmacs = public.get("argument_hmacs", {})
        for name, value in args.items():
            if not hmac.compare_digest(sealer.digest(value), str(hmacs.get(name, ""))):
                raise AuditError(f"sealed argument {name!r} does not match its recorded HMAC")
    return action_from_data(data)


def unseal_body(body: Mapping[str, Any], sealer: Sealer | None) -> dict[str, Any]:
    blob = body.get("sealed")
    if blob is None:
        return {}
    if sealer is None:
        raise AuditError("argument values are sealed: the audit key is needed")
    data = sealer.open(str(body.get("id", "")), str(blob))
    return {k: data[k] for k in _SEALED_KEYS if k in data}


def public_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body without the sealed envelope: what leaves the instance (SIEM export)."""
    return {k: v for k, v in body.items() if k != "sealed"}
