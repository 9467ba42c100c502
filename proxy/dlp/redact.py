"""Redaction: text, JSON documents (JSON-aware) and whole bodies.

Actions, per detector and direction, come from the policy (see :mod:`proxy.dlp.policy`):

* ``redact`` - replace the matched text with ``[REDACTED:<label>]``;
* ``deny``   - the message must be refused (the caller decides how: 403, JSON-RPC error,
  stream cut); nothing is rewritten for it;
* ``allow``  - detection only (evidence, session labels).

A detector missing from the ``actions`` mapping counts as ``allow``.

JSON decisions (see README):

* string **values** and **keys** are scanned; each key is scanned together with its value
  (``key": "value``) so that keyword detectors (``"password": "..."``) see the key;
* a redacted key is replaced like a value; if that collides with a sibling key, ``~2``,
  ``~3`` ... is appended so the object keeps all members and stays valid;
* integers are scanned as their decimal digits (a card number sent as a number is found);
  a redacted integer becomes the marker *string*: no number could stand in for it without
  either leaking digits or pretending to be data, and a type change fails loudly in the
  consumer instead of silently handing it a fake value. Floats, booleans and null are not
  scanned;
* JSON-RPC ``jsonrpc``, ``id`` and ``method`` members of a message (top level or batch
  element) are never rewritten: a finding there whose action is ``redact`` becomes ``deny``
  (the message cannot be fixed without breaking the protocol);
* the walk is iterative (any nesting depth); bodies are parsed with
  :func:`proxy.codec.loads_strict`, whose depth guard refuses over-deep documents first.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from ..codec import loads_strict
from .detectors import Finding, Scanner

__all__ = [
    "ACTIONS",
    "ALLOW",
    "DENY",
    "REDACT",
    "Redacted",
    "annotate",
    "apply_findings",
    "marker",
    "process_text",
    "redact_json",
    "redact_json_body",
    "redact_text",
    "redact_text_body",
]

REDACT = "redact"
DENY = "deny"
ALLOW = "allow"
ACTIONS = frozenset({REDACT, DENY, ALLOW})

_JSONRPC_PROTECTED = ("jsonrpc", "id", "method")
# Segments of a JSON document are scanned as one string, separated by this. NUL ends every
# built-in match (none of their classes contain it) and the newline ends keyword values.
_SEP = "\x00\n"


def marker(label: str) -> str:
    return f"[REDACTED:{label}]"


class Redacted(NamedTuple):
    """Result of a redaction: the (possibly new) value and every finding, each carrying the
    ``action`` that applied to it. Unpacks as ``(value, findings)``."""

    value: Any
    findings: tuple[Finding, ...]

    @property
    def denied(self) -> tuple[Finding, ...]:
        """Findings whose action is ``deny``: the message must be refused."""
        return tuple(f for f in self.findings if f.action == DENY)

    @property
    def redacted(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.action == REDACT)

    @property
    def changed(self) -> bool:
        return any(f.action == REDACT for f in self.findings)


def annotate(findings: Iterable[Finding], actions: Mapping[str, str]) -> list[Finding]:
    """Attach the action that applies to each finding (missing → ``allow``)."""
    out = []
    for f in findings:
        action = actions.get(f.detector, ALLOW)
        out.append(f if f.action == action else replace(f, action=action))
    return out


def _merged(findings: Iterable[Finding]) -> list[tuple[int, int, Finding]]:
    """Non-allow findings merged into disjoint spans ``(start, end, first finding)``; a span
    that contains a deny finding carries it."""
    spans: list[tuple[int, int, Finding]] = []
    for f in sorted((f for f in findings if f.action != ALLOW),
                    key=lambda f: (f.start, -f.end)):
        if spans and f.start < spans[-1][1]:
            s, e, first = spans[-1]
            keep = f if (f.action == DENY and first.action != DENY) else first
            spans[-1] = (s, max(e, f.end), keep)
        else:
            spans.append((f.start, f.end, f))
    return spans


def apply_findings(text: str, findings: Iterable[Finding], lo: int = 0,
                   hi: int | None = None) -> tuple[str, Finding | None]:
    """Rewrite ``text[lo:hi]``: ``redact`` findings become markers; at the first ``deny``
    finding the output stops (everything before it is kept) and that finding is returned.
    Findings must carry actions (:func:`annotate`); overlapping spans are merged."""
    hi = len(text) if hi is None else hi
    parts: list[str] = []
    at = lo
    for s, e, f in _merged(findings):
        if e <= lo or s >= hi:
            continue
        if f.action == DENY:
            parts.append(text[at:max(s, at)])
            return "".join(parts), f
        parts.append(text[at:s])
        parts.append(marker(f.label))
        at = e
    parts.append(text[at:hi])
    return "".join(parts), None


def redact_text(text: str, findings: Iterable[Finding]) -> str:
    """Replace every finding's span with ``[REDACTED:<label>]`` (actions are ignored;
    overlapping spans merge into one marker)."""
    out, _ = apply_findings(text, [replace(f, action=REDACT) for f in findings])
    return out


def process_text(text: str, scanner: Scanner, actions: Mapping[str, str]) -> Redacted:
    """Scan ``text`` and apply the actions. On a deny the returned text is still fully
    redacted (not truncated): the caller must check :attr:`Redacted.denied`."""
    found = annotate(scanner.scan(text), actions)
    if not any(f.action == REDACT for f in found):
        return Redacted(text, tuple(found))
    redactions = [f for f in found if f.action == REDACT]
    return Redacted(redact_text(text, redactions), tuple(found))


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------

_KEY = 0        # segment kinds
_STR = 1
_INT = 2


def redact_json(value: Any, scanner: Scanner, actions: Mapping[str, str],
                *, jsonrpc: bool | None = None) -> Redacted:
    """Scan a parsed JSON value and redact inside it. Returns the new value (the very same
    object when nothing was redacted; otherwise shallow copies along changed paths only, the
    input is never mutated) and all findings with ``path`` (location in the document),
    ``in_key`` and ``action`` set; offsets index the key or string value.

    ``jsonrpc``: protect JSON-RPC ``jsonrpc``/``id``/``method`` members; ``None`` (default)
    detects JSON-RPC messages by their ``jsonrpc`` member.
    """
    nodes: list[Any] = []
    parents: list[tuple[int, Any]] = []        # (parent node, key in parent); root: (-1, None)
    protected: set[int] = set()                # JSON-RPC message objects
    seg_text: list[str] = []
    seg_meta: list[tuple[int, int, Any, int]] = []   # (kind, node, key, prefix length)

    def is_message(v: Any) -> bool:
        return isinstance(v, dict) and jsonrpc is not False and bool(jsonrpc or "jsonrpc" in v)

    if isinstance(value, dict | list):
        nodes.append(value)
        parents.append((-1, None))
        if is_message(value):
            protected.add(0)
    else:
        _segment(value, -1, None, None, seg_text, seg_meta)
    idx = 0
    while idx < len(nodes):                    # breadth-first, no recursion
        node = nodes[idx]
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, dict | list):
                    nodes.append(v)
                    parents.append((idx, k))
                    seg_text.append(k)
                    seg_meta.append((_KEY, idx, k, len(k)))
                else:
                    _segment(v, idx, k, k, seg_text, seg_meta)
        else:
            for i, v in enumerate(node):
                if isinstance(v, dict | list):
                    nodes.append(v)
                    parents.append((idx, i))
                    if idx == 0 and is_message(v):     # batch element
                        protected.add(len(nodes) - 1)
                else:
                    _segment(v, idx, i, None, seg_text, seg_meta)
        idx += 1

    if not seg_text:
        return Redacted(value, ())
    found = scanner.scan(_SEP.join(seg_text))
    if not found:
        return Redacted(value, ())
    starts = []
    at = 0
    for t in seg_text:
        starts.append(at)
        at += len(t) + len(_SEP)

    results: list[Finding] = []
    per_value: dict[int, list[Finding]] = {}
    per_key: dict[int, list[Finding]] = {}
    for f in found:
        i = bisect.bisect_right(starts, f.start) - 1
        kind, node, key, prefix = seg_meta[i]
        s, e = f.start - starts[i], min(f.end - starts[i], len(seg_text[i]))
        if kind == _KEY:
            in_key = True
        elif prefix:                           # 'key": "value': the key gives context
            if s < len(key):
                in_key, e = True, min(e, len(key))
            else:
                in_key, s, e = False, max(0, s - prefix), e - prefix
        else:
            in_key = False
        action = actions.get(f.detector, ALLOW)
        if action == REDACT and node in protected and key in _JSONRPC_PROTECTED:
            action = DENY                      # cannot be rewritten without breaking JSON-RPC
        path = _path(parents, node) + ((key,) if key is not None else ())
        g = replace(f, start=s, end=e, path=path, in_key=in_key, action=action)
        results.append(g)
        if action == REDACT:
            (per_key if in_key else per_value).setdefault(i, []).append(g)

    if not per_value and not per_key:
        return Redacted(value, tuple(results))
    return Redacted(_rewrite(value, nodes, parents, seg_text, seg_meta, per_value, per_key),
                    tuple(results))


def _segment(v: Any, node: int, key: Any, name: str | None, seg_text: list[str],
             seg_meta: list[tuple[int, int, Any, int]]) -> None:
    """One scan segment for a scalar (member of ``node`` under ``key``, or the root)."""
    if isinstance(v, str):
        kind, rendered = _STR, v
    elif isinstance(v, int) and not isinstance(v, bool):
        kind, rendered = _INT, str(v)
    else:
        kind, rendered = _KEY, ""
    if name is None:                      # array element or root: no key context
        if kind != _KEY:
            seg_text.append(rendered)
            seg_meta.append((kind, node, key, 0))
        return
    if kind == _STR:
        text, prefix = f'{name}": "{rendered}', len(name) + 4
    elif kind == _INT:
        text, prefix = f'{name}": {rendered}', len(name) + 3
    else:
        text, prefix = name, len(name)
    seg_text.append(text)
    seg_meta.append((kind, node, key, prefix))


def _path(parents: list[tuple[int, Any]], node: int) -> tuple[Any, ...]:
    out = []
    while node > 0:
        node, key = parents[node]
        out.append(key)
    out.reverse()
    return tuple(out)


def _rewrite(root: Any, nodes: list[Any], parents: list[tuple[int, Any]],
             seg_text: list[str], seg_meta: list[tuple[int, int, Any, int]],
             per_value: dict[int, list[Finding]],
             per_key: dict[int, list[Finding]]) -> Any:
    copies: dict[int, Any] = {}

    def copy_of(n: int) -> Any:
        chain = []
        m = n
        while m != -1 and m not in copies:
            chain.append(m)
            m = parents[m][0]
        for x in reversed(chain):              # parents first
            orig = nodes[x]
            copies[x] = dict(orig) if isinstance(orig, dict) else list(orig)
            parent, key = parents[x]
            if parent != -1:
                copies[parent][key] = copies[x]
        return copies[n]

    new_root = root
    for i, fs in per_value.items():
        kind, node, key, prefix = seg_meta[i]
        original = seg_text[i][prefix:] if prefix else seg_text[i]
        if kind == _INT:
            new_value: Any = marker(fs[0].label)
        else:
            new_value = redact_text(original, fs)
        if node == -1:
            new_root = new_value
        else:
            copy_of(node)[key] = new_value

    renames: dict[int, dict[str, str]] = {}
    for i, fs in per_key.items():
        _, node, key, _ = seg_meta[i]
        renames.setdefault(node, {})[key] = redact_text(key, fs)
    for node, ren in renames.items():
        c = copy_of(node)
        items = list(c.items())
        c.clear()
        taken = {k for k, _ in items if k not in ren}
        for k, v in items:
            new = ren.get(k, k)
            if k in ren:
                base, n = new, 2
                while new in taken:
                    new = f"{base}~{n}"
                    n += 1
                taken.add(new)
            c[new] = v
    return copies.get(0, new_root)


def redact_json_body(body: bytes, scanner: Scanner, actions: Mapping[str, str],
                     *, max_depth: int = 64, jsonrpc: bool | None = None) -> Redacted:
    """Parse ``body`` strictly (:func:`proxy.codec.loads_strict`: raises
    :class:`proxy.codec.BodyError` on invalid JSON, invalid UTF-8, or nesting deeper than
    ``max_depth``), redact, and return the body: the very same ``bytes`` object when nothing
    changed, else the re-serialized document (compact, UTF-8)."""
    doc = loads_strict(body, max_depth=max_depth)
    r = redact_json(doc, scanner, actions, jsonrpc=jsonrpc)
    if r.value is doc:
        return Redacted(body, r.findings)
    out = json.dumps(r.value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Redacted(out, r.findings)


def redact_text_body(body: bytes, scanner: Scanner, actions: Mapping[str, str]) -> Redacted:
    """Redact a text body. Bytes that are not UTF-8 are carried through unchanged
    (``surrogateescape``), so a binary-ish body never crashes the scanner and every ASCII
    secret in it is still seen. Offsets are character offsets of the decoded text."""
    text = body.decode("utf-8", "surrogateescape")
    r = process_text(text, scanner, actions)
    if r.value is text:
        return Redacted(body, r.findings)
    return Redacted(r.value.encode("utf-8", "surrogateescape"), r.findings)
